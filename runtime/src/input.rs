//! Inputs: expanding paths, packing files into splits at record boundaries, and reading a
//! split's records in place.
//!
//! Splits are planned once, up front, over *all* input files together, as Hadoop's
//! `CombineFileInputFormat` does: the inputs are treated as one stream in input order and
//! cut every `split_size` bytes, each cut moved to a record boundary of the file it falls
//! in (just past the next `\n` for text, a multiple of the record size for fixed-size
//! records). A split is therefore a list of [`Chunk`]s — whole small files, and pieces of
//! large ones — and a tree of 100k small files is a few dozen map tasks, not 100k. A
//! record always lies inside exactly one chunk, and every record keeps its file's identity.
//! Because splits follow the input order, map-only output concatenated in split order is
//! in input order.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memmap2::{Mmap, MmapOptions};

use crate::job::{InputFile, InputFormat, Record};
use crate::{Error, Result};

/// A byte range of one input file (or a range of rows), part of a [`Split`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Index of the file in the job's input list (0 for rows).
    pub file: u32,
    /// First byte (or row).
    pub start: u64,
    /// Length in bytes (or rows).
    pub len: u64,
}

/// One map task's input: consecutive chunks of the input stream, in input order.
///
/// A record is named inside its split by its *position*: the bytes of the chunks before
/// its own plus its offset inside its chunk. Positions identify records across attempts
/// (bad-record skipping) without carrying file names around.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    /// The chunks, in input order. Empty files appear as zero-length chunks, so every
    /// file is seen by some map task.
    pub chunks: Vec<Chunk>,
}

impl Split {
    /// A split of one chunk.
    pub fn single(file: u32, start: u64, len: u64) -> Split {
        Split {
            chunks: vec![Chunk { file, start, len }],
        }
    }

    /// Total bytes (or rows) of the split.
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len).sum()
    }

    /// True when the split holds no bytes (only empty files, or nothing).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `(file, offset)` of the record at split position `pos`.
    pub fn locate(&self, pos: u64) -> Option<(u32, u64)> {
        let mut base = 0;
        for c in &self.chunks {
            if pos < base + c.len {
                return Some((c.file, c.start + pos - base));
            }
            base += c.len;
        }
        None
    }
}

/// How [`expand_inputs`] walks directories.
#[derive(Debug, Clone, Copy, Default)]
pub struct Walk {
    /// Follow symbolic links met while walking (symlinks named as inputs are always
    /// followed). A link back to one of its own ancestors is refused as an error.
    pub follow: bool,
}

/// Expands the user's input paths into an ordered list of files: a file stays as given; a
/// directory contributes its regular files recursively, in path order, skipping names that
/// start with `_` or `.` (job markers such as `_SUCCESS`, hidden files) and — unless
/// `walk.follow` — symbolic links, as `grep -r` and ripgrep do. A symlink named as an input
/// is followed. Directories are walked in parallel (the `ignore` crate, ripgrep's walker).
pub fn expand_inputs(paths: &[PathBuf]) -> Result<Vec<InputFile>> {
    expand_inputs_with(paths, Walk::default())
}

