//! Records the git commit quern is built from (`QUERN_GIT_COMMIT`), for `quern --version`
//! and the machine description of benchmark reports. A build outside a git checkout says
//! "unknown"; one with uncommitted changes to tracked files adds "+dirty".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!("{c}{}", if dirty { "+dirty" } else { "" })
        }
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=QUERN_GIT_COMMIT={commit}");
    // Run again when HEAD moves (checkout, commit) or a tracked file changes.
    // (Only paths that exist: cargo reruns a script whose watched path is missing every time.)
    let mut watched = vec!["HEAD".to_string(), "index".into(), "packed-refs".into()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for path in watched {
        if let Some(p) = git(&["rev-parse", "--git-path", &path]) {
            if std::path::Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    for dir in [
        "src",
        "../runtime/src",
        "../shuffle/src",
        "../scheduler/src",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
}
