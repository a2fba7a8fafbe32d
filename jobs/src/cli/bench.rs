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
use quern_runtime::{Error, JobReport};
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
    #[command(flatten)]
    run: RunArgs,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationRecord {
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
    /// teravalidate's wall time.
    pub teravalidate_s: f64,
    /// What teravalidate found (of the last sort's output).
    pub validation: ValidationRecord,
    /// The figures of the run, as the table shows them.
    pub figures: Vec<Figure>,
    /// Latency percentiles of the median sort.
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
        run,
    } = args;
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

    let mut sorts: Vec<(SortRun, JobReport)> = Vec::new();
    for i in 0..repeat {
        if i > 0 {
            std::fs::remove_dir_all(&output).map_err(|e| Error::io(&output, e))?;
        }
        say(format!("terasort, run {} of {repeat}", i + 1));
        let t = Instant::now();
        let report = terasort(&run, registry, std::slice::from_ref(&input), &output)?;
        let wall_s = t.elapsed().as_secs_f64();
        let r = report.report.as_ref().ok_or_else(|| {
            Error::JobFailed("the sort succeeded but its report is missing".into())
        })?;
        sorts.push((sort_run(wall_s, r), report));
    }

    say("teravalidate".into());
    let t = Instant::now();
    let v = teravalidate(
        &run,
        registry,
        std::slice::from_ref(&output),
        Some(validate.clone()),
    )?;
    let teravalidate_s = t.elapsed().as_secs_f64();
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
    let validation = ValidationRecord {
        ok: problems.is_empty(),
        records: u64::try_from(v.records).unwrap_or(u64::MAX),
        misorders: u64::try_from(v.misorders).unwrap_or(u64::MAX),
        duplicates: u64::try_from(v.duplicates).unwrap_or(u64::MAX),
        checksum: format!("{:x}", v.checksum),
        problems,
    };

    // The median run (by command wall time) speaks for the sort: its report is the one
    // written beside bench.json.
    let mut order: Vec<usize> = (0..sorts.len()).collect();
    order.sort_by(|&a, &b| sorts[a].0.wall_s.total_cmp(&sorts[b].0.wall_s));
    let median = &sorts[order[order.len() / 2]];
    let median_report =
        median.1.report.as_ref().ok_or_else(|| {
            Error::JobFailed("the sort succeeded but its report is missing".into())
        })?;
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
        teravalidate_s,
        figures: figures(
            bytes,
            &cluster,
            teragen_s,
            teravalidate_s,
            &sorts.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
            median_report,
        ),
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
        validation,
    };
    quern_runtime::report::write_dir(median_report, &dir)?;
    let json = serde_json::to_string_pretty(&record)
        .map_err(|e| Error::JobFailed(format!("cannot encode {BENCH_JSON}: {e}")))?;
    let md = render_md(&record, previous.as_ref());
    write_file(&dir.join(BENCH_JSON), json.as_bytes())?;
    write_file(&dir.join("bench.md"), md.as_bytes())?;
    let _ = std::io::stdout().write_all(md.as_bytes());
    if record.validation.ok {
        Ok(Outcome::Ok)
    } else {
        eprintln!(
            "quern bench: the sorted output is wrong: {}",
            record.validation.problems.join("; ")
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
fn sort_run(wall_s: f64, r: &Report) -> SortRun {
    let job_s = r.wall_us as f64 / 1e6;
    let map_end = r
        .phases
        .iter()
        .find(|p| p.phase == quern_runtime::report::PhaseName::Map)
        .map_or(0.0, |p| p.end_us as f64 / 1e6);
    SortRun {
        wall_s,
        job_s,
        map_phase_s: map_end,
        reduce_phase_s: (job_s - map_end).max(0.0),
    }
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

/// The figures of a run, in table order.
fn figures(
    bytes: u64,
    cluster: &ClusterRecord,
    teragen_s: f64,
    teravalidate_s: f64,
    sorts: &[SortRun],
    median: &Report,
) -> Vec<Figure> {
    let fig = |name: &str, value: f64, unit: &str, higher_is_better: bool| Figure {
        name: name.into(),
        value,
        unit: unit.into(),
        higher_is_better,
    };
    let mut walls: Vec<f64> = sorts.iter().map(|s| s.wall_s).collect();
    walls.sort_by(f64::total_cmp);
    let med = walls[walls.len() / 2];
    let mb_per_s = bytes as f64 / 1e6 / med.max(1e-9);
    let m = sort_run(med, median);
    let mut out = vec![
        fig("teragen wall", teragen_s, "s", false),
        fig("terasort wall (median)", med, "s", false),
        fig("terasort wall (min)", walls[0], "s", false),
        fig("terasort wall (max)", walls[walls.len() - 1], "s", false),
        fig("terasort job (median run)", m.job_s, "s", false),
        fig("map phase (median run)", m.map_phase_s, "s", false),
        fig("reduce phase (median run)", m.reduce_phase_s, "s", false),
        fig("teravalidate wall", teravalidate_s, "s", false),
        fig("sort throughput", mb_per_s, "MB/s", true),
        fig(
            "sort throughput per node",
            mb_per_s / f64::from(cluster.nodes.max(1)),
            "MB/s",
            true,
        ),
        fig(
            "sort throughput per core (task slot)",
            mb_per_s / f64::from(cluster.slots.max(1)),
            "MB/s",
            true,
        ),
    ];
    // Latency percentiles, of the histograms with more than one sample (the phase ends are
    // one sample each, and figures above already).
    for h in &median.histograms {
        if h.percentiles.count <= 1 || !h.is_duration() {
            continue;
        }
        for (p, v) in [
            ("p50", h.percentiles.p50),
            ("p99", h.percentiles.p99),
            ("p99.9", h.percentiles.p999),
            ("max", h.percentiles.max),
        ] {
            out.push(fig(&format!("{} {p}", h.name), v as f64 / 1e3, "ms", false));
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
    let _ = writeln!(
        md,
        "Validation: **{}** — {} records, {} out of order, {} duplicate keys, checksum {} (teragen's {}).{}\n",
        if r.validation.ok { "passed" } else { "FAILED" },
        r.validation.records,
        r.validation.misorders,
        r.validation.duplicates,
        r.validation.checksum,
        r.checksum,
        if r.validation.problems.is_empty() {
            String::new()
        } else {
            format!(" Problems: {}.", r.validation.problems.join("; "))
        }
    );
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
    let _ = writeln!(md, "\nSort runs (s):\n\n| run | command | job | map phase | reduce phase |\n|---:|---:|---:|---:|---:|");
    for (i, s) in r.sorts.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            i + 1,
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
