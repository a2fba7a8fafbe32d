//! Job reports and the coordinator's status page, black box:
//!
//! 1. **report files** — `terasort --report DIR` on a local cluster: `report.json` agrees
//!    with the job (every task committed exactly once, attempt times inside the wall time,
//!    counters, byte rates that add up to the byte counters, monotone percentiles), and
//!    every `NAME.hgrm` parses and agrees with it.
//! 2. **HTML** — `report.html` renders in headless Chromium: a screenshot, and a DOM whose
//!    three plots hold data (a box per attempt, non-flat rate areas, a curve per duration
//!    histogram). Without Chromium the test is skipped, except under CI (`CI` set), which
//!    installs it (`.ci/run`).
//! 3. **`quern report DIR`** — re-renders deleted files identically and prints the job's
//!    summary; a missing directory is a usage error naming it.
//! 4. **status page** — a hand-started coordinator's `/status.json` follows a running job
//!    (slowed down with `QUERN_FAULT=slow:N` on its workers) with growing progress, then
//!    lists it as finished; `/` is HTML; the page is read-only.
//!
//! The tests of this file run one at a time ([`serial`]): 4 watches a job's pace, and the
//! others start clusters or a browser on a small machine. Every wait has a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use quern_tests::cluster::{
    coordinator_addr, coordinator_status_url, new_secret, run_quern, wait_joined, wait_until, Proc,
    JOB_TIMEOUT,
};
use quern_tests::{assert_committed, map_tasks, p, quern, Outcome};

/// Records of the generated input: two 10 MB part files.
const RECORDS: u64 = 200_000;
/// Split size of the report runs: 4 splits per 10 MB part, [`MAPS`] map tasks.
const SPLIT: &str = "2500K";
/// Map tasks of the report runs.
const MAPS: u64 = 8;
/// Reduce tasks of every run.
const REDUCES: u64 = 2;
/// Every histogram a report holds, in its order.
const HISTOGRAMS: [&str; 7] = [
    "map_attempt",
    "reduce_attempt",
    "fetch_latency",
    "fetch_throughput",
    "map_phase_end",
    "job_end",
    "heartbeat_lag",
];
/// First line of every `.hgrm` file (HdrHistogram's `outputPercentileDistribution`).
const HGRM_HEADER: &str = "       Value     Percentile TotalCount 1/(1-Percentile)";

/// Where CI installs Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest one headless Chromium run may take.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// The workers' fault in test 4: slow enough that the job takes several seconds.
const SLOW: &str = "slow:100";
/// Split size of test 4: 40 map tasks, so progress moves in many steps.
const STATUS_SPLIT: &str = "500KB";
/// How often test 4 polls the status page.
const POLL: Duration = Duration::from_millis(100);
/// Deadline of one HTTP exchange with the status page.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the coordinator may take to move an ended job to `finished`.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the lock that makes the tests of this file run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Generates [`RECORDS`] records into `dir/gen` (two part files) with `--sequential`.
fn teragen(dir: &Path) -> PathBuf {
    let out = dir.join("gen");
    run_quern(s(&[
        "teragen",
        "--records",
        &RECORDS.to_string(),
        "--parts",
        "2",
        "--sequential",
        "-q",
        "-o",
        &p(&out),
    ]))
    .ok();
    assert_committed(&out, 2);
    out
}

/// A terasort run with `--report`.
struct ReportRun {
    /// The job's outcome (run with `-v`).
    outcome: Outcome,
    /// Its report directory.
    dir: PathBuf,
    /// `report.json`, parsed.
    json: Value,
    /// The input it sorted.
    input: PathBuf,
}

/// Sorts a fresh teragen input on a local cluster of 2 workers with `--report dir/report`.
///
/// Speculation is off: with no backup attempt, the physical byte rates must add up to the
/// byte counters exactly.
fn terasort_report(dir: &Path) -> ReportRun {
    let input = teragen(dir);
    let out = dir.join("sorted");
    let report = dir.join("report");
    let outcome = run_quern(s(&[
        "terasort",
        &p(&input),
        "-o",
        &p(&out),
        "--workers",
        "2",
        "--split-size",
        SPLIT,
        "-r",
        &REDUCES.to_string(),
        "--speculation",
        "off",
        "--report",
        &p(&report),
        "-v",
    ]));
    outcome.ok();
    assert_committed(&out, REDUCES as usize);
    let json = read_json(&report.join("report.json"));
    ReportRun {
        outcome,
        dir: report,
        json,
        input,
    }
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `v[key]`, which must exist.
fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key)
        .unwrap_or_else(|| panic!("no field {key:?} in {}", short(v)))
}

