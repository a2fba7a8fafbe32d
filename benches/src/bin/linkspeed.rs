//! Macro benchmark: a multi-host terasort at link speed. Four worker "hosts" and a
//! coordinator host are network namespaces joined by veth pairs to a bridge in a sixth
//! namespace; each worker's link is shaped with `tc tbf` to a rate in both directions, and
//! every shuffle byte a reducer needs from another worker crosses the links over QUIC.
//!
//! ```text
//! cargo build --release -p quern-jobs -p quern-benches
//! sudo target/release/linkspeed [--size 8GB] [--rates 1gbit,10gbit] [--mtu 1500,9000]
//!      [--dir /work/netbench] [--out benches/results/linkspeed] [--memory 2GiB]
//!      [--slots 2] [--reducers 8] [--keep]
//! ```
//!
//! ```text
//!  ns c  10.213.78.1 (coordinator, client) ── unshaped ──┐
//!  ns w1 10.213.78.2 (worker) ── tbf RATE each way ───────┤
//!  ns w2 10.213.78.3 (worker) ── tbf RATE each way ───────┼── br0 in ns br
//!  ns w3 10.213.78.4 (worker) ── tbf RATE each way ───────┤
//!  ns w4 10.213.78.5 (worker) ── tbf RATE each way ───────┘
//! ```
//!
//! The input is made once with `quern teragen --in-process` under `--dir` (a file system
//! every namespace sees, as a cluster's shared input is). For each rate, the benchmark
//! builds the network, starts the cluster, runs `quern terasort --report` from the
//! coordinator's namespace, validates the output with `quern teravalidate` (in order, and
//! the record count and checksum of the input), and tears everything down. Map output on a
//! reducer's own host is read from its disk; the rest (about 3/4 with four workers) crosses
//! the links.
//!
//! While the job runs, every 100 ms it samples each worker's `eth0` byte and packet
//! counters (`/proc/<worker pid>/net/dev`, which reads the worker's namespace), each
//! worker's and the coordinator's CPU time (`/proc/<pid>/stat` utime + stime) and the
//! machine's (`/proc/stat`). What it reports, per link and direction:
//!
//! - **busy rate**: the link's *busy interval* is the time between the sample at which it
//!   had carried 5% of the bytes it carried during the job and the one at 95%; the busy
//!   rate is those 90% of the bytes over that interval. Bytes are as the device counts
//!   them (Ethernet frames, so QUIC, UDP and IP headers included), which is also what
//!   `tbf` meters; the figure is compared with the shaped rate.
//! - **peak 1 s**: the most bytes in any 1-s window of samples.
//!
//! and for the job: wall time, the report's shuffle bytes (all and remote), worker CPU
//! seconds per GB shuffled over the network for the whole job and for the part after the
//! map phase ended (shuffle + merge + reduce only), and machine CPU use (the machine is
//! shared: the CPU of processes other than the cluster's is reported too).
//!
//! Results go to `OUT/linkspeed.{md,json}`. It needs root and `ip netns` (it refuses with
//! exit code 2 otherwise). Namespaces are named `qls<pid>-*`; they and every process are
//! removed on every path, including Ctrl-C/SIGTERM (the run stops at its next sample), and
//! stale ones of a killed earlier run (whose pid is gone) are removed at start.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use quern_runtime::cluster::launch::Greeting;
use quern_runtime::report::{self, PhaseName};
use serde_json::{json, Value};

/// The private /24 of the benchmark network (inside its namespaces only).
const SUBNET: &str = "10.213.78";
/// The coordinator's port.
const PORT: u16 = 7070;
/// Worker hosts.
const WORKERS: usize = 4;
/// Deadline of one `ip` or `tc` command.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the coordinator and workers may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a teragen, terasort or teravalidate may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(1800);
/// Sampling period of the link and CPU counters.
const SAMPLE: Duration = Duration::from_millis(100);
/// Clock ticks per second of `/proc/*/stat` and `/proc/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

#[derive(Parser, Debug)]
#[command(
    about = "Terasort over 4 netns hosts with tbf-shaped links: shuffle throughput vs link rate"
)]
struct Args {
    /// Bytes to sort (100-byte records), e.g. 8GB.
    #[arg(long, default_value = "8GB", value_parser = parse_size)]
    size: u64,
    /// Link rates to run at, in tc's syntax (kbit, mbit, gbit), comma-separated.
    #[arg(long, default_value = "1gbit,10gbit", value_delimiter = ',')]
    rates: Vec<String>,
    /// MTUs of the veths to run at (1500: Ethernet; 9000: jumbo frames), comma-separated:
    /// every rate runs at every MTU.
    #[arg(long, default_value = "1500,9000", value_delimiter = ',')]
    mtu: Vec<u32>,
    /// Scratch directory for input, outputs and the workers' work dirs.
    #[arg(long, default_value = "/work/netbench")]
    dir: PathBuf,
    /// Where linkspeed.md and linkspeed.json are written.
    #[arg(long, default_value = "benches/results/linkspeed")]
    out: PathBuf,
    /// `--memory` of the job (per worker).
    #[arg(long, default_value = "2GiB")]
    memory: String,
    /// Slots of each worker.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Reduce tasks (default: one per slot of the cluster).
    #[arg(long)]
    reducers: Option<u32>,
    /// Keep the input, and each run's logs, work dirs and job report, under --dir (sorted
    /// outputs are always deleted once validated).
    #[arg(long)]
    keep: bool,
    /// The quern binary (default: `quern` next to this one).
    #[arg(long)]
    quern: Option<PathBuf>,
}

