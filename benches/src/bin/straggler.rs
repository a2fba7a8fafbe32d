//! Macro benchmark: terasort on a hand-started cluster with one straggling worker, with and
//! without speculation, against the same job on a healthy cluster.
//!
//! ```text
//! cargo build --release -p quern-benches -p quern-jobs
//! target/release/straggler [--records N] [--workers W] [--slow F] [--split-size S]
//!                          [--reducers R] [--runs K] [--dir D] [--quern PATH]
//! ```
//!
//! Generates N records (default 10,000,000: 1 GB) with `quern teragen --in-process`, then
//! starts a coordinator and W workers of one slot each (default 3) on loopback and times
//! `quern terasort` on it (**healthy**); then starts a second cluster whose first worker
//! runs with `QUERN_FAULT=slow:F` (default 10; a test-only hook that paces the record loops
//! of every attempt on that worker) and times the same job with `--speculation on` and with
//! `--speculation off`. Every output is checked with `quern teravalidate` (in order, record
//! count and checksum equal to the generated input's). Prints the median of K runs of each
//! (default 1), the ratios to the healthy time, and each run's attempts/backups summary
//! line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quern_benches::{median, run};

struct Args {
    records: u64,
    workers: usize,
    slow: String,
    split_size: String,
    reducers: Option<u32>,
    runs: usize,
    dir: PathBuf,
    quern: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut args = Args {
        records: 10_000_000,
        workers: 3,
        slow: "10".into(),
        split_size: "64MiB".into(),
        reducers: None,
        runs: 1,
        dir: std::env::temp_dir().join("quern-bench-straggler"),
        quern: exe.with_file_name("quern"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--records" => args.records = value.parse().map_err(|e| format!("--records: {e}"))?,
            "--workers" => args.workers = value.parse().map_err(|e| format!("--workers: {e}"))?,
            "--slow" => args.slow = value,
            "--split-size" => args.split_size = value,
            "--reducers" => {
                args.reducers = Some(value.parse().map_err(|e| format!("--reducers: {e}"))?)
            }
            "--runs" => args.runs = value.parse().map_err(|e| format!("--runs: {e}"))?,
            "--dir" => args.dir = value.into(),
            "--quern" => args.quern = value.into(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.workers < 2 {
        return Err("--workers must be at least 2 (one straggler, one to back it up)".into());
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(args)
}

/// The processes of a cluster; killed and reaped on drop.
struct Cluster {
    addr: String,
    secret: PathBuf,
    children: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// A coordinator and `workers` one-slot workers in `dir`; the first worker gets
    /// `QUERN_FAULT=fault` if given. Waits until every worker joined.
    fn start(
        quern: &Path,
        dir: &Path,
        workers: usize,
        fault: Option<&str>,
    ) -> Result<Cluster, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let secret = dir.join("secret");
        run(Command::new(quern).arg("secret").arg(&secret))?;
        let mut coordinator = Command::new(quern)
            .args([
                "coordinator",
                "--listen",
                "127.0.0.1:0",
                "-v",
                "--exit-with-parent",
            ])
            .arg("--secret-file")
            .arg(&secret)
            .env_remove("QUERN_FAULT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the coordinator: {e}"))?;
        let stdout = coordinator.stdout.take().expect("piped stdout");
        let stderr = coordinator.stderr.take().expect("piped stderr");
        let mut cluster = Cluster {
            addr: String::new(),
            secret,
            children: vec![coordinator],
        };
        // Its first stdout line has the address; its log says when workers join.
        let (tx, rx) = mpsc::channel::<String>();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(" joined from ") {
                    let _ = tx2.send("joined".into());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let next = |what: &str| {
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| format!("the coordinator did not report {what} within 30 s"))
        };
        let first = next("its address")?;
        cluster.addr = quern_runtime::cluster::launch::Greeting::parse_listening(&first)
            .map_err(|e| e.to_string())?
            .to_string();
        for i in 0..workers {
            let mut cmd = Command::new(quern);
            cmd.args([
                "worker",
                "--join",
                &cluster.addr,
                "--slots",
                "1",
                "--exit-with-parent",
            ])
            .arg("--secret-file")
            .arg(&cluster.secret)
            .arg("--work-dir")
            .arg(dir.join(format!("worker-{i}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            match fault {
                Some(f) if i == 0 => cmd.env("QUERN_FAULT", f),
                _ => cmd.env_remove("QUERN_FAULT"),
            };
            cluster.children.push(
                cmd.spawn()
                    .map_err(|e| format!("starting worker {i}: {e}"))?,
            );
        }
        for _ in 0..workers {
            while next("every worker joining")? != "joined" {}
        }
        Ok(cluster)
    }
}

/// The value of the line `Key: value` of a `quern` report.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}

/// What the generated input is: records and checksum, as teragen and teravalidate print.
#[derive(Debug, PartialEq, Eq)]
struct Digest {
    records: String,
    checksum: String,
}

fn digest(report: &str) -> Result<Digest, String> {
    let get = |key: &str| {
        field(report, key)
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("no {key:?} line in:\n{report}"))
    };
    Ok(Digest {
        records: get("Records")?,
        checksum: get("Checksum")?,
    })
}

/// One timed terasort run: its duration and its attempts summary line.
struct Timed {
    secs: f64,
    attempts: String,
}

struct Bench<'a> {
    args: &'a Args,
    input: PathBuf,
    want: Digest,
    reducers: u32,
}

impl Bench<'_> {
    /// Times `quern terasort` on `cluster` with `--speculation speculation`; validates the
    /// output and removes it.
    fn terasort(&self, cluster: &Cluster, label: &str, speculation: &str) -> Result<Timed, String> {
        let out = self.args.dir.join(format!("sorted-{label}"));
        let _ = std::fs::remove_dir_all(&out);
        let started = Instant::now();
        let (_, stderr) = run(Command::new(&self.args.quern)
            .arg("terasort")
            .arg(&self.input)
            .args(["--split-size", &self.args.split_size])
            .args(["-r", &self.reducers.to_string()])
            .args(["--speculation", speculation])
            .args(["--coordinator", &cluster.addr])
            .arg("--secret-file")
            .arg(&cluster.secret)
            .arg("-o")
            .arg(&out))?;
        let secs = started.elapsed().as_secs_f64();
        let attempts = stderr
            .lines()
            .find(|l| l.contains(": attempts: "))
            .unwrap_or("(no attempts line)")
            .to_string();
        let (report, _) = run(Command::new(&self.args.quern)
            .args(["teravalidate", "--in-process", "-q"])
            .arg(&out))?;
        if !report.contains("SUCCESS") || digest(&report)? != self.want {
            return Err(format!(
                "{label}: teravalidate does not match the input ({:?}):\n{report}",
                self.want
            ));
        }
        std::fs::remove_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(Timed { secs, attempts })
    }
}

fn bench() -> Result<(), String> {
    let args = parse_args()?;
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).map_err(|e| e.to_string())?;
    let input = args.dir.join("in");
    let started = Instant::now();
    let (report, _) = run(Command::new(&args.quern)
        .args([
            "teragen",
            "--in-process",
            "-q",
            "--records",
            &args.records.to_string(),
        ])
        .arg("-o")
        .arg(&input))?;
    let want = digest(&report)?;
    eprintln!(
        "straggler: generated {} records in {:.1} s",
        want.records,
        started.elapsed().as_secs_f64()
    );
    let bench = Bench {
        args: &args,
        input,
        want,
        reducers: args.reducers.unwrap_or(args.workers as u32),
    };
    let fault = format!("slow:{}", args.slow);
    let mut rows: Vec<(&str, Vec<Timed>)> = vec![
        ("healthy", Vec::new()),
        ("straggler, speculation on", Vec::new()),
        ("straggler, speculation off", Vec::new()),
    ];
    {
        let cluster = Cluster::start(&args.quern, &args.dir.join("healthy"), args.workers, None)?;
        for run in 0..args.runs {
            let t = bench.terasort(&cluster, &format!("healthy-{run}"), "on")?;
            eprintln!("straggler: healthy run {run}: {:.2} s", t.secs);
            rows[0].1.push(t);
        }
    }
    {
        let cluster = Cluster::start(
            &args.quern,
            &args.dir.join("straggler"),
            args.workers,
            Some(&fault),
        )?;
        for run in 0..args.runs {
            for (row, speculation) in [(1, "on"), (2, "off")] {
                let t = bench.terasort(&cluster, &format!("{speculation}-{run}"), speculation)?;
                eprintln!(
                    "straggler: speculation {speculation} run {run}: {:.2} s",
                    t.secs
                );
                rows[row].1.push(t);
            }
        }
    }
    let gb = args.records as f64 * 100.0 / 1e9;
    println!(
        "terasort of {} records ({gb:.2} GB), {} splits, {} reducers, {} workers of 1 slot; \
         straggler: worker 0 with QUERN_FAULT={fault}; median of {} run(s)",
        args.records, args.split_size, bench.reducers, args.workers, args.runs
    );
    let healthy = median(rows[0].1.iter().map(|t| t.secs).collect());
    for (label, runs) in &rows {
        let m = median(runs.iter().map(|t| t.secs).collect());
        println!("{label:<27} {m:8.2} s  {:5.2}x healthy", m / healthy);
        for t in runs {
            println!("    {:.2} s  {}", t.secs, t.attempts);
        }
    }
    println!("every output validated by teravalidate (order, record count, checksum)");
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("straggler: {e}");
            ExitCode::FAILURE
        }
    }
}
