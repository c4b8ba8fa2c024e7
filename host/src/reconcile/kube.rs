//! A reconciler's actions carried out on a real cluster, with the host's
//! credentials: server-side apply (field manager `isobar/<plugin>`) for
//! children and status, finalizers by a merge patch guarded by the object's
//! resourceVersion, deletes, and Events through kube's recorder.
//!
//! Objects are addressed by group and kind; the version comes from API
//! discovery (cached), as the kube source resolves kinds.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::api::{Api as ReconcilerApi, ApiError, RecordedEvent, Write, key_of};
use crate::store::{KindKey, ObjectKey};

/// Which resource serves a kind, and whether it is namespaced: this API
/// client's port to discovery. `isobar serve` plugs in the kube source's
/// (one discovery path, one cache); without one, the client asks the API
/// server's discovery itself.
pub trait Discovery: Send + Sync + 'static {
    fn resolve<'a>(
        &'a self,
        kind: &'a KindKey,
    ) -> BoxFuture<'a, Result<(ApiResource, bool), String>>;
}

pub struct KubeApi {
    client: kube::Client,
    resources: Mutex<HashMap<KindKey, (ApiResource, bool)>>,
    discovery: Option<Arc<dyn Discovery>>,
    recorders: Mutex<HashMap<String, Recorder>>,
}

impl KubeApi {
    pub fn new(client: kube::Client) -> Self {
        KubeApi {
            client,
            resources: Mutex::new(HashMap::new()),
            discovery: None,
            recorders: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves kinds through `discovery` instead of asking the API server.
    pub fn with_discovery(mut self, discovery: Arc<dyn Discovery>) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// Seeds the discovery cache (a kind the caller already resolved, or a
    /// test without a discovery endpoint).
    pub fn with_resource(self, kind: KindKey, resource: ApiResource, namespaced: bool) -> Self {
        self.resources.lock().insert(kind, (resource, namespaced));
        self
    }

    async fn resolve(&self, kind: &KindKey) -> Result<(ApiResource, bool), ApiError> {
        if let Some(r) = self.resources.lock().get(kind).cloned() {
            return Ok(r);
        }
        if let Some(discovery) = &self.discovery {
            let out = discovery.resolve(kind).await.map_err(ApiError::Api)?;
            self.resources.lock().insert(kind.clone(), out.clone());
            return Ok(out);
        }
        let group = kube::discovery::group(&self.client, &kind.group)
            .await
            .map_err(api_error)?;
        let (resource, caps) = group
            .recommended_kind(&kind.kind)
            .ok_or_else(|| ApiError::Invalid(format!("the API server does not serve {kind}")))?;
        let namespaced = matches!(caps.scope, kube::discovery::Scope::Namespaced);
        self.resources
            .lock()
            .insert(kind.clone(), (resource.clone(), namespaced));
        Ok((resource, namespaced))
    }

    async fn api(
        &self,
        key: &ObjectKey,
    ) -> Result<(kube::Api<DynamicObject>, ApiResource), ApiError> {
        let (resource, namespaced) = self.resolve(&key.kind).await?;
        let api = if namespaced {
            kube::Api::namespaced_with(self.client.clone(), &key.namespace, &resource)
        } else {
            kube::Api::all_with(self.client.clone(), &resource)
        };
        Ok((api, resource))
    }
}

fn api_error(e: kube::Error) -> ApiError {
    ApiError::Api(e.to_string())
}

/// A 409 from server-side apply: fields of the object belong to another
/// manager.
fn apply_error(e: kube::Error, key: &ObjectKey, manager: &str) -> ApiError {
    match e {
        kube::Error::Api(s) if s.code == 409 => ApiError::Conflict {
            key: key.to_string(),
            owner: s.message,
            wanted: manager.to_string(),
        },
        e => api_error(e),
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn resource_version(o: &DynamicObject) -> Option<String> {
    o.metadata.resource_version.clone()
}

impl ReconcilerApi for KubeApi {
    fn apply<'a>(
        &'a self,
        object: Value,
        manager: &'a str,
    ) -> BoxFuture<'a, Result<Write, ApiError>> {
        async move {
            let key = key_of(&object)?;
            // The object names its version; discovery only says the scope.
            let (_, namespaced) = self.resolve(&key.kind).await?;
            if !namespaced {
                // Owner references do not reach cluster-scoped children
                // from a namespace, and a plugin's reach ends there.
                return Err(ApiError::Invalid(format!(
                    "{} is cluster-scoped: a plugin applies only namespaced objects",
                    key.kind
                )));
            }
            let resource = crate::resource::api_resource(
                object["apiVersion"].as_str().unwrap_or_default(),
                &key.kind.kind,
            );
            let api: kube::Api<DynamicObject> = if namespaced {
                kube::Api::namespaced_with(self.client.clone(), &key.namespace, &resource)
            } else {
                kube::Api::all_with(self.client.clone(), &resource)
            };
            // A no-op apply leaves the resourceVersion as it was.
            let before = api
                .get_opt(&key.name)
                .await
                .map_err(api_error)?
                .and_then(|o| resource_version(&o));
            // Never forced: a field another manager owns is a conflict
            // (409), reported, not taken.
            let after = api
                .patch(
                    &key.name,
                    &PatchParams::apply(manager),
                    &Patch::Apply(&object),
                )
                .await
                .map_err(|e| apply_error(e, &key, manager))?;
            Ok(if before.is_some() && before == resource_version(&after) {
                Write::Unchanged
            } else {
                Write::Changed
            })
        }
        .boxed()
    }

    fn apply_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        status: Value,
        manager: &'a str,
    ) -> BoxFuture<'a, Result<Write, ApiError>> {
        async move {
            let (api, resource) = self.api(key).await?;
            let current = api.get_opt(&key.name).await.map_err(api_error)?;
            let Some(current) = current else {
                return Err(ApiError::NotFound(key.to_string()));
            };
            let mut body = json!({
                "apiVersion": resource.api_version,
                "kind": resource.kind,
                "metadata": {"name": key.name},
                "status": status,
            });
            if !key.namespace.is_empty() {
                body["metadata"]["namespace"] = json!(key.namespace);
            }
            let after = api
                .patch_status(
                    &key.name,
                    &PatchParams::apply(manager),
                    &Patch::Apply(&body),
                )
                .await
                .map_err(|e| apply_error(e, key, manager))?;
            Ok(if resource_version(&current) == resource_version(&after) {
                Write::Unchanged
            } else {
                Write::Changed
            })
        }
        .boxed()
    }

