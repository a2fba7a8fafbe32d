//! The distributed runtime, black box:
//!
//! - every built-in job on an embedded local cluster of 2 and of 4 worker processes
//!   (`--workers N`) writes exactly the `--sequential` output (128 KiB splits: many map
//!   tasks; `-r 3` where the job reduces);
//! - a cluster started by hand (`quern coordinator` + `quern worker --no-local-reads`, so
//!   every map output is fetched over QUIC on loopback) serves several jobs in a row with
//!   the same results;
//! - a worker or a client without the cluster secret is refused with a clear message;
//! - the local cluster's processes never outlive the command: after success, after a job
//!   the coordinator fails, and after the client is killed with SIGKILL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quern_tests::cluster::{
    assert_gone, cluster_pids, coordinator_addr, new_secret, proc_stat, run_quern, wait_joined,
    wait_until, Proc, Stream, Tracked, JOB_TIMEOUT,
};
use quern_tests::{assert_committed, book, entries, map_tasks, p, parts, reduce_merging, Outcome};

/// Split size of every run: many map tasks even on small inputs.
const SPLIT: &str = "128KiB";
/// Sizes of the local clusters compared with `--sequential`.
const LOCAL_WORKERS: [usize; 2] = [2, 4];
/// Books of the text jobs: 540 KB + 2 × 139 KB, nine 128 KiB splits.
const BOOKS: [&str; 3] = [
    "pg-grimm.txt",
    "pg-metamorphosis.txt",
    "pg-being_ernest.txt",
];
/// How long the processes of a local cluster may outlive its client.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a job runs.
#[derive(Debug, Clone, Copy)]
enum Mode<'a> {
    Sequential,
    /// `--workers N`: an embedded local cluster.
    Local(usize),
    /// `--coordinator ADDR --secret-file F`.
    Remote(SocketAddr, &'a Path),
}

impl Mode<'_> {
    fn args(self) -> Vec<String> {
        let mut a = vec!["--split-size".to_string(), SPLIT.to_string()];
        match self {
            Mode::Sequential => a.push("--sequential".into()),
            Mode::Local(n) => a.extend(["--workers".into(), n.to_string()]),
            Mode::Remote(addr, secret) => a.extend([
                "--coordinator".into(),
                addr.to_string(),
                "--secret-file".into(),
                p(secret),
            ]),
        }
        a
    }

    fn label(self) -> String {
        match self {
            Mode::Sequential => "seq".into(),
            Mode::Local(n) => format!("local{n}"),
            Mode::Remote(..) => "remote".into(),
        }
    }
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn book_args() -> Vec<String> {
    BOOKS.iter().map(|b| p(&book(b))).collect()
}

/// Runs `quern <args> <mode args>`, expecting exit code `code`.
fn run_in(args: &[String], mode: Mode, code: i32) -> Outcome {
    let o = run_quern([args.to_vec(), mode.args()].concat());
    o.expect_code(code);
    o
}

/// Runs `quern <args> -o <dir>/<name>-<mode>` successfully; returns the committed output
/// directory and the number of map tasks of the summary.
fn run_to(name: &str, args: &[String], dir: &Path, mode: Mode) -> (PathBuf, usize) {
    let out = dir.join(format!("{name}-{}", mode.label()));
    let o = run_in(&[args, &["-o".to_string(), p(&out)]].concat(), mode, 0);
    assert_committed(&out, 1);
    let maps = map_tasks(&o.stderr)
        .unwrap_or_else(|| panic!("`{}`: no summary on stderr: {}", o.cmdline, o.stderr));
    (out, maps)
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

/// Runs a job with an output directory sequentially and on local clusters of 2 and 4
/// workers; every cluster output must equal the sequential one byte for byte, with the same
/// number of map tasks (at least `min_maps`). Returns the sequential part files.
fn check_on_local_clusters(
    name: &str,
    args: &[String],
    min_maps: usize,
) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seq, seq_maps) = run_to(name, args, dir.path(), Mode::Sequential);
    assert!(
        seq_maps >= min_maps,
        "{name}: only {seq_maps} map tasks with {SPLIT} splits"
    );
    let reference = parts(&seq);
    for workers in LOCAL_WORKERS {
        let mode = Mode::Local(workers);
        let (out, maps) = run_to(name, args, dir.path(), mode);
        assert_eq!(maps, seq_maps, "{name} {}: map task count", mode.label());
        assert_same_parts(
            &format!("{name} on {workers} workers"),
            &reference,
            &parts(&out),
        );
    }
    reference
}

