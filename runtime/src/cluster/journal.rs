//! The coordinator's journal file: `OUTPUT/_journal`, append-only, one checksummed entry
//! per committed transition (format: `quern_scheduler::journal`), fsynced before the
//! coordinator acts on the transition. A restarted coordinator replays it and resumes the
//! job; a torn tail (a crash mid-append) is truncated away first.
//!
//! While a job runs, appends and fsyncs happen on a writer thread
//! ([`JournalFile::start_writer`], [`JournalFile::sync_later`]), so the coordinator's event
//! loop never waits for the disk: it holds back the commands that follow from a record
//! until the writer says the record is durable. Batches queued while an fsync runs share
//! the next one (group commit).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use quern_scheduler::journal::{decode_all, encode, Record};

use crate::{Error, Result};

/// Name of the journal inside a job's output directory.
pub const JOURNAL: &str = "_journal";

/// An open journal.
#[derive(Debug)]
pub struct JournalFile {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    writer: Option<Writer>,
    /// Sequence number of the last batch handed to the writer.
    queued: u64,
}

/// Told by the writer thread that every batch up to a sequence number is durable (or that
/// writing failed; the writer stops then).
pub type OnSynced = Box<dyn Fn(u64, Result<()>) + Send>;

/// The writer thread and its queue; dropping it waits for the queued batches.
#[derive(Debug)]
struct Writer {
    tx: Option<mpsc::Sender<(u64, Vec<u8>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Appends each batch (and whatever queued behind it) and fsyncs, in order.
fn write_batches(
    path: &Path,
    mut file: File,
    rx: &mpsc::Receiver<(u64, Vec<u8>)>,
    synced: &OnSynced,
) {
    while let Ok((mut seq, mut bytes)) = rx.recv() {
        while let Ok((later, more)) = rx.try_recv() {
            bytes.extend_from_slice(&more);
            seq = later;
        }
        let result = file
            .write_all(&bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(path, e));
        let failed = result.is_err();
        synced(seq, result);
        if failed {
            return;
        }
    }
}

impl JournalFile {
    /// Creates a new, empty journal (failing if one exists).
    pub fn create(path: &Path) -> Result<JournalFile> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(JournalFile {
            path: path.to_path_buf(),
            file,
            buf: Vec::new(),
            writer: None,
            queued: 0,
        })
    }

    /// Reads an existing journal, truncating a torn tail, and opens it for appending.
    pub fn open(path: &Path) -> Result<(JournalFile, Vec<Record>)> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let decoded = decode_all(&bytes);
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        if decoded.torn {
            tracing::warn!(
                "{}: dropping a torn tail of {} bytes",
                path.display(),
                bytes.len() - decoded.valid_len
            );
            file.set_len(decoded.valid_len as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io(path, e))?;
        }
        Ok((
            JournalFile {
                path: path.to_path_buf(),
                file,
                buf: Vec::new(),
                writer: None,
                queued: 0,
            },
            decoded.records,
        ))
    }

    /// Queues a record; nothing reaches the disk before [`JournalFile::sync`].
    pub fn push(&mut self, record: &Record) {
        encode(record, &mut self.buf);
    }

    /// From now on, [`JournalFile::sync_later`] writes on a thread of its own, which calls
    /// `synced` after each fsync.
    pub fn start_writer(&mut self, synced: OnSynced) -> Result<()> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| Error::io(&self.path, e))?;
        let (tx, rx) = mpsc::channel();
        let path = self.path.clone();
        let thread = std::thread::Builder::new()
            .name("quern-journal".into())
            .spawn(move || write_batches(&path, file, &rx, &synced))
            .map_err(|e| Error::io("journal writer thread", e))?;
        self.writer = Some(Writer {
            tx: Some(tx),
            thread: Some(thread),
        });
        Ok(())
    }

    /// Hands the queued records to the writer thread (see [`JournalFile::start_writer`])
    /// and returns the batch's sequence number: they are durable once `synced` reports a
    /// number at least as large. The last batch's number when nothing is queued. Without a
    /// writer, or with a stopped one, syncs here.
    pub fn sync_later(&mut self) -> Result<u64> {
        if self.buf.is_empty() {
            return Ok(self.queued);
        }
        let Some(tx) = self.writer.as_ref().and_then(|w| w.tx.as_ref()) else {
            self.sync()?;
            return Ok(self.queued);
        };
        let seq = self.queued + 1;
        tx.send((seq, std::mem::take(&mut self.buf)))
            .map_err(|_| Error::io(&self.path, std::io::Error::other("journal writer stopped")))?;
        self.queued = seq;
        Ok(seq)
    }

    /// Writes the queued records and fsyncs: once this returns they survive a crash.
    pub fn sync(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, e))?;
        self.buf.clear();
        Ok(())
    }
}

/// Reads every record of a journal (for `quern journal`), without modifying it.
pub fn read(path: &Path) -> Result<(Vec<Record>, bool)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let decoded = decode_all(&bytes);
    Ok((decoded.records, decoded.torn))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records handed to the writer thread become durable in order, each batch reported
    /// with its sequence number, and reopening the journal reads them all back.
    #[test]
    fn the_writer_thread_appends_batches_in_order_and_reports_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(JOURNAL);
        let mut journal = JournalFile::create(&path).expect("create");
        journal.push(&Record::JobAccepted {
            job: 1,
            spec: b"spec".to_vec(),
        });
        journal.sync().expect("inline sync");
        let (tx, rx) = mpsc::channel();
        journal
            .start_writer(Box::new(move |seq, r| {
                let _ = tx.send((seq, r.map_err(|e| e.to_string())));
            }))
            .expect("writer");
        assert_eq!(journal.sync_later().expect("nothing queued"), 0);
        let mut last = 0;
        for below in 1..=50u64 {
            journal.push(&Record::AttemptsReserved {
                job: 1,
                below: quern_scheduler::AttemptId(below),
            });
            last = journal.sync_later().expect("queue");
            assert_eq!(last, below, "one batch per call");
        }
        journal.push(&Record::JobDone { job: 1 });
        last = journal.sync_later().expect("queue").max(last);
        // Reports arrive in order; batches queued behind an fsync may share the next one.
        let mut reported = 0;
        while reported < last {
            let (seq, r) = rx
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("a report");
            assert_eq!(r, Ok(()));
            assert!(seq > reported, "reports go forward: {seq} after {reported}");
            reported = seq;
        }
        drop(journal);
        let (records, torn) = read(&path).expect("read back");
        assert!(!torn);
        assert_eq!(records.len(), 1 + 50 + 1);
        assert_eq!(records[51], Record::JobDone { job: 1 });
        assert!(matches!(
            records[50],
            Record::AttemptsReserved {
                below: quern_scheduler::AttemptId(50),
                ..
            }
        ));
    }
}
