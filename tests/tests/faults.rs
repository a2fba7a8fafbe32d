//! Fault tolerance, black box: real `quern` processes on loopback, faults injected from
//! outside (signals) or with the worker-only test hook `QUERN_FAULT`.
//!
//! 1. **crash** — SIGKILL a random worker of a local cluster every 200–400 ms (at most
//!    [`MAX_KILLS`] per job, seeded) during terasort and wc: the output is byte-identical
//!    to `--sequential` and no record is counted twice.
//! 2. **stall** — SIGSTOP a worker of a hand-started cluster mid-job: the job finishes
//!    correctly while the worker is still stopped; after SIGCONT the coordinator disconnects
//!    the stalled worker, its late results count for nothing, and the cluster serves the
//!    next job.
//! 3. **straggler** — one worker of three is made slow (`QUERN_FAULT=slow:N`): with
//!    speculation the job finishes within 1.5× of the same job on a healthy cluster, without
//!    speculation it does not. A worker slowed by the operating system instead (SIGSTOP /
//!    SIGCONT from outside, 10% duty cycle) has its map backed up, and the backup wins.
//! 4. **commit once** — backups launched by speculation (and the originals they beat) leave
//!    exactly the `--sequential` part files, and counters are not doubled.
//! 6. **bad records** — a map that panics on one record fails the job with a message naming
//!    the file and byte offset; with `--skip-bad-records` the job succeeds without it and
//!    lists it.
//! 7. **no spurious work** — a healthy job runs one attempt per task and no backup.
//!
//! Also: a straggling map is backed up when reducers hold every other slot; consecutive jobs
//! on one cluster keep their attempts apart (attempt numbers restart with every job); a
//! healthy TeraGen (which generates rather than reads records) launches no backup either.
//!
//! (5, coordinator restart, lives elsewhere.)
//!
//! The tests of this file run one at a time ([`serial`]): 2 and 3 measure durations, and
//! every job here is CPU-bound on a small machine. Every wait has a deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quern_tests::cluster::{
    cluster_pids, coordinator_addr, new_secret, proc_stat, run_quern, signal, wait_joined, Proc,
    Stream, JOB_TIMEOUT,
};
use quern_tests::{
    assert_committed, book, books, entries, map_tasks, p, parts, quern, Outcome, Rng,
};

/// At most this many workers are killed during one job (the local cluster respawns a dead
/// worker at most 16 times).
const MAX_KILLS: usize = 6;
/// Seeds of the crash test (override with `QUERN_CRASH_SEEDS=1,2,3,...`).
const CRASH_SEEDS: [u64; 3] = [1, 2, 3];
/// How long the stall test keeps its worker stopped (at most: until the job ends).
const STALL: Duration = Duration::from_secs(10);
/// The straggler of test 3. `slow:N` paces only a task's record loop, which is a small part
/// of a task here, so a task runs far less than N× slower: N is large enough that the
/// straggler's map takes several times as long as a whole healthy job.
const STRAGGLER: &str = "slow:200";
/// The straggler of the other speculation tests: slower still, so that its map is certainly
/// still running when speculation may first back it up (after 1 s).
const SLOWEST: &str = "slow:1000";
/// Bound of test 3: the job with speculation on a cluster with a straggler finishes within
/// this many times the healthy duration; without speculation it does not.
const STRAGGLER_BOUND: f64 = 1.5;

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the lock that makes the tests of this file run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// The summary line `quern <job>: attempts: X map, Y reduce, F failed, L lost; backups: B
/// launched, W won`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attempts {
    map: u64,
    reduce: u64,
    failed: u64,
    lost: u64,
    launched: u64,
    won: u64,
}

fn attempts(o: &Outcome) -> Attempts {
    let re = regex::Regex::new(
        r"(?m)^quern \S+: attempts: (\d+) map, (\d+) reduce, (\d+) failed, (\d+) lost; backups: (\d+) launched, (\d+) won$",
    )
    .expect("regex");
    let c = re.captures(&o.stderr).unwrap_or_else(|| {
        panic!(
            "`{}`: no attempts line in the summary:\n{}",
            o.cmdline, o.stderr
        )
    });
    let n = |i: usize| c[i].parse::<u64>().expect("number");
    Attempts {
        map: n(1),
        reduce: n(2),
        failed: n(3),
        lost: n(4),
        launched: n(5),
        won: n(6),
    }
}

/// The `N` of the summary's `N records in` (the `map.input.records` counter).
fn records_in(o: &Outcome) -> u64 {
    let re =
        regex::Regex::new(r"(?m)^quern \S+: \d+ map tasks, \d+ reduce tasks, (\d+) records in")
            .expect("regex");
    re.captures(&o.stderr)
        .unwrap_or_else(|| panic!("`{}`: no summary line:\n{}", o.cmdline, o.stderr))[1]
        .parse()
        .expect("number")
}

