//! Logging through the host (`isobar:plugin/log`).
//!
//! Inside a component every message goes to the host, which tags it with the
//! plugin and the root being translated. Natively (tests, benchmarks) there
//! is no host: messages are collected by [`capture`] when it is active, and
//! otherwise `warn` and `error` go to stderr and the rest is dropped.

pub use crate::bindings::isobar::plugin::log::Level;

/// Logs one message at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    emit(level, message.as_ref());
}

pub fn trace(message: impl AsRef<str>) {
    emit(Level::Trace, message.as_ref());
}

pub fn debug(message: impl AsRef<str>) {
    emit(Level::Debug, message.as_ref());
}

pub fn info(message: impl AsRef<str>) {
    emit(Level::Info, message.as_ref());
}

pub fn warn(message: impl AsRef<str>) {
    emit(Level::Warn, message.as_ref());
}

pub fn error(message: impl AsRef<str>) {
    emit(Level::Error, message.as_ref());
}

/// Where messages go inside a component: the `log` import of the contract
/// the component is exported through, set by the export glue. Through a
/// function pointer, so a component links only its own contract's import.
#[cfg(target_arch = "wasm32")]
static SINK: std::sync::OnceLock<fn(Level, &str)> = std::sync::OnceLock::new();

#[cfg(target_arch = "wasm32")]
fn emit(level: Level, message: &str) {
    if let Some(sink) = SINK.get() {
        sink(level, message);
    }
}

/// Contract 0.2's `log` import.
#[cfg(target_arch = "wasm32")]
pub(crate) fn to_host(level: Level, message: &str) {
    crate::bindings::isobar::plugin::log::log(level, message);
}

/// Routes messages to `sink` and sends the panic message to the host
/// before the panic becomes a trap, so the host can report why the plugin
/// trapped, not only that it did.
#[cfg(target_arch = "wasm32")]
pub(crate) fn install(sink: fn(Level, &str)) {
    let _ = SINK.set(sink);
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            emit(Level::Error, &format!("plugin panicked: {info}"));
        }));
    });
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::Level;
    use std::cell::RefCell;

    thread_local! {
        pub(super) static CAPTURED: RefCell<Option<Vec<(Level, String)>>> =
            const { RefCell::new(None) };
    }

    pub(super) fn emit(level: Level, message: &str) {
        let captured = CAPTURED.with_borrow_mut(|captured| match captured {
            Some(messages) => {
                messages.push((level, message.to_owned()));
                true
            }
            None => false,
        });
        if !captured && matches!(level, Level::Warn | Level::Error) {
            eprintln!("[plugin {level:?}] {message}");
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
use native::emit;

/// Runs `f` and returns what it logged on this thread (native builds only).
/// Nested captures each see only their own messages.
#[cfg(not(target_arch = "wasm32"))]
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<(Level, String)>) {
    let outer = native::CAPTURED.replace(Some(Vec::new()));
    // Restore the outer capture even if `f` panics (a test may expect it).
    struct Restore(Option<Option<Vec<(Level, String)>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(outer) = self.0.take() {
                native::CAPTURED.set(outer);
            }
        }
    }
    let mut restore = Restore(Some(outer));
    let result = f();
    let outer = restore.0.take().expect("set above");
    let messages = native::CAPTURED.replace(outer).unwrap_or_default();
    (result, messages)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn capture_collects_and_nests() {
        let ((), outer) = capture(|| {
            info("one");
            let ((), inner) = capture(|| warn("two"));
            assert_eq!(inner, vec![(Level::Warn, "two".to_owned())]);
            debug("three");
        });
        assert_eq!(
            outer,
            vec![
                (Level::Info, "one".to_owned()),
                (Level::Debug, "three".to_owned())
            ]
        );
    }
}
