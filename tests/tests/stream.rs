//! `quern stream`: shell and awk programs as mapper, combiner and reducer, with Hadoop
//! Streaming's contract, on the local cluster (the default mode) and `--sequential`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quern_tests::cluster::{wait_until, Proc, JOB_TIMEOUT};
use quern_tests::{assert_committed, books, concat_parts, lines, p, run, Outcome, Rng};

/// An awk word count: the mapper prints `word\t1`, combiner and reducer sum per word.
const MAPPER: &str = r#"tr -cs 'A-Za-z' '\n' | awk 'NF { print $0 "\t1" }'"#;
const SUM: &str = r#"awk -F'\t' '{ n[$1] += $2 } END { for (w in n) print w "\t" n[w] }'"#;

/// Word counts of `files`, as `word\tcount` lines, sorted: computed here.
fn word_counts(files: &[PathBuf]) -> Vec<String> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for f in files {
        let text = std::fs::read(f).expect("read input");
        for word in text.split(|b| !b.is_ascii_alphabetic()) {
            if !word.is_empty() {
                *counts
                    .entry(String::from_utf8(word.to_vec()).expect("ascii"))
                    .or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .map(|(w, n)| format!("{w}\t{n}"))
        .collect()
}

fn sorted_lines(bytes: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = lines(bytes)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    v.sort();
    v
}

fn stream(dir: &Path, name: &str, args: &[&str]) -> (Outcome, PathBuf) {
    let out = dir.join(name);
    let mut all = vec!["stream".to_string(), "-o".into(), p(&out)];
    all.extend(args.iter().map(|a| a.to_string()));
    (run(all), out)
}

#[test]
fn awk_word_count_matches_an_independent_count_on_the_cluster_and_sequentially() {
    let dir = tempfile::tempdir().expect("tempdir");
    let books = books();
    let want = word_counts(&books);
    let inputs: Vec<String> = books.iter().map(|b| p(b)).collect();
    for (name, extra) in [
        ("cluster", vec!["--reducers", "3", "--split-size", "1MB"]),
        ("combined", vec!["--reducers", "2", "--combiner", SUM]),
        ("sequential", vec!["--reducers", "2", "--sequential"]),
    ] {
        let mut args: Vec<&str> = inputs.iter().map(String::as_str).collect();
        args.extend(["--mapper", MAPPER, "--reducer", SUM, "-q"]);
        args.extend(extra);
        let (o, out) = stream(dir.path(), name, &args);
        o.ok();
        assert_committed(&out, 2);
        assert_eq!(sorted_lines(&concat_parts(&out)), want, "{name}");
    }
}

/// The README's Python word count, as printed there (`# m.py` and `# r.py` blocks).
fn readme_script(name: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read README.md");
    let start = readme
        .find(&format!("```python\n# {name}"))
        .unwrap_or_else(|| panic!("README.md has no ```python block for {name}"));
    let body = &readme[start + "```python\n".len()..];
    body[..body.find("```").expect("block ends")].to_string()
}

#[test]
fn the_readme_python_word_count_runs_as_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["m.py", "r.py"] {
        std::fs::write(dir.path().join(name), readme_script(name)).expect("write script");
    }
    let books = books();
    // Words as Python's str.split() sees them (the corpus is ASCII text).
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for b in &books {
        let text = std::fs::read_to_string(b).expect("read book");
        for w in text.split_ascii_whitespace() {
            *want.entry(w.to_string()).or_default() += 1;
        }
    }
    let mut want: Vec<String> = want.iter().map(|(w, n)| format!("{w} {n}")).collect();
    want.sort();
    let (m, r) = (p(&dir.path().join("m.py")), p(&dir.path().join("r.py")));
    let inputs: Vec<String> = books.iter().map(|b| p(b)).collect();
    let mut args: Vec<&str> = inputs.iter().map(String::as_str).collect();
    args.extend(["--mapper", "python3 m.py", "--reducer", "python3 r.py"]);
    args.extend(["--file", &m, "--file", &r, "--reducers", "2", "-q"]);
    let (o, out) = stream(dir.path(), "out", &args);
    o.ok();
    assert_committed(&out, 2);
    assert_eq!(sorted_lines(&concat_parts(&out)), want);
}

#[test]
fn the_identity_reducer_sorts_and_map_only_keeps_input_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two files with CRLF lines, tabs, empty lines and a last line without a terminator.
    let mut rng = Rng(6824);
    let mut files = Vec::new();
    for f in 0..2 {
        let mut text = String::new();
        for i in 0..5_000 {
            match rng.range(0, 10) {
                0 => text.push_str("\r\n"),
                1 => text.push_str(&format!("k{}\tv{i}\textra\n", rng.range(0, 50))),
                2 => text.push_str(&format!("nokey{}\r\n", rng.range(0, 50))),
                _ => text.push_str(&format!("k{}\tv{i}\n", rng.range(0, 50))),
            }
        }
        text.push_str("last\tline");
        let path = dir.path().join(format!("in-{f}.txt"));
        std::fs::write(&path, &text).expect("write");
        files.push(path);
    }
    let inputs: Vec<String> = files.iter().map(|f| p(f)).collect();
    let input_lines: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let bytes = std::fs::read(f).expect("read");
            lines(&bytes)
                .map(|l| String::from_utf8_lossy(l.strip_suffix(b"\r").unwrap_or(l)).into_owned())
                .collect::<Vec<_>>()
        })
        .collect();

    // `cat` and the identity reduce: `key\tvalue` lines sorted by key, then value.
    let mut args: Vec<&str> = inputs.iter().map(String::as_str).collect();
    args.extend([
        "--mapper",
        "cat",
        "--reducers",
        "3",
        "-q",
        "--split-size",
        "20KB",
    ]);
    let (o, out) = stream(dir.path(), "identity", &args);
    o.ok();
    let mut want: Vec<(String, String)> = input_lines
        .iter()
        .map(|l| match l.split_once('\t') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect();
    want.sort();
    let mut got: Vec<(String, String)> = Vec::new();
    for part in quern_tests::parts(&out).values() {
        let part: Vec<(String, String)> = lines(part)
            .map(|l| {
                let l = String::from_utf8_lossy(l);
                let (k, v) = l.split_once('\t').expect("a tab on every identity line");
                (k.to_string(), v.to_string())
            })
            .collect();
        assert!(part.windows(2).all(|w| w[0] <= w[1]), "each part is sorted");
        got.extend(part);
    }
    got.sort();
    assert_eq!(got, want);

    // Map-only: the mapper's lines, in input order (many splits: part order is input order).
    for (name, flag) in [
        ("none", ["--reducer", "NONE"]),
        ("zero", ["--reducers", "0"]),
    ] {
        let mut args: Vec<&str> = inputs.iter().map(String::as_str).collect();
        args.extend(["--mapper", "tr a-z A-Z", "-q", "--split-size", "20KB"]);
        args.extend(flag);
        let (o, out) = stream(dir.path(), name, &args);
        o.ok();
        let got: Vec<String> = lines(&concat_parts(&out))
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let want: Vec<String> = input_lines.iter().map(|l| l.to_uppercase()).collect();
        assert_eq!(got, want, "{name}");
        assert!(
            quern_tests::parts(&out).len() > 4,
            "{name}: several map tasks"
        );
    }
    let mut args: Vec<&str> = inputs.iter().map(String::as_str).collect();
    args.extend(["--mapper", "cat", "--reducer", "NONE", "--reducers", "2"]);
    let refused = stream(dir.path(), "both", &args).0;
    assert!(
        refused.user_error().contains("--reducer NONE"),
        "{}",
        refused.stderr
    );
}

