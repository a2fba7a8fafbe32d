//! Helpers for the distributed-runtime tests: child processes that are always killed and
//! reaped ([`Proc`]), bounded waits ([`wait_until`]), hand-started coordinators and workers,
//! and `/proc` checks that the processes of a cluster are gone ([`assert_gone`]).
//!
//! Every wait here has a deadline: a hung job or daemon fails the test with what the
//! process printed so far instead of hanging the suite.

use std::ffi::OsStr;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{quern, Outcome};

/// Longest any single `quern` job of these tests may take (debug build, busy CI machine).
pub const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a daemon may take to come up (print its address, join its coordinator).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `poll` every 10 ms until it returns `Some`, or `timeout` passes (`None`).
pub fn wait_until<T>(timeout: Duration, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = poll() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Which output stream of a [`Proc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

#[derive(Debug, Default)]
struct Captured {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Streams that reached end of file.
    closed: u8,
}

#[derive(Debug, Default)]
struct Capture {
    data: Mutex<Captured>,
    changed: Condvar,
}

impl Capture {
    fn lock(&self) -> MutexGuard<'_, Captured> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A child process whose stdout and stderr are captured as they come, and which is killed
/// and reaped when dropped — on every path, including a failing assertion.
///
/// Its stdin is a pipe held open until drop, so daemons started with `--exit-with-parent`
/// also go away if the test process itself is killed.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    _stdin: Option<ChildStdin>,
    capture: Arc<Capture>,
}

impl Proc {
    /// Starts `cmd` (its stdio is replaced by pipes). `name` is used in messages.
    pub fn spawn(name: impl Into<String>, cmd: Command) -> Proc {
        let name = name.into();
        let what = format!("{cmd:?}");
        Proc::try_spawn(name.clone(), cmd)
            .unwrap_or_else(|e| panic!("spawning {name} ({what}): {e}"))
    }

    /// Like [`Proc::spawn`], but returns the error if `cmd` cannot be started.
    pub fn try_spawn(name: impl Into<String>, mut cmd: Command) -> std::io::Result<Proc> {
        let name = name.into();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let capture = Arc::new(Capture::default());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // Reader threads are detached: a grandchild that inherited a pipe may keep it open
        // after the child is gone, and nothing must wait for that.
        for (stream, mut pipe) in [
            (Stream::Stdout, Box::new(stdout) as Box<dyn Read + Send>),
            (Stream::Stderr, Box::new(stderr)),
        ] {
            let capture = Arc::clone(&capture);
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    let n = pipe.read(&mut buf).unwrap_or(0);
                    let mut data = capture.lock();
                    if n == 0 {
                        data.closed += 1;
                        capture.changed.notify_all();
                        return;
                    }
                    match stream {
                        Stream::Stdout => data.stdout.extend_from_slice(&buf[..n]),
                        Stream::Stderr => data.stderr.extend_from_slice(&buf[..n]),
                    }
                    capture.changed.notify_all();
                }
            });
        }
        Ok(Proc {
            name,
            _stdin: child.stdin.take(),
            child,
            status: None,
            capture,
        })
    }

    /// Starts the `quern` binary with `args`.
    pub fn quern<I, S>(name: impl Into<String>, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(quern());
        cmd.args(args);
        Proc::spawn(name, cmd)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the process printed on `stream` so far, lossily decoded.
    pub fn output(&self, stream: Stream) -> String {
        let data = self.capture.lock();
        String::from_utf8_lossy(match stream {
            Stream::Stdout => &data.stdout,
            Stream::Stderr => &data.stderr,
        })
        .into_owned()
    }

    /// Everything printed so far, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "{} (pid {}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.pid(),
            self.output(Stream::Stdout),
            self.output(Stream::Stderr)
        )
    }

    /// Waits at most `timeout` until `find` finds something in what the process printed on
    /// `stream`; reacts as soon as new output arrives.
    pub fn wait_output<T>(
        &self,
        stream: Stream,
        timeout: Duration,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut data = self.capture.lock();
        loop {
            let text = String::from_utf8_lossy(match stream {
                Stream::Stdout => &data.stdout,
                Stream::Stderr => &data.stderr,
            });
            if let Some(found) = find(&text) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline || data.closed == 2 {
                return None;
            }
            data = self
                .capture
                .changed
                .wait_timeout(data, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Like [`Proc::wait_output`], but panics with everything printed on timeout.
    pub fn expect_output<T>(
        &self,
        what: &str,
        stream: Stream,
        timeout: Duration,
        find: impl FnMut(&str) -> Option<T>,
    ) -> T {
        self.wait_output(stream, timeout, find).unwrap_or_else(|| {
            panic!(
                "no {what} from {} within {timeout:?}\n{}",
                self.name,
                self.describe()
            )
        })
    }

    /// The exit status if the process has exited (it is reaped then).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name));
        }
        self.status
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.try_status())
    }

    /// Sends SIGKILL (if still running) and reaps the process.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Waits at most `timeout` for the process to exit (panicking, after killing it, if it
    /// does not) and returns what it did, with the output complete up to end of file (or
    /// what arrived within 5 s more if a grandchild holds the pipes open).
    pub fn finish(mut self, timeout: Duration) -> Outcome {
        let Some(status) = self.wait_exit(timeout) else {
            self.kill();
            panic!(
                "{} did not exit within {timeout:?}; killed it\n{}",
                self.name,
                self.describe()
            );
        };
        let _ = self.wait_output(Stream::Stdout, Duration::from_secs(5), |_| None::<()>);
        let data = self.capture.lock();
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout: data.stdout.clone(),
            stderr: String::from_utf8_lossy(&data.stderr).into_owned(),
            cmdline: self.name.clone(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `quern args` to completion with a deadline of [`JOB_TIMEOUT`].
pub fn run_quern<I, S>(args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let cmdline = std::iter::once("quern".to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    Proc::quern(cmdline, &args).finish(JOB_TIMEOUT)
}

/// Writes a fresh cluster secret to `file` with `quern secret FILE`.
pub fn new_secret(file: &Path) {
    run_quern([OsStr::new("secret"), file.as_os_str()]).ok();
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("quern secret did not write {}: {e}", file.display()));
    assert!(
        !text.trim().is_empty(),
        "quern secret wrote an empty {}",
        file.display()
    );
}

/// Waits for a coordinator's first stdout line, `quern coordinator listening on ADDR`, and
/// returns ADDR.
pub fn coordinator_addr(coordinator: &Proc) -> SocketAddr {
    let line = coordinator.expect_output(
        "\"listening on\" line",
        Stream::Stdout,
        START_TIMEOUT,
        |out| out.split_once('\n').map(|(first, _)| first.to_string()),
    );
    quern_runtime::cluster::launch::Greeting::parse_listening(&line)
        .unwrap_or_else(|e| panic!("the coordinator's first line: {e}"))
}

/// The data addresses of the workers a coordinator started with `-v` logged as joined
/// (`... joined from ADDR ...`), in order.
pub fn joined_workers(coordinator_log: &str) -> Vec<String> {
    coordinator_log
        .lines()
        .filter_map(|l| l.split_once(" joined from ")?.1.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Waits until a coordinator started with `-v` logged `n` joined workers; returns their
/// data addresses.
pub fn wait_joined(coordinator: &Proc, workers: &[Proc], n: usize) -> Vec<String> {
    coordinator
        .wait_output(Stream::Stderr, START_TIMEOUT, |log| {
            let joined = joined_workers(log);
            (joined.len() >= n).then_some(joined)
        })
        .unwrap_or_else(|| {
            let workers: Vec<String> = workers.iter().map(Proc::describe).collect();
            panic!(
                "{n} workers did not join within {START_TIMEOUT:?}\n{}\n{}",
                coordinator.describe(),
                workers.join("\n")
            )
        })
}

/// The fields of `/proc/<pid>/stat` these tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Executable name (`comm`).
    pub comm: String,
    /// `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
    /// Parent process id.
    pub ppid: u32,
    /// Start time in clock ticks since boot: tells a reused pid apart.
    pub start: u64,
}

/// Reads `/proc/<pid>/stat`; `None` if there is no such process (it was reaped).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After "(comm)": state is field 3 of stat(5), ppid 4, starttime 22.
    Some(ProcStat {
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// A process seen alive, to be checked for disappearance later.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// Its pid.
    pub pid: u32,
    /// Its start time when first seen (`None` if it was already gone).
    pub start: Option<u64>,
}

impl Tracked {
    /// Records `pid` and its start time now.
    pub fn now(pid: u32) -> Tracked {
        Tracked {
            pid,
            start: proc_stat(pid).map(|s| s.start),
        }
    }

    /// What is left of the process: `None` once it is reaped (or its pid now belongs to
    /// another process). A zombie is still there: it is gone only once reaped.
    pub fn remains(&self) -> Option<ProcStat> {
        let stat = proc_stat(self.pid)?;
        let same = match self.start {
            Some(start) => stat.start == start,
            None => stat.comm == "quern",
        };
        same.then_some(stat)
    }
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`) to `pid` with kill(1); false if it failed (the
/// process is gone).
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Parses the pids of `quern -v`'s line `quern: local cluster at ADDR, pids [1, 2, 3]`.
pub fn cluster_pids(stderr: &str) -> Option<Vec<u32>> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("quern: local cluster at "))?;
    let list = line.split_once("pids [")?.1.split_once(']')?.0;
    list.split(',').map(|p| p.trim().parse().ok()).collect()
}

/// Waits at most `timeout` until none of `procs` remains (zombies count as remaining);
/// panics listing the survivors otherwise.
pub fn assert_gone(what: &str, procs: &[Tracked], timeout: Duration) {
    let left = || -> Vec<(u32, ProcStat)> {
        procs
            .iter()
            .filter_map(|t| t.remains().map(|s| (t.pid, s)))
            .collect()
    };
    if wait_until(timeout, || left().is_empty().then_some(())).is_none() {
        panic!(
            "{what}: processes still there {timeout:?} later: {:?}",
            left()
        );
    }
}

/// Waits for a coordinator's second stdout line, `quern coordinator status page at URL`,
/// and returns URL (`http://HOST:PORT/`).
pub fn coordinator_status_url(coordinator: &Proc) -> String {
    let line = coordinator.expect_output(
        "\"status page at\" line",
        Stream::Stdout,
        START_TIMEOUT,
        |out| {
            let second = out.split_inclusive('\n').nth(1)?;
            second.strip_suffix('\n').map(str::to_string)
        },
    );
    line.strip_prefix("quern coordinator status page at ")
        .unwrap_or_else(|| panic!("unexpected second line of the coordinator: {line:?}"))
        .trim()
        .to_string()
}
