//! Issue 4, test 5: the coordinator dies mid-job (SIGKILL) and is resumed from its journal.
//! The job finishes with the right output, and the journal shows that no task committed
//! before the crash was run again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quern_tests::cluster::{
    cluster_pids, coordinator_addr, new_secret, signal, wait_joined, wait_until, Proc, Stream,
    JOB_TIMEOUT,
};
use quern_tests::{p, parts, run};

/// `quern journal` of `out/_journal`: the committed tasks, `task -> times committed`.
fn commits(out: &Path) -> BTreeMap<String, usize> {
    let o = run(["journal", &p(&out.join("_journal"))]);
    let mut counts = BTreeMap::new();
    for line in o.stdout_str().lines() {
        // "job 1 committed map 3 attempt 7 on 127.0.0.1:4000"
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.get(2) == Some(&"committed") {
            *counts
                .entry(format!("{} {}", words[3], words[4]))
                .or_default() += 1;
        }
    }
    counts
}

fn worker(addr: &str, secret: &Path, i: usize) -> Proc {
    let mut cmd = std::process::Command::new(quern_tests::quern());
    cmd.args([
        "worker",
        "--exit-with-parent",
        "--slots",
        "1",
        "--join",
        addr,
        "--secret-file",
        &p(secret),
    ])
    // Slow the maps down so the crash lands mid-job, whatever the machine's speed.
    .env("QUERN_FAULT", "slow:3");
    Proc::spawn(format!("worker {i}"), cmd)
}

/// The job both tests interrupt: terasort of 20 MB in four files, 80 maps of 250,000
/// bytes, two reducers. Writes the input under `dir`, and the `--sequential` reference
/// to `dir/seq`.
struct Terasort {
    gen: PathBuf,
    seq: PathBuf,
}

impl Terasort {
    fn prepare(dir: &Path) -> Terasort {
        let gen = dir.join("gen");
        run([
            "teragen",
            "-q",
            "--in-process",
            "--records",
            "200000",
            "--parts",
            "4",
            "-o",
            &p(&gen),
        ])
        .ok();
        let job = Terasort {
            gen,
            seq: dir.join("seq"),
        };
        run([job.args(&job.seq), vec!["--sequential".to_string()]].concat()).ok();
        job
    }

    /// The job's arguments, writing to `out`.
    fn args(&self, out: &Path) -> Vec<String> {
        vec![
            "terasort".to_string(),
            p(&self.gen),
            "-r".into(),
            "2".into(),
            "--split-size".into(),
            "250000".into(),
            "-o".into(),
            p(out),
        ]
    }
}

#[test]
fn coordinator_killed_mid_job_resumes_from_its_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    new_secret(&secret);
    let terasort = Terasort::prepare(dir.path());
    let (job, seq) = (|out: &Path| terasort.args(out), &terasort.seq);

    let coordinator = Proc::quern(
        "coordinator",
        [
            "coordinator",
            "--exit-with-parent",
            "-v",
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            &p(&secret),
        ],
    );
    let addr = coordinator_addr(&coordinator).to_string();
    let workers: Vec<Proc> = (0..2).map(|i| worker(&addr, &secret, i)).collect();
    wait_joined(&coordinator, &workers, 2);

    let out = dir.path().join("out");
    let mut args = job(&out);
    args.extend([
        "--coordinator".to_string(),
        addr.clone(),
        "--secret-file".into(),
        p(&secret),
    ]);
    let mut client = Proc::quern("client", &args);

    // Kill the coordinator once a few tasks are committed (and journaled), but not all 80.
    wait_until(JOB_TIMEOUT, || (commits(&out).len() >= 4).then_some(())).unwrap_or_else(|| {
        panic!(
            "no commits journaled\n{}\n{}",
            coordinator.describe(),
            client.describe()
        )
    });
    let mut coordinator = coordinator;
    coordinator.kill();
    let status = client
        .wait_exit(JOB_TIMEOUT)
        .expect("the client notices the coordinator's death");
    assert!(
        !status.success(),
        "the client cannot succeed without its coordinator"
    );
    let client_err = client.output(Stream::Stderr);
    assert!(
        client_err.contains("--resume"),
        "the client says how to continue:\n{client_err}"
    );
    assert!(
        !out.join("_SUCCESS").exists(),
        "the job finished before the crash: make it longer"
    );
    // The dead coordinator journals nothing more: this is what committed before the crash.
    let before: Vec<String> = commits(&out).into_keys().collect();
    assert!(before.len() < 80, "every map committed before the crash");

    // Restart on the same address from the journal; the workers re-join on their own.
    let resumed = Proc::quern(
        "resumed coordinator",
        [
            "coordinator",
            "--exit-with-parent",
            "-v",
            "--listen",
            &addr,
            "--secret-file",
            &p(&secret),
            "--resume",
            &p(&out.join("_journal")),
        ],
    );
    resumed.expect_output(
        "a resume line",
        Stream::Stderr,
        Duration::from_secs(30),
        |log| log.contains("resuming job").then_some(()),
    );
    wait_until(JOB_TIMEOUT, || out.join("_SUCCESS").exists().then_some(()))
        .unwrap_or_else(|| panic!("the resumed job did not finish\n{}", resumed.describe()));

    assert_eq!(
        parts(&out),
        parts(seq),
        "resumed output differs from --sequential"
    );
    let after = commits(&out);
    for task in &before {
        assert_eq!(
            after.get(task),
            Some(&1),
            "{task} was committed before the crash and must not run again"
        );
    }
    assert!(
        after.values().all(|&n| n == 1),
        "a task committed twice: {after:?}"
    );
    assert_eq!(
        after.len(),
        80 + 2,
        "every map and reduce committed exactly once: {after:?}"
    );
    drop(workers);
}

