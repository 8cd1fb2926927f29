//! systemd integration of `vipd run` (sd_notify(3)): readiness, status text and the watchdog. Outside
//! systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! - `READY=1` is sent by the data-path thread on its first turn: the config is loaded, both interfaces
//!   are open and the loop is serving. `Type=notify` units are "started" only then.
//! - `WATCHDOG=1` is sent by the data-path thread, between batches, every half `WatchdogSec`: a data path
//!   stuck in a batch (not only a dead process) stops the pings, and systemd restarts the daemon.
//! - `STOPPING=1` when a stop was asked for.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// What the data-path thread tells the service manager.
pub struct Service {
    /// Half the watchdog timeout, when systemd set one for this process.
    ping_every: Option<Duration>,
    next_ping: Instant,
    ready: bool,
}

impl Service {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (left in the environment).
    pub fn from_env() -> Service {
        let mut usec = 0;
        let ping_every = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec / 2))
            .filter(|d| !d.is_zero());
        if let Some(every) = ping_every {
            tracing::info!(every = ?every, "systemd watchdog: the data path pings it");
        }
        Service {
            ping_every,
            next_ping: Instant::now(),
            ready: false,
        }
    }

    /// Called by the data-path thread on each turn of its loop: readiness once, then the watchdog when due.
    pub fn turn(&mut self, now: Instant) {
        if !self.ready {
            self.ready = true;
            notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
        }
        if let Some(every) = self.ping_every
            && now >= self.next_ping
        {
            notify(&[NotifyState::Watchdog]);
            self.next_ping = now + every;
        }
    }

    /// The daemon is stopping.
    pub fn stopping(&self) {
        notify(&[NotifyState::Stopping]);
    }
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!("sd_notify: {e}");
    }
}