/// `v[key]` as an unsigned integer.
fn uint(v: &Value, key: &str) -> u64 {
    get(v, key)
        .as_u64()
        .unwrap_or_else(|| panic!("field {key:?} is not an unsigned integer in {}", short(v)))
}

/// `v[key]` as a string.
fn string<'a>(v: &'a Value, key: &str) -> &'a str {
    get(v, key)
        .as_str()
        .unwrap_or_else(|| panic!("field {key:?} is not a string in {}", short(v)))
}

/// `v[key]` as an array.
fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    get(v, key)
        .as_array()
        .unwrap_or_else(|| panic!("field {key:?} is not an array in {}", short(v)))
}

/// `v` as JSON, cut to a length fit for a message.
fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(600) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// `a` and `b` differ by at most 0.1% (HdrHistogram's 3 significant figures), or by 1.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= (a.abs().max(b.abs()) / 1000.0).max(1.0)
}

/// The `(map tasks, reduce tasks)` of the summary line `quern JOB: M map tasks, R reduce
/// tasks, ...` on stderr.
fn summary_tasks(o: &Outcome) -> (u64, u64) {
    let re =
        regex::Regex::new(r"(?m)^quern \S+: (\d+) map tasks, (\d+) reduce tasks,").expect("regex");
    let c = re.captures(&o.stderr).unwrap_or_else(|| {
        panic!(
            "`{}`: no task counts in the summary:\n{}",
            o.cmdline, o.stderr
        )
    });
    (c[1].parse().expect("digits"), c[2].parse().expect("digits"))
}

/// The `(job id, URL)` of `-v`'s line `quern JOB: job N, status page URL` on stderr.
fn status_line(o: &Outcome) -> (u64, String) {
    let re =
        regex::Regex::new(r"(?m)^quern \S+: job (\d+), status page (http://\S+)$").expect("regex");
    let c = re.captures(&o.stderr).unwrap_or_else(|| {
        panic!(
            "`{}`: no \"job N, status page URL\" line with -v:\n{}",
            o.cmdline, o.stderr
        )
    });
    (c[1].parse().expect("digits"), c[2].to_string())
}

// ---------------------------------------------------------------------------------------
// 1. report files

/// A parsed `.hgrm` file.
#[derive(Debug)]
struct Hgrm {
    /// `(value, percentile, total count)` of each row.
    rows: Vec<(f64, f64, u64)>,
    /// The footer's `Max`.
    max: f64,
    /// The footer's `Total count`.
    total: u64,
}

/// Parses HdrHistogram's percentile distribution text: the header, a blank line, rows of
/// `Value Percentile TotalCount [1/(1-Percentile)]` (the last row has no fourth column),
/// then `#[...]` footer lines.
fn parse_hgrm(path: &Path) -> Hgrm {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let what = || format!("{}:\n{text}", path.display());
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(HGRM_HEADER), "header of {}", what());
    assert_eq!(
        lines.next(),
        Some(""),
        "blank line after the header of {}",
        what()
    );
    let mut rows = Vec::new();
    let mut footer = Vec::new();
    for line in lines {
        if line.starts_with("#[") {
            footer.push(line);
            continue;
        }
        assert!(footer.is_empty(), "row after the footer in {}", what());
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(
            fields.len() == 3 || fields.len() == 4,
            "row {line:?} of {}",
            what()
        );
        let num = |i: usize| -> f64 {
            fields[i]
                .parse()
                .unwrap_or_else(|e| panic!("row {line:?}: {e}\n{}", what()))
        };
        let count: u64 = fields[2]
            .parse()
            .unwrap_or_else(|e| panic!("row {line:?}: {e}\n{}", what()));
        rows.push((num(0), num(1), count));
    }
    let re =
        regex::Regex::new(r"^#\[Max\s*=\s*([0-9.]+),\s*Total count\s*=\s*(\d+)\]$").expect("regex");
    let (max, total) = footer
        .iter()
        .find_map(|l| re.captures(l))
        .map(|c| (c[1].parse().expect("number"), c[2].parse().expect("digits")))
        .unwrap_or_else(|| panic!("no \"#[Max = X, Total count = N]\" footer in {}", what()));
    Hgrm { rows, max, total }
}