/// The summary line of an outcome that has one (for messages).
fn summary_lines(o: &Outcome) -> String {
    o.stderr
        .lines()
        .filter(|l| l.starts_with("quern ") && !l.starts_with("quern: "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_same_parts(
    what: &str,
    reference: &BTreeMap<String, Vec<u8>>,
    got: &BTreeMap<String, Vec<u8>>,
) {
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(got), names(reference), "{what}: different part files");
    for (name, want) in reference {
        let have = &got[name];
        if have != want {
            let at = want
                .iter()
                .zip(have)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(have.len()));
            let ctx = |b: &[u8]| {
                String::from_utf8_lossy(
                    &b[at.saturating_sub(40).min(b.len())..(at + 40).min(b.len())],
                )
                .into_owned()
            };
            panic!(
                "{what}: {name} differs at byte {at} (sequential {} bytes, got {} bytes)\nsequential: {:?}\ngot:        {:?}",
                want.len(),
                have.len(),
                ctx(want),
                ctx(have)
            );
        }
    }
}

/// Checks a committed output directory against the `--sequential` one: the same file set
/// (`_SUCCESS` plus the same part files, nothing else) and the same bytes.
fn assert_like_reference(what: &str, reference: &Reference, out: &Path) {
    assert_committed(out, 1);
    assert_same_parts(what, &reference.parts, &parts(out));
}

/// A job's `--sequential` result.
#[derive(Debug)]
struct Reference {
    parts: BTreeMap<String, Vec<u8>>,
    records_in: u64,
    map_tasks: usize,
}

/// Runs `args -o <dir>/<name>-seq --sequential`.
fn sequential(name: &str, args: &[String], dir: &Path) -> Reference {
    let out = dir.join(format!("{name}-seq"));
    let o = run_quern([args.to_vec(), s(&["--sequential", "-o"]), vec![p(&out)]].concat());
    o.ok();
    assert_committed(&out, 1);
    let reference = Reference {
        parts: parts(&out),
        records_in: records_in(&o),
        map_tasks: map_tasks(&o.stderr).expect("map tasks in the summary"),
    };
    std::fs::remove_dir_all(&out).expect("remove the sequential output");
    reference
}

/// Generates `records` binary records as `parts` files, sequentially (this is input).
fn teragen(dir: &Path, name: &str, records: u64, parts: u64) -> PathBuf {
    let out = dir.join(name);
    run_quern(s(&[
        "teragen",
        "--records",
        &records.to_string(),
        "--parts",
        &parts.to_string(),
        "--sequential",
        "-q",
        "-o",
        &p(&out),
    ]))
    .ok();
    out
}

/// Writes `files` text files into `dir/name`, each the whole corpus `copies` times; returns
/// the directory.
fn corpus_copies(dir: &Path, name: &str, files: usize, copies: usize) -> PathBuf {
    let corpus: Vec<u8> = books()
        .iter()
        .flat_map(|b| std::fs::read(b).expect("read book"))
        .collect();
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("mkdir");
    for i in 0..files {
        let text = corpus.repeat(copies);
        std::fs::write(out.join(format!("text-{i:02}.txt")), text).expect("write text");
    }
    out
}

/// The live (not zombie) `quern worker` children of `parent`, read from `/proc`.
fn worker_children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|st| st.ppid == parent && st.state != 'Z')
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    c.split(|b| *b == 0)
                        .nth(1)
                        .is_some_and(|arg| arg == b"worker")
                })
        })
        .collect();
    pids.sort_unstable();
    pids
}

// ---------------------------------------------------------------------------------------
// Hand-started clusters.

/// A coordinator (`-v`) and workers of one slot each, started by hand, each worker with its
/// own `QUERN_FAULT` (or none); everything is killed and reaped on drop.
struct HandCluster {
    /// The binary every process runs (and that runs the jobs).
    bin: PathBuf,
    addr: SocketAddr,
    secret: PathBuf,
    coordinator: Proc,
    workers: Vec<Proc>,
}

impl HandCluster {
    /// Starts a coordinator with `coordinator_args` and one worker per entry of `faults`,
    /// in `dir/name`; waits until every worker joined.
    fn start(
        dir: &Path,
        name: &str,
        faults: &[Option<&str>],
        coordinator_args: &[&str],
    ) -> HandCluster {
        HandCluster::start_bin(quern(), dir, name, faults, coordinator_args)
    }

    /// [`HandCluster::start`] with every process running `bin` (a user's quern binary).
    fn start_bin(
        bin: &Path,
        dir: &Path,
        name: &str,
        faults: &[Option<&str>],
        coordinator_args: &[&str],
    ) -> HandCluster {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir cluster dir");
        let secret = dir.join("secret");
        new_secret(&secret);
        let mut args = s(&[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            &p(&secret),
            "-v",
            "--exit-with-parent",
        ]);
        args.extend(s(coordinator_args));
        // Debug logs of the coordinator name every assignment: they explain a failure.
        let mut cmd = Command::new(bin);
        cmd.args(args).env(
            "QUERN_LOG",
            "info,quern_runtime::cluster::coordinator=debug",
        );
        let coordinator = Proc::spawn(format!("{name}: quern coordinator"), cmd);
        let addr = coordinator_addr(&coordinator);
        // One at a time: worker process i joins as `worker {i + 1}` (the scheduler breaks
        // ties by lowest id, so worker 0 gets the first task of every job).
        let mut workers: Vec<Proc> = Vec::new();
        for (i, fault) in faults.iter().enumerate() {
            let mut cmd = Command::new(bin);
            cmd.args(s(&[
                "worker",
                "--join",
                &addr.to_string(),
                "--secret-file",
                &p(&secret),
                "--slots",
                "1",
                "--work-dir",
                &p(&dir.join(format!("worker-{i}"))),
                "--exit-with-parent",
            ]));
            match fault {
                Some(f) => cmd.env("QUERN_FAULT", f),
                None => cmd.env_remove("QUERN_FAULT"),
            };
            let label = fault.map_or(String::new(), |f| format!(" (QUERN_FAULT={f})"));
            workers.push(Proc::spawn(format!("{name}: quern worker {i}{label}"), cmd));
            wait_joined(&coordinator, &workers, i + 1);
        }
        HandCluster {
            bin: bin.to_path_buf(),
            addr,
            secret,
            coordinator,
            workers,
        }
    }

    /// `--coordinator ADDR --secret-file F`.
    fn args(&self) -> Vec<String> {
        s(&[
            "--coordinator",
            &self.addr.to_string(),
            "--secret-file",
            &p(&self.secret),
        ])
    }

    /// The coordinator's name (`worker N`) of the worker process `i`, from its `-v` log.
    fn worker_id(&self, i: usize) -> String {
        let pid = self.workers[i].pid();
        let re = regex::Regex::new(r"(worker \d+) joined from \S+ \(pid (\d+)").expect("regex");
        let log = self.coordinator.output(Stream::Stderr);
        let id = re
            .captures_iter(&log)
            .find(|c| c[2].parse::<u32>().ok() == Some(pid))
            .map(|c| c[1].to_string());
        id.unwrap_or_else(|| panic!("no join of pid {pid} in the coordinator's log:\n{log}"))
    }