/// [`expand_inputs`] with explicit walking rules.
pub fn expand_inputs_with(paths: &[PathBuf], walk: Walk) -> Result<Vec<InputFile>> {
    let mut files: Vec<(PathBuf, u64)> = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            files.extend(walk_dir(path, walk)?);
        } else {
            File::open(path).map_err(|e| Error::io(path, e))?;
            files.push((path.clone(), meta.len()));
        }
    }
    if files.is_empty() {
        return Err(Error::Usage(format!(
            "no input files found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let count = u32::try_from(files.len())
        .map_err(|_| Error::Usage(format!("{} input files; the limit is 2^32", files.len())))?;
    debug_assert!(count as usize == files.len());
    Ok(files
        .into_iter()
        .enumerate()
        .map(|(i, (path, size))| InputFile {
            index: i as u32,
            name: path.display().to_string(),
            path,
            size,
        })
        .collect())
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with('_') || n.starts_with('.'))
}

/// The regular files below `dir` with their sizes, sorted by path (which is the order of a
/// depth-first walk that visits each directory's entries by name).
fn walk_dir(dir: &Path, walk: Walk) -> Result<Vec<(PathBuf, u64)>> {
    // A directory named through a symlink is walked at its target, and the names are
    // given back below the path the user typed.
    let is_link = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(dir, e))?
        .file_type()
        .is_symlink();
    let root = if is_link {
        std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?
    } else {
        dir.to_path_buf()
    };
    let found = Mutex::new(Vec::new());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    ignore::WalkBuilder::new(&root)
        .standard_filters(false)
        .follow_links(walk.follow)
        .threads(threads)
        .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()))
        .build_parallel()
        .run(|| {
            let (found, first_error) = (&found, &first_error);
            Box::new(
                move |entry: std::result::Result<ignore::DirEntry, ignore::Error>| {
                    let fail = |e: Error| {
                        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e);
                        ignore::WalkState::Quit
                    };
                    let entry = match entry {
                        Ok(entry) => entry,
                        Err(e) => return fail(walk_error(dir, e)),
                    };
                    if !entry.file_type().is_some_and(|t| t.is_file()) {
                        return ignore::WalkState::Continue;
                    }
                    // Opened here so that an unreadable file is refused before the job
                    // starts; its size comes from the open file (fstat), not from a
                    // second lookup of its path.
                    let path = entry.path();
                    let size = match File::open(path).and_then(|f| f.metadata()) {
                        Ok(m) => m.len(),
                        Err(e) => return fail(Error::io(path, e)),
                    };
                    found
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((path.to_path_buf(), size));
                    ignore::WalkState::Continue
                },
            )
        });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut files = found.into_inner().unwrap_or_else(|p| p.into_inner());
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if is_link {
        for (path, _) in &mut files {
            if let Ok(rel) = path.strip_prefix(&root) {
                *path = dir.join(rel);
            }
        }
    }
    Ok(files)
}

/// A walk error as the user should read it: the path, and what went wrong there.
fn walk_error(dir: &Path, e: ignore::Error) -> Error {
    fn innermost(e: &ignore::Error) -> &ignore::Error {
        match e {
            ignore::Error::WithPath { err, .. }
            | ignore::Error::WithDepth { err, .. }
            | ignore::Error::WithLineNumber { err, .. } => innermost(err),
            e => e,
        }
    }
    match innermost(&e) {
        ignore::Error::Loop { ancestor, child } => Error::Usage(format!(
            "{}: symbolic link loop: it leads back to {} (drop --follow, or remove the link)",
            child.display(),
            ancestor.display()
        )),
        _ => Error::Usage(format!("cannot walk {}: {e}", dir.display())),
    }
}

/// The synthetic input entry of [`InputFormat::Rows`] jobs.
pub fn rows_input() -> InputFile {
    InputFile {
        index: 0,
        path: PathBuf::new(),
        name: "rows".to_string(),
        size: 0,
    }
}

