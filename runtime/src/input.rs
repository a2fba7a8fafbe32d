//! Inputs: expanding paths, cutting splits at record boundaries, and reading a split's
//! records in place from a memory map.
//!
//! Splits are planned once, up front: for text the planner looks at the bytes around each
//! nominal boundary and moves it just past the next `\n`; for fixed-size records it rounds
//! to a multiple of the record size. A record therefore always lies inside exactly one split.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use crate::job::{InputFile, InputFormat, Record};
use crate::{Error, Result};

/// One map task's input: a byte range of a file, or a range of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Index of the file in the job's input list (0 for rows).
    pub file: u32,
    /// First byte (or row).
    pub start: u64,
    /// Length in bytes (or rows).
    pub len: u64,
}

/// Expands the user's input paths into an ordered list of files: a file stays as given; a
/// directory contributes its files recursively, sorted by name, skipping names that start
/// with `_` or `.` (job markers such as `_SUCCESS`, hidden files).
pub fn expand_inputs(paths: &[PathBuf]) -> Result<Vec<InputFile>> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            collect_dir(path, &mut files)?;
        } else {
            File::open(path).map_err(|e| Error::io(path, e))?;
            files.push(path.clone());
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
    Ok(files
        .into_iter()
        .enumerate()
        .map(|(i, path)| InputFile {
            index: i as u32,
            name: path.display().to_string(),
            path,
        })
        .collect())
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| Error::io(dir, err)))
        .collect::<Result<Vec<_>>>()?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('_') || n.starts_with('.'));
        if hidden {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            collect_dir(&path, out)?;
        } else {
            File::open(&path).map_err(|e| Error::io(&path, e))?;
            out.push(path);
        }
    }
    Ok(())
}

/// The synthetic input entry of [`InputFormat::Rows`] jobs.
pub fn rows_input() -> InputFile {
    InputFile {
        index: 0,
        path: PathBuf::new(),
        name: "rows".to_string(),
    }
}

/// Cuts `files` into splits of about `split_size` bytes at record boundaries.
///
/// Empty files get one empty split, so every file is seen by some map task. For
/// [`InputFormat::Rows`], `files` is ignored and the rows are cut into `split_size`-row splits.
pub fn plan_splits(
    files: &[InputFile],
    format: InputFormat,
    split_size: u64,
) -> Result<Vec<Split>> {
    let split_size = split_size.max(1);
    let mut splits = Vec::new();
    if let InputFormat::Rows(rows) = format {
        let mut start = 0;
        while start < rows {
            let len = split_size.min(rows - start);
            splits.push(Split {
                file: 0,
                start,
                len,
            });
            start += len;
        }
        return Ok(splits);
    }
    for input in files {
        let file = File::open(&input.path).map_err(|e| Error::io(&input.path, e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(&input.path, e))?
            .len();
        if size == 0 {
            splits.push(Split {
                file: input.index,
                start: 0,
                len: 0,
            });
            continue;
        }
        match format {
            InputFormat::Fixed(rec) => {
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
                let step = (split_size / rec).max(1) * rec;
                let mut start = 0;
                while start < size {
                    let len = step.min(size - start);
                    splits.push(Split {
                        file: input.index,
                        start,
                        len,
                    });
                    start += len;
                }
            }
            InputFormat::Lines => {
                let map = map_file(&file, &input.path, 0, size)?;
                let mut start = 0u64;
                while start < size {
                    let nominal = start + split_size;
                    let end = if nominal >= size {
                        size
                    } else {
                        // The boundary goes right after the first '\n' at or after byte nominal-1,
                        // so a line that ends exactly at the nominal boundary stays whole.
                        match memchr::memchr(b'\n', &map[(nominal - 1) as usize..]) {
                            Some(i) => nominal + i as u64,
                            None => size,
                        }
                    };
                    splits.push(Split {
                        file: input.index,
                        start,
                        len: end - start,
                    });
                    start = end;
                }
            }
            InputFormat::Rows(_) => unreachable!("handled above"),
        }
    }
    Ok(splits)
}

/// Cuts `rows` row numbers into exactly `min(parts, rows)` contiguous splits whose sizes
/// differ by at most one (split `k` starts at row `k·rows/parts`).
pub fn plan_row_splits(rows: u64, parts: u64) -> Vec<Split> {
    let parts = parts.clamp(1, rows.max(1));
    let at = |k: u64| (u128::from(k) * u128::from(rows) / u128::from(parts)) as u64;
    (0..parts)
        .map(|k| Split {
            file: 0,
            start: at(k),
            len: at(k + 1) - at(k),
        })
        .filter(|s| s.len > 0)
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

/// The mapped bytes of one split, from which records are read in place.
#[derive(Debug)]
pub struct SplitData {
    map: Option<Mmap>,
}

impl SplitData {
    /// Maps the split (nothing is mapped for empty splits and row ranges).
    pub fn open(input: &InputFile, split: &Split, format: InputFormat) -> Result<Self> {
        if split.len == 0 || matches!(format, InputFormat::Rows(_)) {
            return Ok(SplitData { map: None });
        }
        let file = File::open(&input.path).map_err(|e| Error::io(&input.path, e))?;
        Ok(SplitData {
            map: Some(map_file(&file, &input.path, split.start, split.len)?),
        })
    }

    /// The split's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Iterates the split's records in file order.
    pub fn records<'a>(
        &'a self,
        input: &'a InputFile,
        split: &Split,
        format: InputFormat,
    ) -> Records<'a> {
        Records {
            data: self.bytes(),
            pos: 0,
            base: split.start,
            rows_left: if matches!(format, InputFormat::Rows(_)) {
                split.len
            } else {
                0
            },
            format,
            input,
        }
    }
}

