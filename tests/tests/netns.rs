//! A cluster spread over three "hosts": network namespaces joined by veth pairs to a
//! bridge in a fourth namespace. The coordinator runs in the first, one worker in each of
//! the other two; the workers' addresses differ, so every map output a reducer needs from
//! the other worker crosses the veths over QUIC. The filesystem is shared by all namespaces,
//! as quern expects of a cluster (shared input and output paths).
//!
//! ```text
//!  ns h1 10.213.77.1 (coordinator, client) ──┐
//!  ns h2 10.213.77.2 (worker) ───────────────┼── br0 in ns br
//!  ns h3 10.213.77.3 (worker) ───────────────┘
//! ```
//!
//! 1. **across namespaces** — terasort on a healthy network: the shuffle crosses the veths,
//!    the output equals `--sequential`'s, and teravalidate on the cluster agrees with
//!    teravalidate `--sequential`.
//! 2. **packet loss** — [`LOSS_PERCENT`]% of the packets of both workers' veths, each way,
//!    are dropped at random for the whole job. (Packets as nftables sees them: with UDP
//!    GSO and GRO one is often a batch of QUIC datagrams, so the loss comes in bursts.)
//! 3. **partition** — the two workers cannot reach each other for [`PARTITION`], in the
//!    middle of the shuffle.
//! 4. **coordinator unreachable** — one worker cannot reach the coordinator for
//!    [`OUTAGE`], in the middle of the shuffle. That is longer than the heartbeat timeout
//!    (2 s): the coordinator gives the worker up, redoes its work on the other one, and
//!    tells it to leave once it is heard from again.
//!
//! Every fault test checks the output as valsort would (in order; the input's record count
//! and checksum), byte for byte against `--sequential`, that every task committed exactly
//! once (`OUTPUT/_journal` and `--report`'s report.json agree), and the counters that the
//! fault should (or should not) move.
//!
//! Faults are nftables tables inside a worker's namespace (Debian `nftables`); each rule
//! counts what it matched, and the tests check that their fault did hit traffic. The kernel
//! here has no `netem` qdisc, so links cannot be delayed; `tc tbf` caps each worker's egress
//! at [`LINK_RATE`] instead, which makes the shuffle last long enough for a fault to land
//! in it. A fault "in the middle of the shuffle" starts once a worker has received
//! [`SHUFFLE_STARTED`] bytes of the other's map output over its veth: for the partition, the
//! worker cut off (its shuffle is under way); for the outage, the other one (so the worker
//! cut off holds committed map output that the job still needs).
//!
//! Runs only with `QUERN_NETNS_TESTS=1`, as root, where `ip netns` can create namespaces;
//! otherwise every test prints `skipped: ...` and passes. Only namespaces (and veths inside
//! them) created by a test are touched, and they are deleted on every path. The tests run
//! one at a time: each keeps both cores busy, and its faults are timed against heartbeats.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quern_tests::cluster::{
    coordinator_addr, new_secret, run_quern, wait_joined, wait_until, Proc, Stream, JOB_TIMEOUT,
};
use quern_tests::{assert_committed, p, parts, quern, Outcome};

/// The private /24 of the test network (inside the test's namespaces only).
const SUBNET: &str = "10.213.77";
/// The coordinator's port.
const PORT: u16 = 7070;
/// Deadline of one `ip`, `nft` or `tc` command.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// Records of the fault tests' input (100 bytes each).
const RECORDS: u64 = 400_000;
/// Reduce tasks of every terasort here.
const REDUCERS: usize = 3;
/// Split size of every terasort here.
const SPLIT: &str = "1MiB";
/// Egress cap of each worker's veth in the partition and outage tests (`tc tbf`).
const LINK_RATE: &str = "20mbit";
/// Random loss of the packet-loss test, per cent of the packets each way.
const LOSS_PERCENT: u32 = 5;
/// How long the partition test keeps the workers apart.
const PARTITION: Duration = Duration::from_secs(5);
/// How long the outage test keeps one worker from the coordinator.
const OUTAGE: Duration = Duration::from_secs(3);
/// Bytes a worker receives over its veth, after the job is submitted, before a fault "in
/// the middle of the shuffle" starts: the other worker's map output (the coordinator sends
/// far less), well under the quarter of the input that each worker receives in all.
const SHUFFLE_STARTED: u64 = 1_000_000;

static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------
// Commands, namespaces and processes.

