//! File output through io_uring, behind a synchronous API.
//!
//! Map and reduce tasks run on plain CPU threads, but `tokio-uring` futures are `!Send` and
//! must run inside `tokio_uring`'s runtime. So the uring backend owns one dedicated thread
//! (`quern-uring`) that runs the runtime, receives requests over an unbounded tokio
//! channel (usable from synchronous code), spawns one local task per request and replies over
//! a crossbeam channel. Open files live in a table on that thread; callers hold only an id.
//!
//! The [`Backend::Std`] backend does the same work with blocking `std::fs` calls on the
//! caller's thread; it serves `--sequential` mode and machines without io_uring.
//!
//! **Direct I/O** ([`IoService::with_direct_io`], `--direct-io`): files are opened with
//! `O_DIRECT`, so their bytes bypass the page cache. The kernel then needs the buffer's
//! address, its length and the file offset aligned to the disk's block size, so a direct
//! writer copies what it is given into 4 KiB-aligned 1 MiB staging buffers (the one copy the
//! page cache would otherwise make) and writes those whole. The last partial block is written
//! at `finish` through an ordinary (buffered) handle, which also does the fsync.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use crossbeam::channel;
use tokio::sync::mpsc;

use crate::{Error, Result};

/// Writes a [`FileWriter`] may have in flight at once (uring backend).
const MAX_IN_FLIGHT: usize = 4;

/// Permission bits of created files (before the umask).
const FILE_MODE: u32 = 0o644;

/// Alignment of direct I/O (buffer address, length and file offset): the largest logical
/// block size of common disks.
const DIRECT_ALIGN: usize = 4096;

/// Size of a direct writer's staging buffers.
const DIRECT_BUF: usize = 1 << 20;

/// Which implementation an [`IoService`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Asynchronous writes through io_uring on a dedicated I/O thread.
    Uring,
    /// Blocking `std::fs` calls on the caller's thread.
    Std,
}

/// Handle to the file-output machinery. Cheap to clone (an `Arc` inside), `Send + Sync`.
///
/// With the uring backend the I/O thread lives until the last clone of the service (and the
/// last [`FileWriter`] created from it) is dropped; the final drop joins the thread.
#[derive(Clone)]
pub struct IoService {
    inner: Arc<Inner>,
    /// Files are created with `O_DIRECT` (see the module docs).
    direct: bool,
}

enum Inner {
    Std,
    Uring(UringShared),
}

/// Owner of the uring thread. Field order matters: the sender drops first (closing the
/// channel, which ends the thread's loop), then the thread is joined.
struct UringShared {
    tx: mpsc::UnboundedSender<Request>,
    _thread: JoinOnDrop,
}

struct JoinOnDrop(Option<thread::JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            // The I/O thread never holds a service, but never join ourselves regardless.
            if handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl fmt::Debug for IoService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoService")
            .field("backend", &self.backend())
            .field("direct", &self.direct)
            .finish()
    }
}