/// Iterator over the records of one split.
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
            let input = &files[s.file as usize];
            let data = SplitData::open(input, s, format).unwrap();
            for r in data.records(input, s, format) {
                got.push((input.index, r.offset, r.data.to_vec()));
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Splits never cut a line: reading every split yields exactly the file's lines.
        #[test]
        fn text_splits_never_cut_a_record(
            lines in proptest::collection::vec(proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'\n'), Just(b'z')], 0..40), 0..60),
            trailing_newline in any::<bool>(),
            split_size in 1u64..200,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut text: Vec<u8> = lines.join(&b'\n');
            if trailing_newline { text.push(b'\n'); }
            let path = write_file(dir.path(), "a.txt", &text);
            let files = expand_inputs(&[path]).unwrap();
            let splits = plan_splits(&files, InputFormat::Lines, split_size).unwrap();
            // Splits tile the file exactly, and each boundary is just after a '\n'.
            let mut pos = 0;
            for s in &splits {
                prop_assert_eq!(s.start, pos);
                if s.start > 0 { prop_assert_eq!(text[s.start as usize - 1], b'\n'); }
                pos += s.len;
            }
            prop_assert_eq!(pos, text.len() as u64);
            prop_assert_eq!(read_all(&files, &splits, InputFormat::Lines), expected_lines(&files, &[text]));
        }

        /// Fixed-size splits are whole records and cover the file.
        #[test]
        fn fixed_splits_never_cut_a_record(records in 0usize..50, split_size in 1u64..1000) {
            let dir = tempfile::tempdir().unwrap();
            let bytes: Vec<u8> = (0..records * 100).map(|i| (i / 100) as u8).collect();
            let path = write_file(dir.path(), "r.bin", &bytes);
            let files = expand_inputs(&[path]).unwrap();
            let splits = plan_splits(&files, InputFormat::Fixed(100), split_size).unwrap();
            for s in &splits { prop_assert_eq!(s.start % 100, 0); prop_assert_eq!(s.len % 100, 0); }
            let got = read_all(&files, &splits, InputFormat::Fixed(100));
            prop_assert_eq!(got.len(), records);
            for (i, (_, off, data)) in got.iter().enumerate() {
                prop_assert_eq!(*off, i as u64 * 100);
                prop_assert_eq!(data, &vec![i as u8; 100]);
            }
        }
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

    #[test]
    fn directories_expand_sorted_and_skip_markers() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "b", b"2\n");
        write_file(dir.path(), "a", b"1\n");
        write_file(dir.path(), "_SUCCESS", b"");
        write_file(dir.path(), ".hidden", b"x");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        write_file(&dir.path().join("sub"), "c", b"3\n");
        let files = expand_inputs(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
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
            vec![Split {
                file: 0,
                start: 0,
                len: 0
            }]
        );
        let rows = plan_splits(&[], InputFormat::Rows(25), 10).unwrap();
        assert_eq!(
            rows.iter().map(|s| (s.start, s.len)).collect::<Vec<_>>(),
            [(0, 10), (10, 10), (20, 5)]
        );
    }
}