/// Checks `dir/NAME.hgrm` against the histogram's entry `h` of report.json.
fn check_hgrm(dir: &Path, h: &Value) {
    let name = string(h, "name");
    let path = dir.join(format!("{name}.hgrm"));
    let hgrm = parse_hgrm(&path);
    let pc = get(h, "percentiles");
    let count = uint(pc, "count");
    let what = path.display();
    assert_eq!(
        hgrm.total, count,
        "{what}: footer total count vs report.json"
    );
    if count == 0 {
        assert!(hgrm.rows.is_empty(), "{what}: rows of an empty histogram");
        return;
    }
    assert!(!hgrm.rows.is_empty(), "{what}: no rows for {count} samples");
    for pair in hgrm.rows.windows(2) {
        let ((v0, q0, n0), (v1, q1, n1)) = (pair[0], pair[1]);
        assert!(v0 <= v1, "{what}: values go down: {:?}", pair);
        assert!(q0 <= q1, "{what}: percentiles go down: {:?}", pair);
        assert!(n0 <= n1, "{what}: total counts go down: {:?}", pair);
    }
    for &(_, q, _) in &hgrm.rows {
        assert!(
            (0.0..=1.0).contains(&q),
            "{what}: percentile {q} outside [0, 1]"
        );
    }
    let (first, last) = (hgrm.rows[0], hgrm.rows[hgrm.rows.len() - 1]);
    assert_eq!(
        last.2, count,
        "{what}: last TotalCount vs report.json's count"
    );
    assert_eq!(last.1, 1.0, "{what}: last row is not the 100th percentile");
    let max = uint(pc, "max") as f64;
    assert!(
        close(hgrm.max, max),
        "{what}: footer Max {} vs report.json's max {max}",
        hgrm.max
    );
    assert!(
        close(last.0, max),
        "{what}: last value {} vs max {max}",
        last.0
    );
    let min = uint(pc, "min") as f64;
    assert!(
        close(first.0, min),
        "{what}: first value {} vs report.json's min {min}",
        first.0
    );
}

