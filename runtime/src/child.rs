//! Child processes of task attempts (streaming mappers, combiners and reducers).
//!
//! A [`TaskProcess`] is `/bin/sh -c COMMAND` in its own process group, with its three
//! standard streams piped to the attempt. [`TaskProcess::pump`] feeds its stdin and drains
//! its stdout and stderr from one thread with `poll(2)` on non-blocking pipes, so neither
//! side can deadlock on a full pipe, and input is written with `writev` straight from the
//! caller's slices (the memory-mapped split, the merged segments): no copy besides the
//! pipe's own.
//!
//! No orphans: the whole process group is killed (SIGKILL) when the attempt is cancelled,
//! times out or fails, and after the shell exits (whatever it left running in the
//! background), always before the shell is reaped so the group's id cannot be reused
//! meanwhile. [`kill_all`] kills every live group; the worker calls it when it exits.

use std::io::{IoSlice, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{kill_process_group, Pid, Signal, WaitId, WaitIdOptions};

use crate::{Error, Result};

/// Process groups of the live task processes (their leaders' pids).
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Most slices handed to one `writev` (Linux's `IOV_MAX`).
pub const MAX_SLICES: usize = 1024;

/// Kills the process group of every live task process (at exit: no orphans).
pub fn kill_all() {
    let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    for &pid in live.iter() {
        if let Some(pid) = Pid::from_raw(pid) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

/// Where [`TaskProcess::pump`] gets the child's input: [`Feed::feed`] appends the next
/// slices to `slices` and returns false once no more will come. Any
/// `FnMut(&mut Vec<IoSlice>) -> bool` is a feed.
pub trait Feed<'a> {
    /// Appends input slices (at most about [`MAX_SLICES`] at a time); false at the end.
    fn feed(&mut self, slices: &mut Vec<IoSlice<'a>>) -> bool;
}

impl<'a, F: FnMut(&mut Vec<IoSlice<'a>>) -> bool> Feed<'a> for F {
    fn feed(&mut self, slices: &mut Vec<IoSlice<'a>>) -> bool {
        self(slices)
    }
}

/// What [`TaskProcess::pump`] does with the child's output and how it knows to stop.
pub trait Drain {
    /// Bytes the child wrote to stdout.
    fn stdout(&mut self, bytes: &[u8]);
    /// Bytes the child wrote to stderr.
    fn stderr(&mut self, bytes: &[u8]);
    /// True when the attempt was cancelled: the group is killed and the pump returns
    /// [`Error::Cancelled`].
    fn cancelled(&self) -> bool;
}

/// How a pumped process ended.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// The shell's exit status.
    pub status: ExitStatus,
    /// Bytes of input the child was given.
    pub input_bytes: u64,
    /// True if the child closed its stdin while input remained (a broken pipe).
    pub broken_pipe: bool,
}

/// A running `/bin/sh -c COMMAND` of an attempt.
#[derive(Debug)]
pub struct TaskProcess {
    child: Child,
    pgid: Pid,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    reaped: bool,
}

impl TaskProcess {
    /// Starts `command` through `/bin/sh -c` in `dir`, with the caller's environment plus
    /// `env`, in a new process group.
    pub fn spawn(command: &str, dir: &Path, env: &[(String, String)]) -> Result<TaskProcess> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::UserCode {
                message: format!("cannot start `{command}`: {e}"),
            })?;
        let pgid = Pid::from_child(&child);
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pgid.as_raw_nonzero().get());
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let process = TaskProcess {
            child,
            pgid,
            stdin,
            stdout,
            stderr,
            reaped: false,
        };
        for fd in [
            process.stdin.as_ref().map(rustix::fd::AsFd::as_fd),
            process.stdout.as_ref().map(rustix::fd::AsFd::as_fd),
            process.stderr.as_ref().map(rustix::fd::AsFd::as_fd),
        ]
        .into_iter()
        .flatten()
        {
            rustix::io::ioctl_fionbio(fd, true).map_err(|e| pipe_error("set up", e.into()))?;
        }
        Ok(process)
    }

    /// Feeds the child and drains it until it exits.
    ///
    /// Input comes from `feed`, written as it is; output goes to `drain`. A
    /// child that neither takes input, writes output nor writes to stderr for `idle_limit`
    /// is killed ([`Error::UserCode`]).
    pub fn pump<'a>(
        mut self,
        feed: &mut dyn Feed<'a>,
        drain: &mut dyn Drain,
        idle_limit: Duration,
    ) -> Result<Finished> {
        let mut pending: Vec<IoSlice<'a>> = Vec::with_capacity(MAX_SLICES);
        let mut at = 0usize;
        let mut more = true;
        let mut input_bytes = 0u64;
        let mut broken_pipe = false;
        let mut buf = vec![0u8; 64 << 10];
        let mut active = Instant::now();
        while self.stdin.is_some() || self.stdout.is_some() || self.stderr.is_some() {
            if drain.cancelled() {
                return Err(Error::Cancelled);
            }
            if active.elapsed() >= idle_limit {
                return Err(idle(idle_limit));
            }
            if at == pending.len() && self.stdin.is_some() {
                pending.clear();
                at = 0;
                if more {
                    more = feed.feed(&mut pending);
                }
                if pending.is_empty() && !more {
                    self.stdin = None; // end of input
                }
                if pending.is_empty() {
                    continue;
                }
            }
            let wait = idle_limit
                .saturating_sub(active.elapsed())
                .min(Duration::from_millis(100));
            let ready = self.poll(wait)?;
            if ready[0] {
                if let Some(stdin) = &mut self.stdin {
                    let end = pending.len().min(at + MAX_SLICES);
                    match stdin.write_vectored(&pending[at..end]) {
                        Ok(n) => {
                            input_bytes += n as u64;
                            active = Instant::now();
                            let total = pending.len();
                            let mut rest = &mut pending[at..];
                            IoSlice::advance_slices(&mut rest, n);
                            at = total - rest.len();
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                            broken_pipe = true;
                            self.stdin = None;
                        }
                        Err(e) => return Err(pipe_error("write to", e)),
                    }
                }
            }
            if ready[1] {
                if let Some(n) = read_some(&mut self.stdout, &mut buf)? {
                    active = Instant::now();
                    drain.stdout(&buf[..n]);
                }
            }
            if ready[2] {
                if let Some(n) = read_some(&mut self.stderr, &mut buf)? {
                    active = Instant::now();
                    drain.stderr(&buf[..n]);
                }
            }
        }
        // Both outputs closed: wait (without reaping) for the shell to exit.
        loop {
            let exited = rustix::process::waitid(
                WaitId::Pid(self.pgid),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
            )
            .map_err(|e| pipe_error("wait for", e.into()))?;
            if exited.is_some() {
                break;
            }
            if drain.cancelled() {
                return Err(Error::Cancelled);
            }
            if active.elapsed() >= idle_limit {
                return Err(idle(idle_limit));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = kill_process_group(self.pgid, Signal::KILL); // what it left behind
        let status = self.child.wait().map_err(|e| pipe_error("wait for", e))?;
        self.reaped = true;
        Ok(Finished {
            status,
            input_bytes,
            broken_pipe,
        })
    }

    /// Polls the open pipes for `wait`: which of stdin (writable), stdout and stderr
    /// (readable, or closed) are ready.
    fn poll(&self, wait: Duration) -> Result<[bool; 3]> {
        use rustix::fd::AsFd;
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(3);
        let mut which = Vec::with_capacity(3);
        if let Some(s) = &self.stdin {
            fds.push(PollFd::from_borrowed_fd(s.as_fd(), PollFlags::OUT));
            which.push(0);
        }
        if let Some(s) = &self.stdout {
            fds.push(PollFd::from_borrowed_fd(s.as_fd(), PollFlags::IN));
            which.push(1);
        }
        if let Some(s) = &self.stderr {
            fds.push(PollFd::from_borrowed_fd(s.as_fd(), PollFlags::IN));
            which.push(2);
        }
        let timeout = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(pipe_error("poll", e.into())),
        }
        let mut ready = [false; 3];
        for (fd, &i) in fds.iter().zip(&which) {
            ready[i] = !fd.revents().is_empty();
        }
        Ok(ready)
    }
}