/// Runs a printing job (no `-o`) sequentially and on local clusters; stdout and the exit
/// code must not depend on the mode.
fn check_printing_on_local_clusters(args: &[String], code: i32) -> Vec<u8> {
    let reference = run_in(args, Mode::Sequential, code).stdout;
    for workers in LOCAL_WORKERS {
        let o = run_in(args, Mode::Local(workers), code);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&reference),
            "`{}`: stdout differs from --sequential",
            o.cmdline
        );
    }
    reference
}

/// Generates `records` binary records as `parts` files (sequentially: this is input).
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
    assert_committed(&out, parts as usize);
    out
}

#[test]
fn teragen_on_local_clusters_equals_sequential() {
    let out = check_on_local_clusters(
        "teragen",
        &s(&["teragen", "--records", "20000", "--parts", "5"]),
        5,
    );
    assert_eq!(out.len(), 5);
    assert_eq!(out.values().map(Vec::len).sum::<usize>(), 20_000 * 100);
}

#[test]
fn terasort_on_local_clusters_equals_sequential() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two 1 MB files: 16 map tasks.
    let gen = teragen(dir.path(), "gen", 20_000, 2);
    let out = check_on_local_clusters("terasort", &s(&["terasort", &p(&gen), "-r", "3"]), 16);
    assert_eq!(out.len(), 3, "-r 3 must give 3 part files");
    assert_eq!(out.values().map(Vec::len).sum::<usize>(), 20_000 * 100);
}

#[test]
fn teravalidate_on_local_clusters_equals_sequential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gen = teragen(dir.path(), "gen", 20_000, 2);
    let sorted = dir.path().join("sorted");
    run_quern(s(&[
        "terasort",
        &p(&gen),
        "-r",
        "3",
        "--sequential",
        "-q",
        "-o",
        &p(&sorted),
    ]))
    .ok();

    // Sorted input: SUCCESS; the report it keeps with -o is identical too.
    let args = s(&["teravalidate", &p(&sorted)]);
    let stdout = check_printing_on_local_clusters(&args, 0);
    let text = String::from_utf8_lossy(&stdout);
    assert!(
        text.contains("Records: 20000") && text.contains("SUCCESS"),
        "teravalidate of sorted output:\n{text}"
    );
    check_on_local_clusters("teravalidate", &args, 16);

    // Unsorted input: exit 1, the same report in every mode.
    let stdout = check_printing_on_local_clusters(&s(&["teravalidate", &p(&gen)]), 1);
    assert!(
        String::from_utf8_lossy(&stdout).contains("ERROR"),
        "teravalidate of unsorted input must report an error"
    );
}

#[test]
fn grep_on_local_clusters_equals_sequential() {
    let args = [
        s(&["grep", "--stats", r"(?i)\b(wolf|king|ernest)\b|Gregor|^$"]),
        book_args(),
    ]
    .concat();
    check_on_local_clusters("grep", &args, 7);
    let stdout = check_printing_on_local_clusters(&args, 0);
    assert!(stdout.len() > 1000, "grep printed too little");
    let none = [s(&["grep", "no such line, surely"]), book_args()].concat();
    let stdout = check_printing_on_local_clusters(&none, 1);
    assert!(stdout.is_empty());
}

#[test]
fn grep_count_on_local_clusters_equals_sequential() {
    let args = [s(&["grep", "--stats", "-c", "(?i)the"]), book_args()].concat();
    let out = check_on_local_clusters("grep -c", &args, 7);
    assert_eq!(out.len(), 1, "grep -c has one reducer");
    let stdout = check_printing_on_local_clusters(&args, 0);
    assert_eq!(
        String::from_utf8_lossy(&stdout).lines().count(),
        BOOKS.len(),
        "one count per file"
    );
}

#[test]
fn wc_on_local_clusters_equals_sequential() {
    let args = [s(&["wc", "-r", "3"]), book_args()].concat();
    let out = check_on_local_clusters("wc", &args, 7);
    assert_eq!(out.len(), 3, "-r 3 must give 3 part files");
}

