//! The access log's writer: one thread that takes queued lines every 10 ms and writes them
//! with one `write` to the destination of the published config (stdout by default, so
//! `docker logs` sees it; tidegate's own events stay on stderr). A file is opened for
//! appending and opened again on SIGUSR1 (logrotate's `postrotate`, as nginx does) or when a
//! reload names another destination. The thread may block on a slow destination; the
//! workers never do: the queue is bounded and a line that does not fit is dropped and
//! counted (`tidegate_access_log_lines_total{result="dropped"}`).

use std::{
    fs::File,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    sync::{
        mpsc::{Receiver, TryRecvError},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{config::spec::LogDest, state::AppState};

/// Bytes written with one `write` at most.
const BATCH_BYTES: usize = 256 * 1024;

/// Start the writer thread. SIGUSR1 is ignored until pingora's loop installs its handler, so
/// an early one does not end the process.
pub fn start(state: &Arc<AppState>) -> std::io::Result<()> {
    // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    let Some(rx) = state.access_log.take_receiver() else {
        return Ok(());
    };
    let state = state.clone();
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || run(&state, &rx))
        .map(drop)
}

/// Wait (at most `limit`) until every queued line was written: at exit, so the last
/// requests' lines (shutdown ends) are not lost.
pub fn flush(state: &AppState, limit: Duration) {
    let until = Instant::now() + limit;
    while !state.access_log.idle() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Where lines go now.
enum Out {
    Stdout,
    Stderr,
    File(File),
    /// A file that could not be opened: lines are counted lost until it can.
    Missing,
}

fn open(dest: &LogDest) -> Out {
    match dest {
        LogDest::Stdout => Out::Stdout,
        LogDest::Stderr => Out::Stderr,
        LogDest::File(p) => match std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(p)
        {
            Ok(f) => Out::File(f),
            Err(e) => {
                tracing::error!(path = %p.display(), error = %e, "access log: cannot open the file; lines are dropped until it can be (SIGUSR1 or a reload tries again)");
                Out::Missing
            }
        },
    }
}

/// Bytes a pipe writes whole (POSIX `PIPE_BUF` on Linux): a standard stream shared with
/// another writer (`2>&1`, the journal, the old and new process during an upgrade) gets
/// whole lines as long as each `write` is at most this long.
const PIPE_BUF: usize = 4096;

/// `buf` in writes of whole lines of at most [`PIPE_BUF`] bytes (a longer line alone).
fn write_lines(w: &mut impl Write, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let window = &buf[..buf.len().min(PIPE_BUF)];
        let end = match window.iter().rposition(|b| *b == b'\n') {
            Some(i) if buf.len() > PIPE_BUF => i + 1,
            _ if buf.len() <= PIPE_BUF => buf.len(),
            // One line over PIPE_BUF: up to its end.
            _ => buf
                .iter()
                .position(|b| *b == b'\n')
                .map_or(buf.len(), |i| i + 1),
        };
        w.write_all(&buf[..end])?;
        buf = &buf[end..];
    }
    w.flush()
}

fn write(out: &mut Out, buf: &[u8]) -> std::io::Result<()> {
    match out {
        Out::Stdout => write_lines(&mut std::io::stdout().lock(), buf),
        Out::Stderr => write_lines(&mut std::io::stderr().lock(), buf),
        Out::File(f) => f.write_all(buf),
        Out::Missing => Err(std::io::ErrorKind::NotFound.into()),
    }
}

/// How long the writer sleeps when the queue is empty. It never blocks on the channel: a
/// receiver parked there would make every worker's send a futex wake-up (a syscall and a
/// context switch per line); polling, the workers' sends are plain atomics and one `write`
/// carries every line of the last 10 ms.
const POLL: Duration = Duration::from_millis(10);

fn run(state: &AppState, rx: &Receiver<Vec<u8>>) {
    let log = &state.access_log;
    let (mut dest, mut changes) = log.dest();
    let mut out = open(&dest);
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut last_error: Option<Instant> = None;
    loop {
        buf.clear();
        let mut n = 0u64;
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    buf.extend_from_slice(&line);
                    n += 1;
                    if buf.len() >= BATCH_BYTES {
                        break;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let (now_dest, now_changes) = log.dest();
        if log.take_reopen() || now_changes != changes {
            (dest, changes) = (now_dest, now_changes);
            out = open(&dest);
        }
        if n == 0 {
            std::thread::sleep(POLL);
            continue;
        }
        match write(&mut out, &buf) {
            Ok(()) => log.record(n, true),
            Err(e) => {
                log.record(n, false);
                // One error line a minute at most: the destination may stay broken.
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    last_error = Some(Instant::now());
                    tracing::error!(error = %e, lines = n, "access log: write failed; lines dropped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_writes_are_whole_lines() {
        struct Writes(Vec<Vec<u8>>);
        impl Write for Writes {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.push(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut buf = Vec::new();
        for i in 0..100 {
            buf.extend_from_slice(format!("line {i} {}\n", "x".repeat(i * 3)).as_bytes());
        }
        buf.extend_from_slice(&[b'y'; 9000]);
        buf.push(b'\n');
        buf.extend_from_slice(b"last\n");
        let mut w = Writes(Vec::new());
        write_lines(&mut w, &buf).unwrap();
        assert_eq!(w.0.concat(), buf);
        for chunk in &w.0 {
            assert_eq!(chunk.last(), Some(&b'\n'));
            assert!(chunk.len() <= PIPE_BUF || !chunk[..chunk.len() - 1].contains(&b'\n'));
        }
    }
}
