//! The coordinator's job journal: what the scheduler asks to record, and the bytes on disk.
//!
//! Pure like the rest of the crate — bytes in, bytes out. The coordinator owns the file: it
//! appends [`encode`]d records, fsyncs, and after a restart reads the whole file back with
//! [`decode_all`], truncates it to [`Decoded::valid_len`] and rebuilds the job's scheduler with
//! [`crate::Scheduler::resume`] from the [`commits`] it finds.
//!
//! # What is journaled, and when
//!
//! After every [`crate::Scheduler::handle`] the driver drains
//! [`crate::Scheduler::poll_journal`] **before** [`crate::Scheduler::poll`]: it appends one
//! [`Record`] per [`JournalEvent`] (adding what only it knows — its job id, the worker's data
//! address, the map output's location bytes), fsyncs once, and only then carries out the
//! commands. A [`JournalEvent`] is queued for:
//!
//! * every commit of a task (the first `AttemptSucceeded` of a running task, including a map
//!   that commits again after its output was lost) → [`Record::TaskCommitted`];
//! * the end of the job → [`Record::JobDone`] or [`Record::JobFailed`];
//! * before the first `Assign` of each block of [`ATTEMPT_BLOCK`] attempt ids →
//!   [`Record::AttemptsReserved`], so that after a restart no id is reused — not even that
//!   of an attempt that ran and never committed (its stale report, or its leftover output
//!   file, would otherwise be mistaken for the new attempt's).
//!
//! So whatever a command reveals to the world (a `MapOutputReady`, the `Cancel` of a
//! superseded attempt, `JobDone`) is already on disk when the driver acts on it. Lost map
//! outputs are not journaled: after a restart, every committed map's output location is
//! unknown until a worker reports it ([`crate::Event::OutputFound`]).
//!
//! # Format
//!
//! The file is a sequence of entries, each
//!
//! ```text
//! [u32 LE payload length][u32 LE CRC-32 (IEEE) of the payload][payload]
//! ```
//!
//! and each payload is a tag byte followed by fixed-width little-endian integers and
//! length-prefixed (u32 LE) byte strings:
//!
//! ```text
//! 1 JobAccepted    job:u64 spec:bytes
//! 2 TaskCommitted  job:u64 phase:u8 (0 map, 1 reduce) index:u32 attempt:u64
//!                  worker_addr:bytes (UTF-8) output:bytes
//! 3 JobDone        job:u64
//! 4 JobFailed      job:u64 reason:bytes (UTF-8)
//! 5 AttemptsReserved job:u64 below:u64
//! ```
//!
//! A payload must be consumed exactly. A crash can leave a torn last entry; [`decode_all`]
//! stops at the first entry that is incomplete, fails its checksum or does not parse, and
//! reports how many leading bytes are good.

use crate::{AttemptId, Phase, TaskId, WorkerId};

/// A committed transition the scheduler asks the driver to journal, drained from
/// [`crate::Scheduler::poll_journal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEvent {
    /// `attempt` committed `task`; a map's output lives on `worker`.
    TaskCommitted {
        /// The task.
        task: TaskId,
        /// The attempt whose output counts.
        attempt: AttemptId,
        /// Where it ran (and where a map's output lives).
        worker: WorkerId,
    },
    /// The job finished: every task committed.
    JobDone,
    /// The job failed.
    JobFailed {
        /// The reason, as in [`crate::Command::JobFailed`].
        reason: String,
    },
    /// Attempt ids below `below` may be in use from now on. Queued before the `Assign` that
    /// first uses an id of a new block ([`ATTEMPT_BLOCK`] ids), so that a restarted
    /// coordinator never reuses the id of an attempt that ran but did not commit: a stale
    /// report or a leftover output file of the old attempt would be taken for the new one's.
    AttemptsReserved {
        /// One past the highest id that may be in use.
        below: AttemptId,
    },
}

/// How many attempt ids one [`JournalEvent::AttemptsReserved`] covers.
pub const ATTEMPT_BLOCK: u64 = 1024;

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The coordinator accepted job `job`.
    JobAccepted {
        /// The coordinator's job id.
        job: u64,
        /// The job's description, opaque here.
        spec: Vec<u8>,
    },
    /// A task of job `job` committed.
    TaskCommitted {
        /// The coordinator's job id.
        job: u64,
        /// The task.
        task: TaskId,
        /// The committed attempt.
        attempt: AttemptId,
        /// The data address of the worker it ran on.
        worker_addr: String,
        /// Opaque: for a map, where its output lives (its runs).
        output: Vec<u8>,
    },
    /// Job `job` finished.
    JobDone {
        /// The coordinator's job id.
        job: u64,
    },
    /// Job `job` failed.
    JobFailed {
        /// The coordinator's job id.
        job: u64,
        /// Why.
        reason: String,
    },
    /// Job `job` may use attempt ids below `below`.
    AttemptsReserved {
        /// The coordinator's job id.
        job: u64,
        /// One past the highest id that may be in use.
        below: AttemptId,
    },
}

/// What [`decode_all`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The records of the valid prefix, in order.
    pub records: Vec<Record>,
    /// Length of the valid prefix: the caller truncates the file to it before appending.
    pub valid_len: usize,
    /// Whether bytes follow the valid prefix (a torn write or corruption), i.e.
    /// `valid_len < bytes.len()`.
    pub torn: bool,
}

const TAG_JOB_ACCEPTED: u8 = 1;
const TAG_TASK_COMMITTED: u8 = 2;
const TAG_JOB_DONE: u8 = 3;
const TAG_JOB_FAILED: u8 = 4;
const TAG_ATTEMPTS_RESERVED: u8 = 5;
const HEADER: usize = 8;

