//! `quern bench terasort`: teragen → terasort → teravalidate as one benchmark, with the
//! result validated and a report a benchmark needs (`DIR/bench.json`, `bench.md`, and the
//! sort's `report.html`).
//!
//! Data lives in `DIR/input`, `DIR/output` and `DIR/validate`; they are removed at the end
//! unless `--keep`. Before anything runs, the free space of the filesystems that will hold
//! the input, the output and the map output (the workers' work dirs: the temporary
//! directory, for the local cluster) is checked against what the run needs.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use quern_runtime::report::{human_bytes, Report};
use quern_runtime::Error;
use serde::{Deserialize, Serialize};

use super::{parse_size, teragen, terasort, teravalidate, Outcome, RunArgs, RunMode};
use crate::gensort::RECORD_LEN;
use crate::machine::{Disk, Machine};
use crate::registry::Registry;
use crate::tera::{self, TeraGen};

/// Map output of terasort per input byte, with the block framing (measured: about 1.01)
/// and a margin.
const MAP_OUTPUT_PER_INPUT: f64 = 1.05;
/// Free space left over on every filesystem after the run, at least.
const SLACK_BYTES: u64 = 256 << 20;
/// The file the figures are kept in, and that `--compare` reads.
pub const BENCH_JSON: &str = "bench.json";
/// [`BenchRecord::version`].
const BENCH_VERSION: u32 = 1;

/// Arguments of `quern bench terasort`.
#[derive(Debug, Args)]
pub(super) struct TerasortBench {
    /// Input size in bytes, e.g. 16GB (K/M/G powers of 1000, KiB/MiB/GiB of 1024), rounded
    /// down to whole 100-byte records.
    #[arg(long, value_parser = parse_size, required_unless_present = "records", conflicts_with = "records")]
    size: Option<u64>,
    /// Input size in 100-byte records.
    #[arg(long)]
    records: Option<u64>,
    /// Where the data and the report go: DIR/input, DIR/output, DIR/validate (removed at the
    /// end unless --keep), DIR/bench.json, DIR/bench.md, DIR/report.html. On a cluster
    /// given with --coordinator it must be a path every worker sees.
    #[arg(long)]
    dir: PathBuf,
    /// Keep the generated input, the sorted output and the validation output.
    #[arg(long)]
    keep: bool,
    /// Run the sort N times (the same input) and report median, min and max.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// A bench.json of an earlier run, to put beside this one (ratio per figure).
    #[arg(long, value_name = "FILE")]
    compare: Option<PathBuf>,
    /// Generate ASCII records (gensort -a) instead of binary ones.
    #[arg(long)]
    ascii: bool,
    /// How the sort writes its files, one or both (then in alternation, each run): buffered
    /// (through the page cache) or direct (O_DIRECT, as --direct-io). Each mode's output is
    /// validated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "buffered")]
    io: Vec<IoMode>,
    /// Measure from disk: write back and drop the page cache (`sync; echo 3 >
    /// /proc/sys/vm/drop_caches`, needs root) before each sort and each validation.
    #[arg(long)]
    cold: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// How a sort writes its files.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// Through the page cache.
    Buffered,
    /// With O_DIRECT (`--direct-io`).
    Direct,
}

impl IoMode {
    /// What the figures of this mode's sorts are called after (nothing for buffered I/O,
    /// the default, so that figures keep their names).
    fn suffix(self) -> &'static str {
        match self {
            IoMode::Buffered => "",
            IoMode::Direct => ", direct I/O",
        }
    }
}

/// The file that drops the page cache.
const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// Writes dirty pages back and drops the page cache, dentries and inodes.
fn drop_caches() -> Result<(), Error> {
    rustix::fs::sync();
    std::fs::write(DROP_CACHES, "3\n").map_err(|e| Error::io(DROP_CACHES, e))
}