#[test]
fn index_on_local_clusters_equals_sequential() {
    let args = [s(&["index", "-r", "3"]), book_args()].concat();
    let out = check_on_local_clusters("index", &args, 7);
    assert_eq!(out.len(), 3, "-r 3 must give 3 part files");
}

/// A coordinator and workers started by hand, as separate processes on loopback; all are
/// killed and reaped when it is dropped.
struct HandCluster {
    addr: SocketAddr,
    coordinator: Proc,
    workers: Vec<Proc>,
}

impl HandCluster {
    /// A coordinator on 127.0.0.1:0 (with `-v`, which logs joining workers) and `workers`
    /// workers of 2 slots with `worker_args`, all with `secret`; waits until they joined.
    fn start(dir: &Path, secret: &Path, workers: usize, worker_args: &[&str]) -> HandCluster {
        let coordinator = Proc::quern(
            "quern coordinator",
            s(&[
                "coordinator",
                "--listen",
                "127.0.0.1:0",
                "--secret-file",
                &p(secret),
                "-v",
                "--exit-with-parent",
            ]),
        );
        let addr = coordinator_addr(&coordinator);
        let mut cluster = HandCluster {
            addr,
            coordinator,
            workers: Vec::new(),
        };
        for i in 0..workers {
            let work = dir.join(format!("worker-{i}"));
            let mut args = s(&[
                "worker",
                "--join",
                &addr.to_string(),
                "--secret-file",
                &p(secret),
                "--slots",
                "2",
                "--work-dir",
                &p(&work),
                "--exit-with-parent",
            ]);
            args.extend(s(worker_args));
            cluster
                .workers
                .push(Proc::quern(format!("quern worker {i}"), args));
        }
        wait_joined(&cluster.coordinator, &cluster.workers, workers);
        cluster
    }

    /// Asserts every process of the cluster is still running.
    fn assert_running(&mut self) {
        for proc in std::iter::once(&mut self.coordinator).chain(&mut self.workers) {
            if let Some(status) = proc.try_status() {
                panic!(
                    "{} exited ({status}) while serving jobs\n{}",
                    proc.name(),
                    proc.describe()
                );
            }
        }
    }
}

/// Submits to a long-running cluster whose workers fetch every map output over QUIC
/// (`--no-local-reads`): several jobs in a row, each equal to `--sequential`.
#[test]
fn quic_shuffle_cluster_serves_several_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    new_secret(&secret);
    let gen = teragen(dir.path(), "gen", 20_000, 2);
    let mut cluster = HandCluster::start(dir.path(), &secret, 2, &["--no-local-reads"]);
    let remote = Mode::Remote(cluster.addr, &secret);

    let jobs: [(&str, Vec<String>); 3] = [
        ("terasort", s(&["terasort", &p(&gen), "-r", "3"])),
        ("wc", [s(&["wc", "-r", "3"]), book_args()].concat()),
        ("index", [s(&["index", "-r", "2"]), book_args()].concat()),
    ];
    let mut sorted = None;
    for (name, args) in &jobs {
        let (seq, seq_maps) = run_to(name, args, dir.path(), Mode::Sequential);
        let (out, maps) = run_to(name, args, dir.path(), remote);
        assert_eq!(maps, seq_maps, "{name}: map task count");
        assert_same_parts(
            &format!("{name} on the hand-started QUIC cluster"),
            &parts(&seq),
            &parts(&out),
        );
        if *name == "terasort" {
            sorted = Some(out);
        }
        cluster.assert_running();
    }

    // A printing job on the same cluster: validates the sort it did.
    let sorted = sorted.expect("terasort ran");
    let args = s(&["teravalidate", &p(&sorted)]);
    let want = run_in(&args, Mode::Sequential, 0);
    let got = run_in(&args, remote, 0);
    assert_eq!(got.stdout_str(), want.stdout_str(), "teravalidate report");
    assert!(got.stdout_str().contains("SUCCESS"), "{}", got.stdout_str());
    cluster.assert_running();
}

