//! Control-plane messages: what coordinator, workers and clients say to each other.
//!
//! Every message is one length-prefixed frame ([`crate::net::write_frame`]) holding an rkyv
//! archive. Control messages are small, so they are validated (bytecheck) and then
//! deserialised into owned values ([`decode_msg`]); bulk shuffle data never goes through
//! here — it travels as raw block segments ([`crate::net::send_segments`]).
//!
//! Conversation on a worker's control stream (one bidirectional stream per worker):
//!
//! ```text
//! worker                               coordinator
//!   Hello::Worker(Register) ──────────▶
//!                          ◀────────── ToWorker::Welcome
//!                          ◀────────── StartJob / Assign / MapOutputReady / MapOutputLost
//!                                      / Cancel / EndJob / Shutdown
//!   Heartbeat (every ~250 ms) ────────▶
//!   Finished / Failed / FetchFailed ──▶
//! ```
//!
//! A client opens a connection and a stream, sends `Hello::Client(Submit)`, and reads
//! [`ToClient`] messages until `Done` or `Failed`. A reducer fetching map output opens a
//! stream to the map's worker, sends one [`FetchRequest`], and reads the segments.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

/// The first message on a new control stream: who is speaking.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Hello {
    /// A worker joining the cluster.
    Worker(Register),
    /// A client submitting a job.
    Client(JobSpec),
}

/// A worker's registration.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Register {
    /// Attempts the worker runs at once.
    pub slots: u32,
    /// Port of the worker's endpoint; reducers fetch map output there, at the IP address the
    /// coordinator sees the worker connect from.
    pub port: u16,
    /// Process id (for logs and tests).
    pub pid: u32,
    /// Map outputs this worker still serves from before (it is re-joining a restarted
    /// coordinator): `(job, attempt)`.
    pub held: Vec<(u64, u64)>,
}

/// One input file of a job.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct InputFileMsg {
    /// Path, as workers will open it (inputs live on a file system all workers see).
    pub path: String,
    /// Name shown to users.
    pub name: String,
    /// Size in bytes when the job was planned.
    pub size: u64,
}

/// A byte range of one input file (or a range of rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ChunkMsg {
    /// Index of the input file.
    pub file: u32,
    /// First byte (or row).
    pub start: u64,
    /// Length in bytes (or rows).
    pub len: u64,
}

/// One map task's split: chunks of one or more files, in input order.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SplitMsg {
    /// The chunks.
    pub chunks: Vec<ChunkMsg>,
}

/// A planned job, as a client submits it.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobSpec {
    /// Opaque job descriptor: workers turn it into a `Job` with their job registry.
    pub job: Vec<u8>,
    /// Job name for logs.
    pub name: String,
    /// Input files (one synthetic entry for row-range jobs).
    pub inputs: Vec<InputFileMsg>,
    /// One split per map task.
    pub splits: Vec<SplitMsg>,
    /// Reduce partitions (0: map-only).
    pub reducers: u32,
    /// Output directory (on a file system all workers and the coordinator see).
    pub output: String,
    /// Memory budget of each worker for this job, bytes (`--memory`): a worker divides
    /// it across its slots, and each task keeps its sort, fetch and merge buffers within
    /// its share.
    pub worker_memory: u64,
    /// Segments a reduce merges at once (its fan-in bound).
    pub merge_factor: u32,
    /// Launch backup attempts for stragglers.
    pub speculation: bool,
    /// Back up every task (`--speculation always`, for tests and benchmarks).
    pub backup_every_task: bool,
    /// Skip records that make a map fail twice at the same offset (paper §4.6).
    pub skip_bad_records: bool,
    /// Continue the job recorded in the output directory's journal instead of starting
    /// afresh (after a coordinator crash).
    pub resume: bool,
    /// Write run files, merge passes, spills and part files with direct I/O (`O_DIRECT`:
    /// past the page cache), `--direct-io`.
    pub direct_io: bool,
}

