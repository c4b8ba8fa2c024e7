//! Plugin objects (`isobar.dev/v1alpha1`, kind `Plugin`): plugins a
//! platform team ships to a running cluster. The controller follows them
//! (`isobar serve --follow-plugins`); this module holds what it needs
//! beside its own swap machinery: the spec, the fetch of an artifact (an
//! OCI reference pinned by digest, or a ConfigMap key with its sha256),
//! and each object's record, which becomes its status.
//!
//! Every replica loads what the objects say; statuses go out through the
//! write-back, which only the leader runs.

mod fetch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};

pub use fetch::{Artifact, FetchRequest, Fetched, Fetcher};

use crate::ir::{Condition, ConditionStatus, ObjectRef, ObjectStatus};
use crate::plugin::{Grants, World};
use crate::store::{KindKey, Object};
use crate::translate::StatusOf;

pub const API_VERSION: &str = "isobar.dev/v1alpha1";
pub const KIND: &str = "Plugin";
/// The field manager Plugin statuses are written under
/// (`isobar-plugin-catalog`).
const MANAGER: &str = "catalog";

/// The kind the controller watches when following Plugin objects.
pub fn kind() -> KindKey {
    KindKey::new(API_VERSION, KIND)
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginSpec {
    pub world: World,
    pub source: Source,
    /// Handed to the plugin's `configure` as JSON.
    #[serde(default)]
    pub config: Option<Value>,
    /// Policies: the chain position, ascending (after `--policy` flags).
    #[serde(default)]
    pub order: Option<i64>,
    #[serde(default)]
    pub grants: GrantsSpec,
    /// Tighter limits than the host's for this plugin's calls.
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default)]
    pub rollback: RollbackSpec,
}

/// A plugin may be held to less than the host allows (`--plugin-deadline-ms`,
/// `--plugin-memory-mib` are the ceiling), never to more: a Plugin object
/// is applied by whoever may apply it, the host's flags by its operator.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    #[serde(default)]
    pub deadline_millis: Option<u64>,
    #[serde(default, rename = "memoryMiB")]
    pub memory_mib: Option<u64>,
}

