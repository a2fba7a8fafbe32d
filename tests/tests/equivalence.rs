//! Every job's output on a two-worker local cluster and `--in-process` on two threads (many
//! small splits, a small sort buffer) is byte-for-byte the `--sequential` output, and every
//! successful job leaves exactly `_SUCCESS` + `part-*` in its output directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quern_tests::{
    assert_committed, book, books, entries, map_tasks, p, parts, reduce_merging, run, run_with_env,
};

/// Where a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runner {
    /// The default: an embedded local cluster.
    Cluster,
    /// `--in-process --threads 2`: the thread pool.
    InProcess,
    /// `--sequential`: the reference.
    Sequential,
}

/// Split size, memory and where to run.
#[derive(Debug, Clone, Copy)]
struct Mode {
    split: &'static str,
    memory: &'static str,
    runner: Runner,
}

/// Many map tasks (64 KiB splits), on a local cluster.
const MANY_MAPS: Mode = Mode {
    split: "64KiB",
    memory: "4MiB",
    runner: Runner::Cluster,
};
/// Large splits against a 1 MiB per-task sort buffer (2 MiB / 2 threads): every map spills.
const SPILLS: Mode = Mode {
    split: "1MiB",
    memory: "2MiB",
    runner: Runner::Cluster,
};

impl Mode {
    fn sequential(self) -> Mode {
        Mode {
            runner: Runner::Sequential,
            ..self
        }
    }

    fn in_process(self) -> Mode {
        Mode {
            runner: Runner::InProcess,
            ..self
        }
    }

    fn args(self) -> Vec<String> {
        let mut a = vec![
            "--split-size".to_string(),
            self.split.to_string(),
            "--memory".to_string(),
            self.memory.to_string(),
        ];
        match self.runner {
            Runner::Sequential => a.push("--sequential".into()),
            Runner::InProcess => a.extend(["--in-process".into(), "--threads".into(), "2".into()]),
            Runner::Cluster => a.extend(["--workers".into(), "2".into()]),
        }
        a
    }

    fn label(self) -> String {
        format!("{:?}-{}-{}", self.runner, self.split, self.memory).to_lowercase()
    }
}

/// Runs `quern <args> -o <dir>/<mode> <mode args>`; returns the output dir and the map task count.
fn run_mode(args: &[String], dir: &Path, mode: Mode) -> (PathBuf, usize) {
    let out = dir.join(mode.label());
    let mut full = args.to_vec();
    full.extend(["-o".to_string(), p(&out)]);
    full.extend(mode.args());
    let o = run(&full);
    o.ok();
    assert_committed(&out, 1);
    let maps = map_tasks(&o.stderr).unwrap_or_else(|| panic!("no summary on stderr: {}", o.stderr));
    (out, maps)
}

fn assert_same_parts(
    what: &str,
    reference: &BTreeMap<String, Vec<u8>>,
    got: &BTreeMap<String, Vec<u8>>,
) {
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(got), names(reference), "{what}: different part files");
    for (name, want) in reference {
        let have = &got[name];
        if have != want {
            let at = want
                .iter()
                .zip(have)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(have.len()));
            let ctx = |b: &[u8]| {
                String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())])
                    .into_owned()
            };
            panic!(
                "{what}: {name} differs at byte {at} (sequential {} bytes, got {} bytes)\nsequential: {:?}\ngot:        {:?}",
                want.len(),
                have.len(),
                ctx(want),
                ctx(have)
            );
        }
    }
}