/// One figure of a benchmark: what `--compare` lines up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// What is measured, e.g. `terasort wall (median)`.
    pub name: String,
    /// The value, in `unit`.
    pub value: f64,
    /// `s`, `MB/s`, `ms`.
    pub unit: String,
    /// True when a higher value is better (throughput).
    pub higher_is_better: bool,
}

/// One run of the sort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SortRun {
    /// How it wrote its files.
    pub io: IoMode,
    /// The command's wall time: planning, sampling, cluster start, job, commit.
    pub wall_s: f64,
    /// The job's own wall time (submit → commit), as its report says.
    pub job_s: f64,
    /// Job start → the last map's commit.
    pub map_phase_s: f64,
    /// The last map's commit → the job's commit.
    pub reduce_phase_s: f64,
}

/// What teravalidate found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationRecord {
    /// The I/O mode of the sort whose output this is.
    pub io: IoMode,
    /// teravalidate's wall time.
    pub wall_s: f64,
    /// Sorted, complete and the same records as generated.
    pub ok: bool,
    /// Records found in the output.
    pub records: u64,
    /// Records out of order.
    pub misorders: u64,
    /// Duplicate keys (gensort's input has a few by chance).
    pub duplicates: u64,
    /// The output's checksum, in hex.
    pub checksum: String,
    /// Each problem found, one line each (empty when `ok`).
    pub problems: Vec<String>,
}

/// The cluster the benchmark ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// `local cluster` or `cluster at ADDR`.
    pub mode: String,
    /// Worker processes.
    pub workers: u32,
    /// Distinct hosts among the workers.
    pub nodes: u32,
    /// Task slots in all.
    pub slots: u32,
}

/// A latency histogram's percentiles, in its unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyRecord {
    /// The histogram's name (`map_attempt`, `fetch`, ...).
    pub name: String,
    /// Its unit (`us`).
    pub unit: String,
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

/// `DIR/bench.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRecord {
    /// Format version ([`BENCH_VERSION`]).
    pub version: u32,
    /// `terasort`.
    pub bench: String,
    /// The command line, quoted for a shell.
    pub command: String,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The machine that ran the command.
    pub machine: Machine,
    /// The filesystems of the data (input and output; the map output's).
    pub disks: Vec<Disk>,
    /// The cluster.
    pub cluster: ClusterRecord,
    /// Records sorted.
    pub records: u64,
    /// Bytes sorted.
    pub bytes: u64,
    /// Map tasks of the sort.
    pub map_tasks: u32,
    /// Reduce tasks of the sort.
    pub reduce_tasks: u32,
    /// teragen's checksum of the input, in hex.
    pub checksum: String,
    /// teragen's wall time.
    pub teragen_s: f64,
    /// Each run of the sort.
    pub sorts: Vec<SortRun>,
    /// Page cache dropped before each sort and validation (`--cold`).
    pub cold: bool,
    /// What teravalidate found, for the last sort of each I/O mode.
    pub validations: Vec<ValidationRecord>,
    /// The figures of the run, as the table shows them.
    pub figures: Vec<Figure>,
    /// Latency percentiles of the median sort (of the first I/O mode).
    pub latencies: Vec<LatencyRecord>,
}