/// A reducer whose partition exceeds its memory share streams fetched map output to local
/// disk. `--memory 16MiB` on 2-slot workers gives each task 8 MiB, which its merge and
/// output buffers take whole: every QUIC fetch (`--no-local-reads`) must spill, and the
/// output is still the sequential one.
#[test]
fn reducers_over_their_memory_share_spill_fetches_to_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    new_secret(&secret);
    let gen = teragen(dir.path(), "gen", 50_000, 2);
    let cluster = HandCluster::start(dir.path(), &secret, 2, &["--no-local-reads"]);
    let args = s(&["terasort", &p(&gen), "-r", "2", "--memory", "16MiB"]);
    let (seq, _) = run_to("terasort", &args, dir.path(), Mode::Sequential);
    let out = dir.path().join("terasort-spilling");
    let o = run_in(
        &[args, s(&["-o", &p(&out)])].concat(),
        Mode::Remote(cluster.addr, &secret),
        0,
    );
    let (_, spilled) = reduce_merging(&o.stderr);
    assert!(
        spilled >= 4_000_000,
        "most of the 5 MB shuffle must have spilled, not {spilled} bytes:\n{}",
        o.stderr
    );
    assert_same_parts(
        "terasort with spilling reducers",
        &parts(&seq),
        &parts(&out),
    );
    // The job's scratch is gone once it ended (its work directory with it).
    fn files_below(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                files_below(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let left = wait_until(Duration::from_secs(10), || {
        let mut files = Vec::new();
        for i in 0..2 {
            files_below(&dir.path().join(format!("worker-{i}")), &mut files);
        }
        files.retain(|f| f.to_string_lossy().contains("reduce-"));
        files.is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "reduce scratch files stayed in the work directories"
    );
}

/// `--direct-io` writes every file of the data path with O_DIRECT: map runs, merge passes
/// (`--merge-factor 2`), fetches spilled to disk (`--memory 16MiB`, every fetch over QUIC)
/// and the part files. The outputs stay byte-identical to a buffered `--sequential` run, on
/// a hand-started cluster, on the local cluster (word count) and with `--sequential`.
#[test]
fn direct_io_outputs_equal_buffered_sequential_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    new_secret(&secret);
    let gen = teragen(dir.path(), "gen", 50_000, 2);
    let cluster = HandCluster::start(dir.path(), &secret, 2, &["--no-local-reads"]);
    let args = s(&["terasort", &p(&gen), "-r", "2", "--memory", "16MiB"]);
    let (seq, _) = run_to("terasort", &args, dir.path(), Mode::Sequential);
    let direct = [args.clone(), s(&["--direct-io", "--merge-factor", "2"])].concat();
    let out = dir.path().join("terasort-direct");
    let o = run_in(
        &[direct.clone(), s(&["-o", &p(&out)])].concat(),
        Mode::Remote(cluster.addr, &secret),
        0,
    );
    let (passes, spilled) = reduce_merging(&o.stderr);
    assert!(
        passes > 0 && spilled > 0,
        "the reducers must merge in passes and spill fetches: {passes} passes, {spilled} bytes\n{}",
        o.stderr
    );
    assert_same_parts("terasort with --direct-io", &parts(&seq), &parts(&out));
    let (out, _) = run_to("terasort-direct", &direct, dir.path(), Mode::Sequential);
    assert_same_parts(
        "terasort --sequential --direct-io",
        &parts(&seq),
        &parts(&out),
    );

    let wc = [s(&["wc", "-r", "3"]), book_args()].concat();
    let (seq, _) = run_to("wc", &wc, dir.path(), Mode::Sequential);
    let wc_direct = [wc, s(&["--direct-io"])].concat();
    let (out, _) = run_to("wc-direct", &wc_direct, dir.path(), Mode::Local(2));
    assert_same_parts("wc with --direct-io", &parts(&seq), &parts(&out));
}

/// Two fresh secrets, `secret` and `wrong-secret`, in `dir`.
fn two_secrets(dir: &Path) -> (PathBuf, PathBuf) {
    let secret = dir.join("secret");
    let wrong = dir.join("wrong-secret");
    new_secret(&secret);
    new_secret(&wrong);
    assert_ne!(
        std::fs::read(&secret).expect("read secret"),
        std::fs::read(&wrong).expect("read secret"),
        "quern secret must write a fresh secret each time"
    );
    (secret, wrong)
}

/// Runs a small teragen on `cluster` with `secret`; checks it is committed.
fn small_job(cluster: &mut HandCluster, secret: &Path, out: &Path) {
    cluster.assert_running();
    run_quern(s(&[
        "teragen",
        "--records",
        "1000",
        "--parts",
        "2",
        "-q",
        "-o",
        &p(out),
        "--coordinator",
        &cluster.addr.to_string(),
        "--secret-file",
        &p(secret),
    ]))
    .ok();
    assert_committed(out, 2);
}

/// A worker with another secret than its coordinator's exits non-zero at once (it does
/// not retry until its join timeout) and says why; the cluster keeps working.
#[test]
fn worker_with_wrong_secret_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (secret, wrong) = two_secrets(dir.path());
    let mut cluster = HandCluster::start(dir.path(), &secret, 1, &[]);

    let mut worker = Proc::quern(
        "quern worker (wrong secret)",
        s(&[
            "worker",
            "--join",
            &cluster.addr.to_string(),
            "--secret-file",
            &p(&wrong),
            "--work-dir",
            &p(&dir.path().join("intruder")),
        ]),
    );
    let status = worker
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "a worker with the wrong secret still runs after 15 s\n{}",
                worker.describe()
            )
        });
    let stderr = worker.output(Stream::Stderr);
    assert!(
        !status.success(),
        "a worker with the wrong secret exited {status}\n{}",
        worker.describe()
    );
    assert!(
        stderr.to_lowercase().contains("secret"),
        "the worker's error should mention the secret, got:\n{stderr}"
    );

    small_job(&mut cluster, &secret, &dir.path().join("good"));
}