/// Runs a reduce job in every mode and checks all outputs equal the sequential one.
/// A reduce job's output cannot depend on split size or memory either, so the modes'
/// sequential references must agree with each other too.
fn check_reduce_job(name: &str, args: &[String], min_maps: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seq, _) = run_mode(args, dir.path(), MANY_MAPS.sequential());
    let reference = parts(&seq);
    assert_eq!(reference.len(), 3, "{name}: -r 3 must give 3 part files");
    assert!(
        reference.values().any(|b| !b.is_empty()),
        "{name}: empty output"
    );
    for mode in [
        MANY_MAPS,
        SPILLS,
        SPILLS.sequential(),
        MANY_MAPS.in_process(),
        SPILLS.in_process(),
    ] {
        let (out, maps) = run_mode(args, dir.path(), mode);
        if mode.split == MANY_MAPS.split && mode.runner != Runner::Sequential {
            assert!(
                maps >= min_maps,
                "{name}: only {maps} map tasks with {} splits",
                mode.split
            );
        }
        assert_same_parts(
            &format!("{name} {}", mode.label()),
            &reference,
            &parts(&out),
        );
    }
}

/// Runs a map-only job (part files depend on the splits) in parallel and sequential
/// mode with the same split size.
fn check_map_only_job(name: &str, args: &[String], min_maps: usize) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seq, _) = run_mode(args, dir.path(), MANY_MAPS.sequential());
    let reference = parts(&seq);
    for mode in [MANY_MAPS, MANY_MAPS.in_process()] {
        let (par, maps) = run_mode(args, dir.path(), mode);
        assert!(maps >= min_maps, "{name}: only {maps} map tasks");
        assert_same_parts(
            &format!("{name} {}", mode.label()),
            &reference,
            &parts(&par),
        );
    }
    reference
}

fn teragen(dir: &Path, records: u64, parts: u64, ascii: bool) -> PathBuf {
    let out = dir.join(if ascii { "gen-ascii" } else { "gen" });
    let mut args = vec![
        "teragen".to_string(),
        "--records".into(),
        records.to_string(),
        "--parts".into(),
        parts.to_string(),
        "-q".into(),
        "-o".into(),
        p(&out),
    ];
    if ascii {
        args.push("--ascii".into());
    }
    run(&args).ok();
    assert_committed(&out, parts as usize);
    out
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn book_args(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| p(&book(n))).collect()
}

#[test]
fn terasort_binary_parallel_equals_sequential() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two 1 MB files: one 1 MiB split each, which overflows a 1 MiB sort buffer.
    let gen = teragen(dir.path(), 20_000, 2, false);
    check_reduce_job("terasort", &strings(&["terasort", &p(&gen), "-r", "3"]), 20);
}

#[test]
fn terasort_ascii_parallel_equals_sequential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gen = teragen(dir.path(), 20_000, 2, true);
    check_reduce_job(
        "terasort --ascii",
        &strings(&["terasort", &p(&gen), "-r", "3"]),
        20,
    );
}

#[test]
fn teragen_parallel_equals_sequential() {
    let out = check_map_only_job(
        "teragen",
        &strings(&["teragen", "--records", "20000", "--parts", "5"]),
        5,
    );
    assert_eq!(out.len(), 5);
    assert_eq!(out.values().map(Vec::len).sum::<usize>(), 20_000 * 100);
}

#[test]
fn wc_parallel_equals_sequential() {
    let mut args = strings(&["wc", "-r", "3"]);
    args.extend(books().iter().map(|b| p(b)));
    check_reduce_job("wc", &args, 20);
}

#[test]
fn index_parallel_equals_sequential() {
    let mut args = strings(&["index", "-r", "3"]);
    args.extend(books().iter().map(|b| p(b)));
    check_reduce_job("index", &args, 20);
}

#[test]
fn grep_one_file_parallel_equals_sequential() {
    let mut args = strings(&["grep", "--stats", r"(?i)\b(wolf|king)\b"]);
    args.extend(book_args(&["pg-grimm.txt"]));
    let out = check_map_only_job("grep one file", &args, 5);
    assert!(out.values().any(|b| !b.is_empty()));
}

#[test]
fn grep_several_files_parallel_equals_sequential() {
    let mut args = strings(&["grep", "--stats", "Holmes|Gregor|monster|^$"]);
    args.extend(book_args(&[
        "pg-frankenstein.txt",
        "pg-metamorphosis.txt",
        "pg-sherlock_holmes.txt",
    ]));
    check_map_only_job("grep several files", &args, 10);
}

