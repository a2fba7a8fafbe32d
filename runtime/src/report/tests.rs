//! Tests of the report as a whole, on a synthetic but realistic job: 3 workers with 2 slots,
//! 8 maps (one failed and retried, one straggler beaten by a backup), 2 reduces.

use std::collections::BTreeMap;

use super::*;

/// Deterministic xorshift, so the histograms are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform-ish heavy tail around `median`.
    fn skewed(&mut self, median: f64) -> u64 {
        let u = self.unit().max(1e-9);
        (median * (0.5 + u) * (1.0 / (1.0 - u * 0.999)).sqrt()) as u64 + 1
    }
}

fn attempt(
    attempt: u64,
    phase: PhaseName,
    task: u32,
    worker: u32,
    span_ms: (u64, u64),
    outcome: Outcome,
) -> AttemptRecord {
    AttemptRecord {
        phase,
        task,
        attempt,
        worker,
        start_us: span_ms.0 * 1_000,
        end_us: span_ms.1 * 1_000,
        outcome,
        backup: false,
    }
}

pub(super) fn sample_report() -> Report {
    use Outcome::*;
    use PhaseName::*;
    let mut attempts = vec![
        attempt(1, Map, 0, 1, (10, 2_600), Committed),
        attempt(2, Map, 1, 2, (11, 1_200), Failed),
        attempt(3, Map, 2, 3, (12, 2_800), Committed),
        attempt(4, Map, 3, 1, (13, 2_500), Committed),
        attempt(5, Map, 4, 2, (14, 2_700), Committed),
        attempt(6, Map, 5, 3, (15, 2_900), Committed),
        attempt(7, Map, 1, 2, (1_250, 3_900), Committed),
        attempt(8, Map, 6, 1, (2_500, 5_100), Committed),
        attempt(9, Map, 7, 3, (2_800, 7_000), Cancelled),
        attempt(10, Map, 7, 1, (5_100, 6_950), Committed),
        attempt(11, Reduce, 0, 2, (7_050, 9_800), Committed),
        attempt(12, Reduce, 1, 3, (7_060, 10_200), Committed),
    ];
    attempts[9].backup = true;

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut map_attempt = new_histogram();
    let mut reduce_attempt = new_histogram();
    for a in attempts.iter().filter(|a| a.outcome == Committed) {
        let h = if a.phase == Map {
            &mut map_attempt
        } else {
            &mut reduce_attempt
        };
        h.record(a.end_us - a.start_us).unwrap();
    }
    let mut fetch_latency = new_histogram();
    let mut fetch_throughput = new_histogram();
    for _ in 0..3_000 {
        fetch_latency.record(rng.skewed(1_800.0)).unwrap();
        fetch_throughput.record(rng.skewed(180_000.0)).unwrap();
    }
    let mut heartbeat_lag = new_histogram();
    for _ in 0..120 {
        heartbeat_lag.record(250_000 + rng.skewed(400.0)).unwrap();
    }
    let mut map_phase_end = new_histogram();
    map_phase_end.record(6_950_000).unwrap();
    let mut job_end = new_histogram();
    job_end.record(10_300_000).unwrap();

    // 250 ms buckets over 10.5 s: input while maps run, shuffle from the first map commit,
    // output while reduces run.
    let bucket_us = 250_000;
    let buckets = 42;
    let mut rates = RateSeries {
        bucket_us,
        ..RateSeries::default()
    };
    for i in 0..buckets {
        let t = i as f64 * 0.25;
        let wobble = 0.85 + 0.3 * rng.unit();
        let input = if t < 2.9 {
            320e6
        } else if t < 7.0 {
            90e6
        } else {
            0.0
        };
        let shuffle = if (2.5..9.5).contains(&t) { 140e6 } else { 0.0 };
        let output = if (7.0..10.25).contains(&t) {
            150e6
        } else {
            0.0
        };
        rates.input.push((input * 0.25 * wobble) as u64);
        rates.shuffle.push((shuffle * 0.25 * wobble) as u64);
        rates.output.push((output * 0.25 * wobble) as u64);
    }

    let counters: BTreeMap<String, u128> = [
        ("map.input.bytes", 1_073_741_824),
        ("map.input.records", 10_737_418),
        ("map.output.bytes", 1_073_741_824),
        ("shuffle.bytes", 1_073_741_824),
        ("output.bytes", 1_000_000_000),
        ("attempts.map", 10),
        ("attempts.reduce", 2),
        ("attempts.failed", 1),
        ("attempts.lost", 0),
        ("backups.launched", 1),
        ("backups.won", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    Report {
        version: REPORT_VERSION,
        job: "terasort <1GB> & co".into(),
        started_unix_ms: 1_767_225_600_123,
        wall_us: 10_300_000,
        map_tasks: 8,
        reduce_tasks: 2,
        workers: (1..=3)
            .map(|id| WorkerRecord {
                id,
                addr: format!("10.0.0.{id}:7000"),
                pid: 4_000 + id,
                slots: 2,
                work_dir_fault: (id == 3)
                    .then(|| "/w/job-1/map-3.run: No space left on device (os error 28)".into()),
            })
            .collect(),
        counters,
        phases: vec![
            PhaseRecord {
                phase: Map,
                end_us: 6_950_000,
            },
            PhaseRecord {
                phase: Reduce,
                end_us: 10_200_000,
            },
        ],
        attempts,
        rates,
        histograms: vec![
            NamedHistogram::new(hist::MAP_ATTEMPT, "us", &map_attempt),
            NamedHistogram::new(hist::REDUCE_ATTEMPT, "us", &reduce_attempt),
            NamedHistogram::new(hist::FETCH_LATENCY, "us", &fetch_latency),
            NamedHistogram::new(hist::FETCH_THROUGHPUT, "KiB/s", &fetch_throughput),
            NamedHistogram::new(hist::MAP_PHASE_END, "us", &map_phase_end),
            NamedHistogram::new(hist::JOB_END, "us", &job_end),
            NamedHistogram::new(hist::HEARTBEAT_LAG, "us", &heartbeat_lag),
        ],
    }
}

fn empty_report() -> Report {
    Report {
        version: REPORT_VERSION,
        job: String::new(),
        started_unix_ms: 0,
        wall_us: 0,
        map_tasks: 0,
        reduce_tasks: 0,
        workers: Vec::new(),
        counters: BTreeMap::new(),
        phases: Vec::new(),
        attempts: Vec::new(),
        rates: RateSeries::default(),
        histograms: vec![NamedHistogram::new(
            hist::FETCH_LATENCY,
            "us",
            &new_histogram(),
        )],
    }
}

/// The part of `html` inside `<figure id="ID">`.
fn figure<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html.find(&format!("<figure id=\"{id}\">")).unwrap();
    let len = html[start..].find("</figure>").unwrap();
    &html[start..start + len]
}

#[test]
fn json_round_trips() {
    let report = sample_report();
    let json = serde_json::to_string_pretty(&report).unwrap();
    assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
}

#[test]
fn named_histograms_round_trip() {
    let report = sample_report();
    let named = report.histogram(hist::FETCH_LATENCY).unwrap();
    let h = named.histogram().unwrap();
    assert_eq!(h.len(), 3_000);
    assert_eq!(Percentiles::of(&h), named.percentiles);
    assert!(report.histogram("nope").is_none());

    let mut broken = named.clone();
    broken.v2 = "!!!".into();
    let err = broken.histogram().unwrap_err().to_string();
    assert!(
        err.contains("fetch_latency") && err.contains("base64"),
        "{err}"
    );
    broken.v2 = "AAAA".into();
    assert!(broken.histogram().is_err());
}

#[test]
fn directory_round_trips_and_hgrm_files_parse() {
    let report = sample_report();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/report");
    write_dir(&report, &dir).unwrap();
    write_dir(&report, &dir).unwrap(); // overwriting is fine too
    assert_eq!(load_dir(&dir).unwrap(), report);

    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut expected: Vec<String> = report
        .histograms
        .iter()
        .map(|h| format!("{}.hgrm", h.name))
        .collect();
    expected.extend([REPORT_HTML.to_owned(), REPORT_JSON.to_owned()]);
    expected.sort();
    assert_eq!(files, expected, "no temporary files are left behind");

    for named in &report.histograms {
        let h = named.histogram().unwrap();
        let text = std::fs::read_to_string(dir.join(format!("{}.hgrm", named.name))).unwrap();
        let rows = parse_hgrm(&text).unwrap();
        assert!(!rows.is_empty(), "{}", named.name);
        for w in rows.windows(2) {
            assert!(
                w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2,
                "{}: {w:?}",
                named.name
            );
        }
        let median = rows.iter().find(|r| r.1 >= 0.5).unwrap();
        assert_eq!(
            median.0 as u64,
            h.value_at_quantile(0.5),
            "{} p50",
            named.name
        );
        let last = rows.last().unwrap();
        assert_eq!(
            (last.0 as u64, last.1, last.2),
            (h.max(), 1.0, h.len()),
            "{} max",
            named.name
        );
    }
}

#[test]
fn html_has_the_plots_and_escapes_text() {
    let report = sample_report();
    let html = render_html(&report);
    for id in ["timeline", "rates", "percentiles"] {
        assert!(figure(&html, id).contains("<svg"), "{id} has an inline svg");
    }
    assert!(html.matches("<svg").count() >= 3);
    assert!(html.contains("<title>quern report: terasort &lt;1GB&gt; &amp; co</title>"));
    assert!(!html.contains("<1GB>"));
    let timeline = figure(&html, "timeline");
    assert!(timeline.matches("<rect").count() >= report.attempts.len());
    assert!(timeline.contains("10.0.0.3:7000"));
    // Nothing is fetched from the network.
    for needle in ["http://", "https://", "<script", "@import", "url("] {
        let outside_xmlns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!outside_xmlns.contains(needle), "{needle}");
    }
    // Every histogram and every attempt has a row.
    for h in &report.histograms {
        assert!(html.contains(&format!("<a href=\"{0}.hgrm\">{0}.hgrm</a>", h.name)));
    }
    assert_eq!(html.matches("<tr class=").count(), report.attempts.len());
}

