//! A deliberately bad translator, for the host's fault tests.
//!
//! Roots are Ingresses (it also declares Services as watched). What it does
//! is chosen per Ingress by the annotation `isobar.dev/fault`:
//!
//! | value             | behaviour                                                        |
//! |-------------------|------------------------------------------------------------------|
//! | *(absent)*        | a good fragment: prefix `/` on `ingress_http` (8080) for the first rule's host (`*` if none), forwarding to the first path's `service:port.number` |
//! | `loop`            | never returns (the host's deadline must stop it)                 |
//! | `oom`             | allocates and touches memory until allocation fails (a trap)      |
//! | `trap`            | panics, which in Wasm is a trap                                  |
//! | `missing-backend` | forwards to Service `does-not-exist` port 80, *without* a diagnostic (the host must notice) |
//! | `error`           | returns `Err(Error { reason: "Injected", .. })`                  |
//! | `log-flood`       | logs `isobar.dev/fault-log-count` messages (default 10000), then behaves as absent |
//! | `sleep`           | `std::thread::sleep(5 s)`, then behaves as absent (the deadline must hold through a blocking host call) |
//! | `nap`             | `std::thread::sleep(10 ms)`, then behaves as absent (a wait within the deadline is fine) |
//! | `busy-poll`       | zero-length sleeps until 5 s have passed on the monotonic clock    |
//! | `clock`           | `Err` with reason `Sandbox`: the wall clock's seconds and how far the monotonic clock moved over a 1 ms sleep |
//! | `random`          | `Err` with reason `Sandbox`: a hash keyed by std's random state    |
//!
//! Any other value is an `Err` with reason `UnknownFault`. Only `absent`,
//! `missing-backend`, `error` and `log-flood` are exercised natively: the
//! others would hang, exhaust or abort the test process.

use isobar_guest::k8s_openapi::api::core::v1::Service;
use isobar_guest::k8s_openapi::api::networking::v1::Ingress;
use isobar_guest::prelude::*;

pub const FAULT_ANNOTATION: &str = "isobar.dev/fault";
pub const LOG_COUNT_ANNOTATION: &str = "isobar.dev/fault-log-count";
pub const DEFAULT_LOG_COUNT: u32 = 10_000;
pub const LISTENER: &str = "ingress_http";
pub const PORT: u16 = 8080;

pub struct FaultsTranslator;

impl Translator for FaultsTranslator {
    fn describe() -> PluginInfo {
        PluginInfo::new("faults", env!("CARGO_PKG_VERSION"))
            .root::<Ingress>()
            .watch::<Service>()
    }

    fn translate(root: &Object, _store: &dyn Store) -> Result<Fragment, Error> {
        let ingress: Ingress = root.parse()?;
        let annotation = |key: &str| {
            ingress
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(String::as_str)
        };
        match annotation(FAULT_ANNOTATION) {
            None => good(root, &ingress),
            Some("loop") => endless_loop(),
            Some("oom") => exhaust_memory(),
            Some("trap") => panic!("injected trap in {}", root.display_name()),
            Some("missing-backend") => Ok(single_route(
                &first_host(&ingress),
                Backend::service(&root.namespace, "does-not-exist", 80),
            )),
            Some("error") => Err(Error::new(
                "Injected",
                format!("injected error for {}", root.display_name()),
            )),
            Some("log-flood") => {
                let count = annotation(LOG_COUNT_ANNOTATION)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(DEFAULT_LOG_COUNT);
                for i in 0..count {
                    isobar_guest::log::info(format!(
                        "log flood {i}/{count} from {}: the host should cap or sample this",
                        root.display_name()
                    ));
                }
                good(root, &ingress)
            }
            Some("sandbox") => Err(Error::new("Sandbox", probe_sandbox())),
            Some("sleep") => {
                std::thread::sleep(std::time::Duration::from_secs(5));
                good(root, &ingress)
            }
            Some("nap") => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                good(root, &ingress)
            }
            Some("busy-poll") => {
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_secs(5) {
                    std::thread::sleep(std::time::Duration::ZERO);
                }
                good(root, &ingress)
            }
            Some("clock") => Err(Error::new("Sandbox", probe_clock())),
            Some("random") => Err(Error::new("Sandbox", probe_random())),
            Some(other) => Err(Error::new(
                "UnknownFault",
                format!("{FAULT_ANNOTATION}={other:?} is not a known fault"),
            )),
        }
    }
}

/// The well-behaved translation.
fn good(root: &Object, ingress: &Ingress) -> Result<Fragment, Error> {
    let first_path = ingress
        .spec
        .iter()
        .flat_map(|spec| spec.rules.iter().flatten())
        .flat_map(|rule| rule.http.iter().flat_map(|http| &http.paths))
        .next();
    let Some(path) = first_path else {
        return Ok(Fragment::new());
    };
    let service =
        path.backend.service.as_ref().ok_or_else(|| {
            Error::new("Unsupported", "the first path's backend is not a Service")
        })?;
    let port = service
        .port
        .as_ref()
        .and_then(|p| p.number)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| Error::new("Unsupported", "the first path's backend has no port number"))?;
    Ok(single_route(
        &first_host(ingress),
        Backend::service(&root.namespace, &service.name, port),
    ))
}

fn first_host(ingress: &Ingress) -> String {
    ingress
        .spec
        .as_ref()
        .and_then(|spec| spec.rules.as_ref()?.first()?.host.clone())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "*".to_owned())
}

