//! Macro benchmark: `quern terasort` against GNU `sort` on the same gensort ASCII records.
//!
//! ```text
//! cargo build --release && target/release/terasort_vs_sort [--records N] [--runs K] [--dir D]
//! ```
//!
//! Generates N records with `quern teragen --ascii`, then alternates K timed runs of
//! `quern terasort` and `LC_ALL=C sort --parallel=<cores>` over the same part files (warm page
//! cache for both), checks that both outputs are byte-identical (ASCII records sort the same
//! by whole line as by key then value), and prints the medians and their ratio.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

struct Args {
    records: u64,
    runs: usize,
    dir: PathBuf,
    quern: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut args = Args {
        records: 10_000_000,
        runs: 3,
        dir: std::env::temp_dir().join("quern-bench"),
        quern: exe.with_file_name("quern"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--records" => args.records = value.parse().map_err(|e| format!("--records: {e}"))?,
            "--runs" => args.runs = value.parse().map_err(|e| format!("--runs: {e}"))?,
            "--dir" => args.dir = value.into(),
            "--quern" => args.quern = value.into(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn timed(cmd: &mut Command) -> Result<Duration, String> {
    let started = Instant::now();
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}"));
    }
    Ok(started.elapsed())
}

fn parts(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("part-"))
        })
        .collect();
    parts.sort();
    Ok(parts)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Compares the concatenation of `parts` with `file`, streaming.
fn same_bytes(parts: &[PathBuf], file: &Path) -> Result<bool, String> {
    use std::io::Read;
    let mut want = std::io::BufReader::new(std::fs::File::open(file).map_err(|e| e.to_string())?);
    let mut a = vec![0u8; 1 << 20];
    let mut b = vec![0u8; 1 << 20];
    for part in parts {
        let mut got =
            std::io::BufReader::new(std::fs::File::open(part).map_err(|e| e.to_string())?);
        loop {
            let n = got.read(&mut a).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            want.read_exact(&mut b[..n]).map_err(|e| e.to_string())?;
            if a[..n] != b[..n] {
                return Ok(false);
            }
        }
    }
    Ok(want.read(&mut b[..1]).map_err(|e| e.to_string())? == 0)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).map_err(|e| e.to_string())?;
    let input = args.dir.join("in");
    timed(
        Command::new(&args.quern)
            .args([
                "teragen",
                "--ascii",
                "-q",
                "--records",
                &args.records.to_string(),
                "--output",
            ])
            .arg(&input),
    )?;
    let inputs = parts(&input)?;
    let (mut quern, mut sort) = (Vec::new(), Vec::new());
    let sorted = args.dir.join("sort.out");
    for run in 0..args.runs {
        let out = args.dir.join(format!("quern-{run}"));
        quern.push(timed(
            Command::new(&args.quern)
                .args(["terasort", "-q"])
                .arg(&input)
                .arg("--output")
                .arg(&out),
        )?);
        sort.push(timed(
            Command::new("sort")
                .env("LC_ALL", "C")
                .arg(format!("--parallel={cores}"))
                .args(["-S", "25%", "-o"])
                .arg(&sorted)
                .args(&inputs),
        )?);
        if run == 0 && !same_bytes(&parts(&out)?, &sorted)? {
            return Err("quern terasort output differs from GNU sort's".into());
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    let (q, s) = (median(quern), median(sort));
    let gb = args.records as f64 * 100.0 / 1e9;
    println!(
        "records: {} ({gb:.2} GB), runs: {}, cores: {cores}",
        args.records, args.runs
    );
    println!(
        "quern terasort        median {:7.2} s  {:6.3} GB/s",
        q.as_secs_f64(),
        gb / q.as_secs_f64()
    );
    println!(
        "LC_ALL=C sort --parallel={cores} median {:7.2} s  {:6.3} GB/s",
        s.as_secs_f64(),
        gb / s.as_secs_f64()
    );
    println!(
        "ratio sort/quern: {:.2}x (above 1: quern is faster); outputs byte-identical",
        s.as_secs_f64() / q.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terasort_vs_sort: {e}");
            ExitCode::FAILURE
        }
    }
}