    /// What the coordinator logged about jobs, backups, reduce placement and worker 0's
    /// assignments, with times (for messages).
    fn scheduling_log(&self) -> String {
        let ansi = regex::Regex::new("\x1b\\[[0-9;]*m").expect("regex");
        let first = format!("to {}", self.worker_id(0));
        let log = self.coordinator.output(Stream::Stderr);
        let log = ansi.replace_all(&log, "");
        log.lines()
            .filter_map(|l| {
                let (head, msg) = l.split_once(" quern_runtime::cluster::coordinator: ")?;
                let time = head.split_whitespace().next().unwrap_or_default();
                (msg.contains("speculating")
                    || msg.contains("assign reduce")
                    || msg.ends_with(&first)
                    || msg.contains(" starts: ")
                    || msg.contains(" done in "))
                .then(|| format!("{time} {msg}"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs `args -o out` on this cluster and returns the outcome and the wall time.
    fn run(&self, args: &[String], out: &Path) -> (Outcome, Duration) {
        let start = Instant::now();
        let full = [args.to_vec(), self.args(), s(&["-o"]), vec![p(out)]].concat();
        let mut cmd = Command::new(&self.bin);
        cmd.args(&full);
        let o = Proc::spawn(format!("{} {}", self.bin.display(), full.join(" ")), cmd)
            .finish(JOB_TIMEOUT);
        (o, start.elapsed())
    }
}

// ---------------------------------------------------------------------------------------
// 1. crash

/// Runs `args -o out -v --workers 3` on a local cluster and SIGKILLs one of its workers at
/// random every 200–400 ms until the job ends (at most [`MAX_KILLS`] times). Returns the
/// outcome and the number of workers killed.
fn run_with_kills(args: &[String], out: &Path, seed: u64) -> (Outcome, usize) {
    let mut full = args.to_vec();
    full.extend(s(&["-o", &p(out), "-v", "--workers", "3"]));
    let label = format!("[seed {seed}] QUERN_LOG=info quern {}", full.join(" "));
    // QUERN_LOG=info reaches the cluster's processes too: the coordinator, whose stderr is
    // the client's, says when the job starts.
    let mut cmd = Command::new(quern());
    cmd.args(&full)
        .env("QUERN_LOG", "info")
        .env_remove("QUERN_FAULT");
    let mut client = Proc::spawn(label, cmd);
    client.expect_output("pid line", Stream::Stderr, JOB_TIMEOUT, cluster_pids);
    client.expect_output("job start", Stream::Stderr, JOB_TIMEOUT, |log| {
        log.contains(") starts: ").then_some(())
    });
    let mut rng = Rng(seed);
    let mut kills = 0;
    let deadline = Instant::now() + JOB_TIMEOUT;
    while kills < MAX_KILLS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(rng.range(200, 400)));
        if client.try_status().is_some() {
            break;
        }
        let workers = worker_children(client.pid());
        if workers.is_empty() {
            continue;
        }
        let victim = workers[rng.range(0, workers.len() as u64) as usize];
        if signal(victim, "KILL") {
            kills += 1;
        }
    }
    (client.finish(JOB_TIMEOUT), kills)
}

#[test]
fn crash_random_workers_output_equals_sequential() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // Jobs of one to two seconds on a quiet healthy cluster, of 300-400 small maps: each
    // kill hits a running job (and delays it by the heartbeat timeout). (At 80 MB the
    // terasort took 0.4 s on a quiet machine and no kill hit a running attempt.)
    let gen = teragen(dir.path(), "gen", 2_000_000, 2);
    let text = corpus_copies(dir.path(), "text", 10, 1);
    let jobs: [(&str, Vec<String>); 2] = [
        (
            "terasort",
            s(&["terasort", &p(&gen), "-r", "3", "--split-size", "512KiB"]),
        ),
        (
            "wc",
            s(&["wc", &p(&text), "-r", "3", "--split-size", "96KiB"]),
        ),
    ];
    let seeds: Vec<u64> = match std::env::var("QUERN_CRASH_SEEDS") {
        Ok(list) => list
            .split(',')
            .map(|x| x.trim().parse().expect("QUERN_CRASH_SEEDS: numbers"))
            .collect(),
        Err(_) => CRASH_SEEDS.to_vec(),
    };
    for (name, args) in &jobs {
        let reference = sequential(name, args, dir.path());
        let mut lost = 0;
        for &seed in &seeds {
            let out = dir.path().join(format!("{name}-{seed}"));
            let (o, kills) = run_with_kills(args, &out, seed);
            o.ok();
            lost += attempts(&o).lost;
            eprintln!(
                "crash {name} seed {seed}: {kills} workers killed\n{}",
                summary_lines(&o)
            );
            assert!(
                kills >= 1,
                "{name} seed {seed}: the job ended before any worker could be killed; make it bigger"
            );
            assert_like_reference(&format!("{name} seed {seed}"), &reference, &out);
            assert_eq!(
                records_in(&o),
                reference.records_in,
                "{name} seed {seed}: map.input.records counts only committed attempts"
            );
            std::fs::remove_dir_all(&out).expect("remove output");
        }
        assert!(
            lost >= 1,
            "{name}: no kill hit a running attempt in {} runs; make the job bigger",
            seeds.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. stall

#[test]
fn stalled_worker_is_replaced_and_its_late_results_discarded() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // 96 MB of text in 512 KiB splits: ~1.5 s on two workers of one slot (word count
    // combines in the mapper: 16 MB took 0.24 s, too short to stop a worker in).
    let text = corpus_copies(dir.path(), "text", 30, 1);
    let args = s(&["wc", &p(&text), "-r", "2", "--split-size", "512KiB"]);
    let reference = sequential("wc", &args, dir.path());

    let mut cluster = HandCluster::start(
        dir.path(),
        "stall",
        &[None, None],
        &["--heartbeat-timeout", "1s"],
    );
    let stalled_id = cluster.worker_id(1);
    let stalled_pid = cluster.workers[1].pid();
    let out = dir.path().join("wc-stall");
    let full = [args.clone(), cluster.args(), s(&["-o", &p(&out)])].concat();
    let mut client = Proc::quern(format!("quern {}", full.join(" ")), &full);
    let start = Instant::now();
    cluster
        .coordinator
        .expect_output("job start", Stream::Stderr, JOB_TIMEOUT, |log| {
            log.contains("(wc) starts").then_some(())
        });
    // Both workers have one slot and there are many maps: each is busy now.
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = client.try_status() {
        panic!(
            "the job ended ({status}) before the worker could be stopped; make it bigger\n{}",
            client.describe()
        );
    }
    assert!(signal(stalled_pid, "STOP"), "SIGSTOP {stalled_pid} failed");
    let stopped = Instant::now();
    let finished = client.wait_exit(STALL);
    let stalled_for = stopped.elapsed();
    assert!(signal(stalled_pid, "CONT"), "SIGCONT {stalled_pid} failed");
    if finished.is_none() {
        panic!(
            "the job did not finish while {stalled_id} was stopped for {STALL:?}: it waited for the stalled worker\n{}\n{}",
            client.describe(),
            cluster.coordinator.describe()
        );
    }
    let total = start.elapsed();
    let o = client.finish(JOB_TIMEOUT);
    o.ok();
    eprintln!(
        "stall: job finished {:.2} s after SIGSTOP ({:.2} s in all)\n{}",
        stalled_for.as_secs_f64(),
        total.as_secs_f64(),
        summary_lines(&o)
    );
    assert_like_reference("wc with a stalled worker", &reference, &out);
    assert_eq!(
        records_in(&o),
        reference.records_in,
        "map.input.records: the stalled worker's attempts must not count"
    );
    let a = attempts(&o);
    assert!(
        a.lost >= 1,
        "the stopped worker was running an attempt, which must be lost: {a:?}"
    );
    let log = cluster.coordinator.output(Stream::Stderr);
    assert!(
        log.contains(&format!("{stalled_id} missed its heartbeats")),
        "the coordinator should give up on {stalled_id} (pid {stalled_pid}):\n{log}"
    );

    // Resumed, the stalled worker finds its control stream closed and registers again, as
    // a new worker; its late reports change nothing.
    let joins = format!("(pid {stalled_pid},");
    cluster.coordinator.expect_output(
        "the stalled worker's second join",
        Stream::Stderr,
        Duration::from_secs(20),
        |log| {
            (log.lines()
                .filter(|l| l.contains(" joined from ") && l.contains(&joins))
                .count()
                >= 2)
                .then_some(())
        },
    );
    eprintln!("stall: the resumed worker joined again");
    assert_committed(&out, 1);
    assert_same_parts(
        "output after the stalled worker resumed",
        &reference.parts,
        &parts(&out),
    );

    // The cluster keeps serving: the next job runs on both workers.
    let out2 = dir.path().join("wc-after");
    let (o2, _) = cluster.run(&args, &out2);
    o2.ok();
    assert_like_reference("the next job on the same cluster", &reference, &out2);
    assert_eq!(records_in(&o2), reference.records_in);
    assert!(
        cluster.workers.iter_mut().all(|w| w.try_status().is_none())
            && cluster.coordinator.try_status().is_none(),
        "the coordinator and both workers must keep running"
    );
}

// ---------------------------------------------------------------------------------------
// 3. straggler

/// The durations of one round of the straggler test.
#[derive(Debug, Clone, Copy)]
struct StragglerTimes {
    healthy: f64,
    with_speculation: f64,
    without_speculation: f64,
}

impl StragglerTimes {
    fn ok(&self) -> bool {
        self.with_speculation <= STRAGGLER_BOUND * self.healthy
            && self.without_speculation > STRAGGLER_BOUND * self.healthy
    }

    /// A miss by less than a third of the bound: worth measuring again.
    fn near_miss(&self) -> bool {
        let (on, off) = (
            self.with_speculation / self.healthy,
            self.without_speculation / self.healthy,
        );
        on <= STRAGGLER_BOUND * 4.0 / 3.0 && off > STRAGGLER_BOUND * 2.0 / 3.0
    }
}

impl std::fmt::Display for StragglerTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "healthy {:.2} s, straggler with speculation {:.2} s ({:.2}×), without {:.2} s ({:.2}×)",
            self.healthy,
            self.with_speculation,
            self.with_speculation / self.healthy,
            self.without_speculation,
            self.without_speculation / self.healthy
        )
    }
}

/// Runs `args` on a healthy cluster of three one-slot workers, then on one whose first
/// worker is a straggler, with and without speculation. Every output must equal the
/// reference.
fn straggler_round(
    round: usize,
    args: &[String],
    reference: &Reference,
    dir: &Path,
) -> (StragglerTimes, String) {
    let run = |cluster: &HandCluster, label: &str, extra: &[&str]| -> (f64, Outcome) {
        let out = dir.join(format!("out-{round}-{label}"));
        let (o, t) = cluster.run(&[args.to_vec(), s(extra)].concat(), &out);
        o.ok();
        assert_like_reference(label, reference, &out);
        assert_eq!(records_in(&o), reference.records_in, "{label}: records in");
        std::fs::remove_dir_all(&out).expect("remove output");
        eprintln!(
            "straggler round {round}, {label}: {:.2} s\n{}",
            t.as_secs_f64(),
            summary_lines(&o)
        );
        (t.as_secs_f64(), o)
    };
    let healthy = {
        let cluster =
            HandCluster::start(dir, &format!("healthy-{round}"), &[None, None, None], &[]);
        run(&cluster, "healthy", &[]).0
    };
    let cluster = HandCluster::start(
        dir,
        &format!("straggler-{round}"),
        &[Some(STRAGGLER), None, None],
        &[],
    );
    let (with_speculation, o) = run(
        &cluster,
        "straggler, speculation on",
        &["--speculation", "on"],
    );
    let a = attempts(&o);
    assert!(
        a.launched >= 1,
        "speculation launched no backup of the straggler's task: {a:?}\n{}",
        cluster.scheduling_log()
    );
    let log = format!(
        "{} is the straggler\n{}",
        cluster.worker_id(0),
        cluster.scheduling_log()
    );
    let (without_speculation, o) = run(
        &cluster,
        "straggler, speculation off",
        &["--speculation", "off"],
    );
    let a = attempts(&o);
    assert_eq!(
        (a.launched, a.won),
        (0, 0),
        "--speculation off launched backups: {a:?}"
    );
    let times = StragglerTimes {
        healthy,
        with_speculation,
        without_speculation,
    };
    (times, log)
}

#[test]
fn straggler_speculation_keeps_the_job_fast() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // 192 MB of text, 100 similar maps (2 MiB splits): a healthy run of about 2 s, long
    // enough beside the 1 s speculation waits before a backup (64 MB took 0.6 s once word
    // count combined in the mapper).
    let text = corpus_copies(dir.path(), "text", 60, 1);
    let args = s(&["wc", &p(&text), "-r", "2", "--split-size", "2MiB"]);
    let reference = sequential("wc", &args, dir.path());
    let mut rounds = Vec::new();
    // One retry absorbs a noisy measurement (this machine is shared), not a clear miss.
    for round in 0..2 {
        let (times, log) = straggler_round(round, &args, &reference, dir.path());
        eprintln!("straggler round {round}: {times}");
        rounds.push(format!(
            "round {round}: {times}\ncoordinator, straggler with speculation: {log}"
        ));
        if times.ok() || !times.near_miss() {
            assert!(
                times.ok(),
                "with speculation the job must finish within {STRAGGLER_BOUND}× of a healthy run, and without it must not:\n{}",
                rounds.join("\n")
            );
            return;
        }
    }
    panic!(
        "with speculation the job must finish within {STRAGGLER_BOUND}× of a healthy run, and without it must not, in one of two rounds:\n{}",
        rounds.join("\n")
    );
}