/// The job command owns its embedded local cluster: SIGKILL of the command takes the
/// cluster down mid-job, and re-running the command with `--resume` (no `--coordinator`)
/// continues the journaled job. Map output lived on the dead cluster's workers, so maps run
/// again; a reduce committed before the crash is not.
#[test]
fn local_cluster_job_killed_mid_job_resumes_with_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let terasort = Terasort::prepare(dir.path());
    let (job, seq) = (|out: &Path| terasort.args(out), &terasort.seq);
    let out = dir.path().join("out");
    let mut cmd = std::process::Command::new(quern_tests::quern());
    // The local cluster's workers inherit the fault: slow maps, so the kill lands mid-job.
    cmd.args(job(&out))
        .args(["--workers", "2"])
        .env("QUERN_FAULT", "slow:3");
    let mut client = Proc::spawn("job command", cmd);
    wait_until(JOB_TIMEOUT, || (commits(&out).len() >= 4).then_some(()))
        .unwrap_or_else(|| panic!("no commits journaled\n{}", client.describe()));
    client.kill();
    assert!(
        !out.join("_SUCCESS").exists(),
        "the job finished before the kill: make it longer"
    );
    let before = commits(&out);

    let resumed = run([job(&out), vec!["--resume".to_string()]].concat());
    resumed.ok();
    assert_eq!(
        parts(&out),
        parts(seq),
        "resumed output differs from --sequential"
    );
    let after = commits(&out);
    for (task, n) in &after {
        let again = if task.starts_with("reduce") { 1 } else { 2 };
        assert!(
            *n <= again && (*n == 1 || before.contains_key(task)),
            "{task} committed {n} times (before the kill: {:?})",
            before.get(task)
        );
    }
    assert_eq!(
        after.len(),
        80 + 2,
        "every map and reduce committed: {after:?}"
    );
}

/// The job command owns its local cluster, so it also recovers it: SIGKILL of the local
/// coordinator mid-job makes the command start a new one on the same address, which
/// continues the job from the journal. The workers re-join it with their map outputs. The
/// job succeeds with the right output, and no task committed before the kill runs again.
#[test]
fn local_coordinator_killed_mid_job_is_restarted_by_the_job_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let terasort = Terasort::prepare(dir.path());
    let out = dir.path().join("out");
    let mut cmd = std::process::Command::new(quern_tests::quern());
    cmd.args(terasort.args(&out))
        .args(["--workers", "2", "-v"])
        // Slow reduces: the kill lands mid-job, whatever the machine's speed.
        .env("QUERN_FAULT", "slow:30");
    let mut client = Proc::spawn("job command", cmd);
    let pids = client.expect_output("the cluster's pids", Stream::Stderr, JOB_TIMEOUT, |log| {
        cluster_pids(log)
    });
    wait_until(JOB_TIMEOUT, || (commits(&out).len() >= 4).then_some(()))
        .unwrap_or_else(|| panic!("no commits journaled\n{}", client.describe()));
    assert!(
        signal(pids[0], "KILL"),
        "cannot kill the coordinator {}",
        pids[0]
    );
    assert!(
        !out.join("_SUCCESS").exists(),
        "the job finished before the kill: make it longer"
    );
    let before = commits(&out);

    let status = client
        .wait_exit(JOB_TIMEOUT)
        .unwrap_or_else(|| panic!("the job did not finish\n{}", client.describe()));
    let stderr = client.output(Stream::Stderr);
    assert!(status.success(), "the job failed:\n{stderr}");
    assert!(
        stderr.contains("restarting the local coordinator (1 of 3)"),
        "the command says it restarted the coordinator:\n{stderr}"
    );
    assert_eq!(
        parts(&out),
        parts(&terasort.seq),
        "output after the restart differs from --sequential"
    );
    let after = commits(&out);
    for task in before.keys() {
        assert_eq!(
            after.get(task),
            Some(&1),
            "{task} was committed before the kill and must not run again"
        );
    }
    assert!(
        after.values().all(|&n| n == 1),
        "a task committed twice: {after:?}"
    );
    assert_eq!(after.len(), 80 + 2, "every task committed: {after:?}");
}