/// Reads what a non-blocking pipe holds into `buf`: `Some(n)` bytes read, `None` if nothing
/// was (closing the pipe at end of file).
fn read_some<R: Read>(pipe: &mut Option<R>, buf: &mut [u8]) -> Result<Option<usize>> {
    let Some(p) = pipe else { return Ok(None) };
    match p.read(buf) {
        Ok(0) => {
            *pipe = None;
            Ok(None)
        }
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(pipe_error("read from", e)),
    }
}

fn pipe_error(what: &str, e: std::io::Error) -> Error {
    Error::UserCode {
        message: format!("cannot {what} the child process: {e}"),
    }
}

fn idle(limit: Duration) -> Error {
    Error::UserCode {
        message: format!(
            "no input read, output written or status reported for {} s: killed",
            limit.as_secs_f64()
        ),
    }
}

impl Drop for TaskProcess {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill_process_group(self.pgid, Signal::KILL);
            let _ = self.child.wait();
        }
        let raw = self.pgid.as_raw_nonzero().get();
        LIVE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&p| p != raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        out: Vec<u8>,
        err: Vec<u8>,
    }

    impl Drain for Collect {
        fn stdout(&mut self, bytes: &[u8]) {
            self.out.extend_from_slice(bytes);
        }
        fn stderr(&mut self, bytes: &[u8]) {
            self.err.extend_from_slice(bytes);
        }
        fn cancelled(&self) -> bool {
            false
        }
    }

    /// Input in 1000-byte slices.
    struct Chunks<'a>(std::slice::Chunks<'a, u8>);

    impl<'a> Feed<'a> for Chunks<'a> {
        fn feed(&mut self, slices: &mut Vec<IoSlice<'a>>) -> bool {
            match self.0.next() {
                Some(c) => {
                    slices.push(IoSlice::new(c));
                    true
                }
                None => false,
            }
        }
    }

    fn run(command: &str, input: &[u8]) -> (Result<Finished>, Collect) {
        let dir = tempfile::tempdir().expect("dir");
        let p = TaskProcess::spawn(command, dir.path(), &[("QUERN_T".into(), "42".into())])
            .expect("spawn");
        let mut collect = Collect::default();
        let result = p.pump(
            &mut Chunks(input.chunks(1000)),
            &mut collect,
            Duration::from_secs(60),
        );
        (result, collect)
    }

    #[test]
    fn a_filter_gets_all_its_input_and_gives_all_its_output() {
        // 4 MB both ways: far more than a pipe holds, so a pump that wrote before it read
        // would deadlock.
        let input: Vec<u8> = (0..4_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let (r, c) = run("cat; echo done >&2; echo $QUERN_T >&2", &input);
        let f = r.expect("pump");
        assert!(f.status.success());
        assert_eq!(f.input_bytes, input.len() as u64);
        assert!(!f.broken_pipe);
        assert_eq!(c.out, input);
        assert_eq!(c.err, b"done\n42\n");
    }

    #[test]
    fn a_child_that_stops_reading_is_a_broken_pipe_and_its_status_is_kept() {
        let input = vec![b'x'; 2_000_000];
        let (r, c) = run("head -c 10; exit 3", &input);
        let f = r.expect("pump");
        assert_eq!(f.status.code(), Some(3));
        assert!(f.broken_pipe);
        assert_eq!(c.out, b"xxxxxxxxxx");
    }

    #[test]
    fn a_silent_child_is_killed_with_its_group() {
        let dir = tempfile::tempdir().expect("dir");
        let marker = dir.path().join("pid");
        let p = TaskProcess::spawn(
            &format!("sleep 300 & echo $! > {}; wait", marker.display()),
            dir.path(),
            &[],
        )
        .expect("spawn");
        let e = p
            .pump(
                &mut Chunks([].chunks(1)),
                &mut Collect::default(),
                Duration::from_millis(300),
            )
            .expect_err("killed");
        assert!(e.to_string().contains("no input read"), "{e}");
        let pid: i32 = std::fs::read_to_string(&marker)
            .expect("pid")
            .trim()
            .parse()
            .expect("number");
        // The background `sleep` was in the group: it dies (a zombie at most, until init
        // reaps it) within moments of the kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .to_string();
            if state.is_empty() || state.starts_with('Z') {
                break;
            }
            assert!(Instant::now() < deadline, "sleep survives: {state}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