impl IoService {
    /// Starts the io_uring I/O thread (named `quern-uring`).
    ///
    /// Before returning, the ring is probed by actually running operations on it (a no-op,
    /// then opening `/dev/null`, writing one byte and closing it), so a kernel or sandbox that
    /// refuses io_uring yields `Err(Error::Uring(..))` here rather than failures later.
    pub fn uring() -> Result<IoService> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = channel::bounded::<io::Result<()>>(1);
        let handle = thread::Builder::new()
            .name("quern-uring".into())
            .spawn(move || uring_thread(rx, ready_tx))
            .map_err(|e| Error::Uring(format!("cannot spawn I/O thread: {e}")))?;
        let thread = JoinOnDrop(Some(handle));
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(IoService {
                inner: Arc::new(Inner::Uring(UringShared {
                    tx,
                    _thread: thread,
                })),
                direct: false,
            }),
            // `thread` joins the (exiting) I/O thread on drop.
            Ok(Err(e)) => Err(Error::Uring(format!("cannot set up the ring: {e}"))),
            Err(_) => Err(Error::Uring("I/O thread died during setup".into())),
        }
    }

    /// The synchronous `std::fs` backend; starts no thread.
    pub fn std() -> IoService {
        IoService {
            inner: Arc::new(Inner::Std),
            direct: false,
        }
    }

    /// [`IoService::uring`] if io_uring works here, else [`IoService::std`] (with a warning).
    pub fn auto() -> IoService {
        match IoService::uring() {
            Ok(service) => service,
            Err(e) => {
                tracing::warn!("io_uring unavailable, falling back to blocking I/O: {e}");
                IoService::std()
            }
        }
    }

    /// Which backend this service uses.
    pub fn backend(&self) -> Backend {
        match *self.inner {
            Inner::Std => Backend::Std,
            Inner::Uring(_) => Backend::Uring,
        }
    }

    /// The same service (one I/O thread), creating files with direct I/O if `direct`.
    pub fn with_direct_io(&self, direct: bool) -> IoService {
        IoService {
            inner: self.inner.clone(),
            direct,
        }
    }

    /// True when files are created with direct I/O.
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    /// Creates (or truncates) `path` for writing, mode `0644` before the umask.
    pub fn create(&self, path: &Path) -> Result<FileWriter> {
        let direct = self.direct;
        let opened = |e: io::Error| Error::io(path, explain_open_error(e, direct));
        let state = match &*self.inner {
            Inner::Std => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(FILE_MODE)
                    .custom_flags(open_flags(direct))
                    .open(path)
                    .map_err(opened)?;
                State::Std(file)
            }
            Inner::Uring(shared) => {
                let (reply, rx) = channel::bounded(1);
                send(
                    &shared.tx,
                    Request::Open {
                        path: path.to_path_buf(),
                        direct,
                        reply,
                    },
                )?;
                let id = wait(&rx)?.map_err(opened)?;
                State::Uring {
                    service: self.clone(),
                    id,
                    pending: VecDeque::with_capacity(MAX_IN_FLIGHT),
                }
            }
        };
        Ok(FileWriter {
            path: path.to_path_buf(),
            len: 0,
            state,
            staging: direct.then(Staging::new),
            failed: false,
            done: false,
        })
    }

    fn sender(&self) -> Option<&mpsc::UnboundedSender<Request>> {
        match &*self.inner {
            Inner::Std => None,
            Inner::Uring(shared) => Some(&shared.tx),
        }
    }
}

/// A file being written sequentially. `Send`: it may move between threads.
///
/// Call [`FileWriter::finish`] to learn whether everything reached the file; dropping an
/// unfinished writer waits for its in-flight writes (ignoring errors) and closes the file,
/// leaving whatever was written in place.
pub struct FileWriter {
    path: PathBuf,
    len: u64,
    state: State,
    /// Direct I/O: the aligned buffer being filled.
    staging: Option<Staging>,
    /// A write failed (and that error was returned once); later calls fail too.
    failed: bool,
    done: bool,
}

enum State {
    Std(std::fs::File),
    Uring {
        /// Keeps the I/O thread alive while the file is open.
        service: IoService,
        /// The file's id in the I/O thread's table.
        id: u64,
        /// Completions of in-flight writes, oldest first.
        pending: VecDeque<channel::Receiver<Completion>>,
    },
}

/// A finished write: its result, and its buffer back (for reuse).
type Completion = (io::Result<()>, Vec<u8>);

/// The aligned buffers of a direct-I/O writer.
struct Staging {
    /// `DIRECT_BUF + DIRECT_ALIGN` bytes; the aligned window starts at [`Staging::off`].
    /// Never resized, so the window stays put.
    buf: Vec<u8>,
    /// Bytes of the window filled so far.
    filled: usize,
    /// Buffers back from finished writes.
    spare: Vec<Vec<u8>>,
    /// Bytes handed to aligned writes so far: where the next one goes.
    written: u64,
}

impl Staging {
    fn new() -> Staging {
        Staging {
            buf: Self::fresh_buf(),
            filled: 0,
            spare: Vec::new(),
            written: 0,
        }
    }

    fn fresh_buf() -> Vec<u8> {
        vec![0u8; DIRECT_BUF + DIRECT_ALIGN]
    }

    /// Where the aligned window of `buf` starts.
    fn off(&self) -> usize {
        self.buf.as_ptr().align_offset(DIRECT_ALIGN)
    }

