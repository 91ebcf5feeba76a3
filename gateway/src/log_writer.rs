//! Where access log lines go: a background writer thread, batched writes, and a
//! file that can be reopened for log rotation.
//!
//! - The writer thread (`tracing-appender`) is started by the first line, not at
//!   start-up: pingora forks when it daemonizes (`-d`), and a thread started
//!   before the fork does not exist in the daemon (its lines were lost).
//! - That thread writes every queued line, then flushes once the queue is
//!   empty; behind a `BufWriter` this is one `write(2)` per batch instead of one
//!   per request.
//! - `SIGUSR1` (nginx's `reopen`) and `SIGHUP` make the file be opened again by
//!   path before the next line, so logrotate can move it away (`create` mode,
//!   with `postrotate: kill -USR1`) and the gateway goes on in a new file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;

use crate::signals::EarlySignals;

/// Bytes gathered before a write when the queue holds more than one batch.
const BATCH: usize = 64 * 1024;

/// Opens (or creates) an access log file for appending. New files get mode
/// 0640: the log holds client addresses and user ids.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// An access log file that is reopened by path when asked.
pub struct LogFile {
    path: PathBuf,
    out: BufWriter<File>,
    reopen: Arc<AtomicBool>,
}

impl LogFile {
    pub fn new(path: PathBuf, file: File, reopen: Arc<AtomicBool>) -> Self {
        LogFile {
            path,
            out: BufWriter::with_capacity(BATCH, file),
            reopen,
        }
    }
}

impl LogFile {
    fn reopen(&mut self) -> io::Result<()> {
        // What is buffered belongs to the old file, which logrotate has moved.
        self.out.flush()?;
        match open_append(&self.path) {
            Ok(f) => self.out = BufWriter::with_capacity(BATCH, f),
            // The old file keeps the lines rather than losing them.
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot reopen the access log; still writing to the old file")
            }
        }
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.reopen.load(Ordering::Relaxed) && self.reopen.swap(false, Ordering::AcqRel) {
            self.reopen()?;
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The sink a writer thread will own once started.
pub enum Sink {
    Stdout,
    File(LogFile),
}

/// `MakeWriter` for the access log layer: starts the writer thread on first use.
#[derive(Clone)]
pub struct LazyWriter {
    inner: Arc<Lazy>,
}

struct Lazy {
    sink: Mutex<Option<Sink>>,
    writer: OnceLock<NonBlocking>,
    guard: Mutex<Option<WorkerGuard>>,
}

impl LazyWriter {
    pub fn new(sink: Sink) -> Self {
        LazyWriter {
            inner: Arc::new(Lazy {
                sink: Mutex::new(Some(sink)),
                writer: OnceLock::new(),
                guard: Mutex::new(None),
            }),
        }
    }

    /// Writes out what is queued and stops the writer thread (at shutdown).
    pub fn finish(&self) {
        // Dropping the guard flushes the queue and joins the thread.
        let guard = locked(&self.inner.guard).take();
        drop(guard);
    }

    fn writer(&self) -> &NonBlocking {
        self.inner.writer.get_or_init(|| {
            let sink = locked(&self.inner.sink).take();
            let (writer, guard) = match sink {
                Some(Sink::File(f)) => tracing_appender::non_blocking(f),
                Some(Sink::Stdout) | None => {
                    tracing_appender::non_blocking(BufWriter::with_capacity(BATCH, io::stdout()))
                }
            };
            *locked(&self.inner.guard) = Some(guard);
            // The writer is lossy when its queue is full (a request never waits
            // for the disk); what it dropped is counted for the metrics.
            let _ = DROPPED.set(writer.error_counter());
            writer
        })
    }
}

static DROPPED: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Access log lines dropped so far because the writer's queue was full.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// The lock even when a thread panicked holding it: the `Option`s behind these
/// locks are whole after any `take` or assignment, so nothing is half-written.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<'a> MakeWriter<'a> for LazyWriter {
    type Writer = NonBlocking;

    fn make_writer(&'a self) -> Self::Writer {
        self.writer().clone()
    }
}

/// Listens for `SIGUSR1` and `SIGHUP` and has the access log file reopened.
/// Runs with a stdout log too: `SIGUSR1` would otherwise end the process.
pub struct ReopenService {
    flag: Option<Arc<AtomicBool>>,
    /// A signal that came while the gateway was starting.
    early: EarlySignals,
}

impl ReopenService {
    pub fn new(flag: Option<Arc<AtomicBool>>, early: EarlySignals) -> Self {
        ReopenService { flag, early }
    }

    fn request_reopen(&self) {
        if let Some(flag) = &self.flag {
            flag.store(true, Ordering::Release);
            tracing::info!("access log will be reopened with its next line");
        }
    }
}

#[async_trait]
impl BackgroundService for ReopenService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (mut usr1, mut hup) = match (
            signal(SignalKind::user_defined1()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(u), Ok(h)) => (u, h),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGUSR1/SIGHUP: the access log cannot be reopened");
                return;
            }
        };
        // Both listen now: what came before is applied once.
        if self.early.take_reopen() {
            self.request_reopen();
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = usr1.recv() => {}
                _ = hup.recv() => {}
            }
            self.request_reopen();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_reopen_request_moves_the_next_lines_to_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let flag = Arc::new(AtomicBool::new(false));
        let mut log = LogFile::new(path.clone(), open_append(&path).unwrap(), flag.clone());
        log.write_all(b"one\n").unwrap();
        log.flush().unwrap();
        // logrotate: move the file away, then signal.
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.write_all(b"two\n").unwrap();
        flag.store(true, Ordering::Release);
        log.write_all(b"three\n").unwrap();
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        assert!(!flag.load(Ordering::Acquire));
    }

    #[test]
    fn lines_wait_in_the_buffer_until_the_batch_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let flag = Arc::new(AtomicBool::new(false));
        let mut log = LogFile::new(path.clone(), open_append(&path).unwrap(), flag);
        log.write_all(b"a\n").unwrap();
        log.write_all(b"b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        log.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
    }

    #[test]
    fn a_failed_reopen_keeps_writing_to_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("access.log");
        let flag = Arc::new(AtomicBool::new(false));
        let mut log = LogFile::new(path.clone(), open_append(&path).unwrap(), flag.clone());
        let moved = dir.path().join("moved");
        // The directory is gone: the path cannot be opened again.
        std::fs::rename(&sub, &moved).unwrap();
        flag.store(true, Ordering::Release);
        log.flush().unwrap();
        log.write_all(b"kept\n").unwrap();
        log.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(moved.join("access.log")).unwrap(),
            "kept\n"
        );
    }

    #[test]
    fn new_log_files_are_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        open_append(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "mode {mode:o}");
    }
}