/// Cuts `files` into splits of about `split_size` bytes at record boundaries, packing
/// small files and the tails of large ones together (see the module docs).
///
/// Empty files become zero-length chunks, so every file is seen by some map task. For
/// [`InputFormat::Rows`], `files` is ignored and the rows are cut into `split_size`-row
/// splits.
pub fn plan_splits(
    files: &[InputFile],
    format: InputFormat,
    split_size: u64,
) -> Result<Vec<Split>> {
    let split_size = split_size.max(1);
    if let InputFormat::Rows(rows) = format {
        let mut splits = Vec::new();
        let mut start = 0;
        while start < rows {
            let len = split_size.min(rows - start);
            splits.push(Split::single(0, start, len));
            start += len;
        }
        return Ok(splits);
    }
    let mut splits = Vec::new();
    let mut current = Split::default();
    let mut filled = 0u64;
    for input in files {
        let size = input.size;
        if let InputFormat::Fixed(rec) = format {
            let rec = rec as u64;
            if size % rec != 0 {
                return Err(Error::BadInput {
                    path: input.path.clone(),
                    offset: size - size % rec,
                    message: format!(
                        "file size {size} is not a multiple of the {rec}-byte record size \
                         (trailing partial record of {} bytes)",
                        size % rec
                    ),
                });
            }
        }
        if size == 0 {
            current.chunks.push(Chunk {
                file: input.index,
                start: 0,
                len: 0,
            });
            continue;
        }
        // Mapped only if a cut falls inside this file (text needs to look for a '\n').
        let mut map: Option<Mmap> = None;
        let mut pos = 0u64;
        while pos < size {
            let room = split_size - filled;
            let end = if size - pos <= room {
                size
            } else {
                match format {
                    InputFormat::Fixed(rec) => {
                        let rec = rec as u64;
                        // At least one record when the split is still empty.
                        let whole = (room / rec).max(u64::from(filled == 0));
                        pos + whole * rec
                    }
                    _ => {
                        if map.is_none() {
                            let file =
                                File::open(&input.path).map_err(|e| Error::io(&input.path, e))?;
                            map = Some(map_file(&file, &input.path, 0, size)?);
                        }
                        let bytes = map.as_deref().unwrap_or(&[]);
                        // The cut goes right after the first '\n' at or after byte
                        // nominal-1, so a line that ends exactly at the nominal cut stays whole.
                        let nominal = pos + room;
                        match memchr::memchr(b'\n', &bytes[(nominal - 1) as usize..]) {
                            Some(i) => nominal + i as u64,
                            None => size,
                        }
                    }
                }
            };
            if end > pos {
                current.chunks.push(Chunk {
                    file: input.index,
                    start: pos,
                    len: end - pos,
                });
                filled += end - pos;
            }
            if filled >= split_size || (end == pos && filled > 0) {
                splits.push(std::mem::take(&mut current));
                filled = 0;
            }
            pos = end;
        }
    }
    if !current.chunks.is_empty() {
        splits.push(current);
    }
    Ok(splits)
}

/// Cuts `rows` row numbers into exactly `min(parts, rows)` contiguous splits whose sizes
/// differ by at most one (split `k` starts at row `k·rows/parts`).
pub fn plan_row_splits(rows: u64, parts: u64) -> Vec<Split> {
    let parts = parts.clamp(1, rows.max(1));
    let at = |k: u64| (u128::from(k) * u128::from(rows) / u128::from(parts)) as u64;
    (0..parts)
        .map(|k| Split::single(0, at(k), at(k + 1) - at(k)))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Memory-maps `len` bytes of `file` from `offset` (read-only).
pub fn map_file(file: &File, path: &Path, offset: u64, len: u64) -> Result<Mmap> {
    let len = usize::try_from(len)
        .map_err(|_| Error::Usage(format!("{}: too large to map", path.display())))?;
    // SAFETY: the mapping is read-only and private to this process. memmap2's contract is
    // that the file must not be truncated or modified while mapped; quern's documented
    // invariant is that job inputs and committed map outputs are immutable for the job's
    // lifetime (map outputs are written once, then only read). A concurrent external
    // truncation would fault (SIGBUS), never return wrong bytes silently.
    let map = unsafe { MmapOptions::new().offset(offset).len(len).map(file) }
        .map_err(|e| Error::io(path, e))?;
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(map)
}

/// Chunks below this size are read into memory rather than mapped: for a small file a
/// `read` is cheaper than setting up and tearing down a mapping, and it does not count
/// against `vm.max_map_count`. Measured on this machine (`cargo bench -p quern-benches
/// --bench sort_blocks -- small_files`, 256 files scanned): `read` beat `mmap` 2.3× at
/// 4 KiB, 2.0× at 16 and 64 KiB and 1.4× at 256 KiB; larger chunks are mapped so that a
/// task's anonymous memory does not grow with its split.
pub const READ_BELOW: u64 = 256 << 10;

/// The bytes of one chunk, from which records are read in place.
#[derive(Debug)]
pub struct ChunkData {
    bytes: ChunkBytes,
}

#[derive(Debug)]
enum ChunkBytes {
    Empty,
    Mapped(Mmap),
    Read(Vec<u8>),
}

impl ChunkData {
    /// Maps (or, below [`READ_BELOW`], reads) the chunk; nothing for empty chunks and rows.
    pub fn open(input: &InputFile, chunk: &Chunk, format: InputFormat) -> Result<Self> {
        if chunk.len == 0 || matches!(format, InputFormat::Rows(_)) {
            return Ok(ChunkData {
                bytes: ChunkBytes::Empty,
            });
        }
        let mut file = File::open(&input.path).map_err(|e| Error::io(&input.path, e))?;
        let bytes = if chunk.len < READ_BELOW {
            let mut buf = vec![0u8; chunk.len as usize];
            read_exact_at(&mut file, chunk.start, &mut buf)
                .map_err(|e| Error::io(&input.path, e))?;
            ChunkBytes::Read(buf)
        } else {
            ChunkBytes::Mapped(map_file(&file, &input.path, chunk.start, chunk.len)?)
        };
        Ok(ChunkData { bytes })
    }

    /// The chunk's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            ChunkBytes::Empty => &[],
            ChunkBytes::Mapped(m) => m,
            ChunkBytes::Read(v) => v,
        }
    }

    /// Iterates the chunk's records in file order.
    pub fn records<'a>(
        &'a self,
        input: &'a InputFile,
        chunk: &Chunk,
        format: InputFormat,
    ) -> Records<'a> {
        Records {
            data: self.bytes(),
            pos: 0,
            base: chunk.start,
            rows_left: if matches!(format, InputFormat::Rows(_)) {
                chunk.len
            } else {
                0
            },
            format,
            input,
        }
    }
}