    /// Takes the first `n` bytes of the window (a multiple of [`DIRECT_ALIGN`]) to be
    /// written at the returned offset, and starts an empty window in a fresh buffer.
    fn take(&mut self, n: usize) -> (Vec<u8>, std::ops::Range<usize>, u64) {
        debug_assert!(n % DIRECT_ALIGN == 0 && n <= self.filled);
        let start = self.off();
        let fresh = self.spare.pop().unwrap_or_else(Self::fresh_buf);
        let full = std::mem::replace(&mut self.buf, fresh);
        let pos = self.written;
        self.written += n as u64;
        self.filled = 0;
        (full, start..start + n, pos)
    }
}

/// The open(2) flags beyond the usual ones.
fn open_flags(direct: bool) -> i32 {
    if direct {
        rustix::fs::OFlags::DIRECT.bits() as i32
    } else {
        0
    }
}

/// Names direct I/O in the error a filesystem without it gives (EINVAL).
fn explain_open_error(e: io::Error, direct: bool) -> io::Error {
    if direct && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "this filesystem does not support direct I/O (O_DIRECT, asked for by --direct-io)",
        )
    } else {
        e
    }
}

impl fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("FileWriter");
        d.field("path", &self.path).field("len", &self.len);
        match &self.state {
            State::Std(_) => d.field("backend", &Backend::Std),
            State::Uring { pending, .. } => d
                .field("backend", &Backend::Uring)
                .field("in_flight", &pending.len()),
        };
        d.finish()
    }
}

impl FileWriter {
    /// Append `buf` at the current end.
    ///
    /// With the uring backend this only queues the write (the buffer's ownership goes to the
    /// kernel op, no copy); at most 4 writes per file are in flight — when 4 are pending, this
    /// waits for the oldest completion before queueing. Errors from earlier writes surface
    /// here or in [`finish`](FileWriter::finish); after an error every later call fails.
    pub fn write(&mut self, buf: Vec<u8>) -> Result<()> {
        if self.failed {
            return Err(earlier_failure(&self.path));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let n = buf.len() as u64;
        let res = if self.staging.is_some() {
            self.stage(&buf)
        } else {
            let (len, pos) = (buf.len(), self.len);
            self.submit(buf, 0..len, pos)
        };
        if res.is_ok() {
            self.len += n;
        } else {
            self.failed = true;
        }
        res
    }

    /// Direct I/O: copies `bytes` into the staging window, writing each full window.
    fn stage(&mut self, mut bytes: &[u8]) -> Result<()> {
        while let Some(st) = self.staging.as_mut().filter(|_| !bytes.is_empty()) {
            let n = (DIRECT_BUF - st.filled).min(bytes.len());
            let at = st.off() + st.filled;
            st.buf[at..at + n].copy_from_slice(&bytes[..n]);
            st.filled += n;
            bytes = &bytes[n..];
            if st.filled == DIRECT_BUF {
                let (buf, range, pos) = st.take(DIRECT_BUF);
                self.submit(buf, range, pos)?;
            }
        }
        Ok(())
    }

    /// Writes `buf[range]` at `pos` (std: at the file's cursor, which is `pos`), or queues
    /// the write (uring). Buffers that come back go to the staging's spares.
    fn submit(&mut self, buf: Vec<u8>, range: std::ops::Range<usize>, pos: u64) -> Result<()> {
        let Self {
            state,
            staging,
            path,
            ..
        } = self;
        let mut recycle = |buf: Vec<u8>| {
            if let Some(st) = staging.as_mut() {
                st.spare.push(buf);
            }
        };
        match state {
            State::Std(file) => {
                file.write_all(&buf[range])
                    .map_err(|e| Error::io(&*path, e))?;
                recycle(buf);
                Ok(())
            }
            State::Uring {
                service,
                id,
                pending,
            } => {
                while pending.len() >= MAX_IN_FLIGHT {
                    recycle(reap_oldest(pending, path)?);
                }
                let tx = service.sender().ok_or_else(stopped)?;
                let (reply, rx) = channel::bounded(1);
                send(
                    tx,
                    Request::Write {
                        id: *id,
                        buf,
                        range,
                        pos,
                        reply,
                    },
                )?;
                pending.push_back(rx);
                Ok(())
            }
        }
    }

    /// Bytes queued so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been queued yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Wait for all writes, fsync if `sync` (uring: the `sync_all` op), close. Returns total
    /// bytes written.
    pub fn finish(mut self, sync: bool) -> Result<u64> {
        self.done = true;
        let mut first_err = self.failed.then(|| earlier_failure(&self.path));
        // Direct I/O: write the whole blocks still staged; keep the partial last one for a
        // buffered handle, which also syncs.
        let mut tail = None;
        if let Some(st) = self.staging.as_mut().filter(|_| first_err.is_none()) {
            let whole = st.filled / DIRECT_ALIGN * DIRECT_ALIGN;
            let off = st.off();
            let at = off + whole;
            tail = Some((
                st.written + whole as u64,
                st.buf[at..off + st.filled].to_vec(),
            ));
            if whole > 0 {
                let (buf, range, pos) = st.take(whole);
                if let Err(e) = self.submit(buf, range, pos) {
                    first_err = Some(e);
                }
            }
        }
        let sync_here = sync && tail.is_none();
        match &mut self.state {
            State::Std(file) => {
                if let Some(e) = first_err {
                    return Err(e);
                }
                if sync_here {
                    file.sync_all().map_err(|e| Error::io(&self.path, e))?;
                }
                // Closed when `self` drops.
            }
            State::Uring {
                service,
                id,
                pending,
            } => {
                while !pending.is_empty() {
                    if let Err(e) = reap_oldest(pending, &self.path) {
                        first_err.get_or_insert(e);
                    }
                }
                // Always close, even after a failed write, so the fd is released.
                let closed = close(service, *id, sync_here && first_err.is_none(), &self.path);
                if let Some(e) = first_err {
                    return Err(e);
                }
                closed?;
            }
        }
        if let Some((pos, bytes)) = tail {
            write_tail(&self.path, pos, &bytes, sync).map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(self.len)
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let State::Uring {
            service,
            id,
            pending,
            ..
        } = &mut self.state
        {
            // Buffers and kernel ops must not outlive the writer: wait, ignoring errors.
            while !pending.is_empty() {
                let _ = reap_oldest(pending, &self.path);
            }
            if let Some(tx) = service.sender() {
                let (reply, _) = channel::bounded(1);
                let _ = tx.send(Request::Close {
                    id: *id,
                    sync: false,
                    reply,
                });
            }
        }
    }
}

/// Direct I/O: writes the last partial block of a file at `pos` through a buffered handle
/// (no alignment needed), and fsyncs the file if `sync`.
fn write_tail(path: &Path, pos: u64, bytes: &[u8], sync: bool) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all_at(bytes, pos)?;
    if sync {
        file.sync_all()?;
    }
    Ok(())
}

/// Makes `dir` durable: fsyncs the directory so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn stopped() -> Error {
    Error::Uring("I/O thread stopped".into())
}