    fn set_finalizer<'a>(
        &'a self,
        key: &'a ObjectKey,
        finalizer: &'a str,
        present: bool,
    ) -> BoxFuture<'a, Result<Write, ApiError>> {
        async move {
            let (api, _) = self.api(key).await?;
            let Some(current) = api.get_opt(&key.name).await.map_err(api_error)? else {
                return Err(ApiError::NotFound(key.to_string()));
            };
            let mut finalizers = current.metadata.finalizers.clone().unwrap_or_default();
            let has = finalizers.iter().any(|f| f == finalizer);
            if has == present {
                return Ok(Write::Unchanged);
            }
            if present {
                finalizers.push(finalizer.to_string());
            } else {
                finalizers.retain(|f| f != finalizer);
            }
            // The resourceVersion makes this a compare-and-swap: a
            // concurrent change to the list fails (409) and is retried.
            let patch = json!({"metadata": {
                "finalizers": finalizers,
                "resourceVersion": resource_version(&current),
            }});
            api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_error)?;
            Ok(Write::Changed)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Write, ApiError>> {
        async move {
            let (api, _) = self.api(key).await?;
            match api.delete(&key.name, &DeleteParams::background()).await {
                Ok(_) => Ok(Write::Changed),
                Err(e) if not_found(&e) => Ok(Write::Unchanged),
                Err(e) => Err(api_error(e)),
            }
        }
        .boxed()
    }

    fn event<'a>(&'a self, event: RecordedEvent) -> BoxFuture<'a, Result<(), ApiError>> {
        async move {
            let (resource, _) = self.resolve(&event.regarding.kind).await?;
            // One recorder per plugin, kept: its cache folds repeats into a
            // series instead of a new Event each time.
            let recorder = self
                .recorders
                .lock()
                .entry(event.reporting_controller.clone())
                .or_insert_with(|| {
                    Recorder::new(
                        self.client.clone(),
                        Reporter {
                            controller: event.reporting_controller.clone(),
                            instance: None,
                        },
                    )
                })
                .clone();
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some(resource.api_version.clone()),
                kind: Some(resource.kind.clone()),
                name: Some(event.regarding.name.clone()),
                namespace: Some(event.regarding.namespace.clone()).filter(|n| !n.is_empty()),
                ..Default::default()
            };
            let e = KubeEvent {
                type_: if event.type_ == "Warning" {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: event.reason.clone(),
                note: Some(event.message.clone()),
                action: "Reconcile".into(),
                secondary: None,
            };
            recorder.publish(&e, &reference).await.map_err(api_error)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;