/// A client without the cluster's secret (another one, a malformed one, a missing file)
/// fails like any bad usage: exit 2, one `quern: error:` line saying why, nothing written.
/// The cluster keeps serving clients that have the secret.
#[test]
fn client_with_wrong_secret_fails_with_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (secret, wrong) = two_secrets(dir.path());
    let mut cluster = HandCluster::start(dir.path(), &secret, 1, &[]);

    let garbage = dir.path().join("garbage-secret");
    std::fs::write(&garbage, "not a secret\n").expect("write garbage secret");
    let cases = [
        (garbage, "secret"),
        (dir.path().join("no-such-secret"), "no-such-secret"),
        (wrong, "secret"),
    ];
    for (i, (secret_file, mention)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("out-{i}"));
        let o = run_quern(s(&[
            "teragen",
            "--records",
            "1000",
            "-o",
            &p(&out),
            "--coordinator",
            &cluster.addr.to_string(),
            "--secret-file",
            &p(secret_file),
        ]));
        assert!(!out.exists(), "`{}` created {}", o.cmdline, out.display());
        assert!(
            o.stdout.is_empty(),
            "`{}` printed {:?}",
            o.cmdline,
            o.stdout_str()
        );
        let line = o.user_error();
        assert!(
            line.to_lowercase().contains(mention),
            "`{}`: the error should mention {mention:?}, got: {line}",
            o.cmdline
        );
    }

    small_job(&mut cluster, &secret, &dir.path().join("good"));
}

/// Starts `quern <args> -v` on a local cluster and waits for its pid line; returns the
/// client and the cluster's processes, recorded while they run.
fn start_verbose(args: &[String], workers: usize) -> (Proc, Vec<Tracked>) {
    let mut full = args.to_vec();
    full.extend(s(&["-v", "--workers", &workers.to_string()]));
    let client = Proc::quern(format!("quern {}", full.join(" ")), &full);
    let pids = client.expect_output("pid line", Stream::Stderr, JOB_TIMEOUT, cluster_pids);
    let tracked: Vec<Tracked> = pids.iter().map(|&pid| Tracked::now(pid)).collect();
    assert_eq!(
        pids.len(),
        workers + 1,
        "expected a coordinator and {workers} workers in {pids:?}"
    );
    (client, tracked)
}

