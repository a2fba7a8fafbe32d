//! Writes the seed corpora of the fuzz targets: real encodings made by quern's own encoders,
//! one directory per target under `DIR` (default `fuzz/seeds`).
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds [DIR]
//! ```
//!
//! Every seed is also fed to its target's check, so a seed that an invariant rejects fails
//! here rather than as a "crash" on the first run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quern_jobs::grep::{GrepMode, GrepOptions, GrepParams};
use quern_jobs::registry::{names as job, JobDescriptor, Registry};
use quern_jobs::sort::{KeySpec, SortParams};
use quern_jobs::stream::StreamParams;
use quern_jobs::tera::{TeraGen, TeraSort, TeraValidate};
use quern_jobs::text::{Index, WordCount};
use quern_runtime::report::{self, hist, NamedHistogram, Report};
use quern_scheduler::journal::{self, Record};
use quern_scheduler::{AttemptId, TaskId};
use quern_shuffle::block::BlockWriter;
use quern_shuffle::wire::{self, encode_msg};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("fuzz/seeds"), PathBuf::from);
    let mut seeds = Seeds { dir, count: 0 };

    for (name, bytes) in segments()? {
        seeds.put("block_frame", name, &bytes, quern_fuzz::check_segment)?;
    }
    fetch_seeds(&mut seeds)?;
    for (name, which, bytes) in control_messages()? {
        let mut seed = vec![which];
        seed.extend_from_slice(&bytes);
        seeds.put("control_msg", &name, &seed, quern_fuzz::check_control_msg)?;
    }
    let names: Vec<String> = Registry::builtin().names().map(String::from).collect();
    for (name, desc) in descriptors()? {
        let bytes = desc.encode()?;
        seeds.put(
            "job_descriptor",
            name,
            &bytes,
            quern_fuzz::check_job_descriptor,
        )?;
        // The parameters alone, after the byte that selects the job (its place among the
        // registered names: registering a job shifts the bytes, so regenerate the seeds).
        let which = names
            .iter()
            .position(|n| *n == desc.name)
            .ok_or_else(|| format!("job {:?} is not registered", desc.name))?;
        let mut params = vec![u8::try_from(which)?];
        params.extend_from_slice(&desc.params);
        seeds.put(
            "job_descriptor",
            &format!("{name}-params"),
            &params,
            quern_fuzz::check_job_descriptor,
        )?;
    }
    journal_seeds(&mut seeds)?;
    for (name, h) in histograms() {
        let bytes = report::encode_v2(&h);
        report::decode_v2(&bytes)?; // a seed the decoder refuses would teach nothing
        seeds.put("hdr_v2", name, &bytes, quern_fuzz::check_hdr_v2)?;
    }
    let mut empty = small_report();
    empty.attempts.clear();
    empty.histograms.truncate(1);
    let reports = [
        ("small", serde_json::to_string_pretty(&small_report())?),
        ("compact", serde_json::to_string(&empty)?),
    ];
    for (name, json) in &reports {
        let json = json.as_bytes();
        seeds.put("report_json", name, json, quern_fuzz::check_report_json)?;
        seeds.put("report_render", name, json, quern_fuzz::check_report_render)?;
    }

    println!("wrote {} seeds under {}", seeds.count, seeds.dir.display());
    Ok(())
}

struct Seeds {
    dir: PathBuf,
    count: usize,
}

impl Seeds {
    /// Checks `bytes` with its target's check and writes it to `DIR/target/name`.
    fn put(
        &mut self,
        target: &str,
        name: &str,
        bytes: &[u8],
        check: fn(&[u8]),
    ) -> Result<(), Error> {
        check(bytes);
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir)?;
        write(&dir.join(name), bytes)?;
        self.count += 1;
        Ok(())
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()).into())
}

