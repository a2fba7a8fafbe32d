//! The coordinator's HTTP status page: a read-only view of the cluster and its jobs.
//!
//! The coordinator's owner loop builds a fresh [`Status`] a few times a second and publishes
//! it on a `tokio::sync::watch` channel; [`serve`] answers each request from the latest
//! value it holds ([`StatusRx`]). Nothing flows the other way: the page cannot change the
//! coordinator, and a slow or stuck browser costs the owner loop nothing (a watch send
//! never waits for readers).
//!
//! Routes (GET or HEAD only; any other method on them is `405`, any other path `404`):
//!
//! - `/`: [`render_html`] of the current status, a self-contained page (inline CSS, no
//!   scripts, no network resources) that reloads itself every second.
//! - `/status.json`: the current [`Status`] as JSON, for scripts and tests.
//!
//! Every string taken from the status is HTML-escaped: job names come from users.

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::report::{escape_html as escape, human_mb_per_s, human_us, human_value, Percentiles};
use crate::{Error, Result};

/// What the status page shows; the coordinator publishes a fresh one a few times a second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The coordinator's QUIC listen address.
    pub coordinator: String,
    /// Milliseconds since the coordinator started.
    pub uptime_ms: u64,
    /// Every worker that ever registered, alive or lost.
    pub workers: Vec<WorkerStatus>,
    /// The running job, if any.
    pub job: Option<JobStatus>,
    /// Jobs that ended, most recent last (the coordinator keeps the last 20).
    pub finished: Vec<FinishedJob>,
}

/// One worker as the coordinator sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The coordinator's id for the worker.
    pub id: u32,
    /// The worker's data (shuffle) address.
    pub addr: String,
    /// The worker's process id on its host.
    pub pid: u32,
    /// Attempts the worker may run at once.
    pub slots: u32,
    /// `"alive"` or `"lost"`.
    pub state: String,
    /// Attempts currently running on it.
    pub running: u32,
    /// Milliseconds since its last heartbeat arrived.
    pub last_heartbeat_ms: u64,
}

/// The job being run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The coordinator's id for the job.
    pub id: u64,
    /// Job name (`terasort`, `wc`, ...).
    pub name: String,
    /// Milliseconds since the job started.
    pub elapsed_ms: u64,
    /// `"map"`, `"reduce"` or `"committing"`.
    pub phase: String,
    /// Map tasks by state.
    pub map: PhaseCounts,
    /// Reduce tasks by state.
    pub reduce: PhaseCounts,
    /// Fraction of the job done, `0..=1`, over both phases.
    pub progress: f64,
    /// Input read by map attempts, bytes per second (recent rate).
    pub input_bytes_per_s: f64,
    /// Map output fetched by reducers, bytes per second (recent rate).
    pub shuffle_bytes_per_s: f64,
    /// Output written by reduce (or map-only) attempts, bytes per second (recent rate).
    pub output_bytes_per_s: f64,
    /// Speculative backup attempts launched so far.
    pub backups_launched: u64,
    /// Running attempts that reported a status message.
    #[serde(default)]
    pub statuses: Vec<AttemptStatus>,
    /// Current percentiles of the job's histograms.
    pub percentiles: Vec<PercentileRow>,
}

/// A running attempt's own status message (e.g. a streaming process's `reporter:status:`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptStatus {
    /// The attempt's id.
    pub attempt: u64,
    /// Its task, e.g. `map 3`.
    pub task: String,
    /// The message.
    pub message: String,
}

/// The tasks of one phase, by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseCounts {
    /// Tasks in the phase.
    pub total: u32,
    /// Tasks waiting for a slot.
    pub idle: u32,
    /// Tasks with at least one attempt running.
    pub running: u32,
    /// Tasks committed.
    pub done: u32,
}

/// The percentiles of one histogram.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PercentileRow {
    /// Histogram name (see [`crate::report::hist`]).
    pub name: String,
    /// Unit of the values: `"µs"` (shown as a human duration) or anything else (shown as is).
    pub unit: String,
    /// The values.
    pub percentiles: Percentiles,
}

/// A job that ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinishedJob {
    /// The coordinator's id for the job.
    pub id: u64,
    /// Job name.
    pub name: String,
    /// `"done"` or `"failed: REASON"`.
    pub outcome: String,
    /// Start to end, milliseconds.
    pub wall_ms: u64,
}