/// The pids printed by `-v` are the cluster's processes, and they are gone when the
/// command has exited.
#[test]
fn local_cluster_processes_exit_with_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let args = [
        s(&["wc", "-r", "3", "--split-size", SPLIT, "-o", &p(&out)]),
        book_args(),
    ]
    .concat();
    let (client, tracked) = start_verbose(&args, 2);
    let client_pid = client.pid();
    for t in &tracked {
        let stat = proc_stat(t.pid);
        assert!(
            stat.as_ref()
                .is_some_and(|s| s.comm == "quern" && s.ppid == client_pid),
            "pid {} of the pid line is not a quern child of the client: {stat:?}",
            t.pid
        );
    }
    client.finish(JOB_TIMEOUT).ok();
    assert_committed(&out, 3);
    assert_gone("after a successful job", &tracked, GONE_TIMEOUT);
}

/// A job the coordinator refuses after the cluster started (its output directory already
/// holds output) exits 2, leaves that directory alone, and leaves no process behind.
#[test]
fn failed_job_leaves_no_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let args = [s(&["wc", "-r", "3", "-o", &p(&out)]), book_args()].concat();
    run_in(&args, Mode::Sequential, 0);
    let before = parts(&out);
    let names = entries(&out);

    let (client, tracked) = start_verbose(&args, 2);
    let o = client.finish(JOB_TIMEOUT);
    o.expect_code(2);
    let last = o.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("quern: error:") && last.contains("already"),
        "expected a last line `quern: error: ... already holds output`, got:\n{}",
        o.stderr
    );
    assert_eq!(entries(&out), names, "the existing output changed");
    assert_eq!(parts(&out), before, "the existing output changed");
    assert_gone("after a failed job", &tracked, GONE_TIMEOUT);
}

/// SIGKILL of the client mid-job: its cluster goes away on its own (the children see their
/// stdin close).
#[test]
fn killed_client_takes_its_cluster_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gen = teragen(dir.path(), "gen", 200_000, 4);
    let out = dir.path().join("sorted");
    let args = s(&[
        "terasort",
        &p(&gen),
        "-r",
        "3",
        "--split-size",
        "64KiB",
        "-o",
        &p(&out),
    ]);
    let (mut client, tracked) = start_verbose(&args, 2);
    if let Some(status) = client.try_status() {
        panic!(
            "the job ended ({status}) before it could be killed; make it bigger\n{}",
            client.describe()
        );
    }
    assert!(
        tracked.iter().all(|t| t.start.is_some()),
        "cluster processes already gone before the kill: {tracked:?}"
    );
    client.kill();
    assert_gone("after SIGKILL of the client", &tracked, GONE_TIMEOUT);
}

/// The figures a `quern bench` run wrote into `dir/bench.json`.
fn bench_json(dir: &Path) -> serde_json::Value {
    let file = dir.join("bench.json");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{} not written: {e}", file.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", file.display()))
}