#[test]
fn report_files_match_the_job() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = terasort_report(tmp.path());
    let r = &run.json;
    let ctx = &run.outcome;

    assert_eq!(uint(r, "version"), 1, "report version");
    assert_eq!(string(r, "job"), "terasort");
    let (maps, reduces) = (uint(r, "map_tasks"), uint(r, "reduce_tasks"));
    assert_eq!(
        (maps, reduces),
        summary_tasks(ctx),
        "task counts of report.json vs the summary on stderr"
    );
    assert_eq!(map_tasks(&ctx.stderr), Some(maps as usize));
    assert_eq!((maps, reduces), (MAPS, REDUCES), "tasks of the job");
    assert!(
        uint(r, "started_unix_ms") > 1_600_000_000_000,
        "started_unix_ms"
    );
    status_line(ctx);

    let wall = uint(r, "wall_us");
    assert!(wall > 0, "wall_us");

    // Workers: the two of the local cluster.
    let workers = array(r, "workers");
    assert_eq!(workers.len(), 2, "workers: {}", short(get(r, "workers")));
    let ids: BTreeSet<u64> = workers.iter().map(|w| uint(w, "id")).collect();
    assert_eq!(ids.len(), 2, "worker ids must differ");
    for w in workers {
        assert!(uint(w, "pid") > 0 && uint(w, "slots") >= 1, "{}", short(w));
        let addr = string(w, "addr");
        addr.parse::<SocketAddr>()
            .unwrap_or_else(|e| panic!("worker addr {addr:?}: {e}"));
    }

    // Attempts: inside the job's time, on its workers; every task committed exactly once.
    let attempts = array(r, "attempts");
    let mut committed: BTreeMap<(String, u64), usize> = BTreeMap::new();
    let mut per_phase: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_commit: BTreeMap<String, u64> = BTreeMap::new();
    let mut attempt_ids = BTreeSet::new();
    for a in attempts {
        let phase = string(a, "phase").to_string();
        assert!(phase == "map" || phase == "reduce", "phase of {}", short(a));
        let (start, end) = (uint(a, "start_us"), uint(a, "end_us"));
        assert!(
            start <= end && end <= wall,
            "attempt outside the job (wall_us {wall}): {}",
            short(a)
        );
        assert!(ids.contains(&uint(a, "worker")), "worker of {}", short(a));
        assert!(
            attempt_ids.insert(uint(a, "attempt")),
            "attempt id twice: {}",
            short(a)
        );
        assert!(get(a, "backup").is_boolean(), "backup of {}", short(a));
        let outcome = string(a, "outcome");
        assert!(
            ["committed", "failed", "cancelled", "lost", "running"].contains(&outcome),
            "outcome of {}",
            short(a)
        );
        assert_ne!(outcome, "running", "an attempt still running after the job");
        *per_phase.entry(phase.clone()).or_default() += 1;
        if outcome == "committed" {
            *committed
                .entry((phase.clone(), uint(a, "task")))
                .or_default() += 1;
            let last = last_commit.entry(phase).or_default();
            *last = (*last).max(end);
        }
    }
    let want: BTreeMap<(String, u64), usize> = (0..maps)
        .map(|t| (("map".to_string(), t), 1))
        .chain((0..reduces).map(|t| (("reduce".to_string(), t), 1)))
        .collect();
    assert_eq!(
        committed, want,
        "committed attempts by (phase, task): each task exactly once"
    );

    // Counters.
    let counters = get(r, "counters");
    let counter = |name: &str| uint(counters, name);
    assert_eq!(counter("map.input.records"), RECORDS);
    assert_eq!(counter("map.input.bytes"), RECORDS * 100);
    assert_eq!(counter("output.bytes"), RECORDS * 100);
    assert_eq!(counter("reduce.input.records"), RECORDS);
    assert_eq!(counter("attempts.map"), per_phase["map"], "attempts.map");
    assert_eq!(
        counter("attempts.reduce"),
        per_phase["reduce"],
        "attempts.reduce"
    );
    let backups = attempts.iter().filter(|a| get(a, "backup") == true).count() as u64;
    assert_eq!(counter("backups.launched"), backups, "backups.launched");
    assert_eq!(backups, 0, "--speculation off launched backups");

    // Phases end when their last task commits; the reduce phase with the job.
    let phases: BTreeMap<&str, u64> = array(r, "phases")
        .iter()
        .map(|ph| (string(ph, "phase"), uint(ph, "end_us")))
        .collect();
    assert_eq!(
        phases.keys().copied().collect::<Vec<_>>(),
        ["map", "reduce"],
        "phases"
    );
    assert_eq!(
        phases["map"], last_commit["map"],
        "map phase end vs its last commit"
    );
    assert!(
        last_commit["reduce"] <= phases["reduce"] && phases["reduce"] == wall,
        "reduce phase end {} vs last reduce commit {} and wall_us {wall}",
        phases["reduce"],
        last_commit["reduce"]
    );

    // Rates: every byte counted once, in buckets inside the job.
    let rates = get(r, "rates");
    let bucket = uint(rates, "bucket_us");
    assert!(bucket > 0, "bucket_us");
    for (series, counter_name) in [
        ("input", "map.input.bytes"),
        ("shuffle", "shuffle.bytes"),
        ("output", "output.bytes"),
    ] {
        let buckets: Vec<u64> = array(rates, series)
            .iter()
            .map(|b| b.as_u64().expect("bucket is an unsigned integer"))
            .collect();
        assert_eq!(
            buckets.iter().sum::<u64>(),
            counter(counter_name),
            "sum of rates.{series} vs counter {counter_name}: {buckets:?}"
        );
        assert!(
            buckets.len() as u64 * bucket <= wall + bucket,
            "rates.{series} has {} buckets of {bucket} µs for a job of {wall} µs",
            buckets.len()
        );
    }

    // Histograms.
    let histograms = array(r, "histograms");
    let names: Vec<&str> = histograms.iter().map(|h| string(h, "name")).collect();
    assert_eq!(names, HISTOGRAMS, "histogram names");
    let mut counts = BTreeMap::new();
    for h in histograms {
        let name = string(h, "name");
        let pc = get(h, "percentiles");
        let values: Vec<u64> = ["min", "p50", "p90", "p99", "p999", "max"]
            .iter()
            .map(|k| uint(pc, k))
            .collect();
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "{name}: percentiles not monotone: {}",
            short(pc)
        );
        assert!(!string(h, "unit").is_empty(), "{name}: unit");
        assert!(!string(h, "v2").is_empty(), "{name}: v2");
        counts.insert(name, uint(pc, "count"));
        check_hgrm(&run.dir, h);
    }
    assert_eq!(counts["map_attempt"], maps, "map_attempt count");
    assert_eq!(counts["reduce_attempt"], reduces, "reduce_attempt count");
    assert_eq!(
        counts["fetch_latency"],
        maps * reduces,
        "fetch_latency count: every reduce fetches every map's output once"
    );
    assert_eq!(counts["map_phase_end"], 1);
    assert_eq!(counts["job_end"], 1);
    let max_of = |name: &str| {
        let h = histograms
            .iter()
            .find(|h| string(h, "name") == name)
            .expect("histogram listed");
        uint(get(h, "percentiles"), "max") as f64
    };
    assert!(
        close(max_of("job_end"), wall as f64),
        "job_end {} vs wall_us {wall}",
        max_of("job_end")
    );
    assert!(
        close(max_of("map_phase_end"), phases["map"] as f64),
        "map_phase_end {} vs the map phase's end {}",
        max_of("map_phase_end"),
        phases["map"]
    );
}

