//! What a plugin sees of time, and how long it may wait.
//!
//! Epoch interruption stops Wasm code, not a host call: a guest that called
//! `sleep(5 s)` under a 100 ms deadline blocked the calling thread (the
//! controller's) for the whole 5 s inside `wasi:io/poll`. Here the
//! monotonic clock is the host's own (`wasi:clocks/monotonic-clock` is
//! shadowed in the linker), and every wait a guest subscribes to is checked
//! against what is left of its call's deadline: a wait that would end past
//! it traps at once as the plugin's timeout.
//!
//! By default the clock is virtual: it starts at zero, stands still while
//! the guest computes, and moves only by the waits the guest asks for,
//! which are over at once. Translation stays a function of its inputs (a
//! plugin cannot tell what time it is, and a backoff loop still
//! terminates); a spin on `now()` never ends and the epoch deadline stops
//! it. Granted real clocks (`Grants::clocks`), waits really wait, within
//! the deadline.

use std::time::{Duration, Instant};

use wasmtime::component::Resource;
use wasmtime_wasi::HostWallClock;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::call::CallState;

/// The clock of one call.
pub(super) struct CallClock {
    /// Real time (granted) or virtual.
    real: bool,
    started: Instant,
    deadline: Duration,
    /// Virtual mode: the time the guest's waits have added.
    waited: Duration,
    /// A wait was refused because it ended past the deadline.
    pub deadline_hit: bool,
}

impl CallClock {
    pub fn new(real: bool, deadline: Duration) -> Self {
        CallClock {
            real,
            started: Instant::now(),
            deadline,
            waited: Duration::ZERO,
            deadline_hit: false,
        }
    }

    /// Nanoseconds since the call started: real, or virtual waits only.
    fn now(&self) -> u64 {
        let elapsed = if self.real {
            self.started.elapsed()
        } else {
            self.waited
        };
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    /// A wait of `nanos`: refused when it would end past the deadline
    /// (counting the call's real time and its virtual waits).
    fn wait(&mut self, nanos: u64) -> wasmtime::Result<Option<Duration>> {
        let wait = Duration::from_nanos(nanos);
        let spent = self.started.elapsed() + self.waited;
        if spent.saturating_add(wait) > self.deadline {
            self.deadline_hit = true;
            return Err(wasmtime::Error::msg(format!(
                "the plugin asked to wait {wait:?} with {:?} of its {:?} deadline left",
                self.deadline.saturating_sub(spent),
                self.deadline
            )));
        }
        if self.real {
            Ok(Some(wait))
        } else {
            self.waited += wait;
            Ok(None)
        }
    }
}

/// A wait that is over as soon as it is polled (virtual time).
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// A real wait, already checked against the deadline.
struct Sleep(tokio::time::Instant);

#[wasmtime_wasi::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.0).await
    }
}

impl CallState {
    fn subscribe_wait(&mut self, nanos: u64) -> wasmtime::Result<Resource<DynPollable>> {
        match self.clock.wait(nanos)? {
            None => {
                let r = self.table.push(Ready)?;
                subscribe(&mut self.table, r)
            }
            Some(wait) => {
                let r = self.table.push(Sleep(tokio::time::Instant::now() + wait))?;
                subscribe(&mut self.table, r)
            }
        }
    }
}

impl monotonic_clock::Host for CallState {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        Ok(self.clock.now())
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        Ok(1)
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let nanos = when.saturating_sub(self.clock.now());
        self.subscribe_wait(nanos)
    }

    fn subscribe_duration(
        &mut self,
        duration: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.subscribe_wait(duration)
    }
}

/// The wall clock of a plugin without the grant: the Unix epoch, always.
pub(super) struct Frozen;

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// Replaces WASI's monotonic clock with the call's own (see the module
/// doc). Must follow `wasmtime_wasi::p2::add_to_linker_sync`.
pub(super) fn shadow_in_linker(
    linker: &mut wasmtime::component::Linker<CallState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<CallState, wasmtime::component::HasSelf<CallState>>(
        linker,
        |s| s,
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