/// `quern bench terasort` runs teragen → terasort → teravalidate on the local cluster and
/// on a hand-started one: the output is validated against teragen's count and checksum,
/// bench.json, bench.md and report.html are written, the data is removed unless `--keep`,
/// and `--compare` lines the second run up against the first. The local run sorts with
/// buffered and with direct I/O, and from a dropped page cache (`--cold`) where this
/// process may drop it (root).
#[test]
fn bench_terasort_validates_and_reports_on_local_and_hand_started_clusters() {
    const RECORDS: u64 = 30_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("local");
    let records = RECORDS.to_string();
    let common = ["--records", &records, "--split-size", "1MB"];
    let mut args = s(&["bench", "terasort", "--dir", &p(&local), "--workers", "2"]);
    args.extend(s(&common));
    args.extend(s(&["--io", "buffered,direct"]));
    let cold = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .is_ok();
    if cold {
        args.push("--cold".into());
    } else {
        let refused = run_quern([args.clone(), s(&["--cold"])].concat());
        let line = refused.user_error();
        assert!(line.contains("needs root"), "{line}");
    }
    let out = run_quern(&args);
    out.ok();
    let first = bench_json(&local);
    assert_eq!(first["cold"], cold);
    let validations = first["validations"].as_array().cloned().unwrap_or_default();
    assert_eq!(validations.len(), 2, "one per I/O mode: {first:#}");
    for (v, io) in validations.iter().zip(["buffered", "direct"]) {
        assert_eq!(v["io"], io);
        assert_eq!(v["ok"], true, "{first:#}");
        assert_eq!(v["records"], RECORDS);
        assert_eq!(v["checksum"], first["checksum"]);
    }
    assert_eq!(first["records"], RECORDS);
    assert_eq!(first["bytes"], RECORDS * 100);
    assert_eq!(first["map_tasks"], 3, "3 MB in 1 MB splits");
    assert_eq!(first["cluster"]["workers"], 2);
    assert_eq!(first["cluster"]["nodes"], 1);
    assert_eq!(first["sorts"].as_array().map(Vec::len), Some(2));
    let figure = |v: &serde_json::Value, name: &str| {
        v["figures"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == name))
            .and_then(|f| f["value"].as_f64())
            .unwrap_or_else(|| panic!("no figure {name:?} in {v:#}"))
    };
    assert!(figure(&first, "terasort wall (median)") > 0.0);
    assert!(figure(&first, "sort throughput") > 0.0);
    assert!(figure(&first, "terasort wall (median), direct I/O") > 0.0);
    let md = out.stdout_str();
    assert!(
        md.contains("Validation of the Direct I/O output: **passed**"),
        "{md}"
    );
    for file in ["bench.md", "report.html", "report.json"] {
        assert!(local.join(file).is_file(), "{file} missing");
    }
    for data in ["input", "output", "validate"] {
        assert!(
            !local.join(data).exists(),
            "{data} left behind without --keep"
        );
    }

    let secret = dir.path().join("secret");
    new_secret(&secret);
    let cluster = HandCluster::start(dir.path(), &secret, 2, &[]);
    let remote = dir.path().join("remote");
    let mut args = s(&[
        "bench",
        "terasort",
        "--dir",
        &p(&remote),
        "--coordinator",
        &cluster.addr.to_string(),
        "--secret-file",
        &p(&secret),
        "--keep",
        "--repeat",
        "2",
        "--compare",
        &p(&local.join("bench.json")),
    ]);
    args.extend(s(&common));
    let out = run_quern(&args);
    out.ok();
    let second = bench_json(&remote);
    assert_eq!(second["validations"][0]["ok"], true, "{second:#}");
    assert_eq!(
        second["checksum"], first["checksum"],
        "same seed, same input"
    );
    assert_eq!(second["sorts"].as_array().map(Vec::len), Some(2));
    assert_eq!(second["cluster"]["slots"], 4, "2 workers of 2 slots");
    let mode = second["cluster"]["mode"].as_str().unwrap_or_default();
    assert_eq!(mode, format!("cluster at {}", cluster.addr));
    let md = out.stdout_str();
    assert!(md.contains("| this run | earlier | ratio |"), "{md}");
    assert!(md.contains("| sort throughput |"), "{md}");
    let sorted: usize = parts(&remote.join("output")).values().map(Vec::len).sum();
    assert_eq!(
        sorted as u64,
        RECORDS * 100,
        "--keep keeps the sorted output"
    );
    assert!(remote.join("input").is_dir(), "--keep keeps the input");

    // Kept data is not overwritten.
    let again = run_quern(&args);
    let line = again.user_error();
    assert!(line.contains("already exists"), "{line}");
}

/// A bench that does not fit on the disk is refused before anything is written, naming
/// the free space it found; so is one that would not run on a cluster.
#[test]
fn bench_refuses_a_size_that_does_not_fit_and_runs_only_on_a_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bench = dir.path().join("b");
    let out = run_quern(s(&[
        "bench",
        "terasort",
        "--size",
        "1EB",
        "--dir",
        &p(&bench),
    ]));
    let line = out.user_error();
    assert!(line.contains("needs") && line.contains("is free"), "{line}");
    assert!(!bench.join("input").exists(), "nothing may run");
    let out = run_quern(s(&[
        "bench",
        "terasort",
        "--records",
        "10",
        "--dir",
        &p(&bench),
        "--sequential",
    ]));
    let line = out.user_error();
    assert!(line.contains("runs on a cluster"), "{line}");
    let out = run_quern(s(&[
        "bench",
        "terasort",
        "--size",
        "99",
        "--dir",
        &p(&bench),
    ]));
    let line = out.user_error();
    assert!(line.contains("at least one"), "{line}");
}