/// Runs `program args` with a deadline; `Err` with its output if it cannot start or fails.
fn try_run(program: &str, args: &[&str]) -> Result<Outcome, String> {
    let what = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args);
    let mut proc = Proc::try_spawn(what.clone(), cmd).map_err(|e| format!("{what}: {e}"))?;
    if proc.wait_exit(TOOL_TIMEOUT).is_none() {
        return Err(format!("{what} did not finish within {TOOL_TIMEOUT:?}"));
    }
    let o = proc.finish(TOOL_TIMEOUT);
    if o.code == 0 {
        Ok(o)
    } else {
        Err(format!("{what} exited {}: {}", o.code, o.stderr.trim()))
    }
}

fn ip(args: &[&str]) -> Outcome {
    try_run("ip", args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `program args` inside namespace `ns`, panicking if it fails.
fn exec_in(ns: &str, program: &str, args: &[&str]) -> Outcome {
    let full = [&["netns", "exec", ns, program], args].concat();
    ip(&full)
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

/// Why the tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if std::env::var("QUERN_NETNS_TESTS").as_deref() != Ok("1") {
        return Some("set QUERN_NETNS_TESTS=1 (as root) to run the network-namespace test".into());
    }
    if !is_root() {
        return Some("the network-namespace test needs root".into());
    }
    if let Err(e) = try_run("ip", &["netns", "list"]) {
        return Some(format!("`ip netns` does not work: {e}"));
    }
    // Listing works without privileges; creating needs CAP_SYS_ADMIN (not in every container).
    let probe = format!("qn{}-probe", std::process::id());
    if let Err(e) = try_run("ip", &["netns", "add", &probe]) {
        let _ = try_run("ip", &["netns", "del", &probe]);
        return Some(format!("cannot create a network namespace: {e}"));
    }
    if let Err(e) = try_run("ip", &["netns", "del", &probe]) {
        panic!("deleting the probe namespace: {e}");
    }
    None
}

/// Holds the lock that runs these tests one at a time; `None` (after saying why) if they
/// cannot run here. A fault test also needs `nft` and `tc`: with `QUERN_NETNS_TESTS=1` a
/// missing tool is a failure, not a skip.
fn netns_test(tools: &[Tool]) -> Option<MutexGuard<'static, ()>> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reason) = skip_reason() {
        println!("skipped: {reason}");
        eprintln!("skipped: {reason}");
        return None;
    }
    for tool in tools {
        if let Err(e) = try_run(tool.name, &[tool.version]) {
            panic!(
                "{} is needed (Debian package {}): {e}",
                tool.name, tool.package
            );
        }
    }
    Some(guard)
}

/// A command a test needs: its name, the option that prints its version, its package.
struct Tool {
    name: &'static str,
    version: &'static str,
    package: &'static str,
}

/// What the fault tests need beyond `ip`.
const FAULT_TOOLS: [Tool; 2] = [
    Tool {
        name: "nft",
        version: "--version",
        package: "nftables",
    },
    Tool {
        name: "tc",
        version: "-V",
        package: "iproute2",
    },
];

/// A test's namespaces and the processes running in them. Drop kills and reaps the
/// processes, then deletes the namespaces (which deletes their veths and nftables
/// tables) — also on panic.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
}