#[test]
fn empty_report_renders() {
    let report = empty_report();
    let html = render_html(&report);
    for id in ["timeline", "rates", "percentiles"] {
        assert!(figure(&html, id).contains("<svg"), "{id}");
    }
    assert!(!html.contains("class=\"plot-error\""), "{html}");
    assert_eq!(
        report.summary(),
        "quern : 0 map tasks, 0 reduce tasks, 0 records in, 0 bytes out, 0.00 s (0.0 MB/s in)"
    );
    let tmp = tempfile::tempdir().unwrap();
    write_dir(&report, tmp.path()).unwrap();
    assert_eq!(load_dir(tmp.path()).unwrap(), report);
}

#[test]
fn odd_reports_render() {
    // Zero-length attempts, an unknown worker, a zero bucket width, a tiny histogram.
    let mut report = sample_report();
    report.wall_us = 0;
    report.attempts.truncate(2);
    report.attempts[0].end_us = report.attempts[0].start_us;
    report.attempts[1].worker = 99;
    report.attempts[1].outcome = Outcome::Lost;
    report.rates.bucket_us = 0;
    let mut one = new_histogram();
    one.record(0).unwrap();
    report.histograms = vec![NamedHistogram::new("zero", "us", &one)];
    let html = render_html(&report);
    assert!(!html.contains("class=\"plot-error\""));
    assert!(figure(&html, "timeline").contains("w99"));
}