// ---------------------------------------------------------------------------------------
// 2. HTML in a browser

/// Chromium, or `None` (after a note) when it is missing outside CI (`CI` or
/// `QUERN_REQUIRE_CHROMIUM` set; .ci/run sets the latter).
fn chromium() -> Option<&'static Path> {
    let path = Path::new(CHROMIUM);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none() && std::env::var_os("QUERN_REQUIRE_CHROMIUM").is_none(),
        "{CHROMIUM} is missing, and CI must run this test (.ci/run installs it)"
    );
    eprintln!("skipped: {CHROMIUM} is not installed (apt-get install chromium)");
    None
}

/// Runs headless Chromium with `args` and its own profile in `profile`; kills its whole
/// process group if it does not exit within [`CHROMIUM_TIMEOUT`].
fn run_chromium(chromium: &Path, profile: &Path, args: &[String]) -> Outcome {
    let mut cmd = Command::new(chromium);
    cmd.args(s(&["--headless", "--no-sandbox", "--disable-gpu"]))
        .arg(format!("--user-data-dir={}", p(profile)))
        .args(args)
        // Its own process group: on a timeout the renderers go with it.
        .process_group(0);
    let label = format!("chromium {}", args.join(" "));
    let mut proc = Proc::spawn(label, cmd);
    if proc.wait_exit(CHROMIUM_TIMEOUT).is_none() {
        // Not reaped yet, so the group id is still this process's.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", proc.pid())])
            .status();
        proc.kill();
        panic!(
            "chromium did not exit within {CHROMIUM_TIMEOUT:?}; killed it\n{}",
            proc.describe()
        );
    }
    let o = proc.finish(Duration::from_secs(5));
    o.ok();
    o
}

/// The text of `<figure id="ID">...</figure>` in `dom`.
fn figure<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("<figure id=\"{id}\"");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no {open}> in the DOM"));
    let end = dom[start..]
        .find("</figure>")
        .map(|e| start + e)
        .unwrap_or_else(|| panic!("{open}> is not closed"));
    &dom[start..end]
}

/// The first `<svg>...</svg>` of `html`.
fn svg<'a>(html: &'a str, what: &str) -> &'a str {
    let start = html
        .find("<svg")
        .unwrap_or_else(|| panic!("{what}: no <svg>"));
    let end = html[start..]
        .find("</svg>")
        .map(|e| start + e)
        .unwrap_or_else(|| panic!("{what}: <svg> not closed"));
    &html[start..end]
}

/// The opening tags `<TAG ...>` in `html`.
fn tags<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag} ");
    html.match_indices(&open)
        .map(|(i, _)| {
            let end = html[i..].find('>').map_or(html.len(), |e| i + e);
            &html[i..end]
        })
        .collect()
}

/// The value of `attr="..."` in the opening tag `tag`.
fn attr<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let key = format!(" {attr}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')? + start;
    Some(&tag[start..end])
}

/// The points of a `<polyline>` or `<polygon>` tag.
fn points(tag: &str) -> Vec<(f64, f64)> {
    attr(tag, "points")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pt| {
            let (x, y) = pt.split_once(',')?;
            Some((x.parse().ok()?, y.parse().ok()?))
        })
        .collect()
}

/// The colour of the legend's swatch for `label` in the timeline figure (`#rrggbb`).
fn legend_colour(timeline: &str, label: &str) -> String {
    let re = regex::Regex::new(&format!(
        r#"style="background:\s*(#[0-9a-fA-F]{{6}})"></span>{}</span>"#,
        regex::escape(label)
    ))
    .expect("regex");
    let c = re
        .captures(timeline)
        .unwrap_or_else(|| panic!("no legend swatch for {label:?} in the timeline figure"));
    c[1].to_ascii_lowercase()
}

