//! The embedded local cluster: one coordinator and N worker processes on loopback, started
//! from the running binary with a fresh secret, and torn down when the job ends.
//!
//! No orphans: children are started with `--exit-with-parent` and a pipe on stdin; they
//! exit when it closes, which happens when this process exits for any reason (including
//! SIGKILL). `Drop` closes the workers' stdin too (a worker kills its attempts' child
//! processes as it exits), then kills and reaps whatever is left.
//!
//! Supervision: a thread polls the workers every 100 ms and respawns one that died (as the
//! 6.824 lab's test script does by hand), at most [`MAX_RESPAWNS`] times per cluster, so a
//! worker that crashes on start cannot loop forever. The coordinator re-runs the dead
//! worker's tasks; the new process registers as a new worker.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use quern_shuffle::Secret;

use crate::{Error, Result};

/// Worker restarts allowed per cluster.
pub const MAX_RESPAWNS: u32 = 16;

/// Coordinator restarts allowed per cluster (see [`LocalCluster::restart_coordinator`]).
pub const MAX_COORDINATOR_RESTARTS: u32 = 3;

/// The coordinator's greeting: its first two lines on stdout, rendered by the `coordinator`
/// command and parsed by whoever started it (the local cluster, scripts, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Where it listens (QUIC).
    pub addr: SocketAddr,
    /// Its status page, `http://HOST:PORT/`.
    pub status_url: String,
}

impl Greeting {
    const LISTENING: &'static str = "quern coordinator listening on ";
    const STATUS: &'static str = "quern coordinator status page at ";

    /// The two lines, each ending in `\n`.
    pub fn render(&self) -> String {
        format!(
            "{}{}\n{}{}\n",
            Self::LISTENING,
            self.addr,
            Self::STATUS,
            self.status_url
        )
    }

    /// The address of the first line, `quern coordinator listening on ADDR`.
    pub fn parse_listening(line: &str) -> Result<SocketAddr> {
        line.trim_end()
            .strip_prefix(Self::LISTENING)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Error::Net(format!("unexpected coordinator greeting {line:?}")))
    }

    /// The URL of the second line, `quern coordinator status page at URL`.
    pub fn parse_status(line: &str) -> Result<String> {
        line.trim_end()
            .strip_prefix(Self::STATUS)
            .filter(|u| u.starts_with("http://"))
            .map(str::to_string)
            .ok_or_else(|| Error::Net(format!("unexpected coordinator greeting {line:?}")))
    }
}

/// The command line of a local cluster's coordinator (after the executable): the only
/// place it is rendered; `jobs/src/cli.rs` parses it, and its tests check that it does.
pub fn coordinator_args(listen: &str, secret_file: &Path) -> Vec<OsString> {
    vec![
        "coordinator".into(),
        "--listen".into(),
        listen.into(),
        "--exit-with-parent".into(),
        "--secret-file".into(),
        secret_file.into(),
    ]
}

/// The command line of a local cluster's worker (after the executable), as
/// [`coordinator_args`] is for the coordinator.
pub fn worker_args(
    coordinator: SocketAddr,
    slots: u32,
    secret_file: &Path,
    work_dir: &Path,
) -> Vec<OsString> {
    vec![
        "worker".into(),
        "--exit-with-parent".into(),
        "--join".into(),
        coordinator.to_string().into(),
        "--slots".into(),
        slots.to_string().into(),
        "--secret-file".into(),
        secret_file.into(),
        "--work-dir".into(),
        work_dir.into(),
    ]
}

/// A running local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    exe: PathBuf,
    coordinator: Child,
    coordinator_restarts: u32,
    workers: Arc<Mutex<Vec<Child>>>,
    addr: SocketAddr,
    status_url: String,
    secret_file: PathBuf,
    /// Dropped to stop the supervisor: it wakes at once (not at its next poll).
    stop: Option<mpsc::Sender<()>>,
    respawns: Arc<AtomicU32>,
    supervisor: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// How to start worker `i`.