fn earlier_failure(path: &Path) -> Error {
    Error::io(
        path,
        io::Error::other("an earlier write to this file failed"),
    )
}

fn send(tx: &mpsc::UnboundedSender<Request>, req: Request) -> Result<()> {
    tx.send(req).map_err(|_| stopped())
}

fn wait<T>(rx: &channel::Receiver<T>) -> Result<T> {
    rx.recv().map_err(|_| stopped())
}

/// Waits for the oldest in-flight write of `pending`; returns its buffer.
fn reap_oldest(
    pending: &mut VecDeque<channel::Receiver<Completion>>,
    path: &Path,
) -> Result<Vec<u8>> {
    match pending.pop_front() {
        Some(rx) => {
            let (res, buf) = wait(&rx)?;
            res.map_err(|e| Error::io(path, e))?;
            Ok(buf)
        }
        None => Ok(Vec::new()),
    }
}

fn close(service: &IoService, id: u64, sync: bool, path: &Path) -> Result<()> {
    let tx = service.sender().ok_or_else(stopped)?;
    let (reply, rx) = channel::bounded(1);
    send(tx, Request::Close { id, sync, reply })?;
    wait(&rx)?.map_err(|e| Error::io(path, e))
}

// ---------------------------------------------------------------------------------------------
// The I/O thread.