#[test]
fn report_html_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = terasort_report(tmp.path());
    let url = format!("file://{}", p(&run.dir.join("report.html")));
    let profile = tmp.path().join("chromium-profile");

    // A screenshot: a PNG of the requested size, with more in it than a blank page.
    let shot = run.dir.join("shot.png");
    run_chromium(
        chromium,
        &profile,
        &[
            format!("--screenshot={}", p(&shot)),
            "--window-size=1400,2000".to_string(),
            url.clone(),
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot {shot:?}: {e}"));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{shot:?} is not a PNG"
    );
    assert!(png.len() > 10 * 1024, "{shot:?}: only {} bytes", png.len());
    let be32 = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!((be32(16), be32(20)), (1400, 2000), "screenshot size (IHDR)");

    // The DOM Chromium built from the page.
    let dom = run_chromium(chromium, &profile, &["--dump-dom".to_string(), url]).stdout_str();
    assert!(
        dom.contains("<title>quern report: terasort</title>"),
        "title missing from the DOM:\n{dom}"
    );
    assert!(
        !dom.contains("class=\"plot-error\""),
        "a plot failed to draw:\n{dom}"
    );

    // Timeline: a box per attempt, in the legend's colours of committed maps and reduces.
    let attempts = array(&run.json, "attempts");
    let committed = |phase: &str| {
        attempts
            .iter()
            .filter(|a| string(a, "phase") == phase && string(a, "outcome") == "committed")
            .count()
    };
    let timeline = figure(&dom, "timeline");
    let rects = tags(svg(timeline, "timeline"), "rect");
    assert!(
        rects.len() > attempts.len(),
        "timeline: {} <rect> for {} attempts (plus the background)",
        rects.len(),
        attempts.len()
    );
    for (phase, label) in [("map", "map, committed"), ("reduce", "reduce, committed")] {
        let colour = legend_colour(timeline, label);
        let boxes = rects
            .iter()
            .filter(|r| attr(r, "fill").is_some_and(|f| f.eq_ignore_ascii_case(&colour)))
            .count();
        assert!(
            boxes >= committed(phase),
            "timeline: {boxes} boxes in {colour} ({label}) for {} committed {phase} attempts",
            committed(phase)
        );
    }

    // Rates: input, shuffle and output each drawn as a filled area that leaves the zero line.
    let rates = figure(&dom, "rates");
    let areas = tags(svg(rates, "rates"), "polygon");
    assert!(
        areas.len() >= 3,
        "rates: {} <polygon> areas, expected one per series (input, shuffle, output)",
        areas.len()
    );
    for area in &areas {
        let ys: BTreeSet<i64> = points(area)
            .iter()
            .map(|&(_, y)| y.round() as i64)
            .collect();
        assert!(
            ys.len() >= 2,
            "rates: a flat area, as if no bytes moved: {area}"
        );
    }
    assert!(!rates.contains("no data"), "rates: \"no data\" in the plot");

    // Percentiles: a named curve for every duration histogram with two samples or more.
    let percentiles = figure(&dom, "percentiles");
    let plot = svg(percentiles, "percentiles");
    let curves: Vec<&str> = array(&run.json, "histograms")
        .iter()
        .filter(|h| string(h, "unit") == "us" && uint(get(h, "percentiles"), "count") >= 2)
        .map(|h| string(h, "name"))
        .collect();
    assert!(
        curves.contains(&"map_attempt") && curves.contains(&"fetch_latency"),
        "duration histograms with samples: {curves:?}"
    );
    for name in &curves {
        assert!(
            plot.contains(name),
            "percentiles: no {name} in the plot's legend"
        );
    }
    let lines = tags(plot, "polyline")
        .into_iter()
        .filter(|l| points(l).len() >= 3)
        .count();
    assert!(
        lines >= curves.len(),
        "percentiles: {lines} curves (polylines of 3 points or more) for {} histograms",
        curves.len()
    );
}

// ---------------------------------------------------------------------------------------
// 3. quern report

#[test]
fn quern_report_rerenders_and_prints() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = terasort_report(tmp.path());
    let dir = &run.dir;
    let html = dir.join("report.html");
    let hgrm = dir.join("map_attempt.hgrm");
    let html_before = std::fs::read(&html).expect("report.html");
    let hgrm_before = std::fs::read(&hgrm).expect("map_attempt.hgrm");
    std::fs::remove_file(&html).expect("rm report.html");
    std::fs::remove_file(&hgrm).expect("rm map_attempt.hgrm");

    // --no-render prints and writes nothing.
    let printed = run_quern(s(&["report", "--no-render", &p(dir)]));
    printed.ok();
    assert!(
        !html.exists() && !hgrm.exists(),
        "`quern report --no-render` wrote files"
    );

    let o = run_quern(s(&["report", &p(dir)]));
    o.ok();
    assert_eq!(
        std::fs::read(&html).ok(),
        Some(html_before),
        "report.html re-rendered from report.json differs from the job's"
    );
    assert_eq!(
        std::fs::read(&hgrm).ok(),
        Some(hgrm_before),
        "map_attempt.hgrm re-rendered from report.json differs from the job's"
    );
    let stdout = o.stdout_str();
    assert_eq!(stdout, printed.stdout_str(), "--no-render prints the same");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("quern terasort: ") && l.contains("map_attempt")),
        "no map_attempt row in:\n{stdout}"
    );
    assert!(
        stdout.starts_with(&format!(
            "quern terasort: {MAPS} map tasks, {REDUCES} reduce tasks, "
        )),
        "summary of `quern report`:\n{stdout}"
    );
    // The same summary the job printed when it ended.
    for line in stdout.lines() {
        assert!(
            run.outcome.stderr.lines().any(|l| l == line),
            "{line:?} of `quern report` is not in the job's summary:\n{}",
            run.outcome.stderr
        );
    }

    // A directory without a report is the user's mistake, and the message names it.
    let missing = tmp.path().join("no-such-report");
    let o = run_quern(s(&["report", &p(&missing)]));
    let line = o.user_error();
    assert!(
        line.contains(&p(&missing)),
        "{line:?} must name {missing:?}"
    );

    // --report needs a cluster run.
    let out = tmp.path().join("seq-out");
    let report = tmp.path().join("seq-report");
    let o = run_quern(s(&[
        "terasort",
        &p(&run.input),
        "-o",
        &p(&out),
        "--sequential",
        "--report",
        &p(&report),
    ]));
    o.user_error();
    assert!(
        !out.exists() && !report.exists(),
        "a refused job left files behind"
    );
}

