//! A user's own job in their own binary: `jobs/examples/reverse_links.rs`, which registers
//! the job and calls `quern_jobs::cli::main_with_default`. It runs on the embedded local
//! cluster of its own processes, matches an independent computation and `--sequential`, and
//! a cluster of plain `quern` processes refuses it by name.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use quern_tests::cluster::{coordinator_addr, new_secret, wait_joined, Proc};
use quern_tests::{assert_committed, concat_parts, example, p, parts, quern, run_program, Rng};

/// Link files: `SOURCE TARGET` lines with skewed targets (a few pages most linked to),
/// repeated links, tabs, runs of spaces and CRLF endings, and lines that are not links
/// (empty, one field, three fields). The last file ends without a newline.
fn link_files(dir: &Path) -> Vec<PathBuf> {
    let mut rng = Rng(2004);
    (0..3)
        .map(|f| {
            let mut text = String::new();
            for _ in 0..20_000 {
                let source = format!("page{}", rng.range(0, 5_000));
                // Skew: half the links go to 20 pages.
                let target = if rng.range(0, 2) == 0 {
                    format!("page{}", rng.range(0, 20))
                } else {
                    format!("page{}", rng.range(0, 5_000))
                };
                let line = match rng.range(0, 100) {
                    0 => String::new(),
                    1 => source.clone(),
                    2 => format!("{source} {target} extra"),
                    3 => format!("{source}\t{target}\r"),
                    4 => format!("  {source}   {target}  "),
                    _ => format!("{source} {target}"),
                };
                text.push_str(&line);
                text.push('\n');
            }
            if f == 2 {
                text.push_str("pageZ pageLast"); // no terminator: still a line
            }
            let path = dir.join(format!("links-{f}.txt"));
            std::fs::write(&path, text).expect("write links");
            path
        })
        .collect()
}

/// The job's output computed here: sorted `TARGET\tS1,S2,...` lines, and the bad lines.
fn expected(files: &[PathBuf]) -> (Vec<String>, u64) {
    let mut sources: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut bad = 0;
    for f in files {
        let bytes = std::fs::read(f).expect("read links");
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        for line in body.split(|b| *b == b'\n') {
            let fields: Vec<&[u8]> = line
                .split(u8::is_ascii_whitespace)
                .filter(|f| !f.is_empty())
                .collect();
            match fields[..] {
                [source, target] => {
                    sources
                        .entry(target.to_vec())
                        .or_default()
                        .insert(source.to_vec());
                }
                _ => bad += 1,
            }
        }
    }
    let lines = sources
        .into_iter()
        .map(|(target, sources)| {
            let sources: Vec<String> = sources
                .into_iter()
                .map(|s| String::from_utf8(s).expect("ascii"))
                .collect();
            format!(
                "{}\t{}",
                String::from_utf8(target).expect("ascii"),
                sources.join(",")
            )
        })
        .collect();
    (lines, bad)
}

fn sorted_lines(text: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(text)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// `counters: ... bad.lines N ...` from a summary.
fn bad_lines(stderr: &str) -> Option<u64> {
    let rest = stderr.split_once("bad.lines ")?.1;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn run_links<S: AsRef<OsStr>>(args: &[S]) -> quern_tests::Outcome {
    run_program(
        &example("reverse_links"),
        args,
        std::iter::empty::<(&str, &str)>(),
    )
}

#[test]
fn reverse_links_runs_on_its_own_local_cluster_and_matches_an_independent_computation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = link_files(dir.path());
    let (want, want_bad) = expected(&files);
    assert!(
        want_bad > 0 && want.len() > 1_000,
        "the input exercises the job"
    );
    let inputs: Vec<String> = files.iter().map(|f| p(f)).collect();

    // The local cluster: two worker processes of the example binary, small splits so that
    // there are many map tasks.
    let cluster_out = dir.path().join("cluster");
    let common = ["-r", "3", "--split-size", "128KiB"];
    let mut args: Vec<String> = inputs.clone();
    args.extend([
        "--output".into(),
        p(&cluster_out),
        "--workers".into(),
        "2".into(),
    ]);
    args.extend(common.map(String::from));
    let o = run_links(&args);
    o.ok();
    assert_committed(&cluster_out, 3);
    assert_eq!(
        sorted_lines(&concat_parts(&cluster_out)),
        want,
        "reverse_links on the local cluster"
    );
    assert_eq!(
        bad_lines(&o.stderr),
        Some(want_bad),
        "bad.lines in the summary:\n{}",
        o.stderr
    );

    // --sequential writes the same part files, byte for byte.
    let seq_out = dir.path().join("sequential");
    let mut args: Vec<String> = inputs.clone();
    args.extend(["--output".into(), p(&seq_out), "--sequential".into()]);
    args.extend(common.map(String::from));
    let s = run_links(&args);
    s.ok();
    assert_eq!(bad_lines(&s.stderr), Some(want_bad), "{}", s.stderr);
    assert_eq!(
        parts(&seq_out),
        parts(&cluster_out),
        "--sequential and the local cluster"
    );

    // The binary is a whole quern: the built-in commands are there too.
    let wc_out = dir.path().join("wc");
    let w = run_links(&["wc", &inputs[0], "-o", &p(&wc_out), "--sequential", "-q"]);
    w.ok();
    assert_committed(&wc_out, 1);
}

#[test]
fn a_cluster_of_plain_quern_processes_refuses_the_job_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = link_files(dir.path());
    let secret = dir.path().join("secret");
    new_secret(&secret);
    let coordinator = Proc::quern(
        "quern coordinator",
        [
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--secret-file",
            &p(&secret),
            "-v",
        ],
    );
    let addr = coordinator_addr(&coordinator);
    let worker = Proc::quern(
        "quern worker",
        [
            "worker",
            "--join",
            &addr.to_string(),
            "--secret-file",
            &p(&secret),
            "--slots",
            "1",
            "--work-dir",
            &p(&dir.path().join("work")),
        ],
    );
    wait_joined(&coordinator, std::slice::from_ref(&worker), 1);

    let out = dir.path().join("out");
    let o = run_links(&[
        &p(&files[0]),
        "--output",
        &p(&out),
        "--coordinator",
        &addr.to_string(),
        "--secret-file",
        &p(&secret),
        "-q",
    ]);
    assert_ne!(o.code, 0, "the job must fail:\n{}", o.stderr);
    assert!(
        o.stderr.contains("no job named \"reverse_links\"")
            && o.stderr.contains(&quern().display().to_string()),
        "the error must name the job and the worker's binary:\n{}",
        o.stderr
    );
    assert!(
        !out.join("_SUCCESS").exists()
            && !std::fs::read_dir(&out).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("part-"))
            }),
        "a failed job leaves no output"
    );
    drop(worker);
    drop(coordinator);
}
