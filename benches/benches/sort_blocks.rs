//! Micro-benchmarks of the sort + block path on TeraSort-like input: 100-byte records with a
//! 10-byte random key and a 90-byte value.
//!
//! - `block/encode`: [`BlockWriter`] framing pre-sorted records into a reused buffer.
//! - `block/decode`: [`FrameIter`] validating every block and reading every record in place.
//! - `map/sort_spill/{std,uring}`: a whole map task ([`run_map`]) of an identity job over one
//!   input file: read, partition, sort, encode and write one run file.
//! - `reduce/merge`: reduce partitions `0..4` over the runs of 4 map tasks.
//! - `merge_factor/F`: one reduce partition over the runs of 1,024 map tasks, with a merge
//!   factor of F (F < 1,024 merges in passes through intermediate runs on disk): what
//!   [`DEFAULT_MERGE_FACTOR`] was chosen by.
//! - `small_files/{read,mmap}/SIZE`: opening 256 files of SIZE bytes and scanning their bytes,
//!   with one `read` each or with a memory map each: what `input::READ_BELOW` was chosen by.
//!
//! Every benchmark processes the same [`RECORDS`] records per iteration, and reports
//! throughput in bytes of those records, so the figures compare directly.
//!
//! `cargo bench -p quern-benches --bench sort_blocks` runs them; append `-- --test` for a
//! quick smoke run (each benchmark once).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use quern_runtime::input::map_file;
use quern_runtime::io::IoService;
use quern_runtime::map::{run_map, MapEnv, RunFile, BLOCK_BYTES};
use quern_runtime::output::OutputDir;
use quern_runtime::task::{reduce_task, Source, TaskEnv, DEFAULT_MERGE_FACTOR};
use quern_runtime::{
    InputFile, InputFormat, Job, MapContext, Record, ReduceContext, Split, TaskControl,
};
use quern_shuffle::{BlockWriter, FrameIter};
use rkyv::util::AlignedVec;

/// Records processed per iteration (20 MB of input).
const RECORDS: usize = 200_000;
const RECORD_LEN: usize = 100;
const KEY_LEN: usize = 10;
/// Bytes of input per iteration, the unit of every throughput figure.
const INPUT_BYTES: u64 = (RECORDS * RECORD_LEN) as u64;
/// Reduce partitions of the map and reduce benchmarks.
const REDUCERS: u32 = 4;
/// Map tasks whose runs the reduce benchmark merges.
const MAPS: u64 = 4;
/// Sort buffer of a map task: large enough that a task writes exactly one run.
const MAP_MEMORY: usize = 256 << 20;

/// TeraSort-like records, back to back: deterministic pseudo-random bytes (splitmix64).
fn records() -> Vec<u8> {
    let mut state = 0x5eed_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut data = vec![0u8; RECORDS * RECORD_LEN];
    for chunk in data.chunks_mut(8) {
        let word = next().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    data
}

/// The records as `(key, value)` pairs, sorted by key then value (as a spill writes them).
fn sorted_pairs(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut pairs: Vec<_> = data
        .chunks_exact(RECORD_LEN)
        .map(|r| r.split_at(KEY_LEN))
        .collect();
    pairs.sort_unstable();
    pairs
}

/// Identity TeraSort-style job: key = first 10 bytes, value = the other 90; reduce writes
/// each record back unchanged.
#[derive(Debug)]
struct Identity;

impl Job for Identity {
    fn name(&self) -> &str {
        "identity"
    }

    fn input_format(&self) -> InputFormat {
        InputFormat::Fixed(RECORD_LEN)
    }

    fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
        let (key, value) = record.data.split_at(KEY_LEN);
        ctx.emit(key, value);
    }

    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        for value in values {
            ctx.write(key);
            ctx.write(value);
        }
    }
}

/// Removes every file in `dir` (run or output files of the previous iteration).
fn clean_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read work dir") {
        let path = entry.expect("read work dir entry").path();
        std::fs::remove_file(&path).expect("remove old file");
    }
}

/// Writes the records to `dir/input` and describes it as the job's only input file.
fn input_file(dir: &Path, data: &[u8]) -> InputFile {
    let path = dir.join("input");
    std::fs::write(&path, data).expect("write input file");
    InputFile {
        index: 0,
        name: "input".into(),
        path,
        size: data.len() as u64,
    }
}

fn bench_blocks(c: &mut Criterion) {
    let data = records();
    let pairs = sorted_pairs(&data);
    let mut group = c.benchmark_group("block");
    group.throughput(Throughput::Bytes(INPUT_BYTES));

    let mut writer = BlockWriter::new(BLOCK_BYTES);
    let mut out = Vec::with_capacity(data.len() * 2);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            for &(key, value) in &pairs {
                writer.push(key, value, &mut out).expect("push record");
            }
            writer.flush(&mut out).expect("flush block");
            black_box(out.len())
        })
    });

    let mut encoded = AlignedVec::<16>::with_capacity(out.len());
    encoded.extend_from_slice(&out);
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            let mut records = 0usize;
            for block in FrameIter::new(&encoded) {
                let block = block.expect("valid block");
                for (key, _value) in block.iter() {
                    sum += u64::from(black_box(key[0]));
                }
                records += block.len();
            }
            assert_eq!(records, RECORDS);
            black_box(sum)
        })
    });
    group.finish();
}