/// Runs `quern bench terasort`.
pub(super) fn terasort_bench(args: TerasortBench, registry: &Registry) -> Result<Outcome, Error> {
    let TerasortBench {
        size,
        records,
        dir,
        keep,
        repeat,
        compare,
        ascii,
        mut io,
        cold,
        run,
    } = args;
    io.sort();
    io.dedup();
    let records = match (records, size) {
        (Some(r), _) => r,
        (None, Some(bytes)) => bytes / RECORD_LEN as u64,
        (None, None) => return Err(Error::Usage("give --size or --records".into())),
    };
    if records == 0 {
        return Err(Error::Usage(format!(
            "the benchmark needs at least one {RECORD_LEN}-byte record (--size {} is smaller)",
            size.unwrap_or(0)
        )));
    }
    let mode = run.mode()?;
    if matches!(mode, RunMode::Sequential | RunMode::InProcess { .. }) {
        return Err(Error::Usage(format!(
            "quern bench runs on a cluster (the local cluster, or --coordinator); this one runs {}, which measures no latencies",
            mode.describe()
        )));
    }
    if run.report.is_some() || run.resume {
        return Err(Error::Usage(
            "--report and --resume do not apply to quern bench: it writes its report into --dir and starts from nothing".into(),
        ));
    }
    if cold {
        if let RunMode::Remote { addr, .. } = &mode {
            return Err(Error::Usage(format!(
                "--cold drops this host's page cache only; the workers of the cluster at {addr} would keep theirs"
            )));
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(DROP_CACHES)
            .map_err(|e| {
                Error::Usage(format!(
                    "--cold drops the page cache, which needs root: cannot open {DROP_CACHES}: {e}"
                ))
            })?;
    }
    let previous = compare.as_deref().map(load).transpose()?;
    let bytes = records * RECORD_LEN as u64;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let (input, output, validate) = (dir.join("input"), dir.join("output"), dir.join("validate"));
    for d in [&input, &output, &validate] {
        if d.exists() {
            return Err(Error::Usage(format!(
                "{} already exists (kept by an earlier bench with --keep?); remove it or choose another --dir",
                d.display()
            )));
        }
    }
    let disks = check_space(&dir, bytes, &mode)?;
    let command = shell_command(std::env::args());
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let say = |line: String| {
        if !run.quiet {
            eprintln!("quern bench: {line}");
        }
    };
    say(format!(
        "terasort of {records} records ({}), {} sort run(s), in {}",
        human_bytes(u128::from(bytes)),
        repeat,
        dir.display()
    ));

    // Data is removed on every way out unless --keep, so a failed run leaves no stray input.
    let _cleanup = Cleanup {
        dirs: if keep {
            Vec::new()
        } else {
            vec![input.clone(), output.clone(), validate.clone()]
        },
    };
    say("teragen".into());
    let gen = TeraGen {
        records,
        seed: 0,
        ascii,
    };
    let t = Instant::now();
    let generated = teragen(&run, registry, &gen, None, &input)?;
    let teragen_s = t.elapsed().as_secs_f64();
    let checksum = generated.counters.get(tera::CHECKSUM);

    // Every sort of every I/O mode, in the order run; each mode's last output is validated
    // before the next sort replaces it.
    let mut sorts: Vec<(SortRun, Report)> = Vec::new();
    let mut validations = Vec::new();
    for i in 0..repeat {
        for &mode in &io {
            if output.exists() {
                std::fs::remove_dir_all(&output).map_err(|e| Error::io(&output, e))?;
            }
            if cold {
                drop_caches()?;
            }
            say(format!(
                "terasort ({mode:?} I/O), run {} of {repeat}",
                i + 1
            ));
            let mut sort_args = run.clone();
            sort_args.direct_io = mode == IoMode::Direct;
            let t = Instant::now();
            let report = terasort(&sort_args, registry, std::slice::from_ref(&input), &output)?;
            let wall_s = t.elapsed().as_secs_f64();
            let r = report.report.ok_or_else(|| {
                Error::JobFailed("the sort succeeded but its report is missing".into())
            })?;
            sorts.push((sort_run(mode, wall_s, &r), r));
            if i + 1 == repeat {
                if cold {
                    drop_caches()?;
                }
                if validate.exists() {
                    std::fs::remove_dir_all(&validate).map_err(|e| Error::io(&validate, e))?;
                }
                say(format!("teravalidate of the {mode:?} I/O output"));
                validations.push(validation(
                    mode, &run, registry, &output, &validate, records, checksum,
                )?);
            }
        }
    }

    // The median run of the first I/O mode speaks for the sort: its report is the one
    // written beside bench.json.
    let runs = runs_of(&sorts, io[0]);
    let median_report = &runs[runs.len() / 2].1;
    let cluster = ClusterRecord {
        mode: match &mode {
            RunMode::Remote { addr, .. } => format!("cluster at {addr}"),
            _ => "local cluster".into(),
        },
        workers: median_report.workers.len() as u32,
        nodes: nodes(median_report),
        slots: median_report.workers.iter().map(|w| w.slots).sum(),
    };
    let record = BenchRecord {
        version: BENCH_VERSION,
        bench: "terasort".into(),
        command,
        started_unix_ms,
        machine: Machine::read(),
        disks,
        records,
        bytes,
        map_tasks: median_report.map_tasks,
        reduce_tasks: median_report.reduce_tasks,
        checksum: format!("{checksum:x}"),
        teragen_s,
        cold,
        figures: figures(bytes, &cluster, teragen_s, &io, &validations, &sorts),
        latencies: median_report
            .histograms
            .iter()
            .map(|h| LatencyRecord {
                name: h.name.clone(),
                unit: h.unit.clone(),
                count: h.percentiles.count,
                p50: h.percentiles.p50,
                p99: h.percentiles.p99,
                p999: h.percentiles.p999,
                max: h.percentiles.max,
            })
            .collect(),
        sorts: sorts.iter().map(|s| s.0.clone()).collect(),
        cluster,
        validations,
    };
    quern_runtime::report::write_dir(median_report, &dir)?;
    let json = serde_json::to_string_pretty(&record)
        .map_err(|e| Error::JobFailed(format!("cannot encode {BENCH_JSON}: {e}")))?;
    let md = render_md(&record, previous.as_ref());
    write_file(&dir.join(BENCH_JSON), json.as_bytes())?;
    write_file(&dir.join("bench.md"), md.as_bytes())?;
    let _ = std::io::stdout().write_all(md.as_bytes());
    let wrong: Vec<String> = record
        .validations
        .iter()
        .filter(|v| !v.ok)
        .map(|v| format!("{:?} I/O: {}", v.io, v.problems.join("; ")))
        .collect();
    if wrong.is_empty() {
        Ok(Outcome::Ok)
    } else {
        eprintln!(
            "quern bench: the sorted output is wrong: {}",
            wrong.join("; ")
        );
        Ok(Outcome::Negative)
    }
}

/// Removes the benchmark's data directories when dropped.
struct Cleanup {
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.dirs {
            if let Err(e) = std::fs::remove_dir_all(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("quern bench: cannot remove {}: {e}", d.display());
                }
            }
        }
    }
}