/// The receiving end of the coordinator's status channel.
pub type StatusRx = tokio::sync::watch::Receiver<Status>;

/// Binds the status page's TCP listener on `addr`.
///
/// Done apart from [`serve`] so the coordinator fails at startup, naming the address, when
/// the port is taken, and so a caller binding port 0 can learn the port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("status page: cannot bind {addr}"), e))
}

/// Serves the status page on `listener` until the task is dropped or aborted.
///
/// Each request reads the latest value of `status`; see the module docs for the routes.
pub async fn serve(listener: TcpListener, status: StatusRx) {
    let app = Router::new()
        .route("/", get(page))
        .route("/status.json", get(json))
        .with_state(status);
    // axum's accept loop retries failed accepts itself, so this returns only if the
    // listener is gone; there is nobody to report to but the log.
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!("status page stopped: {e}");
    }
}

/// `GET /`.
async fn page(State(status): State<StatusRx>) -> impl IntoResponse {
    let html = render_html(&status.borrow());
    ([(header::CACHE_CONTROL, "no-store")], Html(html))
}

/// `GET /status.json`.
async fn json(State(status): State<StatusRx>) -> impl IntoResponse {
    let current = status.borrow().clone();
    ([(header::CACHE_CONTROL, "no-store")], Json(current))
}