#[derive(Debug, Clone)]
struct WorkerCommand {
    exe: PathBuf,
    addr: SocketAddr,
    slots: u32,
    secret_file: PathBuf,
    dir: PathBuf,
}

impl WorkerCommand {
    fn spawn(&self, i: usize, generation: u32) -> Result<Child> {
        let work_dir = self.dir.join(format!("worker-{i}-{generation}"));
        Command::new(&self.exe)
            .args(worker_args(
                self.addr,
                self.slots,
                &self.secret_file,
                &work_dir,
            ))
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(&self.exe, e))
    }
}

fn supervise(
    workers: Arc<Mutex<Vec<Child>>>,
    command: WorkerCommand,
    stop: mpsc::Receiver<()>,
    respawns: Arc<AtomicU32>,
) {
    // Polls the workers every 100 ms until the cluster is dropped (the sender goes away).
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(100)) {
        let mut workers = workers.lock().unwrap_or_else(|p| p.into_inner());
        // The drop may have begun while this thread waited for the lock: respawn nothing.
        if !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
            return;
        }
        for (i, child) in workers.iter_mut().enumerate() {
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            let n = respawns.fetch_add(1, Ordering::Relaxed) + 1;
            if n > MAX_RESPAWNS {
                tracing::warn!(
                    "worker {i} exited ({status}); respawn limit {MAX_RESPAWNS} reached"
                );
                continue;
            }
            tracing::warn!(
                "worker {i} (pid {}) exited ({status}); respawning",
                child.id()
            );
            match command.spawn(i, n) {
                Ok(new) => *child = new,
                Err(e) => tracing::warn!("cannot respawn worker {i}: {e}"),
            }
        }
    }
}