type Error = String;

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>().map(|b| b.as_u64())
}

/// `1gbit` → 1e9 bits per second (tc's decimal units).
fn parse_rate(s: &str) -> Result<u64, String> {
    let lower = s.to_ascii_lowercase();
    let (num, mult) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(unit, m)| lower.strip_suffix(unit).map(|n| (n, *m)))
        .ok_or_else(|| format!("rate {s:?}: use kbit, mbit or gbit (e.g. 1gbit)"))?;
    let n: f64 = num.trim().parse().map_err(|e| format!("rate {s:?}: {e}"))?;
    if n.is_nan() || n <= 0.0 {
        return Err(format!("rate {s:?} must be positive"));
    }
    Ok((n * mult) as u64)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(e) = args.rates.iter().find_map(|r| parse_rate(r).err()) {
        eprintln!("linkspeed: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = preflight() {
        eprintln!("linkspeed: {e}");
        return ExitCode::from(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop));
    match run(&args, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("linkspeed: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// Commands and namespaces.

/// Runs `program args` to success within [`TOOL_TIMEOUT`]; returns its stdout.
fn tool(program: &str, args: &[&str]) -> Result<String, Error> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        match child.try_wait().map_err(|e| format!("{what}: {e}"))? {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish within {TOOL_TIMEOUT:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, Error> {
    tool("ip", args)
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

/// Refuses clearly when the benchmark cannot run here.
fn preflight() -> Result<(), Error> {
    if !is_root() {
        return Err(
            "needs root (it creates network namespaces and tc qdiscs); run it with sudo".into(),
        );
    }
    ip(&["netns", "list"]).map_err(|e| format!("`ip netns` is unavailable: {e}"))?;
    tool("tc", &["-V"]).map_err(|e| format!("`tc` (iproute2) is unavailable: {e}"))?;
    let probe = format!("qls{}-probe", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        let _ = ip(&["netns", "del", &probe]);
        return Err(format!("cannot create a network namespace: {e}"));
    }
    ip(&["netns", "del", &probe]).map_err(|e| format!("deleting the probe namespace: {e}"))?;
    Ok(())
}

/// Deletes namespaces `qls<pid>-*` of earlier runs whose process is gone (a run killed
/// with SIGKILL cannot clean up after itself).
fn remove_stale_namespaces() -> Result<(), Error> {
    let list = ip(&["netns", "list"])?;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("qls")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("linkspeed: removing stale namespace {name}");
            ip(&["netns", "del", name])?;
        }
    }
    Ok(())
}

/// Sets `stop` on SIGINT or SIGTERM, so the run ends at its next sample and cleans up.
fn watch_signals(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("linkspeed: interrupted; cleaning up");
            stop.store(true, Ordering::SeqCst);
        });
    });
}

/// A long-running child, killed and reaped on drop. Its stdin is a pipe held open so
/// that `--exit-with-parent` daemons also exit if this process dies.
struct Daemon {
    name: String,
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The namespaces and processes of one rate's run; drop kills the processes and deletes
/// the namespaces (with their veths and qdiscs) on every path.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    daemons: Vec<Daemon>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        Lab {
            prefix: format!("qls{}-{tag}", std::process::id()),
            namespaces: Vec::new(),
            daemons: Vec::new(),
        }
    }

    /// Creates namespace `<prefix>-<short>` with `lo` up.
    fn add_ns(&mut self, short: &str) -> Result<String, Error> {
        let name = format!("{}-{short}", self.prefix);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Starts `program args` in namespace `ns`, stdout and stderr to `log` and `log.err`.
    /// (`ip netns exec` execs the program, so the child's pid is the program's.)
    fn start(
        &mut self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<u32, Error> {
        let child = spawn_in(ns, program, args, log, Stdio::piped())?;
        let pid = child.id();
        self.daemons.push(Daemon {
            name: name.to_string(),
            child,
        });
        Ok(pid)
    }

    /// Fails naming any daemon that has exited.
    fn check_alive(&mut self) -> Result<(), Error> {
        for d in &mut self.daemons {
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(format!("{} exited ({status})", d.name));
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.daemons.clear();
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("linkspeed: cleanup: {e}");
            }
        }
    }
}

