//! quern's benchmarks.
//!
//! - Criterion micro-benchmarks of the hot paths live in `benches/` and run with
//!   `cargo bench -p quern-benches` (`-- --test` for a quick smoke run):
//!   `sort_blocks` measures block encode/decode, the map task's sort + spill, and the reduce
//!   task's merge, on TeraSort-like input (100-byte records, 10-byte random keys).
//! - Macro benchmarks of whole jobs against peers measured in the same run are binaries:
//!   `peers` times `quern` against GNU sort, DuckDB, Polars, Spark, ripgrep, GNU grep and
//!   mawk on their own work (sort, word count, grep, a source tree, a small job, streaming),
//!   checks every result and writes `benches/results/peers.{md,json}`; `shuffle_net`
//!   measures the shuffle's QUIC transport between two processes against TCP (`peers
//!   --only shuffle` runs it); `straggler` runs
//!   terasort on a hand-started cluster with one slow worker, with and without speculation;
//!   `linkspeed` (root) runs terasort over four worker network namespaces with `tc tbf`-shaped
//!   veths and writes `benches/results/linkspeed/linkspeed.{md,json}`: per-link shuffle
//!   throughput against the link rate, and worker CPU per GB shuffled over the network.
//! - `simulate` drives the real scheduler with simulated workers on a simulated clock
//!   ([`sim`]): Figure 3 of the MapReduce paper from `benches/sim/paper-sort.toml` into
//!   `benches/results/figure3/`, or `--scale` (M = 200,000, R = 5,000, 2,000 workers).
//! - Scripts in `benches/scripts/` (bash; not tests, not CI): `scale.sh` (many small files,
//!   any fan-in, spilling reducers: wall time and peak anonymous memory), `os_straggler.sh`
//!   (a worker slowed by the OS, with and without speculation) and `fuzz.sh`.
//! - `bash benches/scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]` (default 60 s, every
//!   target) builds the cargo-fuzz targets of `fuzz/` (nightly toolchain and
//!   `cargo install cargo-fuzz`; AddressSanitizer, debug assertions, overflow checks) and runs
//!   them one after another, each from its committed seeds in `fuzz/seeds/TARGET` into a
//!   scratch corpus `fuzz/corpus/TARGET`. It prints each target's executions, executions per
//!   second and ok or CRASH, and exits 1 if any crashed; a crashing input lands in
//!   `fuzz/artifacts/TARGET/`. The seeds are real encodings, rewritten by
//!   `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

pub mod sim;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The median of `v` (the upper one of an even count); `v` must not be empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `cmd` to success; returns its stdout and stderr.
pub fn run(cmd: &mut Command) -> Result<(String, String), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{stdout}{stderr}",
            out.status
        ));
    }
    Ok((stdout, stderr))
}

/// The `part-*` files of a job's output directory, in name order.
pub fn parts(dir: &Path) -> Result<Vec<PathBuf>, String> {
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

/// One timed run of a command.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Wall time, seconds.
    pub secs: f64,
    /// Peak of the summed `RssAnon` of the command's whole process tree, bytes (sampled
    /// every 20 ms: a peak shorter than that can be missed).
    pub peak_anon: u64,
}

/// Runs `cmd` to success, timing it and sampling the anonymous memory of its process tree.
/// Its stdout goes to `log`, its stderr to `log` with `.err` appended (the tail of which a
/// failed run's message shows).
pub fn measure(cmd: &mut Command, log: &Path) -> Result<Measured, String> {
    let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err_log = PathBuf::from(format!("{}.err", log.display()));
    let err = std::fs::File::create(&err_log).map_err(|e| format!("{}: {e}", err_log.display()))?;
    let started = Instant::now();
    let mut child = cmd
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let root = child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(tree_anon(root));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let status = child.wait().map_err(|e| format!("{cmd:?}: {e}"));
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak_anon = sampler.join().unwrap_or(0);
    let status = status?;
    if !status.success() {
        let text = std::fs::read_to_string(&err_log).unwrap_or_default();
        let tail: String = text
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(format!("{cmd:?} failed ({status}):\n{tail}"));
    }
    Ok(Measured { secs, peak_anon })
}

/// Summed `RssAnon` of `root` and all its descendants, bytes.
pub fn tree_anon(root: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut parent = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for &(pid, ppid) in &parent {
            if tree.contains(&ppid) && !tree.contains(&pid) {
                tree.push(pid);
                grew = true;
            }
        }
    }
    tree.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("RssAnon:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .sum::<u64>()
        * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_tree_has_anonymous_memory() {
        assert!(tree_anon(std::process::id()) > 0);
    }

    #[test]
    fn measure_reports_a_failed_command_with_its_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let err = measure(
            Command::new("sh").args(["-c", "echo oops >&2; exit 3"]),
            &log,
        )
        .expect_err("exit 3 fails");
        assert!(err.contains("oops"), "{err}");
        let ok = measure(Command::new("true").arg(""), &log).expect("true succeeds");
        assert!(ok.secs >= 0.0);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
    }
}