#[test]
fn processes_see_hadoop_environment_and_their_own_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.txt");
    let b = dir.path().join("b.txt");
    std::fs::write(&a, "x\n".repeat(10)).expect("write");
    std::fs::write(&b, "y\n".repeat(10)).expect("write");
    let script = dir.path().join("show.sh");
    std::fs::write(
        &script,
        "read first\n\
         printf '%s\\t%s %s %s %s %s %s %s %s %s %s\\n' \"$first\" \"$mapreduce_map_input_file\" \
         \"$map_input_file\" \"$mapreduce_map_input_start\" \"$mapreduce_map_input_length\" \
         \"$mapreduce_task_ismap\" \"$mapreduce_task_partition\" \"$mapreduce_job_id\" \
         \"$mapreduce_task_id\" \"$mapreduce_task_attempt_id\" \"$FROM_FLAG\"\n\
         cat >/dev/null\n",
    )
    .expect("script");
    let reducer = "while IFS= read -r l; do echo \"$l $mapreduce_task_ismap $mapreduce_task_partition $mapred_task_id\"; done";
    // Both files in one split (one map task, one process per file), relative script path
    // through --file.
    let (o, out) = stream(
        dir.path(),
        "env",
        &[
            &p(&a),
            &p(&b),
            "--mapper",
            "sh show.sh",
            "--file",
            &p(&script),
            "--reducer",
            reducer,
            "--reducers",
            "1",
            "--env",
            "FROM_FLAG=yes",
            "-q",
        ],
    );
    o.ok();
    let got: Vec<Vec<String>> = lines(&concat_parts(&out))
        .map(|l| {
            String::from_utf8_lossy(l)
                .split(['\t', ' '])
                .map(str::to_string)
                .collect()
        })
        .collect();
    assert_eq!(got.len(), 2, "one line per mapper process: {got:?}");
    for (line, (first, file)) in got.iter().zip([("x", &a), ("y", &b)]) {
        let [key, input, old_input, start, len, ismap, partition, job, task, attempt, flag, r_ismap, r_partition, r_attempt] =
            &line[..]
        else {
            panic!("unexpected line {line:?}");
        };
        assert_eq!(key, first);
        assert_eq!(input, &p(file));
        assert_eq!(old_input, &p(file));
        assert_eq!((start.as_str(), len.as_str()), ("0", "20"));
        assert_eq!((ismap.as_str(), partition.as_str()), ("true", "0"));
        assert!(job.starts_with("job_"), "{job}");
        assert!(
            task.starts_with("task_") && task.ends_with("_m_000000"),
            "{task}"
        );
        assert!(
            attempt.starts_with(&format!("attempt_{}", &task[5..])),
            "{attempt}"
        );
        assert_eq!(flag, "yes");
        assert_eq!((r_ismap.as_str(), r_partition.as_str()), ("false", "0"));
        assert!(r_attempt.contains("_r_000000_"), "{r_attempt}");
    }
}

