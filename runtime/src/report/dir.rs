//! A report directory: `report.json`, one `NAME.hgrm` per histogram, `report.html`.
//!
//! Every file is written to a temporary name inside the directory and renamed into place,
//! so a reader (or a crash) never sees a half-written file; a file that already exists is
//! replaced whole.

use std::io::Write as _;
use std::path::Path;

use serde::Deserialize;

use super::{hgrm, html, Report, REPORT_VERSION};
use crate::{Error, Result};

/// Name of the JSON file in a report directory.
pub const REPORT_JSON: &str = "report.json";
/// Name of the HTML page in a report directory.
pub const REPORT_HTML: &str = "report.html";

/// Writes `report` into `dir` (created if needed): `report.json`, one `NAME.hgrm` per
/// histogram, and `report.html`.
///
/// Histogram names are used as file stems with anything but `[A-Za-z0-9_.-]` replaced by
/// `_`, so a name can never point outside `dir`.
pub fn write_dir(report: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Report(format!("cannot serialise the report: {e}")))?;
    json.push('\n');
    write_atomically(dir, REPORT_JSON, json.as_bytes())?;
    for named in &report.histograms {
        let h = named.histogram()?;
        let file = format!("{}.hgrm", file_stem(&named.name));
        write_atomically(dir, &file, hgrm::percentile_distribution(&h).as_bytes())?;
    }
    write_atomically(dir, REPORT_HTML, html::render_html(report).as_bytes())
}

/// Reads `dir/report.json` back.
///
/// Errors name the file; malformed JSON reports serde_json's line and column, and a file of
/// another [`REPORT_VERSION`] is refused before its layout is looked at.
pub fn load_dir(dir: &Path) -> Result<Report> {
    let path = dir.join(REPORT_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    parse_report(&text, &path)
}

/// Parses the text of a `report.json` as [`load_dir`] does; `path` names it in errors.
///
/// The text is untrusted (the user's file): anything malformed is an `Err`, never a panic.
pub fn parse_report(text: &str, path: &Path) -> Result<Report> {
    // The file is the user's input: a bad one is a usage error (exit code 2).
    let bad = |e: serde_json::Error| Error::Usage(format!("{}: {e}", path.display()));

    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let Version { version } = serde_json::from_str(text).map_err(bad)?;
    if version != REPORT_VERSION {
        return Err(Error::Usage(format!(
            "{}: report version {version}, this quern reads version {REPORT_VERSION}",
            path.display()
        )));
    }
    serde_json::from_str(text).map_err(bad)
}

/// `name` made safe as a file stem: `[A-Za-z0-9_.-]` kept, anything else `_`, no leading dot.
pub(super) fn file_stem(name: &str) -> String {
    let stem: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match stem.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None if stem.is_empty() => "_".into(),
        None => stem,
    }
}

/// Writes `bytes` to `dir/name` through a temporary file in `dir` and a rename.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let mut builder = tempfile::Builder::new();
    let prefix = format!(".{name}.");
    builder.prefix(&prefix).suffix(".tmp");
    // Like `File::create` (0666 less the umask), not tempfile's private 0600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.as_file()
        .sync_data()
        .map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_stay_inside_the_directory() {
        assert_eq!(file_stem("map_attempt"), "map_attempt");
        assert_eq!(file_stem("../etc/passwd"), "_._etc_passwd");
        assert_eq!(file_stem("a b/c"), "a_b_c");
        assert_eq!(file_stem(""), "_");
    }

    #[test]
    fn load_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("report.json"), "{err}");

        std::fs::write(
            dir.path().join(REPORT_JSON),
            "{\n  \"version\": 1,\n  \"job\": \n}",
        )
        .unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("report.json") && err.contains("line 4"),
            "{err}"
        );

        std::fs::write(
            dir.path().join(REPORT_JSON),
            "{\"version\": 99, \"job\": 3}",
        )
        .unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("version 99") && err.contains("version 1"),
            "{err}"
        );
    }
}