/// Work for the I/O thread. Every reply channel has capacity 1, so replying never blocks.
enum Request {
    /// Create/truncate `path`; reply with the new file's id.
    Open {
        path: PathBuf,
        /// With `O_DIRECT`.
        direct: bool,
        reply: channel::Sender<io::Result<u64>>,
    },
    /// Write all of `buf[range]` at `pos` (looping over short writes); reply with `buf`.
    Write {
        id: u64,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
        pos: u64,
        reply: channel::Sender<Completion>,
    },
    /// Optionally fsync, then close and forget the file. The caller has no writes in flight.
    Close {
        id: u64,
        sync: bool,
        reply: channel::Sender<io::Result<()>>,
    },
}

type FileTable = std::rc::Rc<std::cell::RefCell<HashMap<u64, std::rc::Rc<tokio_uring::fs::File>>>>;

fn uring_thread(mut rx: mpsc::UnboundedReceiver<Request>, ready: channel::Sender<io::Result<()>>) {
    // Not `tokio_uring::start`: it unwraps the ring setup, and we want the error.
    let rt = match tokio_uring::Runtime::new(&tokio_uring::builder()) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let probed = probe().await;
        let ok = probed.is_ok();
        let _ = ready.send(probed);
        if !ok {
            return;
        }

        let files: FileTable = Default::default();
        let mut next_id = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                req = rx.recv() => match req {
                    Some(req) => {
                        let files = files.clone();
                        match req {
                            Request::Open { path, direct, reply } => {
                                let id = next_id;
                                next_id += 1;
                                tasks.spawn_local(open(files, id, path, direct, reply));
                            }
                            Request::Write { id, buf, range, pos, reply } => {
                                tasks.spawn_local(write(files, id, buf, range, pos, reply));
                            }
                            Request::Close { id, sync, reply } => {
                                tasks.spawn_local(close_file(files, id, sync, reply));
                            }
                        }
                    }
                    // Every sender is gone: finish what was started, then exit.
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        while tasks.join_next().await.is_some() {}
        // Files whose writers leaked: closed synchronously as the table drops.
        files.borrow_mut().clear();
    });
}

/// Checks that the ring really executes the operations we use.
async fn probe() -> io::Result<()> {
    tokio_uring::no_op().await?;
    let file = tokio_uring::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .await?;
    let (res, _) = file.write_all_at(vec![0u8], 0).await;
    res?;
    file.close().await
}

fn unknown_file() -> io::Error {
    io::Error::other("quern-uring: unknown file id")
}

async fn open(
    files: FileTable,
    id: u64,
    path: PathBuf,
    direct: bool,
    reply: channel::Sender<io::Result<u64>>,
) {
    let res = tokio_uring::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(open_flags(direct))
        .open(&path)
        .await;
    let res = res.map(|file| {
        files.borrow_mut().insert(id, std::rc::Rc::new(file));
        id
    });
    let _ = reply.send(res);
}

async fn write(
    files: FileTable,
    id: u64,
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
    pos: u64,
    reply: channel::Sender<Completion>,
) {
    use tokio_uring::buf::BoundedBuf as _;
    let file = files.borrow().get(&id).cloned();
    drop(files);
    let res = match file {
        // `write_all_at` loops over short writes and fails with `WriteZero` on a 0-byte one.
        Some(file) => {
            let (res, slice) = file.write_all_at(buf.slice(range), pos).await;
            (res, slice.into_inner())
        }
        None => (Err(unknown_file()), buf),
    };
    // `file` (our reference to it) is dropped before the caller can learn the write is done,
    // so a following Close finds the table's reference unique.
    let _ = reply.send(res);
}