#[test]
fn a_mapper_that_fails_once_is_retried_and_only_committed_counters_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let books = books();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).expect("marks");
    // Every map task's first attempt reports a huge counter, writes some output and fails;
    // later attempts report the lines they read (one process per file of the split).
    let mapper = format!(
        "echo 'reporter:status:mapping' >&2; \
         if mkdir {}/$mapreduce_task_id 2>/dev/null; then \
           echo 'reporter:counter:test,lines,1000000' >&2; echo 'partial\t1'; \
           echo 'first attempt fails' >&2; exit 7; \
         fi; \
         awk '{{ print }} END {{ print \"reporter:counter:test,lines,\" NR > \"/dev/stderr\" }}' | {MAPPER}",
        p(&marks)
    );
    let total_lines: usize = books
        .iter()
        .map(|b| lines(&std::fs::read(b).expect("read")).count())
        .sum();
    let mut args: Vec<String> = books.iter().map(|b| p(b)).collect();
    args.extend(
        [
            "--mapper",
            &mapper,
            "--reducer",
            SUM,
            "--reducers",
            "2",
            "--split-size",
            "1MB",
        ]
        .map(str::to_string),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (o, out) = stream(dir.path(), "retried", &args);
    o.ok();
    assert_eq!(sorted_lines(&concat_parts(&out)), word_counts(&books));
    let maps = std::fs::read_dir(&marks).expect("marks").count();
    assert!(maps > 3, "several map tasks: {maps}");
    assert!(
        o.stderr
            .lines()
            .any(|l| l.contains("counters:") && l.contains(&format!("test.lines {total_lines}"))),
        "the lines of committed attempts ({total_lines}), not of failed ones:\n{}",
        o.stderr
    );
    assert!(
        o.stderr.contains(&format!(", {maps} failed")),
        "{}",
        o.stderr
    );
}

