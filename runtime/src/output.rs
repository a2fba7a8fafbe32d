//! The output directory and its commit protocol.
//!
//! ```text
//! OUT/                       must be absent or empty when the job starts
//!   _temporary/              everything in flight; removed at job commit or abort
//!     work/                  map runs (intermediate data)
//!     part-00003.a17.tmp     attempt 17 writing partition 3
//!     part-00003.a17         attempt 17's finished output for partition 3
//!     part-00003.a21         a backup's finished output for the same partition
//!   part-00000 ...           moved here at job commit, then fsync(OUT)
//!   _SUCCESS                 written last: the output is complete
//! ```
//!
//! One arbiter decides which attempt's output counts: the scheduler, which commits the
//! first attempt to report success and journals that choice. Attempts never race on the
//! disk: each finishes by renaming its own `.tmp` file to its own finished name
//! ([`OutputDir::finish_attempt`]), and job commit ([`OutputDir::commit_job`]) renames the
//! chosen attempt's file of each partition into place, so the output, the journal, the
//! counters and the report always describe the same attempt. `_SUCCESS` is written last;
//! the other attempts' files go with `_temporary`, and a failed job removes every file it
//! made, so no `part-*` file can be mistaken for output.

use std::path::{Path, PathBuf};

use crate::io::sync_dir;
use crate::{Error, Result};

/// A job's output directory.
#[derive(Debug)]
pub struct OutputDir {
    root: PathBuf,
    temp: PathBuf,
    created_root: bool,
}

/// The file name of partition `part`.
pub fn part_name(part: usize) -> String {
    format!("part-{part:05}")
}

impl OutputDir {
    /// Claims `root` for a job: it must not exist, or be an empty directory.
    pub fn create(root: &Path) -> Result<Self> {
        let created_root = match std::fs::metadata(root) {
            Ok(meta) if !meta.is_dir() => {
                return Err(Error::Usage(format!(
                    "output {} exists and is not a directory",
                    root.display()
                )))
            }
            Ok(_) => {
                let mut entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
                if let Some(entry) = entries.next() {
                    let entry = entry.map_err(|e| Error::io(root, e))?;
                    return Err(Error::Usage(format!(
                        "output directory {} already holds output (found {}); remove it or choose another",
                        root.display(),
                        entry.file_name().to_string_lossy()
                    )));
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
                true
            }
            Err(e) => return Err(Error::io(root, e)),
        };
        let temp = root.join("_temporary");
        std::fs::create_dir_all(temp.join("work")).map_err(|e| Error::io(&temp, e))?;
        Ok(OutputDir {
            root: root.to_path_buf(),
            temp,
            created_root,
        })
    }

    /// Opens a directory that a coordinator has already claimed, to write and commit task
    /// attempts into it (workers do this; only the claimer commits or aborts the job).
    pub fn open(root: &Path) -> Self {
        OutputDir {
            root: root.to_path_buf(),
            temp: root.join("_temporary"),
            created_root: false,
        }
    }

    /// The final output directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory for intermediate map runs.
    pub fn work_dir(&self) -> PathBuf {
        self.temp.join("work")
    }

    /// Where attempt `attempt` of partition `part` writes.
    pub fn attempt_file(&self, part: usize, attempt: u64) -> PathBuf {
        self.temp
            .join(format!("{}.a{attempt}.tmp", part_name(part)))
    }

    /// Attempt `attempt`'s finished output for partition `part`.
    fn finished_file(&self, part: usize, attempt: u64) -> PathBuf {
        self.temp.join(format!("{}.a{attempt}", part_name(part)))
    }

    /// Marks attempt `attempt`'s file for partition `part` (written at
    /// [`OutputDir::attempt_file`]) finished, with one rename; job commit moves it into
    /// place if the scheduler chose this attempt.
    pub fn finish_attempt(&self, part: usize, attempt: u64) -> Result<()> {
        let from = self.attempt_file(part, attempt);
        let to = self.finished_file(part, attempt);
        std::fs::rename(&from, &to).map_err(|e| Error::io(&from, e))
    }

    /// Moves the finished file of attempt `winners[p]` of each partition `p` into place,
    /// then writes `_SUCCESS`. Safe to repeat after a crash part-way through.
    pub fn commit_job(&self, winners: &[u64]) -> Result<Vec<PathBuf>> {
        let mut out = Vec::with_capacity(winners.len());
        for (part, &attempt) in winners.iter().enumerate() {
            let from = self.finished_file(part, attempt);
            let to = self.root.join(part_name(part));
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                // Already moved by a job commit that a crash interrupted.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => {}
                Err(e) => return Err(Error::io(&from, e)),
            }
            out.push(to);
        }
        sync_dir(&self.root)?;
        let success = self.root.join("_SUCCESS");
        std::fs::File::create(&success)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&success, e))?;
        // A losing attempt may still be writing in `_temporary` (it was cancelled, not
        // waited for): move the directory aside in one rename, so the loser's final rename
        // fails harmlessly, then delete it best-effort.
        let trash = self.root.join("_temporary.done");
        match std::fs::rename(&self.temp, &trash) {
            Ok(()) => {
                for _ in 0..3 {
                    if std::fs::remove_dir_all(&trash).is_ok() || !trash.exists() {
                        break;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&self.temp, e)),
        }
        sync_dir(&self.root)?;
        Ok(out)
    }

    /// Removes everything the job wrote (best effort): no partial output survives.
    pub fn abort(&self) {
        let _ = std::fs::remove_dir_all(&self.temp);
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("part-") || name == "_SUCCESS" || name == "_journal" {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if self.created_root {
            let _ = std::fs::remove_dir(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chosen_attempt_is_committed_and_the_others_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::create(&dir.path().join("out")).unwrap();
        // Attempt 1 finishes first on the disk; the scheduler chose attempt 1 << 40 (an id
        // past u32, kept whole).
        let (first, chosen) = (1, 1 << 40);
        for (attempt, bytes) in [(first, &b"first on disk"[..]), (chosen, b"chosen")] {
            std::fs::write(out.attempt_file(0, attempt), bytes).unwrap();
            out.finish_attempt(0, attempt).unwrap();
        }
        // Partition 1 has one attempt, and a loser that never finished.
        std::fs::write(out.attempt_file(1, 5), b"one").unwrap();
        out.finish_attempt(1, 5).unwrap();
        std::fs::write(out.attempt_file(1, 6), b"half").unwrap();
        let parts = out.commit_job(&[chosen, 5]).unwrap();
        assert_eq!(std::fs::read(&parts[0]).unwrap(), b"chosen");
        assert_eq!(std::fs::read(&parts[1]).unwrap(), b"one");
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["_SUCCESS", "part-00000", "part-00001"]);
        // A repeated commit (a resumed coordinator) finds the parts in place.
        assert_eq!(out.commit_job(&[chosen, 5]).unwrap(), parts);
    }

    #[test]
    fn non_empty_output_is_refused_and_abort_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("part-00000"), b"old").unwrap();
        let err = OutputDir::create(&root).unwrap_err();
        assert!(
            err.is_user_error() && err.to_string().contains("already holds output"),
            "{err}"
        );
        assert_eq!(std::fs::read(root.join("part-00000")).unwrap(), b"old");

        let fresh = dir.path().join("fresh");
        let out = OutputDir::create(&fresh).unwrap();
        std::fs::write(out.attempt_file(0, 0), b"x").unwrap();
        out.abort();
        assert!(!fresh.exists());
    }
}