/// Checks that the data fits: input and output (and the validation report) on `dir`'s
/// filesystem; map output in the workers' work dirs, which for the local cluster are in
/// the temporary directory. Returns the filesystems, for the report.
fn check_space(dir: &Path, bytes: u64, mode: &RunMode) -> Result<Vec<Disk>, Error> {
    let data = Disk::of(dir)?;
    let mut needs = vec![(
        data.clone(),
        bytes.saturating_mul(2),
        "input and output".to_string(),
    )];
    if let RunMode::LocalCluster { .. } = mode {
        let tmp = Disk::of(&std::env::temp_dir())?;
        let map_output = (bytes as f64 * MAP_OUTPUT_PER_INPUT) as u64;
        match needs.iter_mut().find(|(d, _, _)| d.dev == tmp.dev) {
            Some(same) => {
                same.1 = same.1.saturating_add(map_output);
                same.2.push_str(" and map output");
            }
            None => needs.push((tmp, map_output, "map output".into())),
        }
    }
    for (disk, need, what) in &needs {
        let need = need.saturating_add(SLACK_BYTES);
        if disk.free_bytes < need {
            return Err(Error::Usage(format!(
                "a bench of {} needs {} free for its {what} on {} (filesystem {} at {}), but {} is free",
                human_bytes(u128::from(bytes)),
                human_bytes(u128::from(need)),
                disk.path.display(),
                disk.device,
                disk.mount.display(),
                human_bytes(u128::from(disk.free_bytes)),
            )));
        }
    }
    Ok(needs.into_iter().map(|(d, _, _)| d).collect())
}