impl LocalCluster {
    /// Starts a coordinator and `workers` workers of `slots` slots each, running `exe`
    /// (a binary with quern's `coordinator` and `worker` subcommands).
    pub fn start(exe: &Path, workers: usize, slots: u32) -> Result<LocalCluster> {
        let dir = tempfile::Builder::new()
            .prefix("quern-cluster-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let secret_file = dir.path().join("secret");
        Secret::generate()
            .and_then(|s| s.write_file(&secret_file))
            .map_err(|e| Error::Net(e.to_string()))?;
        let (coordinator, addr, status_url) = spawn_coordinator(exe, "127.0.0.1:0", &secret_file)?;
        let command = WorkerCommand {
            exe: exe.to_path_buf(),
            addr,
            slots,
            secret_file: secret_file.clone(),
            dir: dir.path().to_path_buf(),
        };
        let mut cluster = LocalCluster {
            exe: exe.to_path_buf(),
            coordinator,
            coordinator_restarts: 0,
            workers: Arc::new(Mutex::new(Vec::new())),
            addr,
            status_url,
            secret_file,
            stop: None,
            respawns: Arc::new(AtomicU32::new(0)),
            supervisor: None,
            _dir: dir,
        };
        {
            let mut children = cluster.lock_workers();
            for i in 0..workers {
                children.push(command.spawn(i, 0)?);
            }
        }
        let (stop, s) = mpsc::channel();
        cluster.stop = Some(stop);
        let (w, r) = (cluster.workers.clone(), cluster.respawns.clone());
        cluster.supervisor = Some(
            std::thread::Builder::new()
                .name("quern-supervisor".into())
                .spawn(move || supervise(w, command, s, r))
                .map_err(|e| Error::io("supervisor thread", e))?,
        );
        Ok(cluster)
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// False once the coordinator's process has exited (killed, crashed).
    pub fn coordinator_running(&mut self) -> bool {
        matches!(self.coordinator.try_wait(), Ok(None))
    }

    /// Coordinator restarts so far.
    pub fn coordinator_restarts(&self) -> u32 {
        self.coordinator_restarts
    }

    /// Starts a new coordinator on the dead one's address, so the workers re-join it on
    /// their own (they keep their map outputs and retry with backoff). The job is then
    /// resubmitted with `resume`, and the new coordinator continues it from the journal in
    /// the output directory. Allowed [`MAX_COORDINATOR_RESTARTS`] times per cluster.
    pub fn restart_coordinator(&mut self) -> Result<()> {
        if self.coordinator_restarts >= MAX_COORDINATOR_RESTARTS {
            return Err(Error::Net(format!(
                "the local coordinator died {} times; giving up",
                self.coordinator_restarts + 1
            )));
        }
        self.coordinator_restarts += 1;
        let _ = self.coordinator.kill();
        let _ = self.coordinator.wait();
        let (child, addr, status_url) =
            spawn_coordinator(&self.exe, &self.addr.to_string(), &self.secret_file)?;
        if addr != self.addr {
            // The workers join `self.addr`; a coordinator elsewhere would never see them.
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Net(format!(
                "the restarted coordinator listens on {addr}, not {}",
                self.addr
            )));
        }
        self.coordinator = child;
        self.status_url = status_url;
        Ok(())
    }

    /// Workers respawned so far.
    pub fn respawns(&self) -> u32 {
        self.respawns.load(Ordering::Relaxed).min(MAX_RESPAWNS)
    }

    /// The coordinator's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The coordinator's status page, `http://127.0.0.1:PORT/`.
    pub fn status_url(&self) -> &str {
        &self.status_url
    }

    /// The secret file the cluster was started with.
    pub fn secret_file(&self) -> &Path {
        &self.secret_file
    }

    /// Process ids: the coordinator first, then the (current) workers.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.coordinator.id())
            .chain(self.lock_workers().iter().map(Child::id))
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
        let mut workers = std::mem::take(&mut *self.lock_workers());
        // Closing their stdin asks the workers to exit, killing their attempts' child
        // processes on the way out (a SIGKILL now would orphan those); those that have not
        // exited after a grace period are killed.
        for child in &mut workers {
            drop(child.stdin.take());
        }
        // A worker exits within a few milliseconds: poll often at first.
        let grace = std::time::Instant::now() + Duration::from_secs(2);
        let mut pause = Duration::from_micros(250);
        while std::time::Instant::now() < grace
            && workers.iter_mut().any(|c| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        for child in workers
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
        {
            let _ = child.kill();
        }
        for child in workers
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
        {
            let _ = child.wait();
        }
    }
}

/// Starts `exe coordinator --listen LISTEN` and reads its greeting: the child, its address
/// and its status page.
fn spawn_coordinator(
    exe: &Path,
    listen: &str,
    secret_file: &Path,
) -> Result<(Child, SocketAddr, String)> {
    let mut coordinator = Command::new(exe)
        .args(coordinator_args(listen, secret_file))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(exe, e))?;
    match read_greeting(&mut coordinator) {
        Ok(g) => Ok((coordinator, g.addr, g.status_url)),
        Err(e) => {
            let _ = coordinator.kill();
            let _ = coordinator.wait();
            Err(e)
        }
    }
}

/// Reads the coordinator's greeting, waiting at most 10 s.
fn read_greeting(child: &mut Child) -> Result<Greeting> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Net("coordinator has no stdout".into()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut lines = [String::new(), String::new()];
        for line in &mut lines {
            let _ = reader.read_line(line);
        }
        let _ = tx.send(lines);
    });
    let [listen, status] = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| Error::Net("the coordinator did not start within 10 s".into()))?;
    Ok(Greeting {
        addr: Greeting::parse_listening(&listen)?,
        status_url: Greeting::parse_status(&status)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_greeting_parses_back() {
        let g = Greeting {
            addr: "127.0.0.1:7070".parse().unwrap(),
            status_url: "http://127.0.0.1:8080/".into(),
        };
        let text = g.render();
        let mut lines = text.lines();
        let addr = Greeting::parse_listening(lines.next().unwrap()).unwrap();
        let url = Greeting::parse_status(lines.next().unwrap()).unwrap();
        assert_eq!(
            Greeting {
                addr,
                status_url: url
            },
            g
        );
        assert!(Greeting::parse_listening("listening on 1.2.3.4:5").is_err());
        assert!(Greeting::parse_status("quern coordinator status page at ftp://x").is_err());
    }
}
