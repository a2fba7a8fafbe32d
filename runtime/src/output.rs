//! The output directory and its commit protocol.
//!
//! ```text
//! OUT/                       must be absent or empty when the job starts
//!   _temporary/              everything in flight; removed at job commit or abort
//!     work/                  map runs (intermediate data)
//!     part-00003.a1.tmp      an attempt writing partition 3
//!     part-00003             partition 3, committed by exactly one attempt
//!   part-00000 ...           moved here at job commit, then fsync(OUT)
//!   _SUCCESS                 written last: the output is complete
//! ```
//!
//! Task commit is `link(attempt, _temporary/part-N)` then unlink of the attempt file:
//! `link` refuses to replace an existing file, so the first attempt to commit wins and a
//! late loser can never overwrite or duplicate a part. Job commit renames each part into
//! place and writes `_SUCCESS` last; a failed job removes every file it made, so no
//! `part-*` file can be mistaken for output.

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

    /// Where attempt `attempt` of partition `part` writes before committing.
    pub fn attempt_file(&self, part: usize, attempt: u32) -> PathBuf {
        self.temp
            .join(format!("{}.a{attempt}.tmp", part_name(part)))
    }

    /// Commits an attempt's file as partition `part`. Returns false (and discards the file)
    /// if another attempt already committed that partition.
    pub fn commit_task(&self, attempt_file: &Path, part: usize) -> Result<bool> {
        let committed = self.temp.join(part_name(part));
        let won = match std::fs::hard_link(attempt_file, &committed) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(Error::io(&committed, e)),
        };
        std::fs::remove_file(attempt_file).map_err(|e| Error::io(attempt_file, e))?;
        Ok(won)
    }

    /// Moves all `parts` committed partitions into place, then writes `_SUCCESS`.
    pub fn commit_job(&self, parts: usize) -> Result<Vec<PathBuf>> {
        let mut out = Vec::with_capacity(parts);
        for part in 0..parts {
            let from = self.temp.join(part_name(part));
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
        // waited for): move the directory aside in one rename, so the loser's final `link`
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
    fn first_commit_wins_and_loser_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::create(&dir.path().join("out")).unwrap();
        let a = out.attempt_file(0, 0);
        let b = out.attempt_file(0, 1);
        std::fs::write(&a, b"winner").unwrap();
        std::fs::write(&b, b"loser").unwrap();
        assert!(out.commit_task(&a, 0).unwrap());
        assert!(!out.commit_task(&b, 0).unwrap());
        assert!(!b.exists());
        let parts = out.commit_job(1).unwrap();
        assert_eq!(std::fs::read(&parts[0]).unwrap(), b"winner");
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["_SUCCESS", "part-00000"]);
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
