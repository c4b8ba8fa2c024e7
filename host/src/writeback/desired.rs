//! The status an object should show, from what the host knows about it:
//! pure, so the rules are tested without an API server.

use serde_json::{Value, json};

use super::truncate;
use crate::ir;
use crate::store::Object;

/// Diagnostic reason the host gives a data-plane rejection (a NACK).
pub const REJECTED_BY_DATA_PLANE: &str = "RejectedByDataPlane";

/// Condition messages are bounded by the API (32 KiB).
const MAX_MESSAGE: usize = 32 * 1024;

/// The status fields the host owns on one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// What is written (server-side apply of `status`).
    pub status: Value,
    /// The same without transition times: what "unchanged" compares.
    pub key: Value,
}

impl Desired {
    /// Whether the object already shows this status.
    pub fn matches(&self, object: &Object) -> bool {
        let Ok(value) = serde_json::from_str::<Value>(&object.json) else {
            return false;
        };
        let current = value.get("status").cloned().unwrap_or(Value::Null);
        comparable(&current, &self.key) == self.key
    }
}

/// Ingress has no conditions: it gets addresses and Events.
pub fn is_ingress(object: &Object) -> bool {
    object.kind == "Ingress" && object.api_version.starts_with("networking.k8s.io/")
}

/// What `object` should show; none when the host has nothing to say (not
/// claimed, or an Ingress while no address is known).
pub fn desired_status(
    object: &Object,
    claimed: bool,
    diagnostics: &[&ir::Diagnostic],
    addresses: Option<&[String]>,
) -> Option<Desired> {
    desired_status_except(object, claimed, diagnostics, addresses, None)
}

/// As [`desired_status`], for an object a translator may also give a
/// status (`plugin_types`: the top-level condition types it sets, when it
/// gives one). Two field managers on one condition would conflict, and the
/// plugin knows the kind's status shape: when it judged the object the host
/// adds only the data-plane fact (`Programmed`), and only to a kind the
/// plugin gave top-level conditions at all (HTTPRoute, for one, has only
/// `status.parents`).
pub fn desired_status_except(
    object: &Object,
    claimed: bool,
    diagnostics: &[&ir::Diagnostic],
    addresses: Option<&[String]>,
    plugin_types: Option<&[&str]>,
) -> Option<Desired> {
    if !claimed {
        return None;
    }
    if is_ingress(object) {
        let addresses = addresses?;
        let ingress: Vec<Value> = addresses
            .iter()
            .map(|a| {
                if a.parse::<std::net::IpAddr>().is_ok() {
                    json!({"ip": a})
                } else {
                    json!({"hostname": a})
                }
            })
            .collect();
        let status = json!({"loadBalancer": {"ingress": ingress}});
        return Some(Desired {
            key: status.clone(),
            status,
        });
    }
    let host_types: &[&str] = match plugin_types {
        None => &["Accepted", "Programmed"],
        Some(types) if !types.is_empty() && !types.contains(&"Programmed") => &["Programmed"],
        Some(_) => return None,
    };
    let value: Value = serde_json::from_str(&object.json).ok()?;
    let generation = value
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let current: Vec<Value> = value
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();

    let errors: Vec<&&ir::Diagnostic> = diagnostics
        .iter()
        .filter(|d| d.severity == ir::Severity::Error && d.reason != REJECTED_BY_DATA_PLANE)
        .collect();
    let warnings = diagnostics
        .iter()
        .filter(|d| d.severity == ir::Severity::Warning)
        .count();
    let nacks: Vec<&&ir::Diagnostic> = diagnostics
        .iter()
        .filter(|d| d.reason == REJECTED_BY_DATA_PLANE)
        .collect();
    let join = |ds: &[&&ir::Diagnostic]| {
        let text = ds
            .iter()
            .map(|d| d.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        truncate(&text, MAX_MESSAGE)
    };
    let accepted = match errors.first() {
        None if warnings == 0 => ("True", "Accepted".to_string(), "Translated".to_string()),
        None => (
            "True",
            "Accepted".to_string(),
            format!("Translated with {warnings} warning(s)"),
        ),
        Some(first) => ("False", first.reason.clone(), join(&errors)),
    };
    let programmed = match nacks.first() {
        Some(first) => ("False", first.reason.clone(), join(&nacks)),
        None => (
            "True",
            "Programmed".to_string(),
            "Served to the data planes".to_string(),
        ),
    };
    let now = crate::report::rfc3339(std::time::SystemTime::now());
    let condition = |type_: &str, (status, reason, message): (&str, String, String)| {
        // The transition time moves only when the status does.
        let since = current
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
            .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| Value::String(now.clone()));
        json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": since,
        })
    };
    let conditions: Vec<Value> = [("Accepted", accepted), ("Programmed", programmed)]
        .into_iter()
        .filter(|(t, _)| host_types.contains(t))
        .map(|(t, c)| condition(t, c))
        .collect();
    let status = json!({ "conditions": conditions });
    Some(Desired {
        key: strip_times(&status),
        status,
    })
}

