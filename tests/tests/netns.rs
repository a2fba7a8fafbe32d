//! A cluster spread over three "hosts": network namespaces joined by veth pairs to a
//! bridge in a fourth namespace. The coordinator runs in the first, one worker in each of
//! the other two; the workers' addresses differ, so every map output a reducer needs from
//! the other worker crosses the veths over QUIC. The filesystem is shared by all namespaces,
//! as quern expects of a cluster (shared input and output paths).
//!
//! Runs only with `QUERN_NETNS_TESTS=1`, as root, where `ip netns` can create namespaces;
//! otherwise it prints `skipped: ...` and passes. Only namespaces (and veths inside them)
//! created by the test are touched, and they are deleted on every path.
//!
//! ```text
//!  ns h1 10.213.77.1 (coordinator, client) ──┐
//!  ns h2 10.213.77.2 (worker) ───────────────┼── br0 in ns br
//!  ns h3 10.213.77.3 (worker) ───────────────┘
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use quern_tests::cluster::{
    coordinator_addr, new_secret, run_quern, wait_joined, Proc, JOB_TIMEOUT,
};
use quern_tests::{assert_committed, p, parts, quern, Outcome};

/// The private /24 of the test network (inside the test's namespaces only).
const SUBNET: &str = "10.213.77";
/// The coordinator's port.
const PORT: u16 = 7070;
/// Deadline of one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `ip args` with a deadline; `Err` with its output if it cannot start or fails.
fn try_ip(args: &[&str]) -> Result<Outcome, String> {
    let what = format!("ip {}", args.join(" "));
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let mut proc = Proc::try_spawn(what.clone(), cmd).map_err(|e| format!("{what}: {e}"))?;
    if proc.wait_exit(IP_TIMEOUT).is_none() {
        return Err(format!("{what} did not finish within {IP_TIMEOUT:?}"));
    }
    let o = proc.finish(IP_TIMEOUT);
    if o.code == 0 {
        Ok(o)
    } else {
        Err(format!("{what} exited {}: {}", o.code, o.stderr.trim()))
    }
}

fn ip(args: &[&str]) -> Outcome {
    try_ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether the effective user is root, from `/proc/self/status`.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Why the test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if std::env::var("QUERN_NETNS_TESTS").as_deref() != Ok("1") {
        return Some("set QUERN_NETNS_TESTS=1 (as root) to run the network-namespace test".into());
    }
    if !is_root() {
        return Some("the network-namespace test needs root".into());
    }
    if let Err(e) = try_ip(&["netns", "list"]) {
        return Some(format!("`ip netns` does not work: {e}"));
    }
    // Listing works without privileges; creating needs CAP_SYS_ADMIN (not in every container).
    let probe = format!("qn{}-probe", std::process::id());
    if let Err(e) = try_ip(&["netns", "add", &probe]) {
        let _ = try_ip(&["netns", "del", &probe]);
        return Some(format!("cannot create a network namespace: {e}"));
    }
    if let Err(e) = try_ip(&["netns", "del", &probe]) {
        panic!("deleting the probe namespace: {e}");
    }
    None
}

