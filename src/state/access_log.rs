//! The access log's queue: workers hand finished lines to a bounded channel without ever
//! waiting; a line that does not fit (the writer is behind: a blocked pipe, a slow disk) is
//! dropped and counted. The writer thread (`services::access_log`) owns the destination; it
//! learns of a new one (reload) or a reopen request (SIGUSR1) through this struct.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
    Mutex,
};

use crate::{
    access_log::{self, Record},
    config::spec::{LogDest, LogFormat},
};

/// Lines queued at most: about 1.6 MiB of typical JSON lines, a few seconds of a busy proxy
/// (a file or a reading pipe takes well over 100,000 lines a second).
pub const QUEUE_LINES: usize = 4096;

/// The queue between workers and the writer.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    rx: Mutex<Option<Receiver<Vec<u8>>>>,
    /// Lines handed to the queue.
    queued: AtomicU64,
    /// Lines not queued (queue full).
    full: AtomicU64,
    /// Lines the writer could not write (write error, no destination).
    failed: AtomicU64,
    /// Lines written.
    written: AtomicU64,
    /// The destination of the published config, and a counter bumped when it changes.
    dest: Mutex<LogDest>,
    dest_changes: AtomicU64,
    reopen: AtomicBool,
}

impl Default for AccessLog {
    fn default() -> Self {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            queued: AtomicU64::new(0),
            full: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            dest: Mutex::new(LogDest::Stdout),
            dest_changes: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
        }
    }
}

impl AccessLog {
    /// Queue one line; never waits.
    pub fn submit(&self, line: Vec<u8>) {
        match self.tx.try_send(line) {
            // Relaxed: statistics (the flush at exit compares them after the writer is idle).
            Ok(()) => self.queued.fetch_add(1, Ordering::Relaxed),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.full.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// Format `record` and queue it.
    pub fn write(&self, fmt: LogFormat, record: &Record<'_>) {
        let mut line = Vec::with_capacity(640);
        access_log::format(fmt, record, &mut line);
        self.submit(line);
    }

    /// The receiving end, once (for the writer thread).
    pub fn take_receiver(&self) -> Option<Receiver<Vec<u8>>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Follow the published config's destination.
    pub fn set_dest(&self, dest: &LogDest) {
        let mut d = self.dest.lock().unwrap_or_else(|e| e.into_inner());
        if *d != *dest {
            *d = dest.clone();
            self.dest_changes.fetch_add(1, Ordering::Release);
        }
    }

    /// The destination and its change counter.
    pub fn dest(&self) -> (LogDest, u64) {
        let d = self.dest.lock().unwrap_or_else(|e| e.into_inner());
        (d.clone(), self.dest_changes.load(Ordering::Acquire))
    }

    /// Ask the writer to reopen its file (SIGUSR1).
    pub fn request_reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Whether a reopen was asked for since the last call.
    pub fn take_reopen(&self) -> bool {
        self.reopen.swap(false, Ordering::AcqRel)
    }

    /// The writer wrote `n` lines, or lost them.
    pub fn record(&self, n: u64, ok: bool) {
        let c = if ok { &self.written } else { &self.failed };
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Lines written and lines dropped (not queued, or not written) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.full.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed),
        )
    }

    /// Whether the writer has handled every queued line.
    pub fn idle(&self) -> bool {
        let queued = self.queued.load(Ordering::Relaxed);
        self.written.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) >= queued
    }
}