/// One sort's times, from its report.
fn sort_run(io: IoMode, wall_s: f64, r: &Report) -> SortRun {
    let job_s = r.wall_us as f64 / 1e6;
    let map_end = r
        .phases
        .iter()
        .find(|p| p.phase == quern_runtime::report::PhaseName::Map)
        .map_or(0.0, |p| p.end_us as f64 / 1e6);
    SortRun {
        io,
        wall_s,
        job_s,
        map_phase_s: map_end,
        reduce_phase_s: (job_s - map_end).max(0.0),
    }
}

/// Validates the sorted `output` into `validate` and checks it against what teragen
/// generated: every record (count and checksum) and in order.
fn validation(
    io: IoMode,
    run: &RunArgs,
    registry: &Registry,
    output: &Path,
    validate: &Path,
    records: u64,
    checksum: u128,
) -> Result<ValidationRecord, Error> {
    let t = Instant::now();
    let v = teravalidate(
        run,
        registry,
        std::slice::from_ref(&output.to_path_buf()),
        Some(validate.to_path_buf()),
    )?;
    let wall_s = t.elapsed().as_secs_f64();
    let mut problems: Vec<String> = String::from_utf8_lossy(&v.problems)
        .lines()
        .map(str::to_string)
        .collect();
    if v.records != u128::from(records) {
        problems.push(format!(
            "{} records in the output, {records} generated",
            v.records
        ));
    }
    if v.checksum != checksum {
        problems.push(format!(
            "output checksum {:x} differs from the input's {checksum:x}",
            v.checksum
        ));
    }
    if v.misorders > 0 {
        problems.push(format!("{} records out of order", v.misorders));
    }
    Ok(ValidationRecord {
        io,
        wall_s,
        ok: problems.is_empty(),
        records: u64::try_from(v.records).unwrap_or(u64::MAX),
        misorders: u64::try_from(v.misorders).unwrap_or(u64::MAX),
        duplicates: u64::try_from(v.duplicates).unwrap_or(u64::MAX),
        checksum: format!("{:x}", v.checksum),
        problems,
    })
}

/// The sorts of I/O mode `io`, fastest first (by command wall time): `[len / 2]` is the
/// median run, which speaks for the mode.
fn runs_of(sorts: &[(SortRun, Report)], io: IoMode) -> Vec<&(SortRun, Report)> {
    let mut runs: Vec<_> = sorts.iter().filter(|s| s.0.io == io).collect();
    runs.sort_by(|a, b| a.0.wall_s.total_cmp(&b.0.wall_s));
    runs
}

/// Distinct hosts among the job's workers.
fn nodes(r: &Report) -> u32 {
    let hosts: std::collections::BTreeSet<&str> = r
        .workers
        .iter()
        .map(|w| w.addr.rsplit_once(':').map_or(w.addr.as_str(), |(h, _)| h))
        .collect();
    hosts.len().max(1) as u32
}