/// Slows process `pid` from outside, as a starved machine would: SIGSTOP, then SIGCONT for
/// 5% of every 200 ms, for at most `limit`. Dropping it stops the cycle and leaves the
/// process running.
struct DutyCycle {
    cycler: std::process::Child,
    pid: u32,
}

impl DutyCycle {
    fn start(pid: u32, limit: Duration) -> DutyCycle {
        let script = format!(
            "end=$((SECONDS + {})); while [ $SECONDS -lt $end ]; do \
             kill -STOP {pid} || exit; sleep 0.19; kill -CONT {pid} || exit; sleep 0.01; done",
            limit.as_secs().max(1)
        );
        let cycler = Command::new("bash")
            .args(["-c", &script])
            .spawn()
            .expect("spawn the SIGSTOP/SIGCONT cycle");
        DutyCycle { cycler, pid }
    }
}

impl Drop for DutyCycle {
    fn drop(&mut self) {
        let _ = self.cycler.kill();
        let _ = self.cycler.wait();
        signal(self.pid, "CONT");
    }
}

/// A worker slowed by the OS, not by quern's own fault hook: its process gets 5% of the
/// time (SIGSTOP/SIGCONT cycling). Its map must be backed up and the backup must win —
/// which needs a progress that is not 100% while the map still sorts and spills.
#[test]
fn worker_slowed_by_the_os_is_backed_up() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // 160 MB of records, 32 MB splits: maps of 100-300 ms; the slowed worker (worker 0,
    // which the scheduler gives the first map) needs seconds for its own — well past the
    // scheduler's `min_runtime` (1 s), which no backup is launched before. (With 16 MB
    // splits and 10% of the time, its map once finished in 0.9 s, unbacked.)
    let gen = teragen(dir.path(), "gen", 1_600_000, 1);
    let args = s(&["terasort", &p(&gen), "-r", "1", "--split-size", "32MB"]);
    let reference = sequential("terasort", &args, dir.path());
    let cluster = HandCluster::start(dir.path(), "os-slowed", &[None, None, None], &[]);
    let out = dir.path().join("terasort-os-slowed");
    let full = [args.clone(), cluster.args(), s(&["-o", &p(&out)])].concat();
    let o = {
        let _slow = DutyCycle::start(cluster.workers[0].pid(), JOB_TIMEOUT);
        run_quern(&full)
    };
    o.ok();
    let a = attempts(&o);
    assert!(
        a.launched >= 1 && a.won >= 1,
        "the slowed worker's map was not backed up by a winning backup: {a:?}\n{} is the slowed worker\n{}",
        cluster.worker_id(0),
        cluster.scheduling_log()
    );
    assert_like_reference("terasort with an OS-slowed worker", &reference, &out);
}