/// The test's namespaces and the processes running in them. Drop kills and reaps the
/// processes, then deletes the namespaces (which deletes their veths) — also on panic.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            prefix: format!("qn{}", std::process::id()),
            namespaces: Vec::new(),
            procs: Vec::new(),
        }
    }

    /// Creates namespace `<prefix>-<short>` with `lo` up; returns its name.
    fn add_ns(&mut self, short: &str) -> String {
        let name = format!("{}-{short}", self.prefix);
        ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A command running `quern args` in namespace `ns`.
    fn quern_in(ns: &str, args: &[String]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(quern()).args(args);
        cmd
    }

    /// Starts a long-running `quern args` in `ns`; it lives as long as the lab.
    fn start(&mut self, name: &str, ns: &str, args: &[String]) -> &Proc {
        self.procs.push(Proc::spawn(name, Lab::quern_in(ns, args)));
        self.procs.last().expect("just pushed")
    }

    /// Runs `quern args` in `ns` to completion.
    fn run(ns: &str, args: &[String]) -> Outcome {
        let name = format!("(in {ns}) quern {}", args.join(" "));
        Proc::spawn(name, Lab::quern_in(ns, args)).finish(JOB_TIMEOUT)
    }

    /// Bytes received so far by `eth0` of `ns`.
    fn rx_bytes(ns: &str) -> u64 {
        let o = ip(&[
            "netns",
            "exec",
            ns,
            "cat",
            "/sys/class/net/eth0/statistics/rx_bytes",
        ]);
        o.stdout_str()
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("rx_bytes of {ns}: {e}: {:?}", o.stdout_str()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for proc in &mut self.procs {
            proc.kill();
        }
        self.procs.clear();
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = try_ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// The star network: hosts h1..h3 at `SUBNET.1..3`, each with `eth0` paired with `v<i>` on a
/// bridge in namespace `br`. The veths are created inside the namespaces, never on the host.
fn build_network(lab: &mut Lab) -> Vec<String> {
    let br = lab.add_ns("br");
    ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &br, "link", "set", "br0", "up"]);
    let mut hosts = Vec::new();
    for i in 1..=3 {
        let host = lab.add_ns(&format!("h{i}"));
        let port = format!("v{i}");
        ip(&[
            "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host,
        ]);
        ip(&["-n", &br, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &br, "link", "set", &port, "up"]);
        ip(&[
            "-n",
            &host,
            "addr",
            "add",
            &format!("{SUBNET}.{i}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &host, "link", "set", "eth0", "up"]);
        hosts.push(host);
    }
    hosts
}

fn assert_same_parts(what: &str, want: &Path, got: &Path) {
    let (want, got) = (parts(want), parts(got));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{what}: different part files"
    );
    for (name, bytes) in &want {
        assert!(
            &got[name] == bytes,
            "{what}: {name} differs from --sequential ({} vs {} bytes)",
            got[name].len(),
            bytes.len()
        );
    }
}

#[test]
fn terasort_across_three_namespaces() {
    if let Some(reason) = skip_reason() {
        println!("skipped: {reason}");
        eprintln!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let secret = d.join("secret");
    new_secret(&secret);

    // Input and the reference, on the host.
    let gen = d.join("gen");
    run_quern(s(&[
        "teragen",
        "--records",
        "50000",
        "--parts",
        "2",
        "--sequential",
        "-q",
        "-o",
        &p(&gen),
    ]))
    .ok();
    let job = s(&["terasort", &p(&gen), "-r", "3", "--split-size", "256KiB"]);
    let reference = d.join("sorted-seq");
    run_quern(
        [
            job.clone(),
            s(&["--sequential", "-q", "-o", &p(&reference)]),
        ]
        .concat(),
    )
    .ok();

    let mut lab = Lab::new();
    let hosts = build_network(&mut lab);
    let coordinator_at = format!("{SUBNET}.1:{PORT}");
    let cluster = s(&[
        "--coordinator",
        &coordinator_at,
        "--secret-file",
        &p(&secret),
    ]);

    let coordinator = lab.start(
        "quern coordinator (h1)",
        &hosts[0],
        &s(&[
            "coordinator",
            "--listen",
            &coordinator_at,
            "--secret-file",
            &p(&secret),
            "-v",
            "--exit-with-parent",
        ]),
    );
    assert_eq!(coordinator_addr(coordinator).to_string(), coordinator_at);
    for (i, host) in hosts.iter().enumerate().skip(1) {
        let work = d.join(format!("work-h{}", i + 1));
        lab.start(
            &format!("quern worker (h{})", i + 1),
            host,
            &s(&[
                "worker",
                "--join",
                &coordinator_at,
                "--secret-file",
                &p(&secret),
                "--slots",
                "2",
                "--work-dir",
                &p(&work),
                "--exit-with-parent",
            ]),
        );
    }
    let mut joined: Vec<String> = wait_joined(&lab.procs[0], &lab.procs[1..], 2)
        .iter()
        .map(|a| {
            a.rsplit_once(':')
                .map_or(a.as_str(), |(ip, _)| ip)
                .to_string()
        })
        .collect();
    joined.sort();
    assert_eq!(
        joined,
        [format!("{SUBNET}.2"), format!("{SUBNET}.3")],
        "the workers should join from their own namespaces' addresses"
    );

    let rx_before: u64 = hosts[1..].iter().map(|h| Lab::rx_bytes(h)).sum();
    let sorted = d.join("sorted-cluster");
    Lab::run(
        &hosts[0],
        &[job.clone(), cluster.clone(), s(&["-o", &p(&sorted)])].concat(),
    )
    .ok();
    let rx = hosts[1..].iter().map(|h| Lab::rx_bytes(h)).sum::<u64>() - rx_before;
    println!("netns: workers joined from {joined:?}; they received {rx} bytes during terasort");
    assert_committed(&sorted, 3);
    assert_same_parts("terasort across namespaces", &reference, &sorted);
    // 5 MB sorted by two workers: about half of every reducer's input comes from the
    // other worker. Far less than that means the shuffle did not cross the veths.
    assert!(
        rx > 500_000,
        "the workers received only {rx} bytes over their veths during a 5 MB terasort"
    );

    // Validate on the cluster, from another namespace; compare with --sequential.
    let validate = s(&["teravalidate", &p(&sorted)]);
    let want = run_quern([validate.clone(), s(&["--sequential"])].concat());
    want.ok();
    let got = Lab::run(&hosts[1], &[validate, cluster].concat());
    got.ok();
    assert_eq!(got.stdout_str(), want.stdout_str(), "teravalidate report");
    assert!(
        got.stdout_str().contains("Records: 50000") && got.stdout_str().contains("SUCCESS"),
        "teravalidate:\n{}",
        got.stdout_str()
    );

    for proc in &mut lab.procs {
        assert!(
            proc.try_status().is_none(),
            "{} exited during the test\n{}",
            proc.name(),
            proc.describe()
        );
    }
    let names = lab.namespaces.clone();
    drop(lab);
    let left = ip(&["netns", "list"]).stdout_str();
    for ns in names {
        assert!(
            !left
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&ns)),
            "namespace {ns} not deleted:\n{left}"
        );
    }
}