type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Segments of block frames, as map tasks write them.
fn segments() -> Result<Vec<(&'static str, Vec<u8>)>, Error> {
    let encode = |records: &Records, target: usize| -> Result<Vec<u8>, Error> {
        let mut w = BlockWriter::new(target);
        let mut out = Vec::new();
        for (k, v) in records {
            w.push(k, v, &mut out)?;
        }
        w.flush(&mut out)?;
        Ok(out)
    };
    let one = vec![(b"key".to_vec(), b"value".to_vec())];
    let edge = vec![
        (vec![], vec![]),
        (b"k".to_vec(), vec![]),
        (vec![], b"v".to_vec()),
        (vec![7; 300], vec![9; 200]),
    ];
    let words: Records = ["apple", "banana", "cherry", "date", "elder", "fig", "grape"]
        .iter()
        .map(|w| (w.as_bytes().to_vec(), 1u64.to_le_bytes().to_vec()))
        .collect();
    let tera: Records = (0..6u8)
        .map(|i| (vec![b'A' + i; 10], vec![b'0' + i; 90]))
        .collect();
    Ok(vec![
        ("one_record", encode(&one, 1024)?),
        ("edge_records", encode(&edge, 64)?),
        ("words_many_frames", encode(&words, 16)?),
        ("words_one_frame", encode(&words, 1 << 20)?),
        ("terasort_records", encode(&tera, 256)?),
    ])
}