fn single_route(domain: &str, backend: Backend) -> Fragment {
    Fragment::new()
        .with_listener(Listener::http(LISTENER, PORT))
        .with_virtual_host(
            VirtualHost::new(LISTENER, domain)
                .with_route(Route::forward(RouteMatch::prefix("/"), backend)),
        )
}

/// Spins forever; `black_box` keeps the loop from being optimised into
/// something the host's epoch checks might not see.
fn endless_loop() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Grows the heap 1 MiB at a time, writing every page so the memory is
/// really committed, until the allocator gives up (an abort, i.e. a trap).
fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        hoard.push(std::hint::black_box(chunk));
    }
}

#[cfg(target_arch = "wasm32")]
isobar_guest::v0_1::export_translator!(FaultsTranslator);

/// What the plugin sees of time: `wall=<seconds since the epoch>
/// slept=<nanoseconds the monotonic clock moved over a 1 ms sleep>`.
fn probe_clock() -> String {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let before = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(1));
    let slept = before.elapsed().as_nanos();
    format!("wall={wall} slept={slept}")
}

/// What the plugin sees of randomness: a hash keyed by std's random state
/// (drawn from `wasi:random`), `random=<hex>`.
fn probe_random() -> String {
    use std::hash::BuildHasher;
    let hash = std::collections::hash_map::RandomState::new().hash_one(42u64);
    format!("random={hash:016x}")
}

/// What the sandbox lets the plugin see: environment variables, the
/// filesystem root, a granted directory, and the network. The host's tests
/// read this report to prove the defaults deny everything.
fn probe_sandbox() -> String {
    let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    let root = match std::fs::read_dir("/") {
        Ok(entries) => format!("fs=/:{}", entries.count()),
        Err(_) => "fs=denied".to_string(),
    };
    let granted = match std::fs::read_to_string("/granted/hello.txt") {
        Ok(text) => format!("granted={}", text.trim()),
        Err(_) => "granted=denied".to_string(),
    };
    let net = match std::net::TcpStream::connect("127.0.0.1:9") {
        Ok(_) => "net=open".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "net=reachable".to_string(),
        Err(_) => "net=denied".to_string(),
    };
    format!("env=[{}] {root} {granted} {net}", env.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(fault: Option<&str>) -> Object {
        let annotations = match fault {
            Some(f) => json!({FAULT_ANNOTATION: f, LOG_COUNT_ANNOTATION: "25"}),
            None => json!({}),
        };
        Object::from_json(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"namespace": "ns", "name": "i", "annotations": annotations},
            "spec": {"rules": [{"host": "a.example.com", "http": {"paths": [
                {"path": "/x", "pathType": "Prefix",
                 "backend": {"service": {"name": "web", "port": {"number": 8080}}}}
            ]}}]},
        }))
        .unwrap()
    }

    fn route_backend(fragment: &Fragment) -> &Backend {
        assert_eq!(fragment.listeners, [Listener::http(LISTENER, PORT)]);
        let vh = &fragment.virtual_hosts[0];
        assert_eq!(
            (vh.listener.as_str(), vh.domain.as_str()),
            (LISTENER, "a.example.com")
        );
        assert_eq!(vh.routes[0].matches, RouteMatch::prefix("/"));
        match &vh.routes[0].action {
            RouteAction::Forward(backends) => &backends[0].backend,
            other => panic!("not a forward: {other:?}"),
        }
    }

    #[test]
    fn describe() {
        let info = FaultsTranslator::describe();
        assert_eq!(info.name, "faults");
        assert_eq!(info.roots, [KindRef::of::<Ingress>()]);
        assert_eq!(
            info.watches,
            [KindRef::of::<Ingress>(), KindRef::of::<Service>()]
        );
    }

    #[test]
    fn no_fault_is_a_good_fragment() {
        let fragment = FaultsTranslator::translate(&ingress(None), &MemoryStore::new()).unwrap();
        assert_eq!(
            route_backend(&fragment),
            &Backend::service("ns", "web", 8080)
        );
        assert!(fragment.diagnostics.is_empty());
    }

    #[test]
    fn missing_backend_has_no_diagnostic() {
        let root = ingress(Some("missing-backend"));
        let fragment = FaultsTranslator::translate(&root, &MemoryStore::new()).unwrap();
        assert_eq!(
            route_backend(&fragment),
            &Backend::service("ns", "does-not-exist", 80)
        );
        assert!(fragment.diagnostics.is_empty());
    }

    #[test]
    fn error_and_unknown_faults() {
        let store = MemoryStore::new();
        let err = FaultsTranslator::translate(&ingress(Some("error")), &store).unwrap_err();
        assert_eq!(err.reason, "Injected");
        let err = FaultsTranslator::translate(&ingress(Some("nope")), &store).unwrap_err();
        assert_eq!(err.reason, "UnknownFault");
    }

    #[test]
    fn log_flood_logs_then_succeeds() {
        let store = MemoryStore::new();
        let (result, logs) = isobar_guest::log::capture(|| {
            FaultsTranslator::translate(&ingress(Some("log-flood")), &store)
        });
        assert_eq!(route_backend(&result.unwrap()).name, "web");
        assert_eq!(logs.len(), 25);
    }

    #[test]
    #[should_panic(expected = "injected trap")]
    fn trap_panics() {
        let _ = FaultsTranslator::translate(&ingress(Some("trap")), &MemoryStore::new());
    }
}
