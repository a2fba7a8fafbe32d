//! What a benchmark report says about the machine it ran on: cores, CPU, memory, kernel,
//! quern's version and commit, and the filesystems that hold its data.

use std::path::{Path, PathBuf};

use quern_runtime::Error;
use serde::{Deserialize, Serialize};

/// quern's version and the git commit it was built from ("+dirty": with uncommitted
/// changes to tracked files; "unknown": built outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("QUERN_GIT_COMMIT"),
    ")"
);

/// The git commit quern was built from.
pub const COMMIT: &str = env!("QUERN_GIT_COMMIT");

/// The machine this process runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The host name.
    pub hostname: String,
    /// Cores available to this process.
    pub cores: usize,
    /// The CPU's model name.
    pub cpu: String,
    /// Physical memory (MemTotal).
    pub memory_bytes: u64,
    /// The kernel release.
    pub kernel: String,
    /// quern's version.
    pub quern_version: String,
    /// The git commit quern was built from.
    pub quern_commit: String,
}

impl Machine {
    /// Reads the machine's description from `/proc`; what cannot be read is left empty.
    pub fn read() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default();
        Machine {
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
            cores: quern_runtime::local::default_threads(),
            cpu,
            memory_bytes: quern_runtime::local::total_memory().unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            quern_version: env!("CARGO_PKG_VERSION").to_string(),
            quern_commit: COMMIT.to_string(),
        }
    }

    /// The description as (name, value) lines, for a markdown list.
    pub fn lines(&self) -> Vec<(String, String)> {
        vec![
            ("host".into(), self.hostname.clone()),
            ("cores".into(), self.cores.to_string()),
            ("cpu".into(), self.cpu.clone()),
            (
                "memory".into(),
                format!(
                    "{:.1} GiB",
                    self.memory_bytes as f64 / f64::from(1u32 << 30)
                ),
            ),
            ("kernel".into(), self.kernel.clone()),
            (
                "quern".into(),
                format!("{} ({})", self.quern_version, self.quern_commit),
            ),
        ]
    }
}

/// The filesystem that holds a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The path asked about.
    pub path: PathBuf,
    /// Where its filesystem is mounted.
    pub mount: PathBuf,
    /// The filesystem type (ext4, tmpfs, ...).
    pub fstype: String,
    /// The mounted device.
    pub device: String,
    /// The filesystem's size.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer can still use (statvfs `f_bavail`).
    pub free_bytes: u64,
    /// The filesystem id (`st_dev`): two paths with the same id share their free space.
    pub dev: u64,
}

impl Disk {
    /// The filesystem of `path`, which must exist.
    pub fn of(path: &Path) -> Result<Disk, Error> {
        let path = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let vfs = rustix::fs::statvfs(&path).map_err(|e| Error::io(&path, e.into()))?;
        let dev = rustix::fs::stat(&path)
            .map_err(|e| Error::io(&path, e.into()))?
            .st_dev;
        let (mount, fstype, device) = mount_of(&path);
        Ok(Disk {
            total_bytes: vfs.f_blocks.saturating_mul(vfs.f_frsize),
            free_bytes: vfs.f_bavail.saturating_mul(vfs.f_frsize),
            dev,
            path,
            mount,
            fstype,
            device,
        })
    }
}

/// The mount point, filesystem type and device of the deepest mount containing `path`
/// (from `/proc/self/mountinfo`; empty when unreadable).
fn mount_of(path: &Path) -> (PathBuf, String, String) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best = (PathBuf::new(), String::new(), String::new());
    for line in info.lines() {
        // "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4).map(unescape_mount) else {
            continue;
        };
        let mut right = right.split(' ');
        let (fstype, device) = (right.next().unwrap_or(""), right.next().unwrap_or(""));
        let mount = PathBuf::from(mount);
        if path.starts_with(&mount) && mount.as_os_str().len() >= best.0.as_os_str().len() {
            best = (mount, fstype.to_string(), unescape_mount(device));
        }
    }
    best
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_and_a_disk_are_described() {
        let m = Machine::read();
        assert!(m.cores >= 1);
        assert!(m.memory_bytes > 0, "{m:?}");
        assert!(!m.kernel.is_empty(), "{m:?}");
        assert!(!m.quern_commit.is_empty());
        let dir = tempfile::tempdir().expect("tempdir");
        let d = Disk::of(dir.path()).expect("disk");
        assert!(d.total_bytes >= d.free_bytes && d.total_bytes > 0, "{d:?}");
        assert!(d.path.starts_with(&d.mount), "{d:?}");
        assert!(!d.fstype.is_empty(), "{d:?}");
        assert!(Disk::of(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount(r"/x\\y"), r"/x\\y");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