#[test]
fn summary_reads_well() {
    let summary = sample_report().summary();
    let lines: Vec<&str> = summary.lines().collect();
    let job = "quern terasort <1GB> & co: ";
    assert!(lines.iter().all(|l| l.starts_with(job)), "{summary}");
    assert_eq!(
        lines[0],
        format!("{job}8 map tasks, 2 reduce tasks, 10737418 records in, 1000000000 bytes out, 10.30 s (104.2 MB/s in)")
    );
    assert_eq!(
        lines[1],
        format!("{job}attempts: 10 map, 2 reduce, 1 failed, 0 lost; backups: 1 launched, 1 won")
    );
    assert_eq!(
        lines[2],
        format!("{job}worker 3 (10.0.0.3:7000): work dir failed: /w/job-1/map-3.run: No space left on device (os error 28); it was given no map tasks until it had room")
    );
    assert!(
        lines[3].contains("histogram") && lines[3].ends_with("max"),
        "{summary}"
    );
    assert_eq!(lines.len(), 4 + 7, "{summary}");
    // Columns line up: every row is as long as the header, or the max column is narrower.
    let header_max = lines[3].rfind("max").unwrap() + 3;
    assert!(
        lines[4..]
            .iter()
            .all(|l| l.chars().count() == header_max || l.len() >= header_max),
        "{summary}"
    );
    assert!(summary.contains("ms") && summary.contains("MB/s") && summary.contains('s'));
    eprintln!("{summary}");
}