/// The figures of a run, in table order: per I/O mode, the sort's times (median, min, max
/// of its runs; the phases and latencies of its median run) and throughput.
fn figures(
    bytes: u64,
    cluster: &ClusterRecord,
    teragen_s: f64,
    io: &[IoMode],
    validations: &[ValidationRecord],
    sorts: &[(SortRun, Report)],
) -> Vec<Figure> {
    let fig = |name: String, value: f64, unit: &str, higher_is_better: bool| Figure {
        name,
        value,
        unit: unit.into(),
        higher_is_better,
    };
    let mut out = vec![fig("teragen wall".into(), teragen_s, "s", false)];
    for &io in io {
        let x = io.suffix();
        let runs = runs_of(sorts, io);
        let (min, med, max) = (runs[0], runs[runs.len() / 2], runs[runs.len() - 1]);
        let m = &med.0;
        let mb_per_s = bytes as f64 / 1e6 / m.wall_s.max(1e-9);
        out.extend([
            fig(format!("terasort wall (median){x}"), m.wall_s, "s", false),
            fig(format!("terasort wall (min){x}"), min.0.wall_s, "s", false),
            fig(format!("terasort wall (max){x}"), max.0.wall_s, "s", false),
            fig(format!("terasort job (median run){x}"), m.job_s, "s", false),
            fig(
                format!("map phase (median run){x}"),
                m.map_phase_s,
                "s",
                false,
            ),
            fig(
                format!("reduce phase (median run){x}"),
                m.reduce_phase_s,
                "s",
                false,
            ),
        ]);
        if let Some(v) = validations.iter().find(|v| v.io == io) {
            out.push(fig(format!("teravalidate wall{x}"), v.wall_s, "s", false));
        }
        out.extend([
            fig(format!("sort throughput{x}"), mb_per_s, "MB/s", true),
            fig(
                format!("sort throughput per node{x}"),
                mb_per_s / f64::from(cluster.nodes.max(1)),
                "MB/s",
                true,
            ),
            fig(
                format!("sort throughput per core (task slot){x}"),
                mb_per_s / f64::from(cluster.slots.max(1)),
                "MB/s",
                true,
            ),
        ]);
        // Latency percentiles, of the histograms with more than one sample (the phase ends
        // are one sample each, and figures above already).
        for h in &med.1.histograms {
            if h.percentiles.count <= 1 || !h.is_duration() {
                continue;
            }
            for (p, v) in [
                ("p50", h.percentiles.p50),
                ("p99", h.percentiles.p99),
                ("p99.9", h.percentiles.p999),
                ("max", h.percentiles.max),
            ] {
                out.push(fig(
                    format!("{} {p}{x}", h.name),
                    v as f64 / 1e3,
                    "ms",
                    false,
                ));
            }
        }
    }
    out
}

/// bench.md: the figures (beside an earlier run's, with `--compare`), the validation, the
/// machine and the exact command.
fn render_md(r: &BenchRecord, previous: Option<&BenchRecord>) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# quern bench terasort: {} records ({})\n",
        r.records,
        human_bytes(u128::from(r.bytes))
    );
    let _ = writeln!(md, "`{}`\n", r.command);
    for v in &r.validations {
        let _ = writeln!(
            md,
            "Validation of the {:?} I/O output: **{}** — {} records, {} out of order, {} duplicate keys, checksum {} (teragen's {}).{}\n",
            v.io,
            if v.ok { "passed" } else { "FAILED" },
            v.records,
            v.misorders,
            v.duplicates,
            v.checksum,
            r.checksum,
            if v.problems.is_empty() {
                String::new()
            } else {
                format!(" Problems: {}.", v.problems.join("; "))
            }
        );
    }
    if r.cold {
        let _ = writeln!(
            md,
            "Cold: the page cache was written back and dropped before each sort and each validation.\n"
        );
    }
    let _ = writeln!(
        md,
        "Cluster: {}, {} workers on {} node(s), {} task slots; M = {} map tasks, R = {} reduce tasks; {} sort run(s).\n",
        r.cluster.mode,
        r.cluster.workers,
        r.cluster.nodes,
        r.cluster.slots,
        r.map_tasks,
        r.reduce_tasks,
        r.sorts.len()
    );
    match previous {
        None => {
            let _ = writeln!(md, "| figure | value |\n|---|---:|");
            for f in r.figures.iter().filter(|f| f.unit != "ms") {
                let _ = writeln!(md, "| {} | {} |", f.name, value(f));
            }
            let _ = writeln!(
                md,
                "\nLatencies of the median sort:\n\n| histogram | samples | p50 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|"
            );
            for l in r.latencies.iter().filter(|l| l.count > 0) {
                let h = |v| quern_runtime::report::human_value(v, &l.unit);
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    l.name,
                    l.count,
                    h(l.p50),
                    h(l.p99),
                    h(l.p999),
                    h(l.max)
                );
            }
        }
        Some(p) => {
            let _ = writeln!(
                md,
                "Beside `{}` of {} ({} records, quern {}); ratio = this / earlier; ✓ where this run is better.\n",
                p.command, p.machine.hostname, p.records, p.machine.quern_commit
            );
            let _ = writeln!(
                md,
                "| figure | this run | earlier | ratio |\n|---|---:|---:|---:|"
            );
            for f in &r.figures {
                let before = p.figures.iter().find(|g| g.name == f.name);
                let (earlier, ratio) = match before {
                    Some(b) if b.unit == f.unit && b.value > 0.0 => {
                        let ratio = f.value / b.value;
                        let better = if f.higher_is_better {
                            ratio > 1.0
                        } else {
                            ratio < 1.0
                        };
                        (
                            value(b),
                            format!("{ratio:.2}×{}", if better { " ✓" } else { "" }),
                        )
                    }
                    Some(b) => (value(b), "–".into()),
                    None => ("–".into(), "–".into()),
                };
                let _ = writeln!(md, "| {} | {} | {earlier} | {ratio} |", f.name, value(f));
            }
        }
    }
    let _ = writeln!(md, "\nSort runs (s), in the order run:\n\n| run | I/O | command | job | map phase | reduce phase |\n|---:|---|---:|---:|---:|---:|");
    for (i, s) in r.sorts.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {:?} | {:.2} | {:.2} | {:.2} | {:.2} |",
            i + 1,
            s.io,
            s.wall_s,
            s.job_s,
            s.map_phase_s,
            s.reduce_phase_s
        );
    }
    let _ = writeln!(md, "\nMachine:\n");
    for (k, v) in r.machine.lines() {
        let _ = writeln!(md, "- {k}: {v}");
    }
    for d in &r.disks {
        let _ = writeln!(
            md,
            "- disk: {} on {} ({} at {}), {} of {} free before the run",
            d.path.display(),
            d.device,
            d.fstype,
            d.mount.display(),
            human_bytes(u128::from(d.free_bytes)),
            human_bytes(u128::from(d.total_bytes))
        );
    }
    let _ = writeln!(
        md,
        "\nThe median sort's report (task timeline, rates, latency percentiles) is `report.html` beside this file."
    );
    md
}