// ---------------------------------------------------------------------------------------
// 4. commit once

#[test]
fn backups_commit_once() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // One reducer: a slot stays free for the backup of the straggler's map (see
    // `straggling_map_is_backed_up_when_reducers_hold_the_slots` for more reducers).
    // Terasort's record loop is cheap, so its maps are paced little: 8 MiB splits.
    let gen = teragen(dir.path(), "gen", 400_000, 2);
    let text = corpus_copies(dir.path(), "text", 4, 1);
    let jobs: [(&str, Vec<String>); 3] = [
        (
            "wc",
            s(&["wc", &p(&text), "-r", "1", "--split-size", "1MiB"]),
        ),
        (
            "terasort",
            s(&["terasort", &p(&gen), "-r", "1", "--split-size", "8MiB"]),
        ),
        // Map-only: every map attempt commits its own part file.
        (
            "grep",
            s(&[
                "grep",
                "--stats",
                "(?i)the",
                &p(&text),
                "--split-size",
                "1MiB",
            ]),
        ),
    ];
    for (name, args) in &jobs {
        let reference = sequential(name, args, dir.path());
        // A cluster per job: the straggler's cancelled attempts sleep on after their job
        // (see `consecutive_jobs_keep_their_attempts_apart`).
        let cluster = HandCluster::start(
            dir.path(),
            &format!("commit-once-{name}"),
            &[Some(SLOWEST), None, None],
            &[],
        );
        let out = dir.path().join(format!("{name}-spec"));
        // Speculation is on by default.
        let (o, t) = cluster.run(args, &out);
        o.ok();
        eprintln!(
            "commit once, {name}: {:.2} s\n{}",
            t.as_secs_f64(),
            summary_lines(&o)
        );
        let a = attempts(&o);
        assert!(
            a.launched >= 1,
            "{name}: no backup was launched: {a:?}\n{} is the straggler\n{}",
            cluster.worker_id(0),
            cluster.scheduling_log()
        );
        assert_eq!(
            map_tasks(&o.stderr),
            Some(reference.map_tasks),
            "{name}: map tasks"
        );
        assert!(
            a.map + a.reduce > reference.map_tasks as u64 + reduces(args),
            "{name}: backups are attempts too: {a:?}"
        );
        // Exactly the sequential part files and bytes: no duplicate lines, no loser's file.
        assert_like_reference(&format!("{name} with backups"), &reference, &out);
        assert_eq!(
            records_in(&o),
            reference.records_in,
            "{name}: map.input.records must count each task once"
        );
        let leftovers: Vec<String> = entries(&out)
            .into_iter()
            .filter(|n| n != "_SUCCESS" && n != "_journal" && !n.starts_with("part-"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: stray files {leftovers:?}");
    }
}

/// Consecutive jobs on one cluster: a cancelled attempt of one job may still be running on
/// a worker (here the straggler's original, sleeping in its pacing) when the next job
/// starts. The next job's attempts must not be confused with it — attempt numbers restart
/// with every job, so a worker that keys its attempts by number alone drops the new
/// attempt when the old one ends: the new one's progress is no longer reported, and
/// speculation cannot back it up.
///
/// A job whose output depends on the process that ran each task (`jobs/examples/
/// nondeterministic.rs`), with a straggler whose maps are backed up: the part files, the
/// counters, the report and the journal name the same winning attempt of every task.
#[test]
fn a_nondeterministic_job_commits_the_same_attempt_everywhere() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // One file: every split is one chunk, so one output line per map task.
    let text = corpus_copies(dir.path(), "text", 1, 4);
    let bin = quern_tests::example("nondeterministic");
    let cluster = HandCluster::start_bin(
        &bin,
        dir.path(),
        "nondet",
        &[Some(SLOWEST), None, None],
        &[],
    );
    let (out, report_dir) = (dir.path().join("out"), dir.path().join("report"));
    // The job's map is light (a hash per record) and the straggler's pacing is a multiple
    // of the time it works: 4 MiB splits keep its map well past the 1 s speculation waits
    // for even on a quiet machine (1 MiB ones took under a second).
    let args = s(&[
        &p(&text),
        "-r",
        "2",
        "--split-size",
        "4MiB",
        "--report",
        &p(&report_dir),
    ]);
    let (o, _) = cluster.run(&args, &out);
    o.ok();
    let a = attempts(&o);
    assert!(
        a.launched >= 1 && a.won >= 1,
        "the straggler's maps must be backed up, and a backup win: {a:?}\n{}",
        cluster.scheduling_log()
    );
    assert_one_winner_everywhere(&out, &report_dir);
}