impl LimitsSpec {
    /// Why these limits are refused under the host's `ceiling`, if they are.
    pub fn check(&self, ceiling: &crate::plugin::Limits) -> Result<(), String> {
        if let Some(ms) = self.deadline_millis
            && Duration::from_millis(ms) > ceiling.deadline
        {
            return Err(format!(
                "spec.limits.deadlineMillis {ms} is above this host's {} (--plugin-deadline-ms); a Plugin may only tighten it",
                ceiling.deadline.as_millis()
            ));
        }
        if let Some(mib) = self.memory_mib
            && mib.saturating_mul(1 << 20) > ceiling.memory_bytes as u64
        {
            return Err(format!(
                "spec.limits.memoryMiB {mib} is above this host's {} (--plugin-memory-mib); a Plugin may only tighten it",
                ceiling.memory_bytes >> 20
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// `registry/repo@sha256:…`.
    #[serde(default)]
    pub oci: Option<String>,
    #[serde(default)]
    pub pull_secret: Option<SecretRef>,
    /// Plain HTTP to the registry (loopback test registries).
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub config_map: Option<ConfigMapRef>,
    /// The component's sha256 (hex), with `configMap`.
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ConfigMapRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct GrantsSpec {
    #[serde(default)]
    pub clocks: bool,
    #[serde(default)]
    pub random: bool,
}

impl PluginSpec {
    /// What the plugin's calls are granted and held to.
    pub fn grants(&self) -> Grants {
        Grants {
            clocks: self.grants.clocks,
            random: self.grants.random,
            deadline: self.limits.deadline_millis.map(Duration::from_millis),
            memory_bytes: self
                .limits
                .memory_mib
                .map(|m| usize::try_from(m.saturating_mul(1 << 20)).unwrap_or(usize::MAX)),
            ..Grants::default()
        }
    }
}

/// Roll back when the new version's call failures reach `failures`
/// within `window_seconds` of its swap.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollbackSpec {
    #[serde(default = "default_failures")]
    pub failures: u64,
    #[serde(default = "default_window")]
    pub window_seconds: u64,
}

fn default_failures() -> u64 {
    5
}
fn default_window() -> u64 {
    60
}

impl Default for RollbackSpec {
    fn default() -> Self {
        RollbackSpec {
            failures: default_failures(),
            window_seconds: default_window(),
        }
    }
}

impl Source {
    /// What the status and logs name the source by.
    pub fn describe(&self) -> String {
        match (&self.oci, &self.config_map) {
            (Some(r), _) => r.clone(),
            (None, Some(c)) => format!("configmap:{}/{}#{}", c.namespace, c.name, c.key),
            (None, None) => "(none)".into(),
        }
    }
}

/// A Plugin object as the controller reads it.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub name: String,
    pub generation: i64,
    pub spec: PluginSpec,
}

/// Reads a Plugin object; the error is its `InvalidSpec` message.
pub fn read(object: &Object) -> Result<Wanted, String> {
    let value: Value = serde_json::from_str(&object.json).map_err(|e| e.to_string())?;
    let generation = value
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let spec: PluginSpec = serde_json::from_value(value.get("spec").cloned().unwrap_or_default())
        .map_err(|e| format!("spec: {e}"))?;
    match (&spec.source.oci, &spec.source.config_map) {
        (Some(_), Some(_)) | (None, None) => {
            return Err("spec.source: exactly one of oci and configMap".into());
        }
        (Some(r), None) => {
            crate::oci::parse(r, true).map_err(|e| e.to_string())?;
        }
        (None, Some(_)) => {
            let ok = spec
                .source
                .sha256
                .as_deref()
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if !ok {
                return Err("spec.source.sha256: 64 hex digits, required with configMap".into());
            }
        }
    }
    if spec.limits.deadline_millis == Some(0) || spec.limits.memory_mib == Some(0) {
        return Err("spec.limits: a limit of zero leaves the plugin nothing".into());
    }
    if spec.order.is_some() && spec.world != World::Policy {
        return Err("spec.order: only policies have a chain position".into());
    }
    Ok(Wanted {
        name: object.name.clone(),
        generation,
        spec,
    })
}

/// What a Plugin object's status says, kept by the controller.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub generation: i64,
    /// False with the reason of the last refusal.
    pub accepted: Option<(bool, String, String)>,
    pub ready: Option<(bool, String, String)>,
    pub degraded: Option<(bool, String, String)>,
    pub loaded: Option<LoadedInfo>,
    /// Calls and failed calls of the loaded version, refreshed at most
    /// once per [`COUNTERS_EVERY`] (a status write per round would be a
    /// write per object change).
    pub counters: Option<(u64, u64)>,
}

/// How often the counters in Plugin statuses are refreshed.
pub const COUNTERS_EVERY: Duration = Duration::from_secs(60);

/// The version that serves.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedInfo {
    pub digest: String,
    pub source: String,
    pub contract: String,
    pub world: World,
    pub compile_millis: u64,
    /// Fetching the artifact (0 from the cache).
    pub pull_millis: u64,
    /// From compiled to published: the dry run over the whole store and
    /// the new snapshot.
    pub swap_millis: u64,
    pub last_swap_time: String,
}

impl Record {
    /// The status the write-back applies: conditions and fields.
    pub fn status(&self, object: &Arc<Object>) -> StatusOf {
        let mut conditions = Vec::new();
        for (type_, c) in [
            ("Accepted", &self.accepted),
            ("Ready", &self.ready),
            ("Degraded", &self.degraded),
        ] {
            if let Some((ok, reason, message)) = c {
                conditions.push(Condition {
                    type_: type_.to_string(),
                    status: if *ok {
                        ConditionStatus::True
                    } else {
                        ConditionStatus::False
                    },
                    reason: reason.clone(),
                    message: message.clone(),
                    observed_generation: Some(self.generation),
                });
            }
        }
        let mut fields = json!({"observedGeneration": self.generation});
        if let Some(l) = &self.loaded {
            fields["digest"] = json!(l.digest);
            fields["source"] = json!(l.source);
            fields["contract"] = json!(l.contract);
            fields["world"] = json!(l.world.as_str());
            fields["compileMillis"] = json!(l.compile_millis);
            fields["pullMillis"] = json!(l.pull_millis);
            fields["swapMillis"] = json!(l.swap_millis);
            fields["lastSwapTime"] = json!(l.last_swap_time);
        }
        if let Some((calls, failures)) = self.counters {
            fields["calls"] = json!(calls);
            fields["failures"] = json!(failures);
        }
        StatusOf {
            object: object.clone(),
            plugin: Arc::from(MANAGER),
            status: ObjectStatus {
                object: ObjectRef {
                    kind: KIND.into(),
                    namespace: String::new(),
                    name: object.name.clone(),
                    group: "isobar.dev".into(),
                },
                conditions,
                fields: Some(fields),
            },
        }
    }
}

/// A version on probation: its failures since the swap are counted, and
/// reaching the Plugin's threshold within its window rolls it back.
#[derive(Clone, Debug)]
pub struct Probation {
    pub since: Instant,
    /// The first snapshot version with this version's output.
    pub snapshot: u64,
    pub window: Duration,
    pub threshold: u64,
    pub failures: u64,
}

impl Probation {
    pub fn new(rollback: &RollbackSpec, snapshot: u64) -> Self {
        Probation {
            since: Instant::now(),
            snapshot,
            window: Duration::from_secs(rollback.window_seconds),
            threshold: rollback.failures.max(1),
            failures: 0,
        }
    }

    pub fn over(&self) -> bool {
        self.since.elapsed() > self.window
    }
}

/// Now, as status times are written.
pub fn now() -> String {
    crate::report::rfc3339(SystemTime::now())
}

/// Records by Plugin object name, in order.
pub type Records = BTreeMap<String, Record>;
