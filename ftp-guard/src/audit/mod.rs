//! The transfer audit log (`audit_log`, `audit_format`): one line per data transfer, the
//! FTP equivalent of an access log, for operators whose origin only ever sees the
//! gateway's address. [`format`] owns the line formats; here: the handle sessions log
//! through, and the writer thread.
//!
//! Sessions never wait for the log: a record goes into a bounded queue
//! ([`AuditLog::record`]); when the queue is full it is dropped, counted in the
//! `audit_dropped` metric, and the first drop is said in the process log. One thread
//! drains the queue into the file (buffered, flushed whenever the queue is empty) or
//! stderr, and reopens the file when told to ([`AuditLog::configure`], on SIGHUP: after
//! logrotate moved it).
mod format;
#[cfg(test)]
mod tests;

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write as _},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

pub use self::format::{TransferRecord, utc};
use crate::dataplane::DataEnd;

/// Records waiting for the writer at most: a burst of ends of transfers is absorbed, a
/// stuck disk is not waited for.
const QUEUE: usize = 4096;

/// How long a record waits for its data connection's bytes (the kernel path tells them a
/// few seconds after the connection closed); then it is written with 0 bytes.
const BYTES_WAIT: Duration = Duration::from_secs(60);

/// The line format (`audit_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// wu-ftpd's xferlog.
    Xferlog,
}

/// Where lines go (`audit_log`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditTarget {
    Stderr,
    /// Appended to; reopened on SIGHUP.
    File(PathBuf),
}

/// What the writer does: off (`None`), or a target and a format.
pub type AuditSettings = Option<(AuditTarget, AuditFormat)>;

enum Message {
    Record(Box<TransferRecord>),
    /// Open the new settings' target (a file again, after logrotate); the answer says
    /// whether it could.
    Configure(AuditSettings, oneshot::Sender<io::Result<()>>),
}

/// The sessions' side of the log: cheap to call, never blocks.
#[derive(Debug)]
pub struct AuditLog {
    queue: mpsc::Sender<Message>,
    enabled: AtomicBool,
    dropped: Counter,
    said_dropped: AtomicBool,
}

impl AuditLog {
    /// Opens `settings`' target and starts the writer thread; drops are counted in
    /// `dropped`.
    pub fn start(settings: AuditSettings, dropped: Counter) -> io::Result<AuditLog> {
        let output = Output::open(&settings)?;
        let (log, queue) = Self::with_queue(QUEUE, settings.is_some(), dropped);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_lines(queue, output))?;
        Ok(log)
    }

    fn with_queue(
        capacity: usize,
        enabled: bool,
        dropped: Counter,
    ) -> (AuditLog, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity);
        let log = AuditLog {
            queue: tx,
            enabled: AtomicBool::new(enabled),
            dropped,
            said_dropped: AtomicBool::new(false),
        };
        (log, rx)
    }

    /// Whether records are wanted (sessions skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Queues one record for the writer; a full queue drops it (counted).
    pub fn record(&self, record: TransferRecord) {
        if !self.enabled() {
            return;
        }
        if self
            .queue
            .try_send(Message::Record(Box::new(record)))
            .is_err()
        {
            self.dropped.inc();
            if !self.said_dropped.swap(true, Ordering::Relaxed) {
                warn!(
                    "audit log: the writer is behind; records are dropped (see the audit_dropped metric)"
                );
            }
        }
    }

    /// Queues `record` once `end` has told its data connection's bytes (at once without
    /// one: no data connection, or none to wait for). The wait is a task of its own.
    pub fn record_when_done(self: &Arc<Self>, mut record: TransferRecord, end: Option<DataEnd>) {
        let Some(end) = end else {
            return self.record(record);
        };
        let log = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(BYTES_WAIT, end).await {
                Ok(bytes) => record.bytes = bytes.unwrap_or_default(),
                Err(_) => warn!(
                    session = record.session,
                    command = %record.command,
                    secs = BYTES_WAIT.as_secs(),
                    "audit log: the data connection's bytes are not known yet; logged as 0"
                ),
            }
            log.record(record);
        });
    }

    /// Takes new settings (start and reload, SIGHUP): the file is opened again, so that a
    /// log moved away by logrotate is started anew. On error the writer keeps what it had.
    pub async fn configure(&self, settings: AuditSettings) -> io::Result<()> {
        let enabled = settings.is_some();
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Message::Configure(settings, tx))
            .await
            .map_err(|_| io::Error::other("the audit writer has stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("the audit writer has stopped"))??;
        self.enabled.store(enabled, Ordering::Relaxed);
        Ok(())
    }
}

/// The writer's end of the log.
enum Output {
    Off,
    Stderr(AuditFormat),
    File(BufWriter<File>, AuditFormat),
}

impl Output {
    fn open(settings: &AuditSettings) -> io::Result<Output> {
        Ok(match settings {
            None => Output::Off,
            Some((AuditTarget::Stderr, format)) => Output::Stderr(*format),
            Some((AuditTarget::File(path), format)) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("audit_log: {}: {e}", path.display()))
                    })?;
                Output::File(BufWriter::new(file), *format)
            }
        })
    }

    fn write(&mut self, record: &TransferRecord) -> io::Result<()> {
        let line = |format: &AuditFormat| match format {
            AuditFormat::Json => record.to_json(),
            AuditFormat::Xferlog => record.to_xferlog(),
        };
        match self {
            Output::Off => Ok(()),
            // One write per line: lines from other threads' logging never split it.
            Output::Stderr(format) => {
                io::stderr().write_all(format!("{}\n", line(format)).as_bytes())
            }
            Output::File(file, format) => writeln!(file, "{}", line(format)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::File(file, _) => file.flush(),
            _ => Ok(()),
        }
    }
}

/// The writer thread: drains the queue, flushing whenever it is empty, until every
/// handle is gone.
fn write_lines(mut queue: mpsc::Receiver<Message>, mut output: Output) {
    let mut failing = false;
    while let Some(mut message) = queue.blocking_recv() {
        loop {
            match message {
                Message::Record(record) => {
                    let written = output.write(&record);
                    note_failure(&mut failing, written);
                }
                Message::Configure(settings, answer) => {
                    let _ = output.flush();
                    let opened = Output::open(&settings).map(|new| output = new);
                    failing = false;
                    let _ = answer.send(opened);
                }
            }
            match queue.try_recv() {
                Ok(next) => message = next,
                Err(_) => break,
            }
        }
        let flushed = output.flush();
        note_failure(&mut failing, flushed);
    }
    let _ = output.flush();
}

/// Says a write error once, until the output works again (or is reopened).
fn note_failure(failing: &mut bool, result: io::Result<()>) {
    match result {
        Err(e) if !*failing => {
            *failing = true;
            error!(error = %e, "audit log: cannot write; lines are lost until it works again");
        }
        Err(_) => {}
        Ok(()) => *failing = false,
    }
}