/// What the journal keeps of a committed task: a map's runs, and the attempt's counters.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CommittedOutput {
    /// The map's runs on its worker (empty for reduces).
    pub runs: Vec<RunMsg>,
    /// The attempt's counters.
    pub counters: Vec<CounterMsg>,
}

/// A byte range of a run file holding one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SegmentMsg {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One sorted run of a map attempt's output.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RunMsg {
    /// The run file on the map worker's disk.
    pub path: String,
    /// Segment of each partition.
    pub segments: Vec<SegmentMsg>,
}

/// A named counter value.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct CounterMsg {
    /// Counter name.
    pub name: String,
    /// Value.
    pub value: u128,
}

/// Progress of one running attempt.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ProgressMsg {
    /// The attempt's job.
    pub job: u64,
    /// The attempt.
    pub attempt: u64,
    /// Work done (bytes), out of `total`.
    pub done: u64,
    /// Total work (bytes); 0 when not yet known.
    pub total: u64,
    /// The attempt's status message, if it set one (a streaming process's
    /// `reporter:status:`).
    pub status: Option<String>,
}

/// Bytes a worker has moved for one job so far (cumulative; for the rate plots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobIoMsg {
    /// The job.
    pub job: u64,
    /// Map input bytes read.
    pub input: u64,
    /// Shuffle bytes fetched by its reducers.
    pub shuffle: u64,
    /// Output bytes written.
    pub output: u64,
}

/// A latency histogram an attempt recorded, in hdrhistogram's V2 serialization.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct HistogramMsg {
    /// Its name (see `quern_runtime::report::hist`).
    pub name: String,
    /// V2-serialized histogram (untrusted: decoded with error checking).
    pub v2: Vec<u8>,
}

/// Worker → coordinator, after registration.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ToCoordinator {
    /// Liveness and per-attempt progress.
    Heartbeat {
        /// Progress of every running attempt.
        progress: Vec<ProgressMsg>,
        /// Bytes moved so far, per job this worker knows.
        io: Vec<JobIoMsg>,
        /// False from a failure on the worker's work dir (full, failing) until it has room
        /// again: no map output should be placed on it.
        work_dir_ok: bool,
    },
    /// An attempt finished; for a map of a job with reducers, `runs` is its output.
    Finished {
        /// The attempt's job (attempt ids are per job).
        job: u64,
        /// The attempt.
        attempt: u64,
        /// Its counters.
        counters: Vec<CounterMsg>,
        /// Map output on this worker's disk.
        runs: Vec<RunMsg>,
        /// Latencies the attempt recorded (its duration, its fetches).
        histograms: Vec<HistogramMsg>,
        /// The worker's byte counts for the job as the attempt ended (as in heartbeats).
        io: Vec<JobIoMsg>,
    },
    /// An attempt failed.
    Failed {
        /// The attempt's job.
        job: u64,
        /// The attempt.
        attempt: u64,
        /// What went wrong.
        error: String,
        /// Byte offset (in its input file) of the record the map was processing when it
        /// crashed, if it crashed inside user code.
        bad_record: Option<u64>,
        /// It failed on the worker's own work dir (ENOSPC, EDQUOT, EIO, EROFS), not on its
        /// task: another worker should run it.
        work_dir: bool,
    },
    /// A reduce attempt could not fetch (or validate) a map's output.
    FetchFailed {
        /// The attempt's job.
        job: u64,
        /// The reduce attempt.
        attempt: u64,
        /// The map task.
        map: u32,
        /// What went wrong.
        error: String,
    },
}

/// What a task is.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum TaskMsg {
    /// Map task `index` over split `split`.
    Map {
        /// Map task index.
        index: u32,
        /// Its split.
        split: SplitMsg,
        /// Offsets of records to skip (they crashed earlier attempts).
        skip: Vec<u64>,
    },
    /// Reduce task for one partition.
    Reduce {
        /// The partition.
        partition: u32,
    },
}