/// What a translator's status for an object renders to: its conditions
/// (observedGeneration defaulted to the object's generation) and its
/// fields, every condition list at any depth stamped with a
/// lastTransitionTime kept while that condition's status stays the same.
/// `key` (times left out) is what "unchanged" compares.
pub fn plugin_status(s: &crate::translate::StatusOf) -> Desired {
    let value: Value = serde_json::from_str(&s.object.json).unwrap_or(Value::Null);
    let generation = value
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let conditions: Vec<Value> = s
        .status
        .conditions
        .iter()
        .map(|c| {
            json!({
                "type": c.type_,
                "status": c.status.as_str(),
                "reason": c.reason,
                "message": truncate(&c.message, MAX_MESSAGE),
                "observedGeneration": c.observed_generation.unwrap_or(generation),
            })
        })
        .collect();
    let mut status = match &s.status.fields {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        _ => json!({}),
    };
    if !conditions.is_empty() {
        status["conditions"] = Value::Array(conditions);
    }
    let key = strip_times(&status);
    let now = crate::report::rfc3339(std::time::SystemTime::now());
    stamp(&mut status, value.get("status"), &now);
    Desired { key, status }
}

/// Gives every condition (an object with a `type` in a `conditions` list,
/// at any depth) the transition time the object shows for it at the same
/// place while its status is the same, else `now`.
fn stamp(v: &mut Value, current: Option<&Value>, now: &str) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                let here = current.and_then(|c| c.get(k));
                if k == "conditions" {
                    if let Value::Array(list) = child {
                        for c in list.iter_mut().filter_map(Value::as_object_mut) {
                            if c.contains_key("lastTransitionTime") {
                                continue;
                            }
                            let since = here
                                .and_then(Value::as_array)
                                .and_then(|have| {
                                    have.iter().find(|e| {
                                        e.get("type") == c.get("type")
                                            && e.get("status") == c.get("status")
                                    })
                                })
                                .and_then(|e| e.get("lastTransitionTime").cloned())
                                .unwrap_or_else(|| Value::String(now.to_string()));
                            c.insert("lastTransitionTime".into(), since);
                        }
                        continue;
                    }
                }
                stamp(child, here, now);
            }
        }
        Value::Array(list) => {
            for (i, child) in list.iter_mut().enumerate() {
                stamp(child, current.and_then(|c| c.get(i)), now);
            }
        }
        _ => {}
    }
}

/// Whether the object already shows what a plugin owns of its status.
pub fn shows(object: &crate::store::Object, desired: &Desired) -> bool {
    let Ok(value) = serde_json::from_str::<Value>(&object.json) else {
        return false;
    };
    let current = strip_times(&value.get("status").cloned().unwrap_or(Value::Null));
    let Some(wanted) = desired.key.as_object() else {
        return false;
    };
    wanted.iter().all(|(k, v)| {
        if k == "conditions" {
            comparable(&current, &json!({"conditions": v})) == json!({"conditions": v})
        } else {
            current.get(k) == Some(v)
        }
    })
}

/// The same without any lastTransitionTime, at any depth.
fn strip_times(status: &Value) -> Value {
    match status {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), strip_times(v)))
                .collect(),
        ),
        Value::Array(list) => Value::Array(list.iter().map(strip_times).collect()),
        other => other.clone(),
    }
}

