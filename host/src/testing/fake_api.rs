//! A fake Kubernetes API server for tests and benchmarks: tower-test behind
//! a real `kube::Client`, so the requests are the real ones (paths, field
//! managers, bodies) and only the answers are made up.
//!
//! Objects are held by path. GET answers from them (404 otherwise); PATCH
//! merges into them, refuses a stale `metadata.resourceVersion` (409) and
//! bumps the version only when something changed; DELETE removes (404 when
//! absent); anything else (Events) is echoed. Every request is recorded.
//! Built with the `testing` feature (and in this crate's own tests).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;

/// One request as it reached the server.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub body: Value,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Value>,
    seen: Vec<Seen>,
    resource_version: u64,
    fail_with: Option<u16>,
}

pub struct FakeApi {
    state: Arc<Mutex<State>>,
    /// Bumped on every request, so waiters re-check.
    requests: watch::Receiver<u64>,
}

fn status(code: u16) -> Value {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        _ => "InternalError",
    };
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "code": code, "reason": reason, "message": "fake API server"})
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

impl State {
    fn answer(&mut self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        if let Some(code) = self.fail_with {
            return (code, status(code));
        }
        // An object's status is part of the object.
        let path = path.trim_end_matches("/status");
        match method {
            "GET" => match self.objects.get(path) {
                Some(o) => (200, o.clone()),
                None => (404, status(404)),
            },
            "PATCH" => {
                let current = self.objects.get(path).cloned().unwrap_or_else(|| json!({}));
                let mut patch = body.clone();
                if let Some(rv) = patch.pointer("/metadata/resourceVersion").cloned() {
                    if current.pointer("/metadata/resourceVersion") != Some(&rv) {
                        return (409, status(409));
                    }
                    if let Some(meta) = patch["metadata"].as_object_mut() {
                        meta.remove("resourceVersion");
                    }
                }
                let mut next = current.clone();
                merge(&mut next, &patch);
                if next != current {
                    self.resource_version += 1;
                    next["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
                }
                self.objects.insert(path.to_string(), next.clone());
                (200, next)
            }
            "DELETE" => match self.objects.remove(path) {
                Some(_) => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                ),
                None => (404, status(404)),
            },
            _ => (201, body.clone()),
        }
    }
}

impl FakeApi {
    /// Starts the server holding `objects` (by path, e.g.
    /// `/apis/apps/v1/namespaces/default/deployments/web`); the client talks
    /// to it.
    pub fn start<'a>(
        objects: impl IntoIterator<Item = (&'a str, Value)>,
    ) -> (FakeApi, kube::Client) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = Arc::new(Mutex::new(State {
            objects: objects
                .into_iter()
                .map(|(p, o)| (p.to_string(), o))
                .collect(),
            ..State::default()
        }));
        let (tx, requests) = watch::channel(0);
        let s = state.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                let method = request.method().to_string();
                let uri = request.uri().clone();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let (code, answer) = {
                    let mut st = s.lock();
                    st.seen.push(Seen {
                        method: method.clone(),
                        uri: uri.to_string(),
                        body: body.clone(),
                    });
                    st.answer(&method, uri.path(), &body)
                };
                tx.send_modify(|n| *n += 1);
                reply.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap_or_default()))
                        .expect("a response"),
                );
            }
        });
        (
            FakeApi { state, requests },
            kube::Client::new(service, "default"),
        )
    }

    /// Answers every request with this status code (None: behave again).
    pub fn fail_with(&self, code: Option<u16>) {
        self.state.lock().fail_with = code;
    }

    /// The requests since the last `take`, in order.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state.lock().seen)
    }

    /// The requests since the last `take`, left in place.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().seen.clone()
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        self.state.lock().objects.get(path).cloned()
    }

    pub fn insert(&self, path: &str, object: Value) {
        self.state.lock().objects.insert(path.to_string(), object);
    }

    /// Waits (at most `limit`) for a request matching `pred` since the last
    /// `take`; panics naming `what` and every request seen otherwise.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Seen) -> bool,
    ) -> Seen {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.requests.borrow_and_update();
            if let Some(found) = self.state.lock().seen.iter().find(|s| pred(s)) {
                return found.clone();
            }
            let changed = tokio::time::timeout_at(deadline, self.requests.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                panic!("timed out waiting for {what}: {:?}", self.requests());
            }
        }
    }
}