impl Lab {
    /// A lab whose namespaces are named `qn<pid>-<tag>-...`.
    fn new(tag: &str) -> Lab {
        Lab {
            prefix: format!("qn{}-{tag}", std::process::id()),
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

    /// A process running `quern args` in namespace `ns`. (`ip netns exec` execs the
    /// command, so its pid is quern's.)
    fn spawn(name: &str, ns: &str, args: &[String]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(quern()).args(args);
        Proc::spawn(name, cmd)
    }

    /// Starts a long-running `quern args` in `ns`; it lives as long as the lab.
    fn start(&mut self, name: &str, ns: &str, args: &[String]) -> &Proc {
        self.procs.push(Lab::spawn(name, ns, args));
        self.procs.last().expect("just pushed")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for proc in &mut self.procs {
            proc.kill();
        }
        self.procs.clear();
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = try_run("ip", &["netns", "del", ns]) {
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
/// With `worker_rate`, the egress of the workers' `eth0` (h2, h3) is capped with `tc tbf`.
fn build_network(lab: &mut Lab, worker_rate: Option<&str>) -> Vec<String> {
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
        if let Some(rate) = worker_rate.filter(|_| i > 1) {
            // A queue of at most 50 ms: the control traffic that shares it stays prompt.
            exec_in(
                &host,
                "tc",
                &[
                    "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "64kb",
                    "latency", "50ms",
                ],
            );
        }
        hosts.push(host);
    }
    hosts
}

// ---------------------------------------------------------------------------------------
// The cluster in the lab.

/// The star network with a coordinator (`-v`) in h1 and a worker of two slots in each of
/// h2 and h3, both joined. Dropping it kills the processes and deletes the namespaces.
struct Testbed {
    lab: Lab,
    hosts: Vec<String>,
    secret: PathBuf,
}

impl Testbed {
    /// Builds the network (workers' egress capped at `worker_rate`, if given) and starts
    /// the cluster; scratch files go in `dir`.
    fn start(dir: &Path, tag: &str, worker_rate: Option<&str>) -> Testbed {
        let secret = dir.join("secret");
        new_secret(&secret);
        let mut lab = Lab::new(tag);
        let hosts = build_network(&mut lab, worker_rate);
        let at = Testbed::coordinator_at();
        let coordinator = lab.start(
            "quern coordinator (h1)",
            &hosts[0],
            &s(&[
                "coordinator",
                "--listen",
                &at,
                "--secret-file",
                &p(&secret),
                "-v",
                "--exit-with-parent",
            ]),
        );
        assert_eq!(coordinator_addr(coordinator).to_string(), at);
        for (i, host) in hosts.iter().enumerate().skip(1) {
            let work = dir.join(format!("work-h{}", i + 1));
            lab.start(
                &format!("quern worker (h{})", i + 1),
                host,
                &s(&[
                    "worker",
                    "--join",
                    &at,
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
            [Testbed::worker_ip(0), Testbed::worker_ip(1)],
            "the workers should join from their own namespaces' addresses"
        );
        Testbed { lab, hosts, secret }
    }

    /// `HOST:PORT` of the coordinator.
    fn coordinator_at() -> String {
        format!("{SUBNET}.1:{PORT}")
    }

    /// The address of worker `i` (0 or 1).
    fn worker_ip(i: usize) -> String {
        format!("{SUBNET}.{}", i + 2)
    }

    fn coordinator(&self) -> &Proc {
        &self.lab.procs[0]
    }

    fn worker(&mut self, i: usize) -> &mut Proc {
        &mut self.lab.procs[1 + i]
    }

    /// The namespace of worker `i`.
    fn worker_ns(&self, i: usize) -> &str {
        &self.hosts[1 + i]
    }

    /// `--coordinator ADDR --secret-file F`.
    fn cluster_args(&self) -> Vec<String> {
        s(&[
            "--coordinator",
            &Testbed::coordinator_at(),
            "--secret-file",
            &p(&self.secret),
        ])
    }

    /// Starts `quern args` against the cluster, from h1 (like the coordinator).
    fn submit(&self, args: &[String]) -> Proc {
        let full = [args.to_vec(), self.cluster_args()].concat();
        Lab::spawn(
            &format!("(in h1) quern {}", full.join(" ")),
            &self.hosts[0],
            &full,
        )
    }

    /// Runs `quern args` against the cluster from namespace `ns` to completion.
    fn run_in(&self, ns: &str, args: &[String]) -> Outcome {
        let full = [args.to_vec(), self.cluster_args()].concat();
        Lab::spawn(&format!("(in {ns}) quern {}", full.join(" ")), ns, &full).finish(JOB_TIMEOUT)
    }

    /// Bytes received so far by `eth0` of worker `i`'s namespace, read from
    /// `/proc/<worker pid>/net/dev` (cheap enough to poll).
    fn rx_bytes(&mut self, i: usize) -> u64 {
        let worker = self.worker(i);
        let path = format!("/proc/{}/net/dev", worker.pid());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{path}: {e} (did the worker exit?)\n{}", worker.describe())
        });
        text.lines()
            .find_map(|l| l.trim().strip_prefix("eth0:"))
            .and_then(|fields| fields.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no eth0 receive counter in {path}:\n{text}"))
    }

    /// Waits until worker `i` has received [`SHUFFLE_STARTED`] bytes more than `before`
    /// (the shuffle is under way) while `job` still runs; panics if the job ends first or
    /// the deadline passes. Returns how long it took.
    fn wait_for_shuffle(&mut self, i: usize, before: u64, job: &mut Proc) -> Duration {
        let start = Instant::now();
        let seen = wait_until(JOB_TIMEOUT, || {
            if job.try_status().is_some() {
                return Some(false);
            }
            (self.rx_bytes(i) >= before + SHUFFLE_STARTED).then_some(true)
        });
        match seen {
            Some(true) => start.elapsed(),
            Some(false) => panic!(
                "the job ended before worker {i} received {SHUFFLE_STARTED} bytes: make it bigger or the links slower\n{}",
                job.describe()
            ),
            None => panic!(
                "worker {i} did not receive {SHUFFLE_STARTED} bytes within {JOB_TIMEOUT:?}\n{}\n{}",
                job.describe(),
                self.coordinator().describe()
            ),
        }
    }

    /// The coordinator's name (`worker N`) of the worker joined from `ip`, from its log.
    fn worker_id(&self, ip: &str) -> String {
        let log = self.coordinator().output(Stream::Stderr);
        log.lines()
            .find_map(|l| {
                let (head, rest) = l.split_once(" joined from ")?;
                let id = head.rfind("worker ").map(|at| &head[at..])?;
                rest.starts_with(&format!("{ip}:")).then(|| id.to_string())
            })
            .unwrap_or_else(|| {
                panic!("no worker joined from {ip} in the coordinator's log:\n{log}")
            })
    }

    /// Asserts that the coordinator and the workers `alive` still run.
    fn assert_running(&mut self, alive: &[usize]) {
        let mut procs = vec![0];
        procs.extend(alive.iter().map(|i| 1 + i));
        for i in procs {
            let proc = &mut self.lab.procs[i];
            assert!(
                proc.try_status().is_none(),
                "{} exited during the test\n{}",
                proc.name(),
                proc.describe()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Faults.

/// An nftables table of counted rules in one namespace, deleted by [`Fault::lift`] (or on
/// drop; deleting the namespace would delete it too).
struct Fault {
    ns: String,
    table: String,
    lifted: bool,
}

impl Fault {
    /// Adds table `inet <table>` to `ns` with `input` and `output` filter chains holding
    /// these rules, in order (each should have a `counter`).
    fn inject(ns: &str, table: &str, input: &[String], output: &[String]) -> Fault {
        let chain = |name: &str, rules: &[String]| {
            let rules: String = rules.iter().map(|r| format!(" {r};")).collect();
            format!("chain {name} {{ type filter hook {name} priority 0; policy accept;{rules} }};")
        };
        let script = format!(
            "table inet {table} {{ {} {} }}",
            chain("input", input),
            chain("output", output)
        );
        exec_in(ns, "nft", &[&script]);
        Fault {
            ns: ns.to_string(),
            table: table.to_string(),
            lifted: false,
        }
    }

    /// Drops every packet `ns` exchanges with `peer` (an IPv4 address). Counters: packets
    /// dropped coming in, going out.
    fn cut_off(ns: &str, peer: &str) -> Fault {
        Fault::inject(
            ns,
            "quern_cut",
            &[format!("ip saddr {peer} counter drop")],
            &[format!("ip daddr {peer} counter drop")],
        )
    }

    /// Drops `percent`% of the packets of `eth0` in `ns`, at random, each way. Counters:
    /// packets in, of which dropped; packets out, of which dropped.
    fn random_loss(ns: &str, percent: u32) -> Fault {
        let rules = |dir: &str| {
            vec![
                format!("{dir} \"eth0\" counter"),
                format!("{dir} \"eth0\" numgen random mod 100 < {percent} counter drop"),
            ]
        };
        Fault::inject(ns, "quern_loss", &rules("iifname"), &rules("oifname"))
    }

    /// The packet count of each rule, input chain first, in order.
    fn counters(&self) -> Vec<u64> {
        let listing =
            exec_in(&self.ns, "nft", &["list", "table", "inet", &self.table]).stdout_str();
        listing
            .split("counter packets ")
            .skip(1)
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("bad nft counter in:\n{listing}"))
            })
            .collect()
    }

    /// Deletes the table; returns its final counters.
    fn lift(mut self) -> Vec<u64> {
        let counters = self.counters();
        exec_in(&self.ns, "nft", &["delete", "table", "inet", &self.table]);
        self.lifted = true;
        counters
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        if !self.lifted {
            let args = [
                "netns",
                "exec",
                &self.ns,
                "nft",
                "delete",
                "table",
                "inet",
                &self.table,
            ];
            if let Err(e) = try_run("ip", &args) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The job and its checks.

/// Terasort input made on the host with teragen, and what sorting it must give.
struct TeraInput {
    dir: PathBuf,
    records: u64,
    /// valsort's checksum of the input, as teragen prints it.
    checksum: String,
    /// The `--sequential` sort of it.
    reference: PathBuf,
}

impl TeraInput {
    /// Generates `records` records in `dir/gen` and sorts them with `--sequential`.
    fn generate(dir: &Path, records: u64) -> TeraInput {
        let gen = dir.join("gen");
        let o = run_quern(s(&[
            "teragen",
            "--records",
            &records.to_string(),
            "--parts",
            "2",
            "--sequential",
            "-q",
            "-o",
            &p(&gen),
        ]));
        o.ok();
        let checksum = line_value(&o.stdout_str(), "Checksum: ");
        let input = TeraInput {
            dir: gen,
            records,
            checksum,
            reference: dir.join("sorted-seq"),
        };
        run_quern(
            [
                input.job(),
                s(&["--sequential", "-q", "-o", &p(&input.reference)]),
            ]
            .concat(),
        )
        .ok();
        input
    }

    /// `terasort INPUT -r R --split-size S`.
    fn job(&self) -> Vec<String> {
        s(&[
            "terasort",
            &p(&self.dir),
            "-r",
            &REDUCERS.to_string(),
            "--split-size",
            SPLIT,
        ])
    }

    /// The job writing into `out`, with its report in `report`.
    fn job_to(&self, out: &Path, report: &Path) -> Vec<String> {
        [self.job(), s(&["-o", &p(out), "--report", &p(report)])].concat()
    }

    /// Checks `out` as valsort would: teravalidate `--sequential` (on the host) finds every
    /// record in order, the input's record count and the input's checksum. Also: exactly
    /// the committed `part-*` files of the reduces, byte for byte those of `--sequential`.
    fn assert_sorted(&self, what: &str, out: &Path) {
        assert_committed(out, REDUCERS);
        let got = parts(out);
        let want = parts(&self.reference);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
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
        let v = run_quern(s(&["teravalidate", &p(out), "--sequential", "-q"]));
        v.ok();
        let report = v.stdout_str();
        assert_eq!(
            line_value(&report, "Records: "),
            self.records.to_string(),
            "{what}: teravalidate's record count\n{report}"
        );
        assert_eq!(
            line_value(&report, "Checksum: "),
            self.checksum,
            "{what}: teravalidate's checksum of the output vs teragen's of the input\n{report}"
        );
        assert!(
            report.contains("SUCCESS - all records are in order"),
            "{what}: teravalidate:\n{report}"
        );
    }
}

/// The rest of the line of `text` that starts with `prefix`.
fn line_value(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
        .trim()
        .to_string()
}

/// A finished job's `report.json`.
struct Report(serde_json::Value);

impl Report {
    fn load(dir: &Path) -> Report {
        let path = dir.join("report.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Report(
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display())),
        )
    }

    /// Counter `name` (0 if the job never counted it).
    fn counter(&self, name: &str) -> u64 {
        self.0["counters"][name].as_u64().unwrap_or(0)
    }

    fn tasks(&self, key: &str) -> u32 {
        self.0[key]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_else(|| panic!("report.json has no {key}"))
    }

    /// Per task of `phase` (`map`, `reduce`): the attempts that ended committed.
    fn committed(&self, phase: &str) -> BTreeMap<u32, Vec<u64>> {
        let mut out: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let attempts = self.0["attempts"].as_array().expect("report.json attempts");
        for a in attempts {
            if a["phase"] == phase && a["outcome"] == "committed" {
                let task = a["task"].as_u64().expect("attempt task") as u32;
                out.entry(task)
                    .or_default()
                    .push(a["attempt"].as_u64().expect("attempt id"));
            }
        }
        out
    }

    /// The attempts' summary counters, for messages.
    fn summary(&self) -> String {
        [
            "attempts.map",
            "attempts.reduce",
            "attempts.failed",
            "attempts.lost",
            "workers.lost",
            "map.outputs.lost",
            "backups.launched",
            "shuffle.remote.bytes",
        ]
        .iter()
        .map(|n| format!("{n}={}", self.counter(n)))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// The task commits of `OUTPUT/_journal`, as `quern journal` prints them: `(phase, task)`
/// → committed attempts, in journal order.
fn journal_commits(out: &Path) -> BTreeMap<(String, u32), Vec<u64>> {
    let o = run_quern(s(&["journal", &p(&out.join("_journal"))]));
    o.ok();
    let re = regex::Regex::new(r"(?m)^job \d+ committed (map|reduce) (\d+) attempt (\d+) on ")
        .expect("regex");
    let text = o.stdout_str();
    let mut commits: BTreeMap<(String, u32), Vec<u64>> = BTreeMap::new();
    for c in re.captures_iter(&text) {
        let task = c[2].parse().expect("task index");
        commits
            .entry((c[1].to_string(), task))
            .or_default()
            .push(c[3].parse().expect("attempt id"));
    }
    commits
}

/// No task committed twice, and no record counted twice: the journal holds exactly one
/// commit per reduce, the one attempt the report shows committed for it; every map
/// committed at least once, again only after its output was lost, and the report's
/// committed map attempt is its last commit; the record counters equal the input's.
fn assert_committed_once(what: &str, input: &TeraInput, out: &Path, report: &Report) {
    let journal = journal_commits(out);
    let (maps, reduces) = (report.tasks("map_tasks"), report.tasks("reduce_tasks"));
    assert_eq!(reduces as usize, REDUCERS, "{what}: reduce tasks");
    let committed = report.committed("reduce");
    for r in 0..reduces {
        let commits = journal
            .get(&("reduce".to_string(), r))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            commits.len(),
            1,
            "{what}: reduce {r} committed {commits:?} in the journal"
        );
        assert_eq!(
            committed.get(&r),
            Some(&commits),
            "{what}: reduce {r}: committed attempts of report.json vs the journal"
        );
    }
    let committed = report.committed("map");
    let mut map_commits = 0;
    for m in 0..maps {
        let commits = journal
            .get(&("map".to_string(), m))
            .cloned()
            .unwrap_or_default();
        assert!(!commits.is_empty(), "{what}: map {m} never committed");
        map_commits += commits.len() as u64;
        if let Some(attempts) = committed.get(&m) {
            assert_eq!(
                attempts.as_slice(),
                &commits[commits.len() - 1..],
                "{what}: map {m}: report.json's committed attempt is not its last commit"
            );
        }
    }
    let lost = report.counter("map.outputs.lost");
    assert!(
        map_commits <= u64::from(maps) + lost,
        "{what}: {map_commits} map commits for {maps} maps and {lost} lost outputs"
    );
    for counter in ["map.input.records", "reduce.input.records"] {
        assert_eq!(
            report.counter(counter),
            input.records,
            "{what}: {counter} ({})",
            report.summary()
        );
    }
}

/// Prints a test's timings (they are not asserted; they size the tests).
fn note(what: &str, lines: &[(&str, Duration)]) {
    let text: Vec<String> = lines
        .iter()
        .map(|(name, d)| format!("{name} {:.1} s", d.as_secs_f64()))
        .collect();
    println!("netns {what}: {}", text.join(", "));
}

// ---------------------------------------------------------------------------------------
// 1. across namespaces

#[test]
fn terasort_across_three_namespaces() {
    let Some(_serial) = netns_test(&[]) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = TeraInput::generate(d, 50_000);
    let mut bed = Testbed::start(d, "sort", None);

    let rx_before: u64 = (0..2).map(|i| bed.rx_bytes(i)).sum();
    let sorted = d.join("sorted-cluster");
    let report = d.join("report");
    bed.submit(&input.job_to(&sorted, &report))
        .finish(JOB_TIMEOUT)
        .ok();
    let rx = (0..2).map(|i| bed.rx_bytes(i)).sum::<u64>() - rx_before;
    println!("netns: the workers received {rx} bytes during terasort");
    input.assert_sorted("terasort across namespaces", &sorted);
    assert_committed_once(
        "terasort across namespaces",
        &input,
        &sorted,
        &Report::load(&report),
    );
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
    let got = bed.run_in(bed.worker_ns(0), &validate);
    got.ok();
    assert_eq!(got.stdout_str(), want.stdout_str(), "teravalidate report");
    assert!(
        got.stdout_str().contains("Records: 50000") && got.stdout_str().contains("SUCCESS"),
        "teravalidate:\n{}",
        got.stdout_str()
    );

    bed.assert_running(&[0, 1]);
    let names = bed.lab.namespaces.clone();
    drop(bed);
    let left = ip(&["netns", "list"]).stdout_str();
    for ns in names {
        assert!(
            !left
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&ns)),
            "namespace {ns} not deleted:\n{left}"
        );
    }
    note("across namespaces", &[("test", started.elapsed())]);
}

// ---------------------------------------------------------------------------------------
// 2. packet loss

#[test]
fn terasort_with_random_packet_loss() {
    let Some(_serial) = netns_test(&FAULT_TOOLS) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = TeraInput::generate(d, RECORDS);
    let mut bed = Testbed::start(d, "loss", None);

    let loss: Vec<Fault> = (0..2)
        .map(|i| Fault::random_loss(bed.worker_ns(i), LOSS_PERCENT))
        .collect();
    let (out, report) = (d.join("sorted"), d.join("report"));
    let job_start = Instant::now();
    let o = bed.submit(&input.job_to(&out, &report)).finish(JOB_TIMEOUT);
    let job_time = job_start.elapsed();
    let counters: Vec<Vec<u64>> = loss.into_iter().map(Fault::lift).collect();
    o.ok();

    const WHAT: &str = "terasort with random packet loss";
    for (i, c) in counters.iter().enumerate() {
        let [seen_in, lost_in, seen_out, lost_out] = c[..] else {
            panic!("worker {i}: expected 4 nft counters, got {c:?}");
        };
        println!(
            "netns packet loss: worker {i} lost {lost_in} of {seen_in} packets in, {lost_out} of {seen_out} out"
        );
        // nft sees the kernel's packets: with UDP GSO and GRO one is often a batch of
        // datagrams. Each way, the rule dropped some, and about LOSS_PERCENT% (within 5
        // standard deviations of the binomial): the fault asked for, not none or all.
        for (seen, lost) in [(seen_in, lost_in), (seen_out, lost_out)] {
            assert!(seen >= 100, "{WHAT}: worker {i} moved only {seen} packets");
            let mean = seen as f64 * f64::from(LOSS_PERCENT) / 100.0;
            let spread = 5.0 * (mean * (1.0 - f64::from(LOSS_PERCENT) / 100.0)).sqrt();
            assert!(
                lost > 0 && (lost as f64 - mean).abs() <= spread,
                "{WHAT}: worker {i}: {lost} of {seen} packets dropped, expected {mean:.0} ± {spread:.0}"
            );
        }
    }
    input.assert_sorted(WHAT, &out);
    let report = Report::load(&report);
    println!("netns {WHAT}: {}", report.summary());
    assert_committed_once(WHAT, &input, &out, &report);
    // QUIC recovers every loss: no worker, attempt or map output is given up.
    for counter in [
        "workers.lost",
        "attempts.lost",
        "attempts.failed",
        "map.outputs.lost",
    ] {
        assert_eq!(
            report.counter(counter),
            0,
            "{WHAT}: {counter} ({})",
            report.summary()
        );
    }
    assert!(
        report.counter("shuffle.remote.bytes") > 0,
        "{WHAT}: no shuffle bytes crossed the lossy links ({})",
        report.summary()
    );
    bed.assert_running(&[0, 1]);
    note(
        "packet loss",
        &[("job", job_time), ("test", started.elapsed())],
    );
}

// ---------------------------------------------------------------------------------------
// 3. partition

#[test]
fn terasort_survives_a_partition_between_workers() {
    let Some(_serial) = netns_test(&FAULT_TOOLS) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = TeraInput::generate(d, RECORDS);
    let mut bed = Testbed::start(d, "part", Some(LINK_RATE));

    const WHAT: &str = "terasort with a partition between the workers";
    let (out, report) = (d.join("sorted"), d.join("report"));
    let rx_before = bed.rx_bytes(0);
    let job_start = Instant::now();
    let mut job = bed.submit(&input.job_to(&out, &report));
    let until_shuffle = bed.wait_for_shuffle(0, rx_before, &mut job);
    let cut = Fault::cut_off(bed.worker_ns(0), &Testbed::worker_ip(1));
    // Hold the partition (ending early only if the job does, which the check of the
    // bytes received after it fails).
    let _ = job.wait_exit(PARTITION);
    let rx_at_heal = bed.rx_bytes(0);
    let dropped = cut.lift();
    let o = job.finish(JOB_TIMEOUT);
    let job_time = job_start.elapsed();
    o.ok();
    println!("netns partition: dropped {dropped:?} packets (in, out) between the workers");
    assert!(
        dropped.iter().all(|&n| n > 0),
        "{WHAT}: the partition dropped {dropped:?} packets (in, out): the workers were not exchanging map output"
    );
    input.assert_sorted(WHAT, &out);
    let report = Report::load(&report);
    println!("netns {WHAT}: {}", report.summary());
    assert_committed_once(WHAT, &input, &out, &report);
    // Both workers kept talking to the coordinator: neither is lost, nothing fails.
    for counter in ["workers.lost", "attempts.lost", "attempts.failed"] {
        assert_eq!(
            report.counter(counter),
            0,
            "{WHAT}: {counter} ({})",
            report.summary()
        );
    }
    // The partition held up a shuffle under way, which went on over the healed link.
    let rx_after = bed.rx_bytes(0);
    assert!(
        rx_after > rx_at_heal + SHUFFLE_STARTED,
        "{WHAT}: worker 0 received only {} bytes after the partition ({})",
        rx_after - rx_at_heal,
        report.summary()
    );
    bed.assert_running(&[0, 1]);
    note(
        "partition",
        &[
            ("shuffle started after", until_shuffle),
            ("job", job_time),
            ("test", started.elapsed()),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// 4. coordinator unreachable

#[test]
fn terasort_survives_the_coordinator_unreachable_from_a_worker() {
    let Some(_serial) = netns_test(&FAULT_TOOLS) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = TeraInput::generate(d, RECORDS);
    let mut bed = Testbed::start(d, "coord", Some(LINK_RATE));
    let cut_id = bed.worker_id(&Testbed::worker_ip(0));

    const WHAT: &str = "terasort with the coordinator unreachable from a worker";
    let (out, report) = (d.join("sorted"), d.join("report"));
    // Once worker 1 fetches map output from worker 0, worker 0 holds committed map output
    // that the job still needs: then it goes silent.
    let rx_before = bed.rx_bytes(1);
    let job_start = Instant::now();
    let mut job = bed.submit(&input.job_to(&out, &report));
    let until_shuffle = bed.wait_for_shuffle(1, rx_before, &mut job);
    let cut = Fault::cut_off(bed.worker_ns(0), &format!("{SUBNET}.1"));
    // Hold the outage (ending early only if the job does: the coordinator may finish it
    // without the worker once it gave it up).
    let _ = job.wait_exit(OUTAGE);
    let dropped = cut.lift();
    let o = job.finish(JOB_TIMEOUT);
    let job_time = job_start.elapsed();
    o.ok();
    println!(
        "netns outage: dropped {dropped:?} packets (in, out) between worker 0 and the coordinator"
    );
    assert!(
        dropped.iter().all(|&n| n > 0),
        "{WHAT}: the outage dropped {dropped:?} packets (in, out)"
    );
    input.assert_sorted(WHAT, &out);
    let report = Report::load(&report);
    println!("netns {WHAT}: {}", report.summary());
    assert_committed_once(WHAT, &input, &out, &report);
    // Silent for longer than the heartbeat timeout while the job ran, the worker was given
    // up (once), and with it the map outputs it held, which the other worker redid; what
    // it ran counts only as redone elsewhere (the record counters above).
    assert_eq!(
        report.counter("workers.lost"),
        1,
        "{WHAT}: workers.lost ({})",
        report.summary()
    );
    assert!(
        report.counter("map.outputs.lost") > 0,
        "{WHAT}: map.outputs.lost ({})",
        report.summary()
    );
    assert_eq!(
        report.counter("attempts.failed"),
        0,
        "{WHAT}: attempts.failed ({})",
        report.summary()
    );
    let log = bed.coordinator().output(Stream::Stderr);
    assert!(
        log.contains(&format!("{cut_id} missed its heartbeats")),
        "{WHAT}: the coordinator should have given up on {cut_id}:\n{log}"
    );
    // Heard from again, it finds its control stream closed and registers again, under a
    // new id; the coordinator and the other worker keep running.
    let from = format!(" joined from {}:", Testbed::worker_ip(0));
    bed.coordinator().expect_output(
        "worker 0's second join",
        Stream::Stderr,
        JOB_TIMEOUT,
        |log| (log.matches(&from).count() >= 2).then_some(()),
    );
    bed.assert_running(&[0, 1]);
    note(
        "coordinator outage",
        &[
            ("shuffle started after", until_shuffle),
            ("job", job_time),
            ("test", started.elapsed()),
        ],
    );
}