/// Where a committed map output can be fetched.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MapLocation {
    /// The map task.
    pub map: u32,
    /// The committed attempt.
    pub attempt: u64,
    /// `ip:port` of the worker that holds it.
    pub addr: String,
    /// Its runs.
    pub runs: Vec<RunMsg>,
}

/// Coordinator → worker.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ToWorker {
    /// Registration accepted.
    Welcome {
        /// The worker's id in this coordinator.
        worker: u32,
        /// The worker's IP address as the coordinator sees it: map output the worker serves
        /// is advertised at this address, and output advertised at it is on this host.
        ip: String,
    },
    /// A job starts: build it from its descriptor.
    StartJob {
        /// Job id.
        job: u64,
        /// The job.
        spec: JobSpec,
    },
    /// Run an attempt.
    Assign {
        /// Job id.
        job: u64,
        /// Attempt id.
        attempt: u64,
        /// The task.
        task: TaskMsg,
    },
    /// A map output is available (sent to every worker; reducers use it).
    MapOutputReady {
        /// Job id.
        job: u64,
        /// Where it is.
        location: MapLocation,
    },
    /// A map output is gone and will be regenerated.
    MapOutputLost {
        /// Job id.
        job: u64,
        /// The map task.
        map: u32,
    },
    /// Stop an attempt; its result will be ignored.
    Cancel {
        /// The attempt's job.
        job: u64,
        /// The attempt.
        attempt: u64,
    },
    /// The job is over: drop its state and intermediate files.
    EndJob {
        /// Job id.
        job: u64,
    },
    /// Exit.
    Shutdown,
}

/// Coordinator → client.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ToClient {
    /// The job was accepted and is queued or running.
    Accepted {
        /// Job id.
        job: u64,
        /// The coordinator's HTTP status page (`http://...`), empty if it has none.
        status: String,
    },
    /// Tasks committed so far (sent a few times a second while the job runs).
    Progress {
        /// Map tasks committed.
        maps_done: u32,
        /// Map tasks.
        maps: u32,
        /// Reduce tasks committed.
        reduces_done: u32,
        /// Reduce tasks.
        reduces: u32,
    },
    /// The job committed its output.
    Done {
        /// Counters of the committed attempts.
        counters: Vec<CounterMsg>,
        /// Part files, in partition order.
        parts: Vec<String>,
        /// Map tasks.
        map_tasks: u32,
        /// Reduce tasks.
        reduce_tasks: u32,
        /// Records skipped as bad: `(input name, byte offset)`.
        skipped: Vec<(String, u64)>,
        /// The job's report (`quern_runtime::report::Report` as JSON).
        report: String,
    },
    /// The job failed; no output was committed.
    Failed {
        /// Why.
        reason: String,
        /// True when the cause is the user's (bad input, output exists): exit code 2.
        user_error: bool,
    },
}

/// A reducer's request for one partition of one map attempt's output.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FetchRequest {
    /// Job id.
    pub job: u64,
    /// The map attempt whose output is wanted.
    pub attempt: u64,
    /// The partition.
    pub partition: u32,
}

/// A message that failed to encode or decode.
#[derive(Debug, thiserror::Error)]
#[error("invalid message: {0}")]
pub struct WireError(pub String);

/// Serialises a message into an aligned buffer.
pub fn encode_msg<T>(msg: &T) -> Result<AlignedVec<16>, WireError>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec<16>,
            rkyv::ser::allocator::ArenaHandle<'a>,
            BoxedError,
        >,
    >,
{
    rkyv::api::high::to_bytes_in::<_, BoxedError>(msg, AlignedVec::<16>::new())
        .map_err(|e| WireError(e.to_string()))
}