#[test]
fn grep_count_parallel_equals_sequential() {
    let mut one = strings(&["grep", "--stats", "-c", "(?i)monster"]);
    one.extend(book_args(&["pg-frankenstein.txt"]));
    let out = check_map_only_job("grep -c one file", &one, 5);
    assert_eq!(out.len(), 1, "grep -c has one reducer");

    let mut several = strings(&["grep", "--stats", "-c", "(?i)monster"]);
    several.extend(books().iter().map(|b| p(b)));
    check_map_only_job("grep -c several files", &several, 20);
}

/// grep and teravalidate print their results; the scratch directory they use must not
/// survive, and the printed output must not depend on the mode either.
#[test]
fn printing_jobs_match_sequential_and_leave_no_scratch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gen = teragen(dir.path(), 3_000, 3, false);
    let sorted = dir.path().join("sorted");
    run(strings(&[
        "terasort",
        &p(&gen),
        "-r",
        "3",
        "-q",
        "-o",
        &p(&sorted),
    ]))
    .ok();

    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("mkdir tmp");
    let books: Vec<String> = book_args(&["pg-being_ernest.txt", "pg-metamorphosis.txt"]);
    let cases: Vec<(Vec<String>, i32)> = vec![
        ([strings(&["grep", "Gregor"]), books.clone()].concat(), 0),
        (
            [strings(&["grep", "-c", "Gregor"]), books.clone()].concat(),
            0,
        ),
        (
            [strings(&["grep", "no such line, surely"]), books.clone()].concat(),
            1,
        ),
        (strings(&["teravalidate", &p(&sorted)]), 0),
        (strings(&["teravalidate", &p(&gen)]), 1),
    ];
    for (args, code) in cases {
        let mut outputs = Vec::new();
        for mode in [MANY_MAPS.sequential(), MANY_MAPS] {
            let full = [args.clone(), mode.args()].concat();
            let o = run_with_env(&full, [("TMPDIR", &tmp)]);
            o.expect_code(code);
            assert_eq!(
                entries(&tmp),
                Vec::<String>::new(),
                "`{}` left files in TMPDIR",
                o.cmdline
            );
            outputs.push(o.stdout);
        }
        assert_eq!(
            String::from_utf8_lossy(&outputs[0]),
            String::from_utf8_lossy(&outputs[1]),
            "quern {}: stdout differs between --sequential and parallel",
            args.join(" ")
        );
    }
}

/// Many more map outputs per reducer than the merge factor (16 KiB splits of the books:
/// about 200 maps, `--merge-factor 8`): reducers merge in passes through intermediate
/// runs, in every mode, and the output is byte for byte the one-pass sequential output.
#[test]
fn more_map_outputs_than_the_merge_factor_merge_in_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut base = strings(&["wc", "-r", "2", "--split-size", "16KiB"]);
    base.extend(books().iter().map(|b| p(b)));
    let run_with = |label: &str, extra: &[&str]| {
        let out = dir.path().join(label);
        let o = run([base.clone(), strings(&["-o", &p(&out)]), strings(extra)].concat());
        o.ok();
        (parts(&out), o)
    };
    let (reference, o) = run_with("one-pass", &["--sequential", "--merge-factor", "1024"]);
    assert_eq!(reduce_merging(&o.stderr), (0, 0), "{}", o.stderr);
    for (label, extra) in [
        ("cluster", &["--workers", "2"][..]),
        ("in-process", &["--in-process", "--threads", "2"][..]),
        ("sequential", &["--sequential"][..]),
    ] {
        let (got, o) = run_with(label, &[extra, &["--merge-factor", "8"][..]].concat());
        let maps = map_tasks(&o.stderr).expect("summary");
        assert!(maps > 8 * 4, "{label}: only {maps} map tasks");
        let (passes, _) = reduce_merging(&o.stderr);
        assert!(
            passes >= 2 * (maps as u64 / 8),
            "{label}: {passes} merge passes for {maps} maps:\n{}",
            o.stderr
        );
        assert_same_parts(&format!("wc merging in passes ({label})"), &reference, &got);
    }
}