/// `--speculation always`: every task of the nondeterministic job gets a backup (on healthy
/// workers, so either attempt may win), and output, counters, report and journal still
/// describe one attempt per task.
#[test]
fn forced_backups_of_a_nondeterministic_job_agree_on_every_winner() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = corpus_copies(dir.path(), "text", 1, 4);
    let bin = quern_tests::example("nondeterministic");
    let cluster = HandCluster::start_bin(&bin, dir.path(), "always", &[None, None, None], &[]);
    let (out, report_dir) = (dir.path().join("out"), dir.path().join("report"));
    let args = s(&[
        &p(&text),
        "-r",
        "2",
        "--split-size",
        "1MiB",
        "--speculation",
        "always",
        "--report",
        &p(&report_dir),
    ]);
    let (o, _) = cluster.run(&args, &out);
    o.ok();
    let a = attempts(&o);
    eprintln!("forced backups: {a:?}");
    // 13 maps and 2 reduces, each backed up unless it ended before a slot freed elsewhere.
    assert!(
        a.launched >= 10,
        "most tasks must be backed up: {a:?}\n{}",
        cluster.scheduling_log()
    );
    assert_one_winner_everywhere(&out, &report_dir);
}

/// Checks a nondeterministic job's output against its report, counters and journal: each
/// task committed once, and each describes that same attempt.
fn assert_one_winner_everywhere(out: &Path, report_dir: &Path) {
    assert_committed(out, 2);
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(report_dir.join("report.json")).expect("read report.json"),
    )
    .expect("report.json parses");
    let pid_of: BTreeMap<u64, u64> = report["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| {
            (
                w["id"].as_u64().expect("id"),
                w["pid"].as_u64().expect("pid"),
            )
        })
        .collect();
    // The committed attempt of each task, by phase: (attempt id, pid of its worker).
    let mut committed: BTreeMap<(String, u64), (u64, u64)> = BTreeMap::new();
    for at in report["attempts"].as_array().expect("attempts") {
        if at["outcome"] == "committed" {
            let key = (
                at["phase"].as_str().expect("phase").to_string(),
                at["task"].as_u64().expect("task"),
            );
            let pid = pid_of[&at["worker"].as_u64().expect("worker")];
            let previous =
                committed.insert(key.clone(), (at["attempt"].as_u64().expect("id"), pid));
            assert!(previous.is_none(), "{key:?} committed twice in the report");
        }
    }

    // The output: one line per map task, `KEY\tMAP_PID\tREDUCE_PID`; keys sort in split
    // order, so the i-th key (over all parts) is map i's.
    let mut lines: Vec<(String, u64, u64, u64)> = Vec::new();
    for (part, bytes) in parts(out) {
        let r: u64 = part
            .trim_start_matches("part-")
            .parse()
            .expect("part number");
        for line in String::from_utf8(bytes).expect("utf-8").lines() {
            let f: Vec<&str> = line.split('\t').collect();
            lines.push((
                f[0].to_string(),
                f[1].parse().expect("pid"),
                f[2].parse().expect("pid"),
                r,
            ));
        }
    }
    lines.sort();
    let maps = committed.keys().filter(|(phase, _)| phase == "map").count();
    assert_eq!(lines.len(), maps, "one output line per map task");
    let mut map_counts: BTreeMap<u64, u128> = BTreeMap::new();
    let mut reduce_counts: BTreeMap<u64, u128> = BTreeMap::new();
    for (i, (key, map_pid, reduce_pid, r)) in lines.iter().enumerate() {
        let (_, want_map) = committed[&("map".to_string(), i as u64)];
        assert_eq!(
            *map_pid, want_map,
            "{key}: written from the output of map {i}'s committed attempt"
        );
        let (_, want_reduce) = committed[&("reduce".to_string(), *r)];
        assert_eq!(
            *reduce_pid, want_reduce,
            "{key}: part {r} is its committed reduce's"
        );
        *map_counts.entry(*map_pid).or_default() += 1;
        *reduce_counts.entry(*reduce_pid).or_default() += 1;
    }
    // The counters count exactly the committed attempts.
    let counters = report["counters"].as_object().expect("counters");
    let counted = |phase: &str| -> BTreeMap<u64, u128> {
        let prefix = format!("nondet.{phase}.pid.");
        counters
            .iter()
            .filter_map(|(name, n)| {
                let pid = name.strip_prefix(&prefix)?.parse().ok()?;
                Some((pid, n.as_u64()? as u128))
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    assert_eq!(counted("map"), map_counts, "map counters");
    assert_eq!(counted("reduce"), reduce_counts, "reduce counters");

    // The journal names the same attempts.
    let journal = run_quern(s(&["journal", &p(&out.join("_journal"))]));
    journal.ok();
    let re = regex::Regex::new(r"committed (map|reduce) (\d+) attempt (\d+)").expect("regex");
    let journaled: BTreeMap<(String, u64), u64> = re
        .captures_iter(&journal.stdout_str())
        .map(|c| {
            (
                (c[1].to_string(), c[2].parse().expect("task")),
                c[3].parse().expect("id"),
            )
        })
        .collect();
    let reported: BTreeMap<(String, u64), u64> = committed
        .iter()
        .map(|(k, (attempt, _))| (k.clone(), *attempt))
        .collect();
    assert_eq!(journaled, reported, "journal and report");
}

/// Each of ten runs of the same map-only job (the straggler, `worker 1`, gets the same
/// attempt number in every job) must back up the straggler's map. Whether a run hits the confusion depends on
/// when the previous job's leftover attempt ends, so the pause between runs varies.
#[test]
fn consecutive_jobs_keep_their_attempts_apart() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = corpus_copies(dir.path(), "text", 4, 1);
    let args = s(&[
        "grep",
        "--stats",
        "(?i)the",
        &p(&text),
        "--split-size",
        "1MiB",
    ]);
    let reference = sequential("grep", &args, dir.path());
    let cluster = HandCluster::start(dir.path(), "consecutive", &[Some(SLOWEST), None, None], &[]);
    for run in 0..10u64 {
        std::thread::sleep(Duration::from_millis(300 * (run % 4)));
        let out = dir.path().join(format!("grep-{run}"));
        let (o, t) = cluster.run(&args, &out);
        o.ok();
        eprintln!(
            "consecutive jobs, run {run}: {:.2} s\n{}",
            t.as_secs_f64(),
            summary_lines(&o)
        );
        let a = attempts(&o);
        assert!(
            a.launched >= 1,
            "run {run}: the straggler's map was not backed up: {a:?} ({:.2} s) — was its \
             attempt dropped when the previous job's attempt with the same number ended?\n\
             {} is the straggler\n{}",
            t.as_secs_f64(),
            cluster.worker_id(0),
            cluster.scheduling_log()
        );
        assert_like_reference(&format!("grep run {run}"), &reference, &out);
        std::fs::remove_dir_all(&out).expect("remove output");
    }
}

/// The `-r N` of a job's arguments (0 if none: these are map-only).
fn reduces(args: &[String]) -> u64 {
    args.iter()
        .position(|a| a == "-r")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(0)
}

/// A straggling map must be backed up even if the reducers took every other slot before
/// it was old enough to be a candidate (reducers wait for that very map, so the job would
/// otherwise wait for the straggler, however slow).
#[test]
fn straggling_map_is_backed_up_when_reducers_hold_the_slots() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // 16 maps of about 0.1 s: the map phase ends before the straggler's map is 1 s old, and
    // three reducers then fill the three slots.
    let text = corpus_copies(dir.path(), "text", 4, 1);
    let args = s(&["wc", &p(&text), "-r", "3", "--split-size", "1MiB"]);
    let reference = sequential("wc", &args, dir.path());
    let cluster = HandCluster::start(dir.path(), "starved", &[Some(SLOWEST), None, None], &[]);
    let out = dir.path().join("wc-spec");
    let full = [args.clone(), cluster.args(), s(&["-o", &p(&out)])].concat();
    let mut client = Proc::quern(format!("quern {}", full.join(" ")), &full);
    // Healthy, this job takes 1-2 s; the straggler alone needs about a minute for its map.
    let limit = Duration::from_secs(30);
    if client.wait_exit(limit).is_none() {
        client.kill();
        panic!(
            "the job still waited for the straggler's map after {limit:?}: no backup was launched \
             (reducers held every other slot)\n{} is the straggler\n{}",
            cluster.worker_id(0),
            cluster.scheduling_log()
        );
    }
    let o = client.finish(JOB_TIMEOUT);
    o.ok();
    eprintln!(
        "backup with reducers holding the slots:\n{}",
        summary_lines(&o)
    );
    let a = attempts(&o);
    assert!(a.launched >= 1, "no backup of the straggler's map: {a:?}");
    assert_like_reference("wc with a starved backup", &reference, &out);
    assert_eq!(records_in(&o), reference.records_in);
}