/// Appends one entry for `record` to `out`.
///
/// # Panics
///
/// If a byte string of the record, or the whole payload, is 4 GiB or longer.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    match record {
        Record::JobAccepted { job, spec } => {
            out.push(TAG_JOB_ACCEPTED);
            out.extend_from_slice(&job.to_le_bytes());
            put_bytes(out, spec);
        }
        Record::TaskCommitted {
            job,
            task,
            attempt,
            worker_addr,
            output,
        } => {
            out.push(TAG_TASK_COMMITTED);
            out.extend_from_slice(&job.to_le_bytes());
            out.push(match task.phase {
                Phase::Map => 0,
                Phase::Reduce => 1,
            });
            out.extend_from_slice(&task.index.to_le_bytes());
            out.extend_from_slice(&attempt.0.to_le_bytes());
            put_bytes(out, worker_addr.as_bytes());
            put_bytes(out, output);
        }
        Record::JobDone { job } => {
            out.push(TAG_JOB_DONE);
            out.extend_from_slice(&job.to_le_bytes());
        }
        Record::JobFailed { job, reason } => {
            out.push(TAG_JOB_FAILED);
            out.extend_from_slice(&job.to_le_bytes());
            put_bytes(out, reason.as_bytes());
        }
        Record::AttemptsReserved { job, below } => {
            out.push(TAG_ATTEMPTS_RESERVED);
            out.extend_from_slice(&job.to_le_bytes());
            out.extend_from_slice(&below.0.to_le_bytes());
        }
    }
    let payload = &out[start + HEADER..];
    let len = u32::try_from(payload.len()).expect("journal entry under 4 GiB");
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes every entry of `bytes` up to the first one that is incomplete, fails its
/// checksum or does not parse. Never panics.
pub fn decode_all(bytes: &[u8]) -> Decoded {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((record, next)) = decode_entry(bytes, at) {
        records.push(record);
        at = next;
    }
    Decoded {
        records,
        valid_len: at,
        torn: at < bytes.len(),
    }
}

/// The tasks of job `job` committed according to `records`, in journal order (a map may
/// appear more than once if its output was lost and it committed again; the last entry
/// counts). What [`crate::Scheduler::resume`] takes.
pub fn commits(records: &[Record], job: u64) -> Vec<(TaskId, AttemptId)> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::TaskCommitted {
                job: j,
                task,
                attempt,
                ..
            } if *j == job => Some((*task, *attempt)),
            _ => None,
        })
        .collect()
}

/// The first attempt id a resumed scheduler of job `job` may use: above every committed
/// and every reserved id in `records`.
pub fn first_free_attempt(records: &[Record], job: u64) -> AttemptId {
    let next = records.iter().filter_map(|r| match r {
        Record::TaskCommitted {
            job: j, attempt, ..
        } if *j == job => Some(attempt.0.saturating_add(1)),
        Record::AttemptsReserved { job: j, below } if *j == job => Some(below.0),
        _ => None,
    });
    AttemptId(next.max().unwrap_or(0))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("journal byte string under 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The entry at `at`, and where the next one starts.
fn decode_entry(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let header = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let start = at + HEADER;
    let end = start.checked_add(len)?;
    let payload = bytes.get(start..end)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((decode_payload(payload)?, end))
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
    let mut r = Reader(payload);
    let record = match r.u8()? {
        TAG_JOB_ACCEPTED => Record::JobAccepted {
            job: r.u64()?,
            spec: r.bytes()?.to_vec(),
        },
        TAG_TASK_COMMITTED => {
            let job = r.u64()?;
            let phase = match r.u8()? {
                0 => Phase::Map,
                1 => Phase::Reduce,
                _ => return None,
            };
            let index = r.u32()?;
            Record::TaskCommitted {
                job,
                task: TaskId { phase, index },
                attempt: AttemptId(r.u64()?),
                worker_addr: r.string()?,
                output: r.bytes()?.to_vec(),
            }
        }
        TAG_JOB_DONE => Record::JobDone { job: r.u64()? },
        TAG_JOB_FAILED => Record::JobFailed {
            job: r.u64()?,
            reason: r.string()?,
        },
        TAG_ATTEMPTS_RESERVED => Record::AttemptsReserved {
            job: r.u64()?,
            below: AttemptId(r.u64()?),
        },
        _ => return None,
    };
    r.0.is_empty().then_some(record)
}

/// A cursor over a payload; every read checks the bounds.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_torn_tail() {
        let records = vec![
            Record::JobAccepted {
                job: 1,
                spec: b"spec".to_vec(),
            },
            Record::TaskCommitted {
                job: 1,
                task: TaskId::reduce(3),
                attempt: AttemptId(17),
                worker_addr: "10.0.0.1:7000".to_string(),
                output: vec![1, 2, 3],
            },
            Record::JobFailed {
                job: 1,
                reason: "map 0 failed 4 times: é".to_string(),
            },
            Record::JobDone { job: 2 },
            Record::AttemptsReserved {
                job: 1,
                below: AttemptId(1024),
            },
        ];
        let mut bytes = Vec::new();
        for r in &records {
            encode(r, &mut bytes);
        }
        let full = decode_all(&bytes);
        assert_eq!(full.records, records);
        assert_eq!((full.valid_len, full.torn), (bytes.len(), false));
        let cut = decode_all(&bytes[..bytes.len() - 1]);
        assert_eq!(cut.records, records[..4]);
        assert_eq!(first_free_attempt(&records, 1), AttemptId(1024));
        assert_eq!(first_free_attempt(&records, 2), AttemptId(0));
        assert!(cut.torn);
        assert_eq!(
            commits(&records, 1),
            vec![(TaskId::reduce(3), AttemptId(17))]
        );
    }
}