fn spawn_in(
    ns: &str,
    program: &Path,
    args: &[String],
    log: &Path,
    stdin: Stdio,
) -> Result<Child, Error> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err_path = with_suffix(log, ".err");
    let err = File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .stdin(stdin)
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {} in {ns}: {e}", program.display()))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Polls `poll` every 20 ms until it returns `Some`, `timeout` passes, or `stop` is set.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    stop: &AtomicBool,
    mut poll: impl FnMut() -> Result<Option<T>, Error>,
) -> Result<T, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = poll()? {
            return Ok(v);
        }
        if stop.load(Ordering::SeqCst) {
            return Err(format!("interrupted while waiting for {what}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("no {what} within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The tbf of one direction of a link: a bucket of 2 ms at the rate (at least 128 KiB,
/// so a 64 KiB GSO batch passes whole) and a queue of at most 20 ms.
fn shape(ns: &str, dev: &str, rate: &str, rate_bps: u64) -> Result<(), Error> {
    let burst = (rate_bps / 8 / 500).max(128 << 10).to_string();
    ip(&[
        "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
        "burst", &burst, "latency", "20ms",
    ])
    .map(|_| ())
}

/// The star network: `c` (coordinator) at `.1`, workers `w1..w4` at `.2..`, each with `eth0`
/// paired with `v<i>` on `br0` in namespace `br`. The workers' links are shaped both ways
/// (`eth0` egress: the worker sends; `v<i>` egress: it receives). Returns the coordinator's
/// namespace and the workers'.
fn build_network(
    lab: &mut Lab,
    rate: &str,
    rate_bps: u64,
    mtu: u32,
) -> Result<(String, Vec<String>), Error> {
    let mtu = mtu.to_string();
    let br = lab.add_ns("br")?;
    ip(&[
        "-n", &br, "link", "add", "br0", "mtu", &mtu, "type", "bridge",
    ])?;
    ip(&["-n", &br, "link", "set", "br0", "up"])?;
    let mut hosts = Vec::new();
    for i in 0..=WORKERS {
        let short = if i == 0 {
            "c".to_string()
        } else {
            format!("w{i}")
        };
        let host = lab.add_ns(&short)?;
        let port = format!("v{i}");
        ip(&[
            "-n", &br, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
            "mtu", &mtu, "netns", &host,
        ])?;
        ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &br, "link", "set", &port, "up"])?;
        let addr = format!("{SUBNET}.{}/24", i + 1);
        ip(&["-n", &host, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        if i > 0 {
            shape(&host, "eth0", rate, rate_bps)?;
            shape(&br, &port, rate, rate_bps)?;
        }
        hosts.push(host);
    }
    let coordinator = hosts.remove(0);
    Ok((coordinator, hosts))
}

// ---------------------------------------------------------------------------------------
// Counters.

/// `eth0`'s counters as `/proc/<pid>/net/dev` shows them in that pid's namespace.
#[derive(Debug, Clone, Copy, Default)]
struct Dev {
    rx_bytes: u64,
    rx_packets: u64,
    tx_bytes: u64,
    tx_packets: u64,
}

fn dev_counters(pid: u32) -> Result<Dev, Error> {
    let path = format!("/proc/{pid}/net/dev");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let fields: Vec<u64> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("eth0:"))
        .map(|f| {
            f.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match fields[..] {
        [rx_bytes, rx_packets, _, _, _, _, _, _, tx_bytes, tx_packets, ..] => Ok(Dev {
            rx_bytes,
            rx_packets,
            tx_bytes,
            tx_packets,
        }),
        _ => Err(format!("no eth0 counters in {path}")),
    }
}

/// utime + stime of `pid`, seconds.
fn proc_cpu(pid: u32) -> Result<f64, Error> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After "(comm)": utime and stime are fields 14 and 15 of stat(5).
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => Ok((u + s) / USER_HZ),
        _ => Err(format!("unexpected {path}")),
    }
}

/// The machine's busy and total CPU seconds so far (all cores), from `/proc/stat`.
fn machine_cpu() -> Result<(f64, f64), Error> {
    let text = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let ticks: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .map(|f| {
            f.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if ticks.len() < 5 {
        return Err("unexpected /proc/stat".into());
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks[3] + ticks[4];
    Ok(((total - idle) / USER_HZ, total / USER_HZ))
}

/// One sample of every counter.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Unix time, ms.
    unix_ms: u64,
    devs: Vec<Dev>,
    worker_cpu: Vec<f64>,
    coordinator_cpu: f64,
    machine_busy: f64,
    machine_total: f64,
}

fn sample(workers: &[u32], coordinator: u32) -> Result<Sample, Error> {
    let (machine_busy, machine_total) = machine_cpu()?;
    Ok(Sample {
        unix_ms: unix_ms(),
        devs: workers
            .iter()
            .map(|&p| dev_counters(p))
            .collect::<Result<_, _>>()?,
        worker_cpu: workers
            .iter()
            .map(|&p| proc_cpu(p))
            .collect::<Result<_, _>>()?,
        coordinator_cpu: proc_cpu(coordinator)?,
        machine_busy,
        machine_total,
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A link direction's figures from the byte counts of the samples (`bytes[i]` at `ms[i]`).
#[derive(Debug, Clone, Copy)]
struct LinkFigures {
    bytes: u64,
    packets: u64,
    busy_s: f64,
    busy_rate: f64,
    peak_1s: f64,
}

fn link_figures(ms: &[u64], bytes: &[u64], packets: u64) -> LinkFigures {
    let base = bytes.first().copied().unwrap_or(0);
    let total = bytes.last().copied().unwrap_or(0) - base;
    let at = |frac: f64| {
        let want = base + (total as f64 * frac) as u64;
        bytes.iter().position(|&b| b >= want).unwrap_or(0)
    };
    let (i5, i95) = (at(0.05), at(0.95));
    let busy_s = ms[i95].saturating_sub(ms[i5]) as f64 / 1e3;
    let busy_rate = if busy_s > 0.0 {
        (bytes[i95] - bytes[i5]) as f64 / busy_s
    } else {
        0.0
    };
    // Windows of samples spanning at least 1 s.
    let mut peak_1s = 0.0f64;
    let mut j = 0;
    for i in 0..ms.len() {
        while j < ms.len() && ms[j] < ms[i] + 1000 {
            j += 1;
        }
        if j == ms.len() {
            break;
        }
        let secs = (ms[j] - ms[i]) as f64 / 1e3;
        peak_1s = peak_1s.max((bytes[j] - bytes[i]) as f64 / secs);
    }
    LinkFigures {
        bytes: total,
        packets,
        busy_s,
        busy_rate,
        peak_1s,
    }
}

// ---------------------------------------------------------------------------------------
// The runs.

/// What teragen printed and teravalidate must print back.
struct Input {
    dir: PathBuf,
    records: u64,
    checksum: String,
    gen_secs: f64,
}

/// The value of line `Name: VALUE` in `text`.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Runs `quern args` on the host to success within [`JOB_TIMEOUT`]; returns its stdout.
fn quern_host(quern: &Path, args: &[&str], log: &Path, stop: &AtomicBool) -> Result<String, Error> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err_path = with_suffix(log, ".err");
    let err = File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
    let mut child = Command::new(quern)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", quern.display()))?;
    let status = wait_for(
        &format!("quern {}", args.join(" ")),
        JOB_TIMEOUT,
        stop,
        || child.try_wait().map_err(|e| e.to_string()),
    );
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let stdout = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    if !status.success() {
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        return Err(format!(
            "quern {} failed ({status}):\n{stdout}{}",
            args.join(" "),
            tail(&stderr, 20)
        ));
    }
    Ok(stdout)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn teragen(quern: &Path, dir: &Path, size: u64, stop: &AtomicBool) -> Result<Input, Error> {
    let records = size / 100;
    let input = dir.join("input");
    // A kept input of an earlier run: teragen again (its checksum is needed).
    remove_dir(&input)?;
    let started = Instant::now();
    let records_arg = records.to_string();
    let input_arg = input.to_string_lossy().into_owned();
    let out = quern_host(
        quern,
        &[
            "teragen",
            "--records",
            &records_arg,
            "--output",
            &input_arg,
            "--parts",
            "8",
            "--in-process",
            "-q",
        ],
        &dir.join("teragen.log"),
        stop,
    )?;
    let got: u64 = field(&out, "Records")
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| format!("teragen printed no record count:\n{out}"))?;
    let checksum = field(&out, "Checksum")
        .ok_or_else(|| format!("teragen printed no checksum:\n{out}"))?
        .to_string();
    if got != records {
        return Err(format!("teragen made {got} records, not {records}"));
    }
    Ok(Input {
        dir: input,
        records,
        checksum,
        gen_secs: started.elapsed().as_secs_f64(),
    })
}

fn remove_dir(path: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}

fn run(args: &Args, stop: &AtomicBool) -> Result<(), Error> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let quern = args
        .quern
        .clone()
        .unwrap_or_else(|| exe.with_file_name("quern"));
    if !quern.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p quern-jobs (or pass --quern)",
            quern.display()
        ));
    }
    let rates: Vec<(String, u64)> = args
        .rates
        .iter()
        .map(|r| parse_rate(r).map(|bps| (r.clone(), bps)))
        .collect::<Result<_, _>>()?;
    remove_stale_namespaces()?;
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let secret = args.dir.join("secret");
    quern_host(
        &quern,
        &["secret", &secret.to_string_lossy()],
        &args.dir.join("secret.log"),
        stop,
    )?;
    eprintln!("linkspeed: teragen {} bytes", args.size);
    let input = teragen(&quern, &args.dir, args.size, stop)?;
    eprintln!(
        "linkspeed: {} records in {:.1} s",
        input.records, input.gen_secs
    );
    let mut runs = Vec::new();
    let result = (|| {
        for &mtu in &args.mtu {
            for (rate, bps) in &rates {
                eprintln!("linkspeed: terasort at {rate}, MTU {mtu}");
                let link = Link {
                    rate,
                    bps: *bps,
                    mtu,
                };
                let r = one_rate(args, &quern, &secret, &input, link, stop)?;
                eprintln!("{}", r["summary"].as_str().unwrap_or(""));
                runs.push(r);
                write_results(args, &input, &runs)?;
            }
        }
        Ok::<_, Error>(())
    })();
    if !args.keep {
        remove_dir(&input.dir)?;
    }
    result?;
    eprintln!(
        "linkspeed: wrote {}",
        args.out.join("linkspeed.md").display()
    );
    Ok(())
}

/// The shaping and MTU of the workers' links in one run.
#[derive(Debug, Clone, Copy)]
struct Link<'a> {
    /// The rate in tc's syntax.
    rate: &'a str,
    /// The rate, bits per second.
    bps: u64,
    /// The MTU of every veth.
    mtu: u32,
}

/// One rate: network, cluster, terasort with sampling, validation, teardown.
fn one_rate(
    args: &Args,
    quern: &Path,
    secret: &Path,
    input: &Input,
    link: Link<'_>,
    stop: &AtomicBool,
) -> Result<Value, Error> {
    let Link {
        rate,
        bps: rate_bps,
        mtu,
    } = link;
    let run_dir = args.dir.join(format!("run-{rate}-mtu{mtu}"));
    remove_dir(&run_dir)?;
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let output = run_dir.join("sorted");
    let report_dir = run_dir.join("report");
    let s = |p: &Path| p.to_string_lossy().into_owned();

    let mut lab = Lab::new(&rate.replace('.', "_"));
    let (cns, wns) = build_network(&mut lab, rate, rate_bps, mtu)?;
    let at = format!("{SUBNET}.1:{PORT}");
    let coordinator_log = run_dir.join("coordinator.log");
    let coordinator = lab.start(
        "coordinator",
        &cns,
        quern,
        &[
            "coordinator".into(),
            "--listen".into(),
            at.clone(),
            "--secret-file".into(),
            s(secret),
            "-v".into(),
            "--exit-with-parent".into(),
        ],
        &coordinator_log,
    )?;
    let listening = wait_for("coordinator greeting", START_TIMEOUT, stop, || {
        let text = std::fs::read_to_string(&coordinator_log).unwrap_or_default();
        Ok(text
            .split_once('\n')
            .map(|(first, _)| Greeting::parse_listening(first).map_err(|e| e.to_string())))
    })??;
    if listening.to_string() != at {
        return Err(format!("the coordinator listens on {listening}, not {at}"));
    }
    let mut workers = Vec::new();
    for (i, ns) in wns.iter().enumerate() {
        let work = run_dir.join(format!("work-w{}", i + 1));
        let pid = lab.start(
            &format!("worker w{}", i + 1),
            ns,
            quern,
            &[
                "worker".into(),
                "--join".into(),
                at.clone(),
                "--secret-file".into(),
                s(secret),
                "--slots".into(),
                args.slots.to_string(),
                "--work-dir".into(),
                s(&work),
                "--exit-with-parent".into(),
            ],
            &run_dir.join(format!("worker-w{}.log", i + 1)),
        )?;
        workers.push(pid);
    }
    let coordinator_err = with_suffix(&coordinator_log, ".err");
    wait_for("4 workers joined", START_TIMEOUT, stop, || {
        lab.check_alive()?;
        let log = std::fs::read_to_string(&coordinator_err).unwrap_or_default();
        Ok((log.matches(" joined from ").count() >= WORKERS).then_some(()))
    })?;

    let reducers = args.reducers.unwrap_or(args.slots * WORKERS as u32);
    let job_args: Vec<String> = vec![
        "terasort".into(),
        s(&input.dir),
        "--output".into(),
        s(&output),
        "--coordinator".into(),
        at.clone(),
        "--secret-file".into(),
        s(secret),
        "--report".into(),
        s(&report_dir),
        "--memory".into(),
        args.memory.clone(),
        "--reducers".into(),
        reducers.to_string(),
        "-q".into(),
    ];
    let job_log = run_dir.join("terasort.log");
    let mut samples = vec![sample(&workers, coordinator)?];
    let started = Instant::now();
    let mut job = spawn_in(&cns, quern, &job_args, &job_log, Stdio::null())?;
    let status = loop {
        let next = started + SAMPLE * samples.len() as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let polled = (|| {
            lab.check_alive()?;
            samples.push(sample(&workers, coordinator)?);
            if stop.load(Ordering::SeqCst) {
                return Err("interrupted".to_string());
            }
            if started.elapsed() > JOB_TIMEOUT {
                return Err(format!("terasort did not finish within {JOB_TIMEOUT:?}"));
            }
            job.try_wait().map_err(|e| e.to_string())
        })();
        match polled {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = job.kill();
                let _ = job.wait();
                return Err(e);
            }
        }
    };
    let wall = started.elapsed().as_secs_f64();
    if !status.success() {
        let err = std::fs::read_to_string(with_suffix(&job_log, ".err")).unwrap_or_default();
        return Err(format!("terasort failed ({status}):\n{}", tail(&err, 30)));
    }
    drop(lab);

    // Validate on the host: in order, and the input's record count and checksum.
    let validate = quern_host(
        quern,
        &["teravalidate", &s(&output), "--in-process", "-q"],
        &run_dir.join("teravalidate.log"),
        stop,
    )?;
    let records: u64 = field(&validate, "Records")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let checksum = field(&validate, "Checksum").unwrap_or("").to_string();
    let in_order = validate.contains("SUCCESS - all records are in order");
    if !in_order || records != input.records || checksum != input.checksum {
        return Err(format!(
            "teravalidate of {}: want {} records, checksum {}:\n{validate}",
            output.display(),
            input.records,
            input.checksum
        ));
    }

    let report = report::load_dir(&report_dir).map_err(|e| format!("report: {e}"))?;
    let counter = |name: &str| report.counters.get(name).copied().unwrap_or(0) as u64;
    let map_end_ms = report
        .phases
        .iter()
        .find(|p| p.phase == PhaseName::Map)
        .map(|p| report.started_unix_ms + p.end_us / 1000);
    let figures = analyse(
        &samples,
        rate_bps,
        map_end_ms,
        counter("shuffle.remote.bytes"),
    );
    let remote = counter("shuffle.remote.bytes");
    let result = json!({
        "rate": rate,
        "rate_bits_per_s": rate_bps,
        "mtu": mtu,
        "workers": WORKERS,
        "slots": args.slots,
        "reducers": reducers,
        "memory": args.memory,
        "map_tasks": report.map_tasks,
        "wall_s": wall,
        "report_wall_s": report.wall_us as f64 / 1e6,
        "map_phase_end_s": report.phases.iter().find(|p| p.phase == PhaseName::Map).map(|p| p.end_us as f64 / 1e6),
        "shuffle_bytes": counter("shuffle.bytes"),
        "shuffle_remote_bytes": remote,
        "report_peak_shuffle_bytes_per_s": peak_rate(&report.rates.shuffle, report.rates.bucket_us),
        "validated": {"records": records, "checksum": checksum, "in_order": in_order},
        "links": figures.links,
        "cpu": figures.cpu,
        "samples": samples.len(),
        "summary": figures.summary(&format!("{rate}, MTU {mtu}"), wall, remote),
    });
    if !args.keep {
        remove_dir(&run_dir)?;
    } else {
        // Keep logs and the report; the data can go.
        remove_dir(&output)?;
    }
    Ok(result)
}

/// The report's highest 1-s shuffle rate (sum over reducers, local reads included).
fn peak_rate(buckets: &[u64], bucket_us: u64) -> f64 {
    let per_s = (1_000_000 / bucket_us.max(1)).max(1) as usize;
    buckets
        .windows(per_s.min(buckets.len().max(1)))
        .map(|w| w.iter().sum::<u64>() as f64 * 1e6 / (w.len() as u64 * bucket_us) as f64)
        .fold(0.0, f64::max)
}

struct Analysis {
    links: Vec<Value>,
    cpu: Value,
    /// Mean over links of (rx busy rate, tx busy rate) / link rate.
    mean_busy_pct: (f64, f64),
    min_busy_pct: f64,
    cpu_per_gb: f64,
    cpu_per_gb_after_map: Option<f64>,
    machine_busy_frac: f64,
}

impl Analysis {
    fn summary(&self, rate: &str, wall: f64, remote: u64) -> String {
        format!(
            "linkspeed {rate}: wall {wall:.1} s, {:.2} GB over links; busy rate {:.0}% in / {:.0}% out of the link (lowest {:.0}%); worker CPU {:.1} s per remote GB ({}); machine {:.0}% busy",
            remote as f64 / 1e9,
            self.mean_busy_pct.0,
            self.mean_busy_pct.1,
            self.min_busy_pct,
            self.cpu_per_gb,
            self.cpu_per_gb_after_map
                .map_or("n/a after the maps".into(), |c| format!("{c:.1} after the maps")),
            self.machine_busy_frac * 100.0
        )
    }
}

fn analyse(samples: &[Sample], rate_bps: u64, map_end_ms: Option<u64>, remote: u64) -> Analysis {
    let link_bytes_per_s = rate_bps as f64 / 8.0;
    let ms: Vec<u64> = samples.iter().map(|s| s.unix_ms).collect();
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let mut links = Vec::new();
    let (mut rx_pct, mut tx_pct, mut min_pct) = (0.0, 0.0, f64::INFINITY);
    for w in 0..WORKERS {
        let rx: Vec<u64> = samples.iter().map(|s| s.devs[w].rx_bytes).collect();
        let tx: Vec<u64> = samples.iter().map(|s| s.devs[w].tx_bytes).collect();
        let rxp = last.devs[w].rx_packets - first.devs[w].rx_packets;
        let txp = last.devs[w].tx_packets - first.devs[w].tx_packets;
        let (r, t) = (link_figures(&ms, &rx, rxp), link_figures(&ms, &tx, txp));
        let pct = |x: f64| x / link_bytes_per_s * 100.0;
        rx_pct += pct(r.busy_rate) / WORKERS as f64;
        tx_pct += pct(t.busy_rate) / WORKERS as f64;
        min_pct = f64::min(min_pct, f64::min(pct(r.busy_rate), pct(t.busy_rate)));
        let dir = |f: &LinkFigures| {
            json!({
                "bytes": f.bytes,
                "packets": f.packets,
                "bytes_per_packet": f.bytes.checked_div(f.packets).unwrap_or(0),
                "busy_s": f.busy_s,
                "busy_bytes_per_s": f.busy_rate,
                "busy_pct_of_link": pct(f.busy_rate),
                "peak_1s_bytes_per_s": f.peak_1s,
                "peak_1s_pct_of_link": pct(f.peak_1s),
            })
        };
        let cpu = last.worker_cpu[w] - first.worker_cpu[w];
        links.push(json!({"worker": w + 1, "rx": dir(&r), "tx": dir(&t), "worker_cpu_s": cpu}));
    }
    let workers_cpu: f64 = (0..WORKERS)
        .map(|w| last.worker_cpu[w] - first.worker_cpu[w])
        .sum();
    let coordinator_cpu = last.coordinator_cpu - first.coordinator_cpu;
    let machine_busy = last.machine_busy - first.machine_busy;
    let machine_total = last.machine_total - first.machine_total;
    let cpu_per_gb = workers_cpu / (remote as f64 / 1e9);
    // After the map phase: CPU and link bytes (rx, all workers) from the first sample at
    // or after it.
    let after = map_end_ms.and_then(|end| samples.iter().position(|s| s.unix_ms >= end));
    let after_map = after.map(|i| {
        let s = &samples[i];
        let cpu: f64 = (0..WORKERS)
            .map(|w| last.worker_cpu[w] - s.worker_cpu[w])
            .sum();
        let rx: u64 = (0..WORKERS)
            .map(|w| last.devs[w].rx_bytes - s.devs[w].rx_bytes)
            .sum();
        let secs = (last.unix_ms - s.unix_ms) as f64 / 1e3;
        let busy =
            (last.machine_busy - s.machine_busy) / (last.machine_total - s.machine_total).max(1e-9);
        (cpu, rx, secs, busy)
    });
    let cpu_per_gb_after_map = after_map
        .filter(|&(_, rx, _, _)| rx > 100_000_000)
        .map(|(cpu, rx, _, _)| cpu / (rx as f64 / 1e9));
    let cpu = json!({
        "workers_s": workers_cpu,
        "coordinator_s": coordinator_cpu,
        "workers_s_per_remote_shuffle_gb": cpu_per_gb,
        "machine_busy_s": machine_busy,
        "machine_busy_frac": machine_busy / machine_total.max(1e-9),
        "other_processes_busy_s": machine_busy - workers_cpu - coordinator_cpu,
        "after_map_phase": after_map.map(|(cpu, rx, secs, busy)| json!({
            "secs": secs,
            "workers_cpu_s": cpu,
            "link_rx_bytes": rx,
            "workers_s_per_link_gb": cpu_per_gb_after_map,
            "machine_busy_frac": busy,
        })),
    });
    Analysis {
        links,
        cpu,
        mean_busy_pct: (rx_pct, tx_pct),
        min_busy_pct: min_pct,
        cpu_per_gb,
        cpu_per_gb_after_map,
        machine_busy_frac: machine_busy / machine_total.max(1e-9),
    }
}

// ---------------------------------------------------------------------------------------
// Results.

fn machine() -> Value {
    let m = quern_jobs::machine::Machine::read();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cores": m.cores,
        "cpu": m.cpu,
        "memory_gib": m.memory_bytes as f64 / f64::from(1u32 << 30),
        "kernel": m.kernel,
        "quern_commit": m.quern_commit,
        "loadavg_at_end": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

fn write_results(args: &Args, input: &Input, runs: &[Value]) -> Result<(), Error> {
    let m = machine();
    let doc = json!({
        "benchmark": "linkspeed",
        "size_bytes": input.records * 100,
        "records": input.records,
        "teragen_s": input.gen_secs,
        "machine": m,
        "runs": runs,
    });
    let json_path = args.out.join("linkspeed.json");
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, text + "\n").map_err(|e| format!("{}: {e}", json_path.display()))?;

    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# linkspeed: terasort over 4 netns hosts with shaped links\n"
    );
    let _ = writeln!(
        md,
        "{} cores ({}), {:.0} GiB, kernel {}, quern {}; load average at the end {} (the machine is shared).\n",
        m["cores"], m["cpu"].as_str().unwrap_or(""), f(&m["memory_gib"]), m["kernel"].as_str().unwrap_or(""),
        m["quern_commit"].as_str().unwrap_or(""), m["loadavg_at_end"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        md,
        "{:.2} GB ({} records), 4 workers × {} slots, {} reducers, `--memory {}`; every output validated (order, record count, checksum).\n",
        (input.records * 100) as f64 / 1e9, input.records, args.slots,
        runs.first().map_or(Value::Null, |r| r["reducers"].clone()), args.memory
    );
    let _ = writeln!(md, "Busy rate: the bytes a link carried between the samples at 5% and 95% of its total, over that time (device bytes: Ethernet frames, as tbf meters them). Peak: the most in any 1 s.\n");
    let _ = writeln!(md, "| rate | MTU | wall s | map phase s | remote shuffle GB | link rx busy MB/s (% of link) | link tx busy MB/s (%) | peak 1 s rx MB/s (%) | worker CPU s / remote GB | after maps | machine busy |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|");
    for r in runs {
        let link_mb = f(&r["rate_bits_per_s"]) / 8e6;
        let links = r["links"].as_array().cloned().unwrap_or_default();
        let cell = |dir: &str, key: &str| {
            links
                .iter()
                .map(|l| {
                    let v = f(&l[dir][key]) / 1e6;
                    format!("{v:.0} ({:.0}%)", v / link_mb * 100.0)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let after = &r["cpu"]["after_map_phase"]["workers_s_per_link_gb"];
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {:.1} | {} | {:.0}% |",
            r["rate"].as_str().unwrap_or(""),
            r["mtu"],
            f(&r["wall_s"]),
            f(&r["map_phase_end_s"]),
            f(&r["shuffle_remote_bytes"]) / 1e9,
            cell("rx", "busy_bytes_per_s"),
            cell("tx", "busy_bytes_per_s"),
            cell("rx", "peak_1s_bytes_per_s"),
            f(&r["cpu"]["workers_s_per_remote_shuffle_gb"]),
            after.as_f64().map_or("–".into(), |v| format!("{v:.1}")),
            f(&r["cpu"]["machine_busy_frac"]) * 100.0,
        );
    }
    let _ = writeln!(md, "\nPer-run details (bytes per packet, busy intervals, CPU of the coordinator and of other processes) are in `linkspeed.json`.");
    let md_path = args.out.join("linkspeed.md");
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_tc_units() {
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("10Gbit"), Ok(10_000_000_000));
        assert_eq!(parse_rate("500mbit"), Ok(500_000_000));
        assert!(parse_rate("1gb").is_err());
        assert!(parse_rate("0mbit").is_err());
    }

    #[test]
    fn busy_rate_spans_the_central_90_percent() {
        // Idle 1 s, then 100 MB/s for 10 s, then idle 1 s; samples every 100 ms.
        let ms: Vec<u64> = (0..=120).map(|i| i * 100).collect();
        let bytes: Vec<u64> = ms
            .iter()
            .map(|&t| (t.clamp(1000, 11_000) - 1000) * 100_000)
            .collect();
        let f = link_figures(&ms, &bytes, 1);
        assert_eq!(f.bytes, 1_000_000_000);
        assert!((f.busy_s - 9.0).abs() < 0.11, "{}", f.busy_s);
        assert!((f.busy_rate - 1e8).abs() < 1e6, "{}", f.busy_rate);
        assert!((f.peak_1s - 1e8).abs() < 1e6, "{}", f.peak_1s);
    }
}