#[test]
fn failing_processes_fail_the_job_saying_which_command_and_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.txt");
    // 2 MB: more than a pipe holds, so a mapper that does not read meets a broken pipe.
    std::fs::write(&input, "some words here\n".repeat(131_072)).expect("write");
    let cases: [(&str, &[&str], &str); 4] = [
        (
            "always",
            &["--mapper", "echo 'bad things happened' >&2; exit 3"],
            "mapper `echo 'bad things happened' >&2; exit 3` exited with status 3; its stderr ends with:\nbad things happened",
        ),
        ("unread", &["--mapper", "echo ignoring >&2; echo x"], "broken pipe"),
        ("signal", &["--mapper", "cat", "--reducer", "kill -9 $$"], "was killed by signal 9"),
        ("missing", &["--mapper", "no-such-program-xyz"], "no-such-program-xyz: not found"),
    ];
    for (name, args, want) in cases {
        let mut all = vec![p(&input)];
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(["-q".to_string(), "--reducers".into(), "1".into()]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (o, out) = stream(dir.path(), name, &all);
        o.expect_code(1);
        assert!(
            o.stderr.contains(want),
            "{name}: want {want:?} in:\n{}",
            o.stderr
        );
        assert!(
            !out.join("_SUCCESS").exists(),
            "{name}: no output committed"
        );
    }
}

#[test]
fn silent_readers_and_writers_are_jobs_like_any_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a\tb\n".repeat(50_000)).expect("write");
    // A reducer that writes nothing: empty part files, a committed job.
    let (o, out) = stream(
        dir.path(),
        "quiet",
        &[
            &p(&input),
            "--mapper",
            "cat",
            "--reducer",
            "cat >/dev/null",
            "-r",
            "2",
            "-q",
        ],
    );
    o.ok();
    assert_committed(&out, 2);
    assert!(concat_parts(&out).is_empty());
    // A mapper silent past --task-timeout is killed, and the job says so.
    let (o, _) = stream(
        dir.path(),
        "hung",
        &[
            &p(&input),
            "--mapper",
            "sleep 600",
            "--task-timeout",
            "1s",
            "-q",
        ],
    );
    o.expect_code(1);
    assert!(
        o.stderr.contains("mapper `sleep 600` no input read"),
        "{}",
        o.stderr
    );
}

/// Processes whose environment holds `tag`.
fn tagged(tag: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == tag.as_bytes()))
        })
        .collect()
}

#[test]
fn a_killed_or_interrupted_job_leaves_no_process_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "x\n".repeat(1000)).expect("write");
    for signal in ["KILL", "INT"] {
        let tag = format!("QUERN_STREAM_TEST={signal}{}", std::process::id());
        let out = dir.path().join(format!("out-{signal}"));
        // The mapper reads its input, then sleeps (with a child of its own) forever.
        let job = Proc::quern(
            format!("stream ({signal})"),
            [
                "stream",
                &p(&input),
                "-o",
                &p(&out),
                "--mapper",
                "cat >/dev/null; sleep 600 & sleep 600",
                "--env",
                &tag,
                "--split-size",
                "1KB",
            ],
        );
        let started = wait_until(JOB_TIMEOUT, || {
            let pids = tagged(&tag);
            (pids.len() >= 4).then_some(pids)
        });
        assert!(
            started.is_some(),
            "mappers never started: {}",
            job.describe()
        );
        assert!(
            quern_tests::cluster::signal(job.pid(), signal),
            "SIG{signal} to the job command"
        );
        let left = wait_until(Duration::from_secs(30), || {
            tagged(&tag).is_empty().then_some(())
        });
        assert!(
            left.is_some(),
            "SIG{signal}: processes left behind: {:?}",
            tagged(&tag)
        );
        drop(job);
    }
}