/// Lines in `bytes` as [`InputFormat::Lines`] reads them: one per `\n`, and a last one
/// without a terminator.
pub fn line_count(bytes: &[u8]) -> u64 {
    let unterminated = bytes.last().is_some_and(|&b| b != b'\n');
    bytecount::count(bytes, b'\n') as u64 + u64::from(unterminated)
}

/// Reads exactly `buf.len()` bytes at `offset`; a file that shrank since planning is an
/// error naming how many bytes were missing.
fn read_exact_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))?;
    }
    file.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            std::io::Error::new(
                e.kind(),
                format!(
                    "file is shorter than when the job was planned ({} bytes expected from byte {offset})",
                    buf.len()
                ),
            )
        } else {
            e
        }
    })
}

/// Iterator over the records of one chunk.
#[derive(Debug)]
pub struct Records<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
    rows_left: u64,
    format: InputFormat,
    input: &'a InputFile,
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    #[inline]
    fn next(&mut self) -> Option<Record<'a>> {
        let offset = self.base + self.pos as u64;
        let data = match self.format {
            InputFormat::Rows(_) => {
                if self.rows_left == 0 {
                    return None;
                }
                self.rows_left -= 1;
                self.pos += 1;
                &[][..]
            }
            _ if self.pos >= self.data.len() => return None,
            InputFormat::Lines => {
                let rest = &self.data[self.pos..];
                match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        self.pos += i + 1;
                        &rest[..i]
                    }
                    None => {
                        self.pos = self.data.len();
                        rest
                    }
                }
            }
            InputFormat::Fixed(n) => {
                let rec = &self.data[self.pos..(self.pos + n).min(self.data.len())];
                self.pos += n;
                rec
            }
        };
        Some(Record {
            data,
            offset,
            input: self.input,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    fn read_all(
        files: &[InputFile],
        splits: &[Split],
        format: InputFormat,
    ) -> Vec<(u32, u64, Vec<u8>)> {
        let mut got = Vec::new();
        for s in splits {
            for c in &s.chunks {
                let input = &files[c.file as usize];
                let data = ChunkData::open(input, c, format).unwrap();
                for r in data.records(input, c, format) {
                    got.push((input.index, r.offset, r.data.to_vec()));
                }
            }
        }
        got
    }

    fn expected_lines(files: &[InputFile], contents: &[Vec<u8>]) -> Vec<(u32, u64, Vec<u8>)> {
        let mut want = Vec::new();
        for (f, text) in files.iter().zip(contents) {
            let mut off = 0u64;
            for line in text.split_inclusive(|b| *b == b'\n') {
                let body = line.strip_suffix(b"\n").unwrap_or(line);
                want.push((f.index, off, body.to_vec()));
                off += line.len() as u64;
            }
        }
        want
    }

    /// Checks that the chunks of `splits` tile every file exactly, in input order, with
    /// each text cut just after a '\n'.
    fn assert_tiles(files: &[InputFile], contents: &[Vec<u8>], splits: &[Split]) {
        let chunks: Vec<Chunk> = splits.iter().flat_map(|s| s.chunks.clone()).collect();
        let mut next = 0usize;
        for (f, text) in files.iter().zip(contents) {
            let mut pos = 0u64;
            loop {
                let c = chunks[next];
                assert_eq!((c.file, c.start), (f.index, pos), "chunk {next}");
                if c.start > 0 {
                    assert_eq!(text[c.start as usize - 1], b'\n');
                }
                pos += c.len;
                next += 1;
                if pos == text.len() as u64 {
                    break;
                }
            }
        }
        assert_eq!(next, chunks.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Splits never cut a line, and packing several files keeps every line exactly once,
        /// in input order, named by its own file and offset.
        #[test]
        fn text_splits_never_cut_a_record(
            contents in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'\n'), Just(b'z')], 0..300),
                1..6),
            split_size in 1u64..200,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let paths: Vec<PathBuf> = contents
                .iter()
                .enumerate()
                .map(|(i, text)| write_file(dir.path(), &format!("f{i}"), text))
                .collect();
            let files = expand_inputs(&paths).unwrap();
            let splits = plan_splits(&files, InputFormat::Lines, split_size).unwrap();
            assert_tiles(&files, &contents, &splits);
            // Every split but the last is at least the split size (files are packed).
            for s in &splits[..splits.len().saturating_sub(1)] {
                prop_assert!(s.len() >= split_size, "{s:?}");
            }
            prop_assert_eq!(read_all(&files, &splits, InputFormat::Lines), expected_lines(&files, &contents));
        }

        /// Fixed-size splits are whole records and cover every file.
        #[test]
        fn fixed_splits_never_cut_a_record(
            records in proptest::collection::vec(0usize..30, 1..5),
            split_size in 1u64..1000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let paths: Vec<PathBuf> = records
                .iter()
                .enumerate()
                .map(|(f, &n)| {
                    let bytes: Vec<u8> = (0..n * 100).map(|i| (i / 100 + f * 31) as u8).collect();
                    write_file(dir.path(), &format!("r{f}"), &bytes)
                })
                .collect();
            let files = expand_inputs(&paths).unwrap();
            let splits = plan_splits(&files, InputFormat::Fixed(100), split_size).unwrap();
            for s in &splits {
                prop_assert!(!s.chunks.is_empty());
                for c in &s.chunks { prop_assert_eq!(c.start % 100, 0); prop_assert_eq!(c.len % 100, 0); }
            }
            let got = read_all(&files, &splits, InputFormat::Fixed(100));
            let want: Vec<(u32, u64, Vec<u8>)> = records
                .iter()
                .enumerate()
                .flat_map(|(f, &n)| (0..n).map(move |i| (f as u32, i as u64 * 100, vec![(i + f * 31) as u8; 100])))
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn small_files_are_packed_into_few_splits() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..500 {
            write_file(
                dir.path(),
                &format!("f{i:03}"),
                format!("line {i}\n").as_bytes(),
            );
        }
        write_file(dir.path(), "g-empty", b"");
        let files = expand_inputs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(files.len(), 501);
        let total: u64 = files.iter().map(|f| f.size).sum();
        let splits = plan_splits(&files, InputFormat::Lines, 1024).unwrap();
        assert_eq!(splits.len() as u64, total.div_ceil(1024), "{} bytes", total);
        // The empty file is still seen, as a zero-length chunk of the last split.
        let last = splits.last().unwrap().chunks.last().unwrap();
        assert_eq!((last.file, last.len), (500, 0));
    }

    #[test]
    fn positions_locate_records_across_chunks() {
        let split = Split {
            chunks: vec![
                Chunk {
                    file: 3,
                    start: 100,
                    len: 10,
                },
                Chunk {
                    file: 4,
                    start: 0,
                    len: 0,
                },
                Chunk {
                    file: 5,
                    start: 0,
                    len: 7,
                },
            ],
        };
        assert_eq!(split.locate(0), Some((3, 100)));
        assert_eq!(split.locate(9), Some((3, 109)));
        assert_eq!(split.locate(10), Some((5, 0)));
        assert_eq!(split.locate(16), Some((5, 6)));
        assert_eq!(split.locate(17), None);
    }

    #[test]
    fn fixed_size_mismatch_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "bad.bin", &[0u8; 250]);
        let files = expand_inputs(&[path]).unwrap();
        let err = plan_splits(&files, InputFormat::Fixed(100), 64).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bad.bin")
                && msg.contains("byte 200")
                && msg.contains("multiple of the 100-byte"),
            "{msg}"
        );
        assert!(err.is_user_error());
    }

    /// The files' paths below `root`.
    fn relative(root: &Path, files: &[InputFile]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.path.strip_prefix(root).unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn directories_expand_sorted_and_skip_markers() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "b", b"2\n");
        write_file(dir.path(), "a", b"1\n");
        write_file(dir.path(), "a.txt", b"1\n");
        write_file(dir.path(), "_SUCCESS", b"");
        write_file(dir.path(), ".hidden", b"x");
        std::fs::create_dir(dir.path().join("a.d")).unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        write_file(&dir.path().join(".git"), "config", b"x");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        write_file(&dir.path().join("sub"), "c", b"3\n");
        write_file(&dir.path().join("a.d"), "z", b"3\n");
        let files = expand_inputs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(
            relative(dir.path(), &files),
            ["a", "a.d/z", "a.txt", "b", "sub/c"]
        );
    }

    #[test]
    fn symlinks_are_followed_only_when_named_or_asked() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("real")).unwrap();
        write_file(&tree.join("real"), "f", b"x\n");
        std::os::unix::fs::symlink(tree.join("real"), tree.join("link")).unwrap();
        std::os::unix::fs::symlink(tree.join("real/f"), tree.join("flink")).unwrap();
        let rel = |files: Vec<InputFile>| relative(dir.path(), &files);
        // Walking does not follow links, as grep -r and rg do not.
        assert_eq!(
            rel(expand_inputs(std::slice::from_ref(&tree)).unwrap()),
            ["tree/real/f"]
        );
        // --follow does.
        let follow = Walk { follow: true };
        assert_eq!(
            rel(expand_inputs_with(std::slice::from_ref(&tree), follow).unwrap()),
            ["tree/flink", "tree/link/f", "tree/real/f"]
        );
        // A link named as an input is followed, and keeps the name it was given by.
        assert_eq!(
            rel(expand_inputs(&[tree.join("link")]).unwrap()),
            ["tree/link/f"]
        );
        // A loop is refused with --follow, naming the link.
        std::os::unix::fs::symlink(&tree, tree.join("real/up")).unwrap();
        let err = expand_inputs_with(std::slice::from_ref(&tree), follow)
            .unwrap_err()
            .to_string();
        assert!(err.contains("loop") && err.contains("up"), "{err}");
        // Without --follow the loop is never entered.
        assert_eq!(rel(expand_inputs(&[tree]).unwrap()), ["tree/real/f"]);
    }

    #[test]
    fn missing_input_is_a_user_error_naming_the_path() {
        let err = expand_inputs(&[PathBuf::from("/nonexistent/quern-input")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/quern-input"));
        assert!(err.is_user_error());
    }

    #[test]
    fn empty_file_gets_one_empty_split_and_rows_are_cut_evenly() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "empty", b"");
        let files = expand_inputs(&[path]).unwrap();
        assert_eq!(
            plan_splits(&files, InputFormat::Lines, 10).unwrap(),
            vec![Split::single(0, 0, 0)]
        );
        let rows = plan_splits(&[], InputFormat::Rows(25), 10).unwrap();
        assert_eq!(
            rows.iter()
                .map(|s| (s.chunks[0].start, s.len()))
                .collect::<Vec<_>>(),
            [(0, 10), (10, 10), (20, 5)]
        );
    }
}
