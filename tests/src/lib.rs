//! Black-box integration tests of the `quern` command line.
//!
//! The tests in `tests/tests/*.rs` run the real `quern` binary as a child process and look
//! only at what a user can see: exit codes, stdout, stderr and the files of the output
//! directory. This library holds the few helpers they share:
//!
//! - [`quern`]: the path of the binary, built once per test executable with the same
//!   profile as the tests (override with `QUERN_BIN`).
//! - [`run`] / [`run_with_env`]: run `quern` with arguments and capture its [`Outcome`].
//! - [`parts`], [`concat_parts`], [`entries`], [`assert_committed`]: read an output directory.
//! - [`data_dir`], [`books`]: the Gutenberg corpus (`QUERN_DATA`, default
//!   `<workspace>/../shared/data/gutenberg`).
//! - [`cluster`]: processes killed and reaped on drop, bounded waits, hand-started
//!   coordinators and workers, `/proc` checks (the distributed-runtime tests).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub mod cluster;

/// Path of the `quern` binary, building it first (once per test executable).
///
/// `cargo build -p quern-jobs --bin quern` runs, with the test executable's profile, every
/// time a test executable starts, so the binary is never stale; it is a no-op when nothing
/// changed. It builds into its own target directory (`target/quern-bin`): `cargo test
/// --workspace` resolves dependency features differently (dev-dependencies count), and
/// sharing one directory would make the two builds invalidate each other on every run.
/// Set `QUERN_BIN` to use another binary.
pub fn quern() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("QUERN_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => build(&["--bin", "quern"], Path::new("quern")),
    })
}

/// Path of the example binary `name` of `quern-jobs` (`jobs/examples/NAME.rs`), built as
/// [`quern`] is.
pub fn example(name: &str) -> PathBuf {
    build(&["--example", name], &Path::new("examples").join(name))
}

/// Runs `cargo build -p quern-jobs WHAT` into `target/quern-bin` with the test executable's
/// profile, and returns the path of the binary `bin` (relative to the profile's directory).
fn build(what: &[&str], bin: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").join("quern-bin");
    let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") => "dev".to_string(),
        Some(name) => name.to_string(),
        None if cfg!(debug_assertions) => "dev".to_string(),
        None => "release".to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "quern-jobs"])
        .args(what)
        .args(["--profile", &profile])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(workspace_root())
        .status()
        .expect("running cargo build");
    assert!(
        status.success(),
        "cargo build -p quern-jobs {} failed: {status}",
        what.join(" ")
    );
    let out_dir = match profile.as_str() {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    };
    let mut bin = target_dir.join(out_dir).join(bin);
    bin.as_mut_os_string().push(std::env::consts::EXE_SUFFIX);
    assert!(bin.is_file(), "{} missing after cargo build", bin.display());
    bin
}

/// A small deterministic generator (splitmix64), for inputs and fault schedules that a
/// seed replays.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Gutenberg corpus directory: `$QUERN_DATA`, or `<workspace>/../shared/data/gutenberg`.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("QUERN_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/data/gutenberg"));
    assert!(
        dir.is_dir(),
        "corpus directory {} not found; set QUERN_DATA",
        dir.display()
    );
    dir
}

/// The corpus's `*.txt` books, sorted by name.
pub fn books() -> Vec<PathBuf> {
    let mut books: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .expect("read corpus dir")
        .map(|e| e.expect("corpus dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    books.sort();
    assert!(
        !books.is_empty(),
        "no *.txt books in {}",
        data_dir().display()
    );
    books
}

/// One book of the corpus by file name, e.g. `pg-grimm.txt`.
pub fn book(name: &str) -> PathBuf {
    let path = data_dir().join(name);
    assert!(path.is_file(), "{} missing from the corpus", path.display());
    path
}

/// What a `quern` run left behind.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr (lossily decoded).
    pub stderr: String,
    /// The command line, for messages.
    pub cmdline: String,
}

impl Outcome {
    /// stdout, lossily decoded.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with the full context unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "`{}` exited {} (expected {code})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.code,
            self.stdout_str(),
            self.stderr
        );
        self
    }

    /// Panics unless the run succeeded.
    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }

    /// Asserts the user-error contract: exit code 2 and stderr is exactly one line starting
    /// with `quern: error:`. Returns that line.
    pub fn user_error(&self) -> &str {
        self.expect_code(2);
        let line = self.stderr.strip_suffix('\n').unwrap_or(&self.stderr);
        assert!(
            line.starts_with("quern: error:")
                && !line.contains('\n')
                && self.stderr.ends_with('\n'),
            "`{}`: stderr must be one line starting with \"quern: error:\", got:\n{}",
            self.cmdline,
            self.stderr
        );
        line
    }
}

