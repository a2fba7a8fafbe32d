//! The coordinator's journal file: `OUTPUT/_journal`, append-only, one checksummed entry
//! per committed transition (format: `quern_scheduler::journal`), fsynced before the
//! coordinator acts on the transition. A restarted coordinator replays it and resumes the
//! job; a torn tail (a crash mid-append) is truncated away first.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

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
            },
            decoded.records,
        ))
    }

    /// Queues a record; nothing reaches the disk before [`JournalFile::sync`].
    pub fn push(&mut self, record: &Record) {
        encode(record, &mut self.buf);
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