/// Inline style sheet of the page.
const CSS: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.1em;margin-top:1.5em}\
.sub{color:#666;margin-top:0}\
table{border-collapse:collapse;margin:.4em 0}\
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:right}\
th{background:#eee}td.l,th.l{text-align:left}\
.bar{width:30em;max-width:100%;height:1.2em;background:#ddd;border-radius:3px;overflow:hidden}\
.fill{height:100%;background:#4a8}\
.lost{color:#b22}.failed{color:#b22}.none{color:#666}";

/// The status page for `status`: a self-contained HTML document that reloads every second.
pub fn render_html(status: &Status) -> String {
    let mut out = String::with_capacity(8 << 10);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta http-equiv=\"refresh\" content=\"1\">");
    out.push_str("<title>quern coordinator</title><style>");
    out.push_str(CSS);
    out.push_str("</style></head><body>\n<h1>quern coordinator</h1>\n");
    // `write!` into a String cannot fail.
    let _ = writeln!(
        out,
        "<p class=\"sub\">{} &middot; up {}</p>",
        escape(&status.coordinator),
        human_ms(status.uptime_ms)
    );
    render_job(&mut out, status.job.as_ref());
    render_workers(&mut out, &status.workers);
    render_finished(&mut out, &status.finished);
    out.push_str("</body></html>\n");
    out
}

/// The running job section, with its percentiles.
fn render_job(out: &mut String, job: Option<&JobStatus>) {
    out.push_str("<h2>Running job</h2>\n");
    let Some(job) = job else {
        out.push_str("<p class=\"none\">No job running.</p>\n");
        return;
    };
    let progress = if job.progress.is_finite() {
        job.progress.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pct = progress * 100.0;
    let _ = writeln!(
        out,
        "<p><b>{}</b> (job {}) &middot; phase <b>{}</b> &middot; elapsed {}</p>",
        escape(&job.name),
        job.id,
        escape(&job.phase),
        human_ms(job.elapsed_ms)
    );
    let _ = writeln!(
        out,
        "<div class=\"bar\" title=\"{pct:.1}%\"><div class=\"fill\" style=\"width:{pct:.1}%\">\
         </div></div><p>{pct:.1}% done</p>"
    );
    out.push_str(
        "<table><tr><th class=\"l\">phase</th><th>idle</th><th>running</th><th>done</th>\
         <th>total</th></tr>\n",
    );
    for (name, c) in [("map", &job.map), ("reduce", &job.reduce)] {
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.idle, c.running, c.done, c.total
        );
    }
    out.push_str("</table>\n");
    let _ = writeln!(
        out,
        "<p>input {} &middot; shuffle {} &middot; output {} &middot; backups launched {}</p>",
        mb_per_s(job.input_bytes_per_s),
        mb_per_s(job.shuffle_bytes_per_s),
        mb_per_s(job.output_bytes_per_s),
        job.backups_launched
    );
    if !job.statuses.is_empty() {
        out.push_str(
            "<table><tr><th class=\"l\">task</th><th>attempt</th>\
             <th class=\"l\">status</th></tr>\n",
        );
        for s in &job.statuses {
            let _ = writeln!(
                out,
                "<tr><td class=\"l\">{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
                escape(&s.task),
                s.attempt,
                escape(&s.message)
            );
        }
        out.push_str("</table>\n");
    }

    out.push_str("<h2>Percentiles</h2>\n");
    if job.percentiles.is_empty() {
        out.push_str("<p class=\"none\">No samples yet.</p>\n");
        return;
    }
    out.push_str(
        "<table><tr><th class=\"l\">histogram</th><th>count</th><th>min</th><th>p50</th>\
         <th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>\n",
    );
    for row in &job.percentiles {
        let p = &row.percentiles;
        let _ = write!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td>",
            escape(&row.name),
            p.count
        );
        for v in [p.min, p.p50, p.p90, p.p99, p.p999, p.max] {
            let _ = write!(out, "<td>{}</td>", with_unit(v, &row.unit));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// The workers table.
fn render_workers(out: &mut String, workers: &[WorkerStatus]) {
    out.push_str("<h2>Workers</h2>\n");
    if workers.is_empty() {
        out.push_str("<p class=\"none\">No workers registered.</p>\n");
        return;
    }
    out.push_str(
        "<table><tr><th>id</th><th class=\"l\">addr</th><th>pid</th><th>slots</th>\
         <th class=\"l\">state</th><th>running</th><th>last heartbeat</th></tr>\n",
    );
    for w in workers {
        let class = if w.state == "alive" { "l" } else { "l lost" };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"{class}\">{}</td><td>{}</td><td>{} ago</td></tr>",
            w.id,
            escape(&w.addr),
            w.pid,
            w.slots,
            escape(&w.state),
            w.running,
            human_ms(w.last_heartbeat_ms)
        );
    }
    out.push_str("</table>\n");
}

/// The finished jobs table, most recent first.
fn render_finished(out: &mut String, finished: &[FinishedJob]) {
    out.push_str("<h2>Finished jobs</h2>\n");
    if finished.is_empty() {
        out.push_str("<p class=\"none\">None yet.</p>\n");
        return;
    }
    out.push_str(
        "<table><tr><th>id</th><th class=\"l\">name</th><th class=\"l\">outcome</th>\
         <th>wall</th></tr>\n",
    );
    for j in finished.iter().rev() {
        let class = if j.outcome == "done" { "l" } else { "l failed" };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            j.id,
            escape(&j.name),
            escape(&j.outcome),
            human_ms(j.wall_ms)
        );
    }
    out.push_str("</table>\n");
}

/// A percentile value in its unit (see [`human_value`]).
fn with_unit(value: u64, unit: &str) -> String {
    escape(&human_value(value, unit))
}

/// Milliseconds as a human duration.
fn human_ms(ms: u64) -> String {
    human_us(ms.saturating_mul(1000))
}

/// A byte rate in MB/s (10⁶ bytes); not-a-number shows as 0.
fn mb_per_s(bytes_per_s: f64) -> String {
    let bytes = if bytes_per_s.is_finite() {
        bytes_per_s.max(0.0)
    } else {
        0.0
    };
    human_mb_per_s(bytes / 1e6)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::watch;
    use tokio::time::timeout;

    use super::*;

    /// Deadline of every network step of a test.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// A parsed HTTP response.
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends `METHOD path` as a hand-written HTTP/1.1 request and reads the whole response
    /// (the request asks the server to close the connection afterwards).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let req =
                format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.unwrap();
            raw
        };
        let raw = timeout(DEADLINE, exchange).await.expect("response in time");
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("end of headers");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.split(' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
        let status = parts.next().unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let response = Response {
            status,
            headers,
            body: body.to_string(),
        };
        assert!(
            response.header("transfer-encoding").is_none(),
            "chunked bodies are not parsed here"
        );
        if let Some(len) = response.header("content-length") {
            assert_eq!(len.parse::<usize>().unwrap(), response.body.len());
        }
        response
    }

    fn sample_status() -> Status {
        Status {
            coordinator: "127.0.0.1:7000".into(),
            uptime_ms: 83_000,
            workers: vec![
                WorkerStatus {
                    id: 0,
                    addr: "127.0.0.1:7100".into(),
                    pid: 4242,
                    slots: 4,
                    state: "alive".into(),
                    running: 3,
                    last_heartbeat_ms: 120,
                },
                WorkerStatus {
                    id: 1,
                    addr: "127.0.0.1:7101".into(),
                    pid: 4243,
                    slots: 4,
                    state: "lost".into(),
                    running: 0,
                    last_heartbeat_ms: 9_500,
                },
            ],
            job: Some(JobStatus {
                id: 7,
                name: "wc <b>&".into(),
                elapsed_ms: 12_345,
                phase: "map".into(),
                map: PhaseCounts {
                    total: 10,
                    idle: 2,
                    running: 3,
                    done: 5,
                },
                reduce: PhaseCounts {
                    total: 4,
                    idle: 4,
                    running: 0,
                    done: 0,
                },
                progress: 0.25,
                input_bytes_per_s: 123_456_789.0,
                shuffle_bytes_per_s: 0.0,
                output_bytes_per_s: 0.0,
                backups_launched: 1,
                statuses: vec![AttemptStatus {
                    attempt: 17,
                    task: "map 4".into(),
                    message: "halfway <there>".into(),
                }],
                percentiles: vec![PercentileRow {
                    name: "map_attempt".into(),
                    unit: "µs".into(),
                    percentiles: Percentiles {
                        count: 5,
                        min: 812,
                        p50: 12_345,
                        p90: 1_520_000,
                        p99: 1_520_000,
                        p999: 1_520_000,
                        max: 1_520_000,
                    },
                }],
            }),
            finished: vec![FinishedJob {
                id: 6,
                name: "terasort".into(),
                outcome: "failed: map 3 <kept failing>".into(),
                wall_ms: 61_000,
            }],
        }
    }

    /// Binds an ephemeral port and serves `status` on it; the task ends with the test's
    /// runtime.
    async fn start(status: Status) -> (SocketAddr, watch::Sender<Status>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(status);
        tokio::spawn(serve(listener, rx));
        (addr, tx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_json_round_trips_and_follows_updates() {
        let sent = sample_status();
        let (addr, tx) = start(sent.clone()).await;

        let r = request(addr, "GET", "/status.json").await;
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
        let got: Status = serde_json::from_str(&r.body).unwrap();
        assert_eq!(got, sent);

        let mut next = sent.clone();
        if let Some(job) = next.job.as_mut() {
            job.progress = 0.75;
            job.phase = "reduce".into();
        }
        tx.send(next.clone()).unwrap();
        let r = request(addr, "GET", "/status.json").await;
        let got: Status = serde_json::from_str(&r.body).unwrap();
        assert_eq!(got.job.as_ref().map(|j| j.progress), Some(0.75));
        assert_eq!(got, next);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_page_is_escaped_html() {
        let (addr, _tx) = start(sample_status()).await;
        let r = request(addr, "GET", "/").await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.body.contains("<title>quern coordinator</title>"));
        assert!(r.body.contains("wc &lt;b&gt;&amp;"));
        assert!(!r.body.contains("<b>&"));
        assert!(r.body.contains("&lt;kept failing&gt;"));
        assert!(r.body.contains("http-equiv=\"refresh\""));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_unknown_path_is_404_and_post_is_405() {
        let (addr, _tx) = start(Status::default()).await;
        assert_eq!(request(addr, "GET", "/nope").await.status, 404);
        assert_eq!(request(addr, "POST", "/status.json").await.status, 405);
        // An empty status renders too.
        let r = request(addr, "GET", "/").await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("No job running."));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_bind_error_names_the_address() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = timeout(DEADLINE, bind(addr))
            .await
            .expect("bind in time")
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn status_numbers_are_human() {
        // The formats themselves are report::text's; these are the page's uses of them.
        assert_eq!(human_ms(83_000), "83.0s");
        assert_eq!(with_unit(812, "us"), "812µs");
        assert_eq!(with_unit(5_120, "KiB/s"), "5.24 MB/s");
        assert_eq!(with_unit(7, "<b>"), "7 &lt;b&gt;");
        assert_eq!(mb_per_s(123_456_789.0), "123 MB/s");
        assert_eq!(mb_per_s(f64::NAN), "0.00 MB/s");
    }

    #[test]
    fn status_html_shows_every_section() {
        let html = render_html(&sample_status());
        for needle in [
            "812µs",
            "12.3ms",
            "1.52s",
            "width:25.0%",
            "123 MB/s",
            "backups launched 1",
            "4242",
            "class=\"l lost\"",
            "9.50s ago",
            "terasort",
            "61.0s",
            "<td class=\"l\">map 4</td><td>17</td><td class=\"l\">halfway &lt;there&gt;</td>",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
