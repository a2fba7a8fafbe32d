//! `simulate`: the real scheduler at the MapReduce paper's scale, on simulated machines.
//!
//! ```text
//! cargo run --release -p quern-benches --bin simulate -- [--config FILE] [--run RUN] [--out DIR]
//! cargo run --release -p quern-benches --bin simulate -- --scale [--config FILE] [--out DIR]
//! ```
//!
//! Without `--scale` it runs Figure 3 of the paper (`--run all`, the default: `normal`,
//! `no-backups`, `killed`) from one parameter file (default: the shipped
//! `benches/sim/paper-sort.toml`), writes `DIR/RUN/report.{json,html}` for each — the same
//! report a real run writes, whose rate plots are Figure 3 — and `DIR/simulate.md`: the
//! total times and their ratios to the normal run beside the paper's, and whether each
//! ratio is within 10 percentage points of the paper's. DIR defaults to
//! `benches/results/figure3`.
//!
//! `--scale` runs the file's `[scale]` job (M = 200,000, R = 5,000, 2,000 workers, 250 ms
//! heartbeats) and prints its wall time, the scheduler's events per second and memory (heap
//! bytes counted by this binary's allocator, and peak RSS), and writes `DIR/scale.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use quern_benches::sim::{self, Outcome, Params, Run, SimError};

/// Counts live and peak heap bytes: the scheduler's memory is measured, not guessed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Debug, Parser)]
#[command(
    about = "Simulate the MapReduce paper's Figure 3 (or the scheduler at scale) with the real scheduler"
)]
struct Args {
    /// Parameter file (TOML); default: the shipped benches/sim/paper-sort.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Which Figure 3 run: normal, no-backups, killed or all.
    #[arg(long, default_value = "all")]
    run: String,
    /// Output directory; default: benches/results/figure3.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run the [scale] job instead of Figure 3.
    #[arg(long)]
    scale: bool,
    /// Also run all three runs with the next N-1 seeds and judge the medians of their
    /// ratios: one seed's stragglers are one draw (reports are written for the file's seed).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
}

/// The paper's total times (§5.3-5.5), s.
const PAPER: [(Run, f64); 3] = [
    (Run::Normal, 891.0),
    (Run::NoBackups, 1283.0),
    (Run::Killed, 933.0),
];