// ---------------------------------------------------------------------------------------
// 4. status page

/// A response of the status page.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: String,
    body: String,
}

/// `METHOD path` to `addr` as a hand-written HTTP/1.1 request (`Connection: close`); reads
/// the whole response, within [`HTTP_TIMEOUT`] per step.
fn http(addr: SocketAddr, method: &str, path: &str) -> Response {
    let what = format!("{method} http://{addr}{path}");
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)))
        .expect("socket timeouts");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{what}: receive: {e}"));
    let raw = String::from_utf8(raw).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no end of headers in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{what}: bad status line {status_line:?}"));
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    assert!(
        !headers.contains_key("transfer-encoding"),
        "{what}: chunked bodies are not parsed here: {head}"
    );
    if let Some(len) = headers.get("content-length") {
        assert_eq!(
            len.parse::<usize>().ok(),
            Some(body.len()),
            "{what}: body length"
        );
    }
    Response {
        status,
        content_type: headers.get("content-type").cloned().unwrap_or_default(),
        body: body.to_string(),
    }
}

/// `GET /status.json`, parsed.
fn status_json(addr: SocketAddr) -> Value {
    let r = http(addr, "GET", "/status.json");
    assert_eq!(r.status, 200, "GET /status.json: {r:?}");
    assert!(
        r.content_type.starts_with("application/json"),
        "GET /status.json: content type {:?}",
        r.content_type
    );
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("/status.json: {e}: {}", r.body))
}

/// What one poll of the status page saw of the running job.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: u64,
    name: String,
    /// Map plus reduce tasks done.
    done: u64,
    progress: f64,
    map_total: u64,
    reduce_total: u64,
    /// Workers listed, and how many of them are alive.
    workers: usize,
    alive: usize,
}

fn seen(status: &Value) -> Option<Seen> {
    let job = get(status, "job");
    if job.is_null() {
        return None;
    }
    let workers = array(status, "workers");
    let progress = get(job, "progress")
        .as_f64()
        .unwrap_or_else(|| panic!("progress is not a number: {}", short(job)));
    Some(Seen {
        id: uint(job, "id"),
        name: string(job, "name").to_string(),
        done: uint(get(job, "map"), "done") + uint(get(job, "reduce"), "done"),
        progress,
        map_total: uint(get(job, "map"), "total"),
        reduce_total: uint(get(job, "reduce"), "total"),
        workers: workers.len(),
        alive: workers
            .iter()
            .filter(|w| string(w, "state") == "alive")
            .count(),
    })
}

