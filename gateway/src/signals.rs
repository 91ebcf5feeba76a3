//! Signals that arrive while the gateway is starting.
//!
//! `SIGHUP` (reload) and `SIGUSR1` (reopen the access log) end a process that
//! has no handler for them. The services that listen for them are pingora
//! background services, started only after the listeners are bound and the
//! runtimes built: a `systemctl reload` or a logrotate `postrotate` in that
//! window would kill the gateway. [`install`] runs first thing in `run` and
//! records such a signal instead; each service acts on it once it listens.
//!
//! The handlers only store to an atomic (async-signal-safe) and stay installed
//! for the life of the process, beside the services' own (signal-hook-registry
//! runs every handler registered for a signal).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGUSR1};

/// What came before the services listened.
#[derive(Clone, Default)]
pub struct EarlySignals {
    /// `SIGHUP`: reload the configuration.
    hangup: Arc<AtomicBool>,
    /// `SIGUSR1` or `SIGHUP`: reopen the access log.
    reopen: Arc<AtomicBool>,
}

impl EarlySignals {
    /// Whether a `SIGHUP` came since [`install`] (or the last call); clears it.
    /// Call it after the service's own listener is in place, so none is missed.
    pub fn take_hangup(&self) -> bool {
        self.hangup.swap(false, Ordering::AcqRel)
    }

    /// Whether a `SIGUSR1` or `SIGHUP` came since [`install`] (or the last
    /// call); clears it. Same rule as [`EarlySignals::take_hangup`].
    pub fn take_reopen(&self) -> bool {
        self.reopen.swap(false, Ordering::AcqRel)
    }
}

/// Installs the recording handlers.
pub fn install() -> io::Result<EarlySignals> {
    let early = EarlySignals::default();
    signal_hook::flag::register(SIGHUP, early.hangup.clone())?;
    signal_hook::flag::register(SIGHUP, early.reopen.clone())?;
    signal_hook::flag::register(SIGUSR1, early.reopen.clone())?;
    Ok(early)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_hangup_is_recorded_once_and_the_process_lives() {
        let early = install().unwrap();
        assert!(!early.take_hangup());
        signal_hook::low_level::raise(SIGHUP).unwrap();
        assert!(early.take_hangup());
        assert!(!early.take_hangup());
        assert!(early.take_reopen());
        signal_hook::low_level::raise(SIGUSR1).unwrap();
        assert!(early.take_reopen());
        assert!(!early.take_hangup());
    }
}
