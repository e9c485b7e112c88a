//! The process's lifecycle flags: readiness, shutdown, the process-wide in-flight count
//! (woken at zero), start time and reload counters.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Condvar, Mutex,
    },
    time::{Instant, SystemTime},
};

use serde::Serialize;
use tokio::sync::Notify;

/// Counters of reload outcomes (also kept for metrics).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReloadStats {
    pub succeeded: u64,
    pub failed: u64,
    pub last_success_unix: Option<f64>,
    pub last_error: Option<String>,
}

/// Lifecycle flags and counters.
#[derive(Debug)]
pub struct Process {
    ready: AtomicBool,
    shutting_down: AtomicBool,
    /// The listening sockets went to an upgraded process, which owns `state_file` now.
    handed_off: AtomicBool,
    active: AtomicU64,
    /// Woken when the process-wide in-flight count drops to zero.
    pub idle: Notify,
    pub started: Instant,
    /// Unix time of the start.
    pub started_unix: f64,
    reloads: Mutex<ReloadStats>,
    /// Hash of the file text a reload last refused (a watch event does not retry it).
    refused_hash: AtomicU64,
    /// Why the process should end, once decided (read by `server::run`, which returns it
    /// to `main`: the only place that exits).
    exit: (Mutex<Option<ExitReason>>, Condvar),
}

/// Why tidegate ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// Shutdown began and nothing is in flight any more (exit 0).
    Idle,
    /// `shutdown.grace` ran out with work still in flight (exit 1).
    GraceExpired { still_in_flight: u64 },
    /// pingora's server loop returned (fast stop, or the end of its own shutdown; exit 0).
    Stopped,
    /// Something the process cannot run without failed (exit 1).
    Failed(String),
}

impl ExitReason {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            ExitReason::Idle | ExitReason::Stopped => 0,
            ExitReason::GraceExpired { .. } | ExitReason::Failed(_) => 1,
        }
    }
}

impl Process {
    /// One more request in flight (see `state::ActiveGuard`).
    pub(super) fn enter(&self) {
        // Relaxed: nothing is published through the increment.
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// One request less; wakes shutdown waiters at zero.
    pub(super) fn leave(&self) {
        // AcqRel: order the last decrement before a shutdown waiter re-reads zero.
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// The upgraded process takes over (its state file writes win from now on).
    pub fn hand_off(&self) {
        // Relaxed: a flag read by the state file writer; nothing is published through it.
        self.handed_off.store(true, Ordering::Relaxed);
    }

    /// Whether [`Process::hand_off`] happened.
    pub fn is_handed_off(&self) -> bool {
        self.handed_off.load(Ordering::Relaxed)
    }

    pub(super) fn new() -> Self {
        Self {
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            handed_off: AtomicBool::new(false),
            active: AtomicU64::new(0),
            idle: Notify::new(),
            started: Instant::now(),
            started_unix: unix_now(),
            reloads: Mutex::new(ReloadStats::default()),
            refused_hash: AtomicU64::new(0),
            exit: (Mutex::new(None), Condvar::new()),
        }
    }

    /// Ask for the process to end (the first reason wins).
    pub fn request_exit(&self, why: ExitReason) {
        let mut slot = self.exit.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(why);
            self.exit.1.notify_all();
        }
    }

    /// Block until an exit is requested.
    pub fn wait_exit(&self) -> ExitReason {
        let mut slot = self.exit.0.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(why) = slot.clone() {
                return why;
            }
            slot = self.exit.1.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Mark the proxy ready (listeners verified) or not.
    pub fn set_ready(&self, on: bool) {
        self.ready.store(on, Ordering::Release);
    }

    /// Ready for traffic: listeners up and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_shutting_down()
    }

    /// Enter shutdown (readiness fails from now on).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Process-wide requests in flight (including streams).
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// Reload outcome counters.
    pub fn reloads(&self) -> ReloadStats {
        self.reloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remember the hash of a refused file.
    pub fn set_refused_hash(&self, h: u64) {
        self.refused_hash.store(h, Ordering::Relaxed);
    }

    /// Hash of the file a reload last refused (0: none).
    pub fn refused_hash(&self) -> u64 {
        self.refused_hash.load(Ordering::Relaxed)
    }

    /// Count a reload outcome.
    pub fn record_reload(&self, result: Result<(), String>) {
        let mut r = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                r.succeeded += 1;
                r.last_success_unix = Some(unix_now());
                r.last_error = None;
            }
            Err(e) => {
                r.failed += 1;
                r.last_error = Some(e);
            }
        }
    }
}

/// Whether a process with this pid exists (for files named after a pid).
pub fn is_running(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    unix(SystemTime::now())
}

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