/// A bigger job: 20 workers with 4 slots, 800 maps, 40 reduces; worker 7 dies at 5 s and
/// its running attempts are lost and re-run; a few stragglers get backups.
fn large_report() -> Report {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut report = sample_report();
    report.job = "wc".into();
    report.workers = (1..=20)
        .map(|id| WorkerRecord {
            id,
            addr: format!("10.1.{}.{}:7000", id / 8, id),
            pid: 100 + id,
            slots: 4,
            work_dir_fault: None,
        })
        .collect();
    // Slots free at (µs), per worker slot; worker 7 is gone after 5 s.
    let mut free: Vec<(u32, u64)> = (1..=20).flat_map(|w| (0..4).map(move |_| (w, 0))).collect();
    let mut attempts = Vec::new();
    let mut id = 0;
    let mut launch = |phase, task, after: u64, free: &mut Vec<(u32, u64)>, rng: &mut Rng| {
        let (slot, _) = free
            .iter()
            .enumerate()
            .filter(|(_, (w, _))| *w != 7 || after < 5_000_000)
            .min_by_key(|(_, (_, t))| *t)
            .unwrap();
        let (worker, at) = free[slot];
        let start = at.max(after) + 2_000;
        let end = start + 400_000 + rng.next() % 1_200_000;
        id += 1;
        let mut a = AttemptRecord {
            phase,
            task,
            attempt: id,
            worker,
            start_us: start,
            end_us: end,
            outcome: Outcome::Committed,
            backup: false,
        };
        if worker == 7 && end > 5_000_000 {
            a.end_us = 5_000_000;
            a.outcome = Outcome::Lost;
        }
        free[slot].1 = a.end_us;
        a
    };
    for task in 0..800 {
        let a = launch(PhaseName::Map, task, 0, &mut free, &mut rng);
        let lost = a.outcome == Outcome::Lost;
        attempts.push(a);
        if lost {
            attempts.push(launch(PhaseName::Map, task, 5_000_000, &mut free, &mut rng));
        } else if task % 97 == 3 {
            let last = attempts.len() - 1;
            attempts[last].end_us += 3_000_000;
            attempts[last].outcome = Outcome::Cancelled;
            let mut backup = launch(
                PhaseName::Map,
                task,
                attempts[last].start_us + 1_500_000,
                &mut free,
                &mut rng,
            );
            backup.backup = true;
            attempts[last].end_us = attempts[last]
                .end_us
                .min(backup.end_us)
                .max(attempts[last].start_us);
            attempts.push(backup);
        }
    }
    let map_end = attempts.iter().map(|a| a.end_us).max().unwrap();
    for task in 0..40 {
        let mut a = launch(PhaseName::Reduce, task, map_end, &mut free, &mut rng);
        if task == 11 {
            a.outcome = Outcome::Failed;
        }
        attempts.push(a);
    }
    let end = attempts.iter().map(|a| a.end_us).max().unwrap();
    report.phases = vec![
        PhaseRecord {
            phase: PhaseName::Map,
            end_us: map_end,
        },
        PhaseRecord {
            phase: PhaseName::Reduce,
            end_us: end,
        },
    ];
    report.wall_us = end + 50_000;
    report.map_tasks = 800;
    report.reduce_tasks = 40;
    report.attempts = attempts;
    report
}

#[test]
fn large_report_renders_quickly() {
    let report = large_report();
    let started = std::time::Instant::now();
    let html = render_html(&report);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert!(!html.contains("class=\"plot-error\""));
    assert!(figure(&html, "timeline").matches("<rect").count() >= report.attempts.len());
}

/// Writes the sample report to `$QUERN_REPORT_EXAMPLE` (default `/tmp/report-example`), and
/// the large and empty ones below it, to look at: `cargo test -p quern-runtime report::tests::example -- --ignored`.
#[test]
#[ignore = "writes outside the test's temporary directory"]
fn example() {
    let dir =
        std::env::var_os("QUERN_REPORT_EXAMPLE").unwrap_or_else(|| "/tmp/report-example".into());
    let dir = std::path::Path::new(&dir);
    write_dir(&sample_report(), dir).unwrap();
    write_dir(&large_report(), &dir.join("large")).unwrap();
    write_dir(&empty_report(), &dir.join("empty")).unwrap();
    eprintln!("{}", sample_report().summary());
}