/// The part of `current` that `key` speaks about, in `key`'s shape: the
/// conditions of the types the host owns (others' are not its business).
fn comparable(current: &Value, key: &Value) -> Value {
    if let Some(wanted) = key.get("conditions").and_then(Value::as_array) {
        let have = current
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let picked: Vec<Value> = wanted
            .iter()
            .map(|w| {
                have.iter()
                    .find(|c| c.get("type") == w.get("type"))
                    .cloned()
                    .unwrap_or(Value::Null)
            })
            .collect();
        return strip_times(&json!({"conditions": picked}));
    }
    let lb = current
        .pointer("/loadBalancer/ingress")
        .cloned()
        .unwrap_or_else(|| json!([]));
    json!({"loadBalancer": {"ingress": lb}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(object: Object, fields: Value, accepted: bool) -> crate::translate::StatusOf {
        crate::translate::StatusOf {
            object: std::sync::Arc::new(object),
            plugin: std::sync::Arc::from("gw"),
            status: ir::ObjectStatus {
                object: ir::ObjectRef::new("Gateway", "shop", "gw"),
                conditions: vec![ir::Condition {
                    type_: "Accepted".into(),
                    status: if accepted {
                        ir::ConditionStatus::True
                    } else {
                        ir::ConditionStatus::False
                    },
                    reason: "Accepted".into(),
                    message: "ok".into(),
                    observed_generation: None,
                }],
                fields: Some(fields),
            },
        }
    }

    #[test]
    fn plugin_statuses_keep_transition_times_at_any_depth_while_the_status_holds() {
        let listeners = json!({"listeners": [{"name": "http", "attachedRoutes": 1,
            "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "", "observedGeneration": 3}]}]});
        let object = object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "shop", "generation": 3},
            "status": {
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok",
                    "observedGeneration": 3, "lastTransitionTime": "2020-01-01T00:00:00Z"}],
                "listeners": [{"name": "http", "attachedRoutes": 1,
                    "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "",
                        "observedGeneration": 3, "lastTransitionTime": "2021-01-01T00:00:00Z"}]}],
            },
        }));
        let same = plugin_status(&status_of(object.clone(), listeners.clone(), true));
        assert_eq!(
            same.status["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(same.status["conditions"][0]["observedGeneration"], 3);
        assert_eq!(
            same.status["listeners"][0]["conditions"][0]["lastTransitionTime"],
            "2021-01-01T00:00:00Z"
        );
        assert!(shows(&object, &same), "nothing to write");

        let flipped = plugin_status(&status_of(object.clone(), listeners, false));
        assert_ne!(
            flipped.status["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert!(!shows(&object, &flipped));
        let moved = plugin_status(&status_of(
            object.clone(),
            json!({"listeners": [{"name": "http", "attachedRoutes": 2}]}),
            true,
        ));
        assert!(!shows(&object, &moved), "a changed field is written");
    }

    fn object(json: Value) -> Object {
        Object::from_value(json).unwrap()
    }

    fn ingress(status: Value) -> Object {
        object(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "5"},
            "spec": {}, "status": status,
        }))
    }

    fn route(generation: i64, conditions: Value) -> Object {
        object(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "shop", "uid": "u2", "generation": generation},
            "spec": {}, "status": {"conditions": conditions},
        }))
    }

    fn diag(severity: ir::Severity, reason: &str, message: &str) -> ir::Diagnostic {
        ir::Diagnostic::new(
            ir::ObjectRef::new("HTTPRoute", "shop", "r"),
            severity,
            reason,
            message,
        )
    }

    #[test]
    fn an_unclaimed_object_gets_nothing() {
        let addrs = vec!["192.0.2.1".to_string()];
        assert!(desired_status(&ingress(json!({})), false, &[], Some(&addrs)).is_none());
        assert!(desired_status(&route(1, json!([])), false, &[], None).is_none());
    }

    #[test]
    fn ingress_gets_ips_and_hostnames_and_matches_once_written() {
        let addrs = vec!["192.0.2.1".to_string(), "lb.example.com".to_string()];
        let d = desired_status(&ingress(json!({})), true, &[], Some(&addrs)).unwrap();
        assert_eq!(
            d.status,
            json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}, {"hostname": "lb.example.com"}]}})
        );
        assert!(!d.matches(&ingress(json!({}))));
        assert!(d.matches(&ingress(d.status.clone())));
        // No address known yet: nothing to write.
        assert!(desired_status(&ingress(json!({})), true, &[], None).is_none());
    }

    #[test]
    fn a_clean_route_is_accepted_and_programmed_at_its_generation() {
        let d = desired_status(&route(3, json!([])), true, &[], None).unwrap();
        let c = &d.status["conditions"];
        assert_eq!(c[0]["type"], "Accepted");
        assert_eq!(c[0]["status"], "True");
        assert_eq!(c[0]["observedGeneration"], 3);
        assert_eq!(c[1]["type"], "Programmed");
        assert_eq!(c[1]["status"], "True");
    }

    #[test]
    fn where_a_translator_gives_the_status_the_host_adds_only_programmed_and_only_beside_its_conditions()
     {
        let r = route(2, json!([]));
        // The plugin set Accepted (a Gateway): the host adds Programmed.
        let d = desired_status_except(&r, true, &[], None, Some(&["Accepted"])).unwrap();
        let types: Vec<&str> = d.status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Programmed"]);
        // Fields only (an HTTPRoute's status.parents): the kind has no
        // top-level conditions, the host writes none.
        assert!(desired_status_except(&r, true, &[], None, Some(&[])).is_none());
        // Nothing left for the host.
        assert!(
            desired_status_except(&r, true, &[], None, Some(&["Accepted", "Programmed"])).is_none()
        );
        // An Ingress keeps its addresses whatever a plugin says.
        let addrs = vec!["10.0.0.9".to_string()];
        assert!(
            desired_status_except(&ingress(json!({})), true, &[], Some(&addrs), Some(&[]))
                .is_some()
        );
    }

    #[test]
    fn errors_make_accepted_false_with_the_reason_and_nacks_make_programmed_false() {
        let missing = diag(
            ir::Severity::Error,
            "BackendNotFound",
            "service shop/api not found",
        );
        let nack = diag(
            ir::Severity::Error,
            REJECTED_BY_DATA_PLANE,
            "envoy-1 rejected RDS",
        );
        let d = desired_status(&route(1, json!([])), true, &[&missing, &nack], None).unwrap();
        let c = &d.status["conditions"];
        assert_eq!(c[0]["status"], "False");
        assert_eq!(c[0]["reason"], "BackendNotFound");
        assert_eq!(c[0]["message"], "service shop/api not found");
        assert_eq!(c[1]["status"], "False");
        assert_eq!(c[1]["reason"], REJECTED_BY_DATA_PLANE);
        // A warning alone keeps it accepted.
        let warn = diag(ir::Severity::Warning, "RouteConflict", "lost to older");
        let d = desired_status(&route(1, json!([])), true, &[&warn], None).unwrap();
        assert_eq!(d.status["conditions"][0]["status"], "True");
        assert_eq!(
            d.status["conditions"][0]["message"],
            "Translated with 1 warning(s)"
        );
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds_and_ignored_when_comparing() {
        let written = desired_status(&route(1, json!([])), true, &[], None).unwrap();
        let mut shown = written.status["conditions"].clone();
        shown[0]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        shown[1]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        // Someone else's condition is left alone and does not matter.
        shown
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "Other", "status": "True"}));
        let obj = route(1, shown);
        let again = desired_status(&obj, true, &[], None).unwrap();
        assert_eq!(
            again.status["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert!(again.matches(&obj));
        // A new generation is a change.
        let newer = route(2, obj_conditions(&obj));
        assert!(
            !desired_status(&newer, true, &[], None)
                .unwrap()
                .matches(&newer)
        );
        // A status flip moves the transition time.
        let e = diag(ir::Severity::Error, "Invalid", "bad");
        let flipped = desired_status(&obj, true, &[&e], None).unwrap();
        assert_ne!(
            flipped.status["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        assert!(!flipped.matches(&obj));
    }

    fn obj_conditions(o: &Object) -> Value {
        let v: Value = serde_json::from_str(&o.json).unwrap();
        v["status"]["conditions"].clone()
    }

    #[test]
    fn long_messages_are_truncated_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let e = diag(ir::Severity::Error, "Invalid", &long);
        let d = desired_status(&route(1, json!([])), true, &[&e], None).unwrap();
        let m = d.status["conditions"][0]["message"].as_str().unwrap();
        assert!(m.len() <= MAX_MESSAGE && m.ends_with("..."));
    }
}
