//! The embedded local cluster: one coordinator and N worker processes on loopback, started
//! from the running binary with a fresh secret, and torn down when the job ends.
//!
//! No orphans: children are started with `--exit-with-parent` and a pipe on stdin; they
//! exit when it closes, which happens when this process exits for any reason (including
//! SIGKILL). `Drop` also kills and reaps them explicitly.
//!
//! Supervision: a thread polls the workers every 100 ms and respawns one that died (as the
//! 6.824 lab's test script does by hand), at most [`MAX_RESPAWNS`] times per cluster, so a
//! worker that crashes on start cannot loop forever. The coordinator re-runs the dead
//! worker's tasks; the new process registers as a new worker.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quern_shuffle::Secret;

use crate::{Error, Result};

/// Worker restarts allowed per cluster.
pub const MAX_RESPAWNS: u32 = 16;

/// Coordinator restarts allowed per cluster (see [`LocalCluster::restart_coordinator`]).
pub const MAX_COORDINATOR_RESTARTS: u32 = 3;

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
    stopping: Arc<AtomicBool>,
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
            .args([
                "worker",
                "--exit-with-parent",
                "--join",
                &self.addr.to_string(),
            ])
            .args(["--slots", &self.slots.to_string()])
            .arg("--secret-file")
            .arg(&self.secret_file)
            .arg("--work-dir")
            .arg(&work_dir)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(&self.exe, e))
    }
}

fn supervise(
    workers: Arc<Mutex<Vec<Child>>>,
    command: WorkerCommand,
    stopping: Arc<AtomicBool>,
    respawns: Arc<AtomicU32>,
) {
    while !stopping.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let mut workers = workers.lock().unwrap_or_else(|p| p.into_inner());
        if stopping.load(Ordering::Relaxed) {
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
            stopping: Arc::new(AtomicBool::new(false)),
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
        let (w, s, r) = (
            cluster.workers.clone(),
            cluster.stopping.clone(),
            cluster.respawns.clone(),
        );
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
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.join();
        }
        let mut workers = std::mem::take(&mut *self.lock_workers());
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
        .args([
            "coordinator",
            "--listen",
            listen,
            "--exit-with-parent",
            "--secret-file",
        ])
        .arg(secret_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(exe, e))?;
    match read_address(&mut coordinator) {
        Ok((addr, url)) => Ok((coordinator, addr, url)),
        Err(e) => {
            let _ = coordinator.kill();
            let _ = coordinator.wait();
            Err(e)
        }
    }
}

/// Reads the coordinator's greeting, waiting at most 10 s: its "listening on ADDR" line and
/// its "status page at URL" line.
fn read_address(child: &mut Child) -> Result<(SocketAddr, String)> {
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
    let last_word = |line: &str| line.trim().rsplit(' ').next().map(str::to_string);
    let addr = last_word(&listen)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::Net(format!("unexpected coordinator greeting {listen:?}")))?;
    let url = last_word(&status)
        .filter(|u| u.starts_with("http://"))
        .ok_or_else(|| Error::Net(format!("unexpected coordinator greeting {status:?}")))?;
    Ok((addr, url))
}