// ---------------------------------------------------------------------------------------
// 6. bad records

#[test]
fn bad_record_fails_the_job_or_is_skipped() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    const POISON: &str = "QUERN-POISON-7f3a";
    // The poisoned line sits in the middle of a book (not in its first split).
    let grimm = std::fs::read(book("pg-grimm.txt")).expect("read book");
    let cut = grimm.len() / 2
        + grimm[grimm.len() / 2..]
            .iter()
            .position(|b| *b == b'\n')
            .expect("a line break")
        + 1;
    let line = format!("the {POISON} line kills map\n");
    let poisoned_text = [&grimm[..cut], line.as_bytes(), &grimm[cut..]].concat();
    let poisoned = dir.path().join("poisoned.txt");
    std::fs::write(&poisoned, &poisoned_text).expect("write");
    let clean = dir.path().join("clean.txt");
    std::fs::write(&clean, &grimm).expect("write");
    let other = p(&book("pg-metamorphosis.txt"));
    let offset = cut;

    let args = |input: &Path| s(&["wc", &p(input), &other, "-r", "2", "--split-size", "64KiB"]);
    let reference = sequential("wc-clean", &args(&clean), dir.path());
    let env = [("QUERN_FAULT", format!("panic-on:{POISON}"))];
    let run_poisoned = |extra: &[&str], out: &Path| -> Outcome {
        let full = [
            args(&poisoned),
            s(extra),
            s(&["--workers", "2", "-o", &p(out)]),
        ]
        .concat();
        let mut cmd = Command::new(quern());
        cmd.args(&full).envs(env.iter().map(|(k, v)| (k, v)));
        Proc::spawn(
            format!("QUERN_FAULT=panic-on:{POISON} quern {}", full.join(" ")),
            cmd,
        )
        .finish(JOB_TIMEOUT)
    };

    // By default: the job fails, naming the record, and writes nothing.
    let out = dir.path().join("out-default");
    let o = run_poisoned(&[], &out);
    o.expect_code(1);
    let last = o.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("quern: error:")
            && last.contains(&p(&poisoned))
            && last.contains(&format!("byte {offset}"))
            && last.contains("--skip-bad-records"),
        "the error should name {} and byte {offset} and suggest --skip-bad-records, got:\n{}",
        p(&poisoned),
        o.stderr
    );
    assert!(!out.exists(), "a failed job left {}", out.display());

    // With --skip-bad-records: the job succeeds without that record and lists it.
    let out = dir.path().join("out-skip");
    let o = run_poisoned(&["--skip-bad-records"], &out);
    o.ok();
    eprintln!("bad records:\n{}", summary_lines(&o));
    let want = format!("skipped 1 bad records: {} byte {offset}", p(&poisoned));
    assert!(
        o.stderr
            .lines()
            .any(|l| l.starts_with("quern wc: ") && l.ends_with(&want)),
        "the summary should say `{want}`, got:\n{}",
        o.stderr
    );
    assert_like_reference("wc skipping the poisoned line", &reference, &out);
    let a = attempts(&o);
    assert!(
        a.failed >= 2,
        "the record is skipped after it crashed twice: {a:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. no spurious work

#[test]
fn healthy_job_runs_one_attempt_per_task() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // Eight 3.2 MB files, one split each: map tasks of about a second on three workers
    // sharing two cores, long enough for speculation to look at them.
    let text = corpus_copies(dir.path(), "text", 8, 1);
    // Splits of exactly one file (files are packed into splits, so a larger split size
    // would hold a file and a piece of the next).
    let file_len = std::fs::metadata(text.join("text-00.txt"))
        .expect("stat text")
        .len()
        .to_string();
    // 8 MB of records, 1 MB (10,000-record) splits.
    let gen = teragen(dir.path(), "gen", 80_000, 1);
    let jobs: [(&str, Vec<String>); 2] = [
        (
            "wc",
            s(&["wc", &p(&text), "-r", "3", "--split-size", &file_len]),
        ),
        (
            "terasort",
            s(&["terasort", &p(&gen), "-r", "3", "--split-size", "1MB"]),
        ),
    ];
    for (name, args) in &jobs {
        let reference = sequential(name, args, dir.path());
        assert_eq!(
            reference.map_tasks, 8,
            "{name}: the job should have 8 map tasks"
        );
        for i in 0..3 {
            let out = dir.path().join(format!("{name}-{i}"));
            let o = run_quern([args.clone(), s(&["--workers", "3", "-o", &p(&out)])].concat());
            o.ok();
            eprintln!("no spurious work, {name} run {i}:\n{}", summary_lines(&o));
            assert_eq!(
                attempts(&o),
                Attempts {
                    map: 8,
                    reduce: 3,
                    failed: 0,
                    lost: 0,
                    launched: 0,
                    won: 0
                },
                "{name} run {i}: a healthy job runs exactly one attempt per task"
            );
            assert_like_reference(&format!("{name} run {i}"), &reference, &out);
            std::fs::remove_dir_all(&out).expect("remove output");
        }
    }
}