/// Fetch requests (framed) and fetch responses (segments).
fn fetch_seeds(seeds: &mut Seeds) -> Result<(), Error> {
    for (name, req) in [
        (
            "map0",
            wire::FetchRequest {
                job: 1,
                attempt: 0,
                partition: 0,
            },
        ),
        (
            "large_ids",
            wire::FetchRequest {
                job: u64::MAX,
                attempt: 1 << 40,
                partition: 511,
            },
        ),
    ] {
        let body = encode_msg(&req)?;
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        seeds.put(
            "fetch_request",
            name,
            &frame,
            quern_fuzz::check_fetch_request,
        )?;
    }

    let segs = segments()?;
    let response = |parts: &[&[u8]]| {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = (total as u64).to_le_bytes().to_vec();
        for p in parts {
            out.extend_from_slice(&(p.len() as u64).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    };
    let fetches = [
        ("one_segment", response(&[&segs[0].1])),
        ("three_segments", response(&[&segs[1].1, &[], &segs[2].1])),
        ("empty_segment", response(&[&[]])),
    ];
    for (name, bytes) in fetches {
        seeds.put(
            "fetch_segments",
            name,
            &bytes,
            quern_fuzz::check_fetch_segments,
        )?;
    }
    Ok(())
}

fn job_spec() -> wire::JobSpec {
    wire::JobSpec {
        job: Registry::builtin()
            .descriptor(job::WC, &WordCount)
            .and_then(|d| d.encode())
            .unwrap_or_default(),
        name: "wc".into(),
        inputs: vec![wire::InputFileMsg {
            path: "/data/a.txt".into(),
            name: "a.txt".into(),
            size: 1234,
        }],
        splits: vec![wire::SplitMsg {
            chunks: vec![
                wire::ChunkMsg {
                    file: 0,
                    start: 0,
                    len: 1000,
                },
                wire::ChunkMsg {
                    file: 0,
                    start: 1000,
                    len: 234,
                },
            ],
        }],
        reducers: 2,
        output: "/out".into(),
        worker_memory: 1 << 30,
        merge_factor: 1024,
        speculation: true,
        backup_every_task: false,
        skip_bad_records: false,
        resume: false,
        direct_io: false,
    }
}

fn runs() -> Vec<wire::RunMsg> {
    vec![wire::RunMsg {
        path: "/tmp/quern-w1/job1/map-0-a3-run0.qrun".into(),
        segments: vec![
            wire::SegmentMsg {
                offset: 0,
                len: 4096,
            },
            wire::SegmentMsg {
                offset: 4096,
                len: 96,
            },
        ],
    }]
}

fn counters() -> Vec<wire::CounterMsg> {
    vec![
        wire::CounterMsg {
            name: "map.input.bytes".into(),
            value: 1234,
        },
        wire::CounterMsg {
            name: "map.output.records".into(),
            value: u128::MAX,
        },
    ]
}

/// `(name, CONTROL_TYPES index, archive)` of every control message type.
fn control_messages() -> Result<Vec<(String, u8, Vec<u8>)>, Error> {
    let mut out = Vec::new();
    let mut put = |name: &str, which: u8, bytes: rkyv::util::AlignedVec<16>| {
        out.push((
            format!("{}_{name}", quern_fuzz::CONTROL_TYPES[which as usize]),
            which,
            bytes.to_vec(),
        ));
    };
    put(
        "worker",
        0,
        encode_msg(&wire::Hello::Worker(wire::Register {
            slots: 2,
            port: 7000,
            pid: 42,
            held: vec![(1, 3)],
        }))?,
    );
    put("client", 0, encode_msg(&wire::Hello::Client(job_spec()))?);

    let location = wire::MapLocation {
        map: 0,
        attempt: 3,
        addr: "127.0.0.1:7000".into(),
        runs: runs(),
    };
    let to_worker = [
        (
            "welcome",
            wire::ToWorker::Welcome {
                worker: 1,
                ip: "127.0.0.1".into(),
            },
        ),
        (
            "start_job",
            wire::ToWorker::StartJob {
                job: 1,
                spec: job_spec(),
            },
        ),
        (
            "assign_map",
            wire::ToWorker::Assign {
                job: 1,
                attempt: 3,
                task: wire::TaskMsg::Map {
                    index: 0,
                    split: job_spec().splits[0].clone(),
                    skip: vec![17],
                },
            },
        ),
        (
            "assign_reduce",
            wire::ToWorker::Assign {
                job: 1,
                attempt: 9,
                task: wire::TaskMsg::Reduce { partition: 1 },
            },
        ),
        (
            "map_output_ready",
            wire::ToWorker::MapOutputReady { job: 1, location },
        ),
        (
            "map_output_lost",
            wire::ToWorker::MapOutputLost { job: 1, map: 0 },
        ),
        ("cancel", wire::ToWorker::Cancel { job: 1, attempt: 3 }),
        ("end_job", wire::ToWorker::EndJob { job: 1 }),
        ("shutdown", wire::ToWorker::Shutdown),
    ];
    for (name, msg) in to_worker {
        put(name, 1, encode_msg(&msg)?);
    }

    let io = vec![wire::JobIoMsg {
        job: 1,
        input: 1234,
        shuffle: 4192,
        output: 100,
    }];
    let mut h = report::new_histogram();
    for v in [120, 4_500, 4_600, 1_000_000] {
        h.record(v)?;
    }
    let to_coordinator = [
        (
            "heartbeat",
            wire::ToCoordinator::Heartbeat {
                progress: vec![wire::ProgressMsg {
                    job: 1,
                    attempt: 3,
                    done: 500,
                    total: 1234,
                    status: Some("halfway".into()),
                }],
                io: io.clone(),
                work_dir_ok: true,
            },
        ),
        (
            "finished",
            wire::ToCoordinator::Finished {
                job: 1,
                attempt: 3,
                counters: counters(),
                runs: runs(),
                histograms: vec![wire::HistogramMsg {
                    name: hist::MAP_ATTEMPT.into(),
                    v2: report::encode_v2(&h),
                }],
                io,
            },
        ),
        (
            "failed",
            wire::ToCoordinator::Failed {
                job: 1,
                attempt: 4,
                error: "map panicked".into(),
                bad_record: Some(77),
                work_dir: false,
            },
        ),
        (
            "fetch_failed",
            wire::ToCoordinator::FetchFailed {
                job: 1,
                attempt: 9,
                map: 0,
                error: "checksum mismatch".into(),
            },
        ),
    ];
    for (name, msg) in to_coordinator {
        put(name, 2, encode_msg(&msg)?);
    }

    let mut report = small_report();
    report.attempts.truncate(1);
    let to_client = [
        (
            "accepted",
            wire::ToClient::Accepted {
                job: 1,
                status: "http://127.0.0.1:8080/".into(),
            },
        ),
        (
            "progress",
            wire::ToClient::Progress {
                maps_done: 1,
                maps: 2,
                reduces_done: 0,
                reduces: 2,
            },
        ),
        (
            "done",
            wire::ToClient::Done {
                counters: counters(),
                parts: vec!["part-00000".into(), "part-00001".into()],
                map_tasks: 2,
                reduce_tasks: 2,
                skipped: vec![("a.txt".into(), 77)],
                report: serde_json::to_string(&report)?,
            },
        ),
        (
            "failed",
            wire::ToClient::Failed {
                reason: "output exists".into(),
                user_error: true,
            },
        ),
    ];
    for (name, msg) in to_client {
        put(name, 3, encode_msg(&msg)?);
    }

    put(
        "one",
        4,
        encode_msg(&wire::FetchRequest {
            job: 1,
            attempt: 3,
            partition: 1,
        })?,
    );
    put("wc", 5, encode_msg(&job_spec())?);
    put(
        "map",
        6,
        encode_msg(&wire::CommittedOutput {
            runs: runs(),
            counters: counters(),
        })?,
    );
    put(
        "reduce",
        6,
        encode_msg(&wire::CommittedOutput {
            runs: vec![],
            counters: counters(),
        })?,
    );
    Ok(out)
}

/// Every built-in job's descriptor, by seed name.
fn descriptors() -> Result<Vec<(&'static str, JobDescriptor)>, Error> {
    let r = Registry::builtin();
    Ok(vec![
        (
            "teragen",
            r.descriptor(
                job::TERAGEN,
                &TeraGen {
                    records: 1_000_000,
                    seed: 0x1234_5678_9abc_def0,
                    ascii: true,
                },
            )?,
        ),
        (
            "terasort",
            r.descriptor(
                job::TERASORT,
                &TeraSort {
                    cuts: vec![[0x40; 10], [0x80; 10], [0xc0; 10]],
                },
            )?,
        ),
        (
            "teravalidate",
            r.descriptor(
                job::TERAVALIDATE,
                &TeraValidate {
                    names: vec!["part-00000".into(), "part-00001".into()],
                },
            )?,
        ),
        (
            "grep",
            r.descriptor(
                job::GREP,
                &GrepParams {
                    pattern: r"fo+\s(bar|baz)$".into(),
                    mode: GrepMode::Count,
                    options: GrepOptions {
                        ignore_case: true,
                        invert: false,
                        word: true,
                        fixed: false,
                    },
                    names: vec!["a.txt".into()],
                    first_nuls: vec![Some(98_304)],
                    line_numbers: false,
                },
            )?,
        ),
        (
            "grep_numbered",
            r.descriptor(
                job::GREP,
                &GrepParams {
                    pattern: "needle".into(),
                    mode: GrepMode::Lines,
                    options: GrepOptions {
                        ignore_case: false,
                        invert: true,
                        word: false,
                        fixed: true,
                    },
                    names: vec!["a.txt".into(), "b.txt".into()],
                    first_nuls: vec![None, Some(7)],
                    line_numbers: true,
                },
            )?,
        ),
        (
            "sort",
            r.descriptor(
                job::SORT,
                &SortParams {
                    keys: vec![KeySpec::parse("2,2nr")?],
                    separator: Some(b':'),
                    numeric: false,
                    reverse: true,
                    unique: true,
                    cuts: vec![b"\x03m".to_vec(), b"\xfc\x00".to_vec()],
                },
            )?,
        ),
        (
            "stream",
            r.descriptor(
                job::STREAM,
                &StreamParams {
                    mapper: "tr -s ' ' '\\n'".into(),
                    combiner: Some("uniq -c".into()),
                    reducer: Some(
                        "awk '{ n[$2] += $1 } END { for (w in n) print w, n[w] }'".into(),
                    ),
                    map_only: false,
                    key_fields: 1,
                    separator: b"\t".to_vec(),
                    env: vec![("LC_ALL".into(), "C".into())],
                    files: vec!["/usr/share/dict/words".into()],
                    timeout_ms: 600_000,
                },
            )?,
        ),
        ("wordcount", r.descriptor(job::WC, &WordCount)?),
        (
            "index",
            r.descriptor(
                job::INDEX,
                &Index {
                    names: vec!["a.txt".into(), "b.txt".into()],
                },
            )?,
        ),
    ])
}

/// A whole job's journal, and the same journal torn inside its last entry.
fn journal_seeds(seeds: &mut Seeds) -> Result<(), Error> {
    let spec = encode_msg(&job_spec())?.to_vec();
    let output = encode_msg(&wire::CommittedOutput {
        runs: runs(),
        counters: counters(),
    })?
    .to_vec();
    let records = [
        Record::JobAccepted { job: 1, spec },
        Record::AttemptsReserved {
            job: 1,
            below: AttemptId(1024),
        },
        Record::TaskCommitted {
            job: 1,
            task: TaskId::map(0),
            attempt: AttemptId(3),
            worker_addr: "127.0.0.1:7000".into(),
            output,
        },
        Record::TaskCommitted {
            job: 1,
            task: TaskId::reduce(1),
            attempt: AttemptId(9),
            worker_addr: "127.0.0.1:7001".into(),
            output: encode_msg(&wire::CommittedOutput {
                runs: vec![],
                counters: counters(),
            })?
            .to_vec(),
        },
        Record::JobDone { job: 1 },
        Record::JobFailed {
            job: 2,
            reason: "map 0 failed 4 times".into(),
        },
    ];
    let mut bytes = Vec::new();
    for r in &records {
        journal::encode(r, &mut bytes);
    }
    seeds.put("journal", "whole_job", &bytes, quern_fuzz::check_journal)?;
    let torn = &bytes[..bytes.len() - 5];
    seeds.put("journal", "torn_tail", torn, quern_fuzz::check_journal)?;
    let mut short = Vec::new();
    journal::encode(&records[4], &mut short);
    seeds.put("journal", "job_done", &short, quern_fuzz::check_journal)?;
    Ok(())
}

fn histograms() -> Vec<(&'static str, hdrhistogram::Histogram<u64>)> {
    let mut small = report::new_histogram();
    let mut latencies = report::new_histogram();
    let mut wide = report::new_histogram();
    let _ = small.record(5);
    for i in 1..=2_000u64 {
        let _ = latencies.record(i * 37 % 50_000 + 100);
    }
    let _ = wide.record(1);
    let _ = wide.record(3_600_000_000);
    let _ = wide.record_n(250_000, 1 << 30);
    vec![
        ("empty", report::new_histogram()),
        ("one_value", small),
        ("latencies", latencies),
        ("wide_range", wide),
    ]
}

fn small_report() -> Report {
    use report::{AttemptRecord, Outcome, PhaseName, PhaseRecord, RateSeries, WorkerRecord};
    let mut map_attempt = report::new_histogram();
    let mut fetch = report::new_histogram();
    for v in [1_200_000, 1_450_000] {
        let _ = map_attempt.record(v);
    }
    for v in [900, 1_800, 2_500, 40_000] {
        let _ = fetch.record(v);
    }
    let attempt = |attempt, phase, task, worker, start_us, end_us, outcome| AttemptRecord {
        phase,
        task,
        attempt,
        worker,
        start_us,
        end_us,
        outcome,
        backup: attempt == 3,
    };
    let counters: BTreeMap<String, u128> = [
        ("map.input.bytes", 2_468),
        ("attempts.map", 3),
        ("attempts.reduce", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Report {
        version: report::REPORT_VERSION,
        job: "wc <small>".into(),
        started_unix_ms: 1_767_225_600_123,
        wall_us: 3_000_000,
        map_tasks: 2,
        reduce_tasks: 1,
        workers: vec![WorkerRecord {
            id: 1,
            addr: "127.0.0.1:7000".into(),
            pid: 4001,
            slots: 2,
            work_dir_fault: None,
        }],
        counters,
        phases: vec![
            PhaseRecord {
                phase: PhaseName::Map,
                end_us: 1_500_000,
            },
            PhaseRecord {
                phase: PhaseName::Reduce,
                end_us: 2_900_000,
            },
        ],
        attempts: vec![
            attempt(
                1,
                PhaseName::Map,
                0,
                1,
                10_000,
                1_210_000,
                Outcome::Committed,
            ),
            attempt(2, PhaseName::Map, 1, 1, 11_000, 1_000_000, Outcome::Failed),
            attempt(
                3,
                PhaseName::Map,
                1,
                1,
                1_010_000,
                1_460_000,
                Outcome::Committed,
            ),
            attempt(
                4,
                PhaseName::Reduce,
                0,
                1,
                1_500_000,
                2_900_000,
                Outcome::Committed,
            ),
        ],
        rates: RateSeries {
            bucket_us: 500_000,
            input: vec![1_000, 1_468, 0, 0, 0, 0],
            shuffle: vec![0, 0, 2_000, 468, 0, 0],
            output: vec![0, 0, 0, 0, 300, 0],
        },
        histograms: vec![
            NamedHistogram::new(hist::MAP_ATTEMPT, "us", &map_attempt),
            NamedHistogram::new(hist::FETCH_LATENCY, "us", &fetch),
        ],
    }
}