async fn close_file(files: FileTable, id: u64, sync: bool, reply: channel::Sender<io::Result<()>>) {
    let file = files.borrow_mut().remove(&id);
    drop(files);
    let Some(file) = file else {
        let _ = reply.send(Err(unknown_file()));
        return;
    };
    let synced = if sync { file.sync_all().await } else { Ok(()) };
    let closed = match std::rc::Rc::try_unwrap(file) {
        Ok(file) => file.close().await,
        // Cannot happen (no writes in flight); the fd closes when the last reference drops.
        Err(_) => Ok(()),
    };
    let _ = reply.send(synced.and(closed));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    /// Both backends, buffered and with direct I/O.
    fn backends() -> Vec<IoService> {
        let (std, uring) = (IoService::std(), IoService::uring().unwrap());
        vec![
            std.with_direct_io(true),
            uring.with_direct_io(true),
            std,
            uring,
        ]
    }

    /// The open(2) flags of this process's descriptor of `path` (from /proc/self/fdinfo).
    fn open_flags_of(path: &Path) -> Option<u32> {
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            if std::fs::read_link(entry.path()).ok().as_deref() == Some(path) {
                let info =
                    std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(entry.file_name()))
                        .ok()?;
                let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
                return u32::from_str_radix(flags.trim(), 8).ok();
            }
        }
        None
    }

    #[test]
    fn direct_writers_open_with_o_direct_and_write_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(dir.path()).unwrap();
        let direct = rustix::fs::OFlags::DIRECT.bits();
        for (i, s) in backends().iter().enumerate() {
            let path = dir.join(format!("d-{i}"));
            let mut w = s.create(&path).unwrap();
            // Unaligned sizes: a partial block at every write and at the end.
            let bufs: Vec<Vec<u8>> = (0..9u32)
                .map(|k| {
                    (0..(k * 777_777 % 1_500_000 + 1))
                        .map(|j| (j ^ k) as u8)
                        .collect()
                })
                .collect();
            let expected = bufs.concat();
            for b in bufs {
                w.write(b).unwrap();
            }
            let flags = open_flags_of(&path).expect("the writer's descriptor");
            assert_eq!(flags & direct != 0, s.direct_io(), "{s:?}: flags {flags:o}");
            assert_eq!(w.finish(true).unwrap(), expected.len() as u64);
            let got = std::fs::read(&path).unwrap();
            assert!(
                got == expected,
                "{s:?}: {} of {} bytes",
                got.len(),
                expected.len()
            );
        }
    }

    /// Deterministic pseudo-random buffer sizes, including empty and > 1 MiB.
    fn buffers(seed: u64) -> Vec<Vec<u8>> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = vec![Vec::new(), vec![1], (0..=255u8).collect()];
        out.push((0..(1 << 20) + 12_345).map(|_| next() as u8).collect());
        for i in 0..40 {
            let len = match next() % 4 {
                0 => 0,
                1 => (next() % 17) as usize,
                2 => (next() % 70_000) as usize,
                _ => (next() % 300_000) as usize,
            };
            let fill = (i as u8).wrapping_mul(31);
            out.push((0..len).map(|j| fill ^ j as u8).collect());
        }
        out.push(vec![7; 3 << 20]);
        out
    }

    fn write_and_check(service: &IoService, path: &Path, bufs: Vec<Vec<u8>>, sync: bool) {
        let expected: Vec<u8> = bufs.concat();
        let mut w = service.create(path).unwrap();
        assert!(w.is_empty());
        let mut queued = 0u64;
        for b in bufs {
            queued += b.len() as u64;
            w.write(b).unwrap();
            assert_eq!(w.len(), queued);
        }
        assert_eq!(w.is_empty(), expected.is_empty());
        assert_eq!(w.finish(sync).unwrap(), expected.len() as u64);
        let got = std::fs::read(path).unwrap();
        assert_eq!(got.len(), expected.len(), "{}", path.display());
        assert!(got == expected, "content mismatch in {}", path.display());
    }

    #[test]
    fn uring_is_available_here() {
        let s = IoService::uring().unwrap();
        assert_eq!(s.backend(), Backend::Uring);
        assert_eq!(IoService::std().backend(), Backend::Std);
        assert_eq!(IoService::auto().backend(), Backend::Uring);
    }

    #[test]
    fn writes_concatenate() {
        let dir = tempfile::tempdir().unwrap();
        for (i, s) in backends().iter().enumerate() {
            let path = dir.path().join(format!("out-{i}"));
            write_and_check(s, &path, buffers(i as u64), true);
            write_and_check(s, &path, buffers(100 + i as u64), false); // truncates
            write_and_check(s, &path, Vec::new(), true); // empty file
            write_and_check(s, &path, vec![Vec::new(), Vec::new()], false);
        }
    }

    #[test]
    fn created_with_mode_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (i, s) in backends().iter().enumerate() {
            let path = dir.path().join(format!("m-{i}"));
            s.create(&path).unwrap().finish(false).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & !0o644, 0, "mode {mode:o}");
        }
    }

    #[test]
    fn missing_directory_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("part-0");
        for s in backends() {
            let err = s.create(&path).unwrap_err();
            assert!(matches!(err, Error::Io { .. }), "{err:?}");
            assert!(err.is_user_error());
            let msg = err.to_string();
            assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
        }
    }

    #[test]
    fn write_error_names_the_path() {
        // /dev/full accepts the open and fails every write with ENOSPC.
        let path = Path::new("/dev/full");
        if !path.exists() {
            return;
        }
        for s in backends() {
            let mut w = match s.create(path) {
                Ok(w) => w,
                Err(_) => return, // not writable in this sandbox
            };
            let mut err = None;
            for _ in 0..10 {
                if let Err(e) = w.write(vec![0; 4096]) {
                    err = Some(e);
                    break;
                }
            }
            let err = match err {
                Some(e) => {
                    // Poisoned afterwards; finish still closes the file and reports failure.
                    assert!(w.write(vec![1]).is_err());
                    assert!(w.finish(false).is_err());
                    e
                }
                None => w.finish(false).unwrap_err(),
            };
            assert!(err.to_string().contains("/dev/full"), "{err}");
        }
    }

    #[test]
    fn dropping_unfinished_writer_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        for (i, s) in backends().into_iter().enumerate() {
            let path = dir.path().join(format!("d-{i}"));
            let mut w = s.create(&path).unwrap();
            for _ in 0..10 {
                w.write(vec![b'x'; 1 << 20]).unwrap();
            }
            drop(w);
            // Everything queued was waited for; the file stays.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 10 << 20);
            // Service dropped while a writer is still alive: the writer keeps the thread up.
            let mut w = s.create(&path).unwrap();
            drop(s);
            w.write(vec![1, 2, 3]).unwrap();
            assert_eq!(w.finish(false).unwrap(), 3);
            assert_eq!(std::fs::read(&path).unwrap(), [1, 2, 3]);
        }
    }

    #[test]
    fn many_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        for (b, s) in backends().into_iter().enumerate() {
            thread::scope(|scope| {
                for t in 0..4u64 {
                    let s = s.clone();
                    let dir = dir.path();
                    scope.spawn(move || {
                        let mut open: Vec<(PathBuf, FileWriter, Vec<u8>)> = (0..8u64)
                            .map(|f| {
                                let path = dir.join(format!("c-{b}-{t}-{f}"));
                                let w = s.create(&path).unwrap();
                                (path, w, Vec::new())
                            })
                            .collect();
                        // Interleave writes across the 8 open files.
                        for round in 0..20u64 {
                            for (f, (_, w, expect)) in open.iter_mut().enumerate() {
                                let len =
                                    ((round * 7919 + f as u64 * 104_729 + t) % 50_000) as usize;
                                let buf: Vec<u8> =
                                    (0..len).map(|i| (i as u64 ^ round ^ t) as u8).collect();
                                expect.extend_from_slice(&buf);
                                w.write(buf).unwrap();
                            }
                        }
                        for (path, w, expect) in open.drain(..) {
                            assert_eq!(w.finish(false).unwrap(), expect.len() as u64);
                            assert!(std::fs::read(&path).unwrap() == expect);
                        }
                    });
                }
            });
        }
    }

    #[test]
    fn thread_exits_when_last_clone_drops() {
        let s = IoService::uring().unwrap();
        let s2 = s.clone();
        let h = thread::spawn(move || s2.backend());
        assert_eq!(h.join().unwrap(), Backend::Uring);
        // The final drop joins the I/O thread; this must return.
        drop(s);
    }

    #[test]
    fn sync_dir_works_and_reports_path() {
        let dir = tempfile::tempdir().unwrap();
        sync_dir(dir.path()).unwrap();
        let missing = dir.path().join("gone");
        let err = sync_dir(&missing).unwrap_err();
        assert!(err.to_string().contains(&*missing.to_string_lossy()));
    }

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn auto_traits() {
        assert_send_sync::<IoService>();
        assert_send::<FileWriter>();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn arbitrary_chunks_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 0..40),
            sync in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            for (i, s) in backends().iter().enumerate() {
                write_and_check(s, &dir.path().join(format!("p-{i}")), chunks.clone(), sync);
            }
        }
    }
}