fn value(f: &Figure) -> String {
    match f.unit.as_str() {
        "s" => format!("{:.2} s", f.value),
        "ms" if f.value < 1.0 => format!("{:.3} ms", f.value),
        "ms" => format!("{:.1} ms", f.value),
        u => format!("{:.1} {u}", f.value),
    }
}

/// Reads an earlier `bench.json` (or the bench.json in a directory).
fn load(path: &Path) -> Result<BenchRecord, Error> {
    let file = if path.is_dir() {
        path.join(BENCH_JSON)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Usage(format!(
            "{}: not a quern bench.json (line {}, column {}): {e}",
            file.display(),
            e.line(),
            e.column()
        ))
    })
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsynced, renamed.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| Error::io(path, e))
}

/// The command line, each argument quoted for a POSIX shell where it needs it.
fn shell_command(args: impl Iterator<Item = String>) -> String {
    let quote = |a: String| {
        let plain = !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,@%+".contains(&b));
        if plain {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    args.map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_for_a_shell() {
        let args = ["quern", "bench", "--dir", "/tmp/a b", "it's", ""].map(String::from);
        assert_eq!(
            shell_command(args.into_iter()),
            r"quern bench --dir '/tmp/a b' 'it'\''s' ''"
        );
    }

    #[test]
    fn a_bench_that_does_not_fit_is_refused_naming_the_free_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = check_space(
            dir.path(),
            u64::MAX / 4,
            &RunMode::LocalCluster { workers: 1 },
        )
        .expect_err("an exabyte does not fit");
        let text = e.to_string();
        assert!(text.contains("needs") && text.contains("is free"), "{text}");
        assert!(e.is_user_error());
        assert!(check_space(dir.path(), 1000, &RunMode::LocalCluster { workers: 1 }).is_ok());
    }
}