/// TeraGen tasks long enough for speculation to look at them must not be backed up on a
/// healthy cluster either (they need to report progress like every other map).
#[test]
fn healthy_teragen_runs_one_attempt_per_task() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = HandCluster::start(dir.path(), "teragen", &[None, None, None], &[]);
    // Two parts of 400 MB: tasks of 1.5 to 3 seconds (speculation may look at a task once
    // it is 1 s old and another one committed).
    let out = dir.path().join("gen");
    let (o, t) = cluster.run(
        &s(&["teragen", "--records", "8000000", "--parts", "2"]),
        &out,
    );
    o.ok();
    eprintln!(
        "no spurious work, teragen: {:.2} s\n{}",
        t.as_secs_f64(),
        summary_lines(&o)
    );
    assert_committed(&out, 2);
    std::fs::remove_dir_all(&out).expect("remove output");
    let a = attempts(&o);
    assert_eq!(
        (a.map, a.launched),
        (2, 0),
        "a healthy teragen of 2 parts runs 2 map attempts and no backup: {a:?}\n{}",
        cluster
            .coordinator
            .output(Stream::Stderr)
            .lines()
            .filter(|l| l.contains("speculating"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 8. full disks

/// A tmpfs of `size` mounted at `path` (created) for the life of the value; `None` where
/// this process may not mount (not root).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective user.
        if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(path).expect("mkdir mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &p(path),
            ])
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs at {} failed",
            path.display()
        );
        Some(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there cannot keep the mount busy.
        let _ = Command::new("umount").args(["-l", &p(&self.path)]).status();
    }
}

/// One worker's work dir is on a small tmpfs that fills up after a map or two. The map that
/// hits ENOSPC fails with a message naming the path; it runs again elsewhere without
/// counting against the task; that worker gets no more maps (it never has room again);
/// the job's output is exactly `--sequential`'s, and the summary names the worker.
#[test]
fn a_full_work_dir_moves_map_tasks_to_other_workers() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    // 40 MB, 4 MB splits: 10 maps of ~4 MB of output each; the 6 MiB work dir holds one.
    let gen = teragen(dir.path(), "gen", 400_000, 2);
    let args = s(&["terasort", &p(&gen), "-r", "2", "--split-size", "4MB"]);
    let reference = sequential("terasort", &args, dir.path());
    let Some(_tmpfs) = Tmpfs::mount(&dir.path().join("full-disk").join("worker-0"), "6m") else {
        return;
    };
    let cluster = HandCluster::start(dir.path(), "full-disk", &[None, None, None], &[]);
    let out = dir.path().join("terasort-full-disk");
    let (o, _) = cluster.run(&args, &out);
    o.ok();
    eprintln!("{}", summary_lines(&o));
    assert_like_reference("terasort with a full work dir", &reference, &out);
    let a = attempts(&o);
    assert!(a.failed >= 1, "no attempt failed on the full disk: {a:?}");
    let id = cluster.worker_id(0);
    let line = o
        .stderr
        .lines()
        .find(|l| l.contains(&format!("{id} (")) && l.contains("work dir failed"))
        .unwrap_or_else(|| {
            panic!(
                "the summary does not name {id}'s full work dir:\n{}",
                o.stderr
            )
        });
    assert!(
        line.contains("No space left on device") && line.contains("full-disk/worker-0/"),
        "the message names the path and the cause: {line}"
    );
    // After its failure, the full worker was given no map.
    let log = cluster.coordinator.output(Stream::Stderr);
    let after = log
        .split_once("failed on its work dir")
        .unwrap_or_else(|| panic!("no work-dir failure in the coordinator's log:\n{log}"))
        .1;
    let maps_after = after
        .lines()
        .filter(|l| l.contains("assign map") && l.ends_with(&format!("to {id}")))
        .count();
    assert_eq!(
        maps_after, 0,
        "{id} got maps after its disk filled:\n{after}"
    );
}

/// The output file system fills up: the job fails with a message naming the path, exits
/// non-zero, and leaves no `_SUCCESS` and no part file behind.
#[test]
fn a_full_output_file_system_fails_the_job_cleanly() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let gen = teragen(dir.path(), "gen", 100_000, 1);
    let Some(_tmpfs) = Tmpfs::mount(&dir.path().join("small"), "2m") else {
        return;
    };
    let out = dir.path().join("small").join("out");
    let o = run_quern(s(&["terasort", &p(&gen), "-r", "2", "-o", &p(&out)]));
    assert_ne!(o.code, 0, "the job cannot succeed:\n{}", o.stderr);
    assert!(
        o.stderr.contains("No space left on device") && o.stderr.contains(&p(&out)),
        "the error names the output path and the cause:\n{}",
        o.stderr
    );
    // The aborted output directory is removed, or left without any part.
    let left: Vec<String> = if out.exists() {
        entries(&out)
            .into_iter()
            .filter(|e| !e.starts_with('_'))
            .collect()
    } else {
        Vec::new()
    };
    assert!(
        !out.join("_SUCCESS").exists() && left.is_empty(),
        "a failed job leaves no output: {left:?}"
    );
}
