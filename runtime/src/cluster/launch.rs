//! The embedded local cluster: one coordinator and N worker processes on loopback, started
//! from the running binary with a fresh secret, and torn down when the job ends.
//!
//! No orphans: children are started with `--exit-with-parent` and a pipe on stdin; they
//! exit when it closes, which happens when this process exits for any reason (including
//! SIGKILL). `Drop` also kills and reaps them explicitly.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quern_shuffle::Secret;

use crate::{Error, Result};

/// A running local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    coordinator: Child,
    workers: Vec<Child>,
    addr: SocketAddr,
    secret_file: PathBuf,
    _dir: tempfile::TempDir,
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
        let mut coordinator = Command::new(exe)
            .args([
                "coordinator",
                "--listen",
                "127.0.0.1:0",
                "--exit-with-parent",
                "--secret-file",
            ])
            .arg(&secret_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(exe, e))?;
        let addr = match read_address(&mut coordinator) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = coordinator.kill();
                let _ = coordinator.wait();
                return Err(e);
            }
        };
        let mut cluster = LocalCluster {
            coordinator,
            workers: Vec::new(),
            addr,
            secret_file,
            _dir: dir,
        };
        for i in 0..workers {
            let work_dir = cluster._dir.path().join(format!("worker-{i}"));
            let child = Command::new(exe)
                .args(["worker", "--exit-with-parent", "--join", &addr.to_string()])
                .args(["--slots", &slots.to_string()])
                .arg("--secret-file")
                .arg(&cluster.secret_file)
                .arg("--work-dir")
                .arg(&work_dir)
                .stdin(Stdio::piped())
                .spawn()
                .map_err(|e| Error::io(exe, e))?;
            cluster.workers.push(child);
        }
        Ok(cluster)
    }

    /// The coordinator's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The secret file the cluster was started with.
    pub fn secret_file(&self) -> &Path {
        &self.secret_file
    }

    /// Process ids: the coordinator first, then the workers.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.coordinator.id())
            .chain(self.workers.iter().map(Child::id))
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
        {
            let _ = child.kill();
        }
        for child in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
        {
            let _ = child.wait();
        }
    }
}

/// Reads the coordinator's "listening on ADDR" line, waiting at most 10 s.
fn read_address(child: &mut Child) -> Result<SocketAddr> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Net("coordinator has no stdout".into()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| Error::Net("the coordinator did not start within 10 s".into()))?;
    line.trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| Error::Net(format!("unexpected coordinator greeting {line:?}")))
}