/// How far a simulated ratio may be from the paper's, percentage points.
const TOLERANCE_PP: f64 = 10.0;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simulate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), SimError> {
    let params = match &args.config {
        Some(path) => Params::load(path)?,
        None => Params::paper_sort()?,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results/figure3"));
    if args.scale {
        return scale(&params, &out);
    }
    let runs: Vec<Run> = if args.run == "all" {
        Run::ALL.to_vec()
    } else {
        vec![Run::parse(&args.run).ok_or_else(|| SimError::Params {
            origin: "--run".to_string(),
            message: format!(
                "unknown run {:?}: normal, no-backups, killed or all",
                args.run
            ),
        })?]
    };
    let mut outcomes = Vec::new();
    for r in runs {
        let outcome = sim::simulate(&params, r)?;
        let report = sim::report::build(&outcome);
        let dir = out.join(r.name());
        quern_runtime::report::write_dir(&report, &dir)?;
        eprintln!(
            "{:<10} {:>7.0} s simulated (maps done {:.0} s), {} attempts, {} backups ({} won), {} map outputs lost; {:.1} s wall, {} events -> {}",
            r.name(),
            outcome.total_s,
            outcome.map_phase_end_s,
            outcome.stats.attempts_started,
            outcome.stats.backups_launched,
            outcome.stats.backups_won,
            outcome.stats.map_outputs_lost,
            outcome.wall_s,
            outcome.events,
            dir.display()
        );
        outcomes.push(outcome);
    }
    let mut md = summary(&params, args.config.as_deref(), &outcomes);
    if args.seeds > 1 {
        md.push_str(&across_seeds(&params, &outcomes, args.seeds)?);
    }
    print!("{md}");
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    let path = out.join("simulate.md");
    std::fs::write(&path, md).map_err(|e| io(&path, e))?;
    Ok(())
}

fn io(path: &Path, source: std::io::Error) -> SimError {
    SimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `simulate.md`: the three runs beside the paper's.
fn summary(params: &Params, config: Option<&Path>, outcomes: &[Outcome]) -> String {
    let mut md = String::new();
    let source = config.map_or("benches/sim/paper-sort.toml".to_string(), |p| {
        p.display().to_string()
    });
    let _ = writeln!(md, "# Figure 3, simulated\n");
    let _ = writeln!(
        md,
        "The real `quern-scheduler` state machine driving {} simulated workers (M = {}, R = {}), \
         parameters `{source}` (seed {}); `cargo run --release -p quern-benches --bin simulate`. \
         Each run's `report.html` has the input / shuffle / output rate plots of Figure 3.\n",
        params.cluster.workers, params.job.maps, params.job.reduces, params.seed
    );
    let _ = writeln!(
        md,
        "| run | simulated total | vs normal | paper | paper vs normal | difference | check |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    let ratios = ratios(outcomes);
    let normal = ratios.is_some();
    let mut all_pass = true;
    for o in outcomes {
        let paper = PAPER
            .iter()
            .find(|(r, _)| *r == o.run)
            .map_or(f64::NAN, |p| p.1);
        let paper_ratio = (paper / PAPER[0].1 - 1.0) * 100.0;
        let ratio = ratios
            .as_ref()
            .map(|r| r.iter().find(|(run, _)| *run == o.run).map(|x| x.1));
        let (ratio, diff, check) = match ratio {
            Some(Some(ratio)) => {
                let diff = ratio - paper_ratio;
                let pass = diff.abs() <= TOLERANCE_PP;
                all_pass &= pass;
                (
                    format!("{ratio:+.1}%"),
                    format!("{diff:+.1} pp"),
                    if pass { "PASS" } else { "FAIL" }.to_string(),
                )
            }
            Some(_) => ("—".into(), "—".into(), "—".into()),
            None => ("?".into(), "?".into(), "needs the normal run".into()),
        };
        let paper_vs = if o.run == Run::Normal {
            "—".to_string()
        } else {
            format!("{paper_ratio:+.1}%")
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} s | {ratio} | {paper:.0} s | {paper_vs} | {diff} | {check} |",
            o.run.name(),
            o.total_s
        );
    }
    let _ = writeln!(
        md,
        "\nWithin {TOLERANCE_PP:.0} percentage points of the paper's ratios: **{}**.\n",
        if all_pass && normal && outcomes.len() == 3 {
            "PASS"
        } else {
            "FAIL"
        }
    );
    let _ = writeln!(md, "| run | maps done | attempts | backups (won) | map outputs lost | preempted reduces | last 5 reduces commit |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    for o in outcomes {
        let mut reduce_ends: Vec<u64> = o
            .attempts
            .iter()
            .filter(|a| {
                a.phase == quern_runtime::report::PhaseName::Reduce
                    && a.outcome == quern_runtime::report::Outcome::Committed
            })
            .map(|a| a.end_us)
            .collect();
        reduce_ends.sort_unstable();
        let n = reduce_ends.len();
        let tail = if n > 5 {
            format!(
                "{:.0} s -> {:.0} s",
                reduce_ends[n - 6] as f64 / 1e6,
                reduce_ends[n - 1] as f64 / 1e6
            )
        } else {
            "—".to_string()
        };
        let lost: u64 = o.lost_input.iter().sum();
        let _ = writeln!(
            md,
            "| {} | {:.0} s | {} | {} ({}) | {} ({:.0} GB of input) | {} | {tail} |",
            o.run.name(),
            o.map_phase_end_s,
            o.stats.attempts_started,
            o.stats.backups_launched,
            o.stats.backups_won,
            o.stats.map_outputs_lost,
            lost as f64 / 1e9,
            o.stats.preemptions,
        );
    }
    let _ = writeln!(
        md,
        "\n\"last 5 reduces commit\": from the commit of the 6th-last reduce to the last one \
         (the paper, without backups: all but 5 reduces done at 960 s, the last 300 s later). \
         `RateSeries` holds bytes moved, so lost map output does not show as a negative \
         input rate as in the paper's plot; its re-execution shows as input after the kill.\n"
    );
    md
}

/// Each run's total over `normal`'s, as a percentage change (`None` without a normal run).
fn ratios(outcomes: &[Outcome]) -> Option<Vec<(Run, f64)>> {
    let normal = outcomes.iter().find(|o| o.run == Run::Normal)?.total_s;
    Some(
        outcomes
            .iter()
            .filter(|o| o.run != Run::Normal)
            .map(|o| (o.run, (o.total_s / normal - 1.0) * 100.0))
            .collect(),
    )
}

/// One seed's three runs in `--seeds`.
struct SeedRow {
    seed: u64,
    /// Total of each run, in `Run::ALL` order, s.
    totals: Vec<f64>,
    /// `ratios` of the runs.
    ratios: Vec<(Run, f64)>,
}

impl SeedRow {
    fn of(seed: u64, outcomes: &[Outcome]) -> Result<SeedRow, SimError> {
        Ok(SeedRow {
            seed,
            totals: outcomes.iter().map(|o| o.total_s).collect(),
            ratios: ratios(outcomes)
                .ok_or_else(|| SimError::Unfinished("--seeds needs --run all".to_string()))?,
        })
    }
}

/// `--seeds N`: the three runs again with seeds `seed + 1 ..= seed + N - 1`, a row per
/// seed, and the median ratio of each run against the paper's.
fn across_seeds(params: &Params, first: &[Outcome], seeds: u64) -> Result<String, SimError> {
    let mut rows = vec![SeedRow::of(params.seed, first)?];
    for k in 1..seeds {
        let mut p = params.clone();
        p.seed = params.seed.wrapping_add(k);
        let outcomes = Run::ALL
            .iter()
            .map(|r| sim::simulate(&p, *r))
            .collect::<Result<Vec<_>, _>>()?;
        let row = SeedRow::of(p.seed, &outcomes)?;
        eprintln!("seed {}: {:?} s", row.seed, row.totals);
        rows.push(row);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Across {seeds} seeds (`--seeds {seeds}`)\n\nEach seed draws other stragglers, \
         join times, jitter and killed workers.\n"
    );
    let _ = writeln!(
        md,
        "| seed | normal | no-backups | killed |\n|---:|---:|---:|---:|"
    );
    for row in &rows {
        let cell = |i: usize| {
            let ratio = row
                .ratios
                .iter()
                .find(|(r, _)| Run::ALL.get(i) == Some(r))
                .map_or(String::new(), |(_, v)| format!(" ({v:+.1}%)"));
            let total = row.totals.get(i).copied().unwrap_or(f64::NAN);
            format!("{total:.0} s{ratio}")
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            row.seed,
            cell(0),
            cell(1),
            cell(2)
        );
    }
    let _ = writeln!(
        md,
        "\n| run | median vs normal | paper | difference | check |\n|---|---:|---:|---:|---|"
    );
    let mut all_pass = true;
    for (run, paper) in PAPER.iter().skip(1) {
        let mut v: Vec<f64> = rows
            .iter()
            .filter_map(|row| row.ratios.iter().find(|(x, _)| x == run).map(|x| x.1))
            .collect();
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        let paper_ratio = (paper / PAPER[0].1 - 1.0) * 100.0;
        let diff = median - paper_ratio;
        let pass = diff.abs() <= TOLERANCE_PP;
        all_pass &= pass;
        let _ = writeln!(
            md,
            "| {} | {median:+.1}% (range {:+.1}% .. {:+.1}%) | {paper_ratio:+.1}% | {diff:+.1} pp | {} |",
            run.name(),
            v[0],
            v[v.len() - 1],
            if pass { "PASS" } else { "FAIL" }
        );
    }
    let _ = writeln!(
        md,
        "\nMedians within {TOLERANCE_PP:.0} percentage points of the paper's ratios: **{}**.\n",
        if all_pass { "PASS" } else { "FAIL" }
    );
    Ok(md)
}

/// `--scale`: the scheduler at M = 200,000 / R = 5,000 on 2,000 workers.
fn scale(params: &Params, out: &Path) -> Result<(), SimError> {
    let p = params.scaled();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let outcome = sim::simulate(&p, Run::Normal)?;
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let with = LIVE.load(Ordering::Relaxed);
    let Outcome {
        scheduler,
        total_s,
        events,
        commands,
        map_output_ready,
        wall_s,
        scheduler_wall_s,
        stats,
        ..
    } = outcome;
    drop(scheduler);
    let sched_bytes = with.saturating_sub(LIVE.load(Ordering::Relaxed));
    let rss = peak_rss_kib();
    let m = f64::from(p.job.maps);
    let r = f64::from(p.job.reduces);
    let mut md = String::new();
    let _ = writeln!(md, "# The scheduler at scale, simulated\n");
    let _ = writeln!(
        md,
        "M = {}, R = {}, {} workers, heartbeats every {} ms; `cargo run --release -p quern-benches --bin simulate -- --scale`.\n",
        p.job.maps, p.job.reduces, p.cluster.workers, p.cluster.heartbeat_ms
    );
    let _ = writeln!(md, "| measure | value |\n|---|---:|");
    let rows = [
        ("simulated job time", format!("{total_s:.0} s")),
        ("wall time (whole simulation)", format!("{wall_s:.1} s")),
        (
            "wall time in the scheduler (handle + poll)",
            format!("{scheduler_wall_s:.1} s"),
        ),
        ("events handled", events.to_string()),
        (
            "events per second (wall, whole simulation)",
            format!("{:.0}", events as f64 / wall_s),
        ),
        (
            "events per second (scheduler time only)",
            format!("{:.0}", events as f64 / scheduler_wall_s.max(1e-9)),
        ),
        ("commands polled", commands.to_string()),
        ("of which MapOutputReady", map_output_ready.to_string()),
        ("attempts", stats.attempts_started.to_string()),
        (
            "scheduler heap at the end of the job",
            format!(
                "{:.1} MB ({:.0} bytes per task, {:.4} per (map, reduce) pair)",
                sched_bytes as f64 / 1e6,
                sched_bytes as f64 / (m + r),
                sched_bytes as f64 / (m * r)
            ),
        ),
        (
            "peak heap, whole simulation (scheduler + simulated cluster)",
            format!("{:.1} MB", peak as f64 / 1e6),
        ),
        ("peak RSS (VmHWM)", format!("{:.1} MB", rss as f64 / 1024.0)),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    print!("{md}");
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let path = out.join("scale.md");
    std::fs::write(&path, md).map_err(|e| io(&path, e))?;
    Ok(())
}

/// Peak resident set size of this process, KiB (0 if `/proc` cannot tell).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}