#[test]
fn status_page_shows_progress_while_a_job_runs() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = teragen(tmp.path());
    let secret = tmp.path().join("secret");
    new_secret(&secret);

    let coordinator = Proc::quern(
        "quern coordinator",
        s(&[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            &p(&secret),
            "--status",
            "127.0.0.1:0",
            "-v",
            "--exit-with-parent",
        ]),
    );
    let addr = coordinator_addr(&coordinator);
    let url = coordinator_status_url(&coordinator);
    let page: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .and_then(|hostport| hostport.parse().ok())
        .unwrap_or_else(|| panic!("status page URL {url:?} is not http://IP:PORT/"));
    let workers: Vec<Proc> = (0..2)
        .map(|i| {
            let mut cmd = Command::new(quern());
            cmd.args(s(&[
                "worker",
                "--join",
                &addr.to_string(),
                "--secret-file",
                &p(&secret),
                "--slots",
                "1",
                "--work-dir",
                &p(&tmp.path().join(format!("worker-{i}"))),
                "--exit-with-parent",
            ]))
            .env("QUERN_FAULT", SLOW);
            Proc::spawn(format!("quern worker {i} (QUERN_FAULT={SLOW})"), cmd)
        })
        .collect();
    wait_joined(&coordinator, &workers, 2);

    // Idle: no job, both workers, an HTML page, read-only.
    let idle = status_json(page);
    assert!(
        get(&idle, "job").is_null(),
        "job before any: {}",
        short(&idle)
    );
    assert_eq!(string(&idle, "coordinator"), addr.to_string());
    let r = http(page, "GET", "/");
    assert_eq!(r.status, 200, "GET /: {r:?}");
    assert!(r.content_type.starts_with("text/html"), "GET /: {r:?}");
    assert!(r.body.contains("quern coordinator"), "GET /: {}", r.body);
    for path in ["/", "/status.json"] {
        assert_eq!(http(page, "POST", path).status, 405, "POST {path}");
    }
    assert_eq!(http(page, "GET", "/no-such-page").status, 404);

    // Submit a job and watch it until the client exits.
    let out = tmp.path().join("sorted");
    let mut cmd = Command::new(quern());
    cmd.args(s(&[
        "terasort",
        &p(&input),
        "-o",
        &p(&out),
        "--split-size",
        STATUS_SPLIT,
        "-r",
        &REDUCES.to_string(),
        "--coordinator",
        &addr.to_string(),
        "--secret-file",
        &p(&secret),
        "-v",
    ]))
    .env_remove("QUERN_FAULT");
    let mut client = Proc::spawn("quern terasort --coordinator", cmd);
    let started = Instant::now();
    let mut samples: Vec<Seen> = Vec::new();
    let mut page_during_job = None;
    loop {
        let exited = client.try_status().is_some();
        let status = status_json(page);
        if let Some(now) = seen(&status) {
            if page_during_job.is_none() {
                page_during_job = Some(http(page, "GET", "/"));
            }
            samples.push(now);
        }
        if exited {
            break;
        }
        if started.elapsed() > JOB_TIMEOUT {
            break; // `finish` below fails the test with the client's output.
        }
        std::thread::sleep(POLL);
    }
    let o = client.finish(JOB_TIMEOUT);
    o.ok();
    let took = started.elapsed();
    assert_committed(&out, REDUCES as usize);
    let (maps, reduces) = summary_tasks(&o);
    let (job_id, job_url) = status_line(&o);
    assert_eq!(job_url, url, "status page URL printed by the client");

    let history = || format!("{samples:#?}");
    assert!(
        !samples.is_empty(),
        "the status page never showed the job in {took:?}\n{}",
        coordinator.describe()
    );
    for now in &samples {
        assert_eq!(now.id, job_id, "job id on the page: {}", history());
        assert_eq!(now.name, "terasort", "job name on the page");
        assert_eq!(
            (now.map_total, now.reduce_total),
            (maps, reduces),
            "task totals"
        );
        assert!(
            (0.0..=1.0).contains(&now.progress),
            "progress {} outside [0, 1]",
            now.progress
        );
        assert_eq!((now.workers, now.alive), (2, 2), "workers: {}", history());
    }
    for pair in samples.windows(2) {
        assert!(
            pair[0].progress <= pair[1].progress && pair[0].done <= pair[1].done,
            "progress went back: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let steps: BTreeSet<u64> = samples.iter().map(|s| s.done).collect();
    assert!(
        steps.len() >= 3,
        "only {} distinct task counts seen in {} polls over {took:?}: {}",
        steps.len(),
        samples.len(),
        history()
    );
    let page_during_job = page_during_job.expect("a sample implies a page");
    assert_eq!(page_during_job.status, 200);
    assert!(
        page_during_job.body.contains("terasort"),
        "GET / during the job does not name it:\n{}",
        page_during_job.body
    );

    // Afterwards: no job, and this one in `finished`, done.
    let finished = wait_until(FINISH_TIMEOUT, || {
        let status = status_json(page);
        if !get(&status, "job").is_null() {
            return None;
        }
        array(&status, "finished")
            .iter()
            .find(|f| uint(f, "id") == job_id)
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "job {job_id} not listed as finished within {FINISH_TIMEOUT:?}: {}",
            short(&status_json(page))
        )
    });
    assert_eq!(string(&finished, "name"), "terasort");
    assert_eq!(string(&finished, "outcome"), "done");
    let wall_ms = uint(&finished, "wall_ms");
    assert!(
        wall_ms > 0 && wall_ms <= took.as_millis() as u64,
        "wall_ms {wall_ms} of a job the client saw take {took:?}"
    );
}