/// Validates (bytecheck) and deserialises a message. `bytes` must be 16-byte aligned, as
/// frames received with `read_frame` are.
pub fn decode_msg<T>(bytes: &[u8]) -> Result<T, WireError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    rkyv::from_bytes::<T, BoxedError>(bytes).map_err(|e| WireError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn aligned(bytes: &[u8]) -> AlignedVec<16> {
        let mut v = AlignedVec::<16>::new();
        v.extend_from_slice(bytes);
        v
    }

    fn sample_messages() -> Vec<ToWorker> {
        vec![
            ToWorker::Welcome {
                worker: 3,
                ip: "10.0.0.2".into(),
            },
            ToWorker::Assign {
                job: 1,
                attempt: 42,
                task: TaskMsg::Map {
                    index: 7,
                    split: SplitMsg {
                        chunks: vec![
                            ChunkMsg {
                                file: 2,
                                start: 100,
                                len: 64 << 20,
                            },
                            ChunkMsg {
                                file: 3,
                                start: 0,
                                len: 0,
                            },
                        ],
                    },
                    skip: vec![5, 900],
                },
            },
            ToWorker::MapOutputReady {
                job: 1,
                location: MapLocation {
                    map: 7,
                    attempt: 42,
                    addr: "10.0.0.2:4000".into(),
                    runs: vec![RunMsg {
                        path: "/tmp/w/map-7-run0.qrun".into(),
                        segments: vec![SegmentMsg { offset: 0, len: 16 }],
                    }],
                },
            },
            ToWorker::StartJob {
                job: 9,
                spec: JobSpec {
                    job: vec![1, 2, 3],
                    name: "wc".into(),
                    inputs: vec![InputFileMsg {
                        path: "/a".into(),
                        name: "a".into(),
                        size: 10,
                    }],
                    splits: vec![SplitMsg {
                        chunks: vec![ChunkMsg {
                            file: 0,
                            start: 0,
                            len: 10,
                        }],
                    }],
                    reducers: 2,
                    output: "/out".into(),
                    worker_memory: 1 << 30,
                    merge_factor: 128,
                    speculation: true,
                    backup_every_task: false,
                    skip_bad_records: false,
                    resume: false,
                    direct_io: false,
                },
            },
            ToWorker::Shutdown,
        ]
    }

    #[test]
    fn messages_round_trip() {
        for msg in sample_messages() {
            let bytes = encode_msg(&msg).unwrap();
            assert_eq!(decode_msg::<ToWorker>(&bytes).unwrap(), msg);
        }
        let c = ToCoordinator::Finished {
            job: 1,
            attempt: 5,
            counters: vec![CounterMsg {
                name: "x".into(),
                value: u128::MAX,
            }],
            runs: vec![],
            histograms: vec![HistogramMsg {
                name: "map_attempt".into(),
                v2: vec![1, 2, 3],
            }],
            io: vec![JobIoMsg {
                job: 1,
                input: 2,
                shuffle: 3,
                output: 4,
            }],
        };
        assert_eq!(
            decode_msg::<ToCoordinator>(&encode_msg(&c).unwrap()).unwrap(),
            c
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes never panic the decoders.
        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let buf = aligned(&bytes);
            let _ = decode_msg::<ToWorker>(&buf);
            let _ = decode_msg::<ToCoordinator>(&buf);
            let _ = decode_msg::<Hello>(&buf);
            let _ = decode_msg::<ToClient>(&buf);
            let _ = decode_msg::<FetchRequest>(&buf);
        }

        /// Flipping bytes of a valid message gives an error or some valid message, never a panic.
        #[test]
        fn corrupted_messages_never_panic(idx in 0usize..5, pos in 0usize..4096, flip in 1u8..=255) {
            let msg = &sample_messages()[idx];
            let mut bytes = encode_msg(msg).unwrap().to_vec();
            let pos = pos % bytes.len();
            bytes[pos] ^= flip;
            let _ = decode_msg::<ToWorker>(&aligned(&bytes));
        }
    }
}