fn bench_map(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("create work dir");
    let input = input_file(dir.path(), &records());
    let split = Split::single(0, 0, INPUT_BYTES);

    let mut backends = vec![("std", IoService::std())];
    match IoService::uring() {
        Ok(service) => backends.push(("uring", service)),
        Err(e) => eprintln!("map/sort_spill/uring skipped: {e}"),
    }

    let mut group = c.benchmark_group("map");
    group.throughput(Throughput::Bytes(INPUT_BYTES));
    // ~100 ms per iteration: equal-sized samples keep the run within its measurement time.
    group.sampling_mode(SamplingMode::Flat);
    for (label, io) in &backends {
        let env = MapEnv {
            io,
            work_dir: &work,
            reducers: REDUCERS,
            memory: MAP_MEMORY,
        };
        group.bench_function(BenchmarkId::new("sort_spill", label), |b| {
            b.iter_batched(
                || clean_dir(&work),
                |()| {
                    let (output, _counters) = run_map(
                        &Identity,
                        std::slice::from_ref(&input),
                        &split,
                        "map-0",
                        &env,
                        &TaskControl::default(),
                    )
                    .expect("map task");
                    assert_eq!(output.runs.len(), 1, "the task must write one run");
                    output
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// Runs `maps` map tasks over equal splits of the input into `work`, for `reducers`
/// partitions; returns every run with its map's index.
fn map_runs(
    input: &InputFile,
    work: &Path,
    io: &IoService,
    maps: u64,
    reducers: u32,
) -> Vec<(u32, RunFile)> {
    let env = MapEnv {
        io,
        work_dir: work,
        reducers,
        memory: MAP_MEMORY,
    };
    let per_map = RECORDS as u64 / maps * RECORD_LEN as u64;
    (0..maps)
        .flat_map(|m| {
            let len = if m + 1 == maps {
                INPUT_BYTES - m * per_map
            } else {
                per_map
            };
            let split = Split::single(0, m * per_map, len);
            let (output, _) = run_map(
                &Identity,
                std::slice::from_ref(input),
                &split,
                &format!("map-{m}"),
                &env,
                &TaskControl::default(),
            )
            .expect("map task");
            output.runs.into_iter().map(move |r| (m as u32, r))
        })
        .collect()
}

/// Reduces partition `part` of `runs` into `out` (attempt 0), merging `factor` at once.
fn reduce_part(
    runs: &[(u32, RunFile)],
    part: u32,
    factor: usize,
    out: &OutputDir,
    work: &Path,
    io: &IoService,
) -> u128 {
    let env = TaskEnv {
        io,
        work_dir: work,
        reducers: 1,
        memory: 256 << 20,
        merge_factor: factor,
    };
    let mut input = env.reduce_input(part, 0);
    for (map, run) in runs {
        input.add(Source::of_run(run, part as usize, Some(*map)).expect("segment"));
    }
    let counters = reduce_task(&Identity, input, part, 0, out, io, &TaskControl::default())
        .expect("reduce task");
    counters.get("output.bytes")
}

fn bench_reduce(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("create work dir");
    let input = input_file(dir.path(), &records());
    let io = IoService::std();
    let out_root = dir.path().join("out");

    let runs = map_runs(&input, &work, &io, MAPS, REDUCERS);
    let mut group = c.benchmark_group("reduce");
    group.throughput(Throughput::Bytes(INPUT_BYTES));
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("merge", |b| {
        b.iter_batched(
            || {
                let _ = std::fs::remove_dir_all(&out_root);
                OutputDir::create(&out_root).expect("output dir")
            },
            |out| {
                let bytes: u128 = (0..REDUCERS)
                    .map(|part| reduce_part(&runs, part, DEFAULT_MERGE_FACTOR, &out, &work, &io))
                    .sum();
                assert_eq!(bytes, u128::from(INPUT_BYTES));
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let many = dir.path().join("many");
    std::fs::create_dir(&many).expect("create work dir");
    let runs = map_runs(&input, &many, &io, 1024, 1);
    let mut group = c.benchmark_group("merge_factor");
    group.throughput(Throughput::Bytes(INPUT_BYTES));
    group.sampling_mode(SamplingMode::Flat);
    for factor in [16usize, 64, 128, 256, 1024] {
        group.bench_function(BenchmarkId::from_parameter(factor), |b| {
            b.iter_batched(
                || {
                    let _ = std::fs::remove_dir_all(&out_root);
                    OutputDir::create(&out_root).expect("output dir")
                },
                |out| {
                    let bytes = reduce_part(&runs, 0, factor, &out, &many, &io);
                    assert_eq!(bytes, u128::from(INPUT_BYTES));
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn bench_small_files(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let data = records();
    let mut group = c.benchmark_group("small_files");
    for size in [4usize << 10, 16 << 10, 64 << 10, 256 << 10] {
        let files: Vec<std::path::PathBuf> = (0..256)
            .map(|i| {
                let path = dir.path().join(format!("f{size}-{i}"));
                let start = (i * 4099) % (data.len() - size);
                std::fs::write(&path, &data[start..start + size]).expect("write file");
                path
            })
            .collect();
        group.throughput(Throughput::Bytes((size * files.len()) as u64));
        let scan = |bytes: &[u8]| bytes.iter().step_by(64).map(|&b| u64::from(b)).sum::<u64>();
        group.bench_function(BenchmarkId::new("read", size), |b| {
            b.iter(|| {
                let mut sum = 0;
                for f in &files {
                    sum += scan(&std::fs::read(f).expect("read"));
                }
                black_box(sum)
            })
        });
        group.bench_function(BenchmarkId::new("mmap", size), |b| {
            b.iter(|| {
                let mut sum = 0;
                for f in &files {
                    let file = std::fs::File::open(f).expect("open");
                    let map = map_file(&file, f, 0, size as u64).expect("map");
                    sum += scan(&map);
                }
                black_box(sum)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench_blocks, bench_map, bench_reduce, bench_small_files
}
criterion_main!(benches);