/// Runs `quern` with `args`.
pub fn run<I, S>(args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_env(args, std::iter::empty::<(&str, &OsStr)>())
}

/// Runs `quern` with `args` and extra environment variables.
pub fn run_with_env<I, S, E, K, V>(args: I, env: E) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
    E: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    run_program(quern(), args, env)
}

/// Runs the program `bin` with `args` and extra environment variables.
pub fn run_program<I, S, E, K, V>(bin: &Path, args: I, env: E) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
    E: IntoIterator<Item = (K, V)>,
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let name = bin.file_name().unwrap_or(bin.as_os_str()).to_string_lossy();
    let cmdline = std::iter::once(name.into_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(bin)
        .args(&args)
        .envs(env)
        .output()
        .unwrap_or_else(|e| panic!("spawning `{cmdline}`: {e}"));
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        cmdline,
    }
}

/// The names in `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("UTF-8 file name")
        })
        .collect();
    names.sort();
    names
}

/// The `part-*` files of `dir` by name, with their bytes.
pub fn parts(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    entries(dir)
        .into_iter()
        .filter(|n| n.starts_with("part-"))
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap_or_else(|e| panic!("read {n}: {e}"));
            (n, bytes)
        })
        .collect()
}

/// The `part-*` files of `dir` concatenated in name order.
pub fn concat_parts(dir: &Path) -> Vec<u8> {
    parts(dir).into_values().flatten().collect()
}

/// Asserts that `dir` is a committed output directory: `_SUCCESS` (empty) plus at least
/// `min_parts` `part-NNNNN` files numbered from 0 without gaps, and nothing else — except
/// `_journal`, the coordinator's record of the job, which cluster runs leave beside them.
pub fn assert_committed(dir: &Path, min_parts: usize) {
    let names: Vec<String> = entries(dir)
        .into_iter()
        .filter(|n| n != "_journal")
        .collect();
    let part_names: Vec<&String> = names.iter().filter(|n| n.starts_with("part-")).collect();
    let expected: Vec<String> = (0..part_names.len())
        .map(|i| format!("part-{i:05}"))
        .collect();
    let mut want = expected.clone();
    want.push("_SUCCESS".to_string());
    want.sort();
    assert_eq!(
        names,
        want,
        "{} must hold exactly _SUCCESS and part-00000.. files",
        dir.display()
    );
    assert!(
        part_names.len() >= min_parts,
        "{}: {} part files, expected at least {min_parts}",
        dir.display(),
        part_names.len()
    );
    let success = std::fs::metadata(dir.join("_SUCCESS")).expect("_SUCCESS");
    assert_eq!(success.len(), 0, "_SUCCESS should be empty");
}

/// Splits `text` into lines like quern does: on `\n`, the final line may lack it.
pub fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let empty = text.is_empty();
    body.split(|b| *b == b'\n').filter(move |_| !empty)
}

/// The summary's reduce merging line: `(merge passes, fetched bytes spilled to disk)`, or
/// `(0, 0)` when the job printed none (it merged in one pass and spilled nothing).
pub fn reduce_merging(stderr: &str) -> (u64, u64) {
    stderr
        .lines()
        .find_map(|l| {
            let rest = l.split_once(": reduce: ")?.1;
            let passes = rest.split_once(" merge passes")?.0.parse().ok()?;
            let spilled = rest
                .split_once("; ")?
                .1
                .split_once(" fetched bytes spilled")?
                .0
                .parse()
                .ok()?;
            Some((passes, spilled))
        })
        .unwrap_or((0, 0))
}

/// Parses the `N` of a summary line such as `quern wc: N map tasks, ...` on stderr.
pub fn map_tasks(stderr: &str) -> Option<usize> {
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("quern ")?;
        let (_, rest) = rest.split_once(": ")?;
        rest.split_once(" map tasks")?.0.parse().ok()
    })
}

/// A [`Path`]-ish argument as an owned `String` (for building argument vectors).
pub fn p(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").to_string()
}
