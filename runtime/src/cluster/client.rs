//! Submitting a job to a coordinator and waiting for its result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use quern_shuffle::net::{self, NetError};
use quern_shuffle::wire::{decode_msg, encode_msg, Hello, JobSpec, ToClient};
use quern_shuffle::Secret;

use super::{counters_from_msg, net_err, MAX_FRAME};
use crate::local::JobReport;
use crate::report::Report;
use crate::{Error, Result};

/// What a client hears about its job before the result.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// The coordinator accepted the job; `status` is its status page URL (may be empty).
    Accepted {
        /// Job id.
        job: u64,
        /// `http://...` of the coordinator's status page.
        status: String,
    },
    /// Tasks committed so far.
    Progress {
        /// Map tasks committed.
        maps_done: u32,
        /// Map tasks.
        maps: u32,
        /// Reduce tasks committed.
        reduces_done: u32,
        /// Reduce tasks.
        reduces: u32,
    },
}

/// How often [`submit`] asks whether the coordinator's process still runs.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// How long [`submit`] gives its endpoint to send the connection close once the job ended.
/// The close goes out on the endpoint driver's next turn (tens of microseconds); waiting
/// for the endpoint to be idle would also wait out QUIC's draining period (3 PTO: about
/// 100 ms on loopback, most of a small job's end-to-end time), which only answers a peer's
/// retransmissions, and the coordinator has sent its last message already. A close that
/// is not sent in time costs nothing but the coordinator's wait for it (it ends the
/// connection after 10 s or its idle timeout).
const CLOSE_GRACE: Duration = Duration::from_millis(2);

/// Submits `spec` to the coordinator at `coordinator` and waits until the job ends, telling
/// `events` how it goes. Ctrl-C abandons the job: the coordinator sees the client go and
/// aborts it.
///
/// `alive` is asked every 100 ms whether the coordinator still runs (a local cluster knows
/// its coordinator's process; a remote one answers `true`): a dead one ends the wait at once
/// with [`Error::CoordinatorLost`] instead of after QUIC's idle timeout.
pub fn submit(
    coordinator: SocketAddr,
    secret: &Secret,
    spec: JobSpec,
    events: &mut dyn FnMut(JobEvent),
    alive: &mut dyn FnMut() -> bool,
) -> Result<JobReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    rt.block_on(async {
        let watch = async {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                tick.tick().await;
                if !alive() {
                    return lost(coordinator, "its process exited");
                }
            }
        };
        tokio::select! {
            r = submit_async(coordinator, secret, spec, events) => r,
            e = watch => Err(e),
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
        }
    })
}

fn lost(coordinator: SocketAddr, why: impl std::fmt::Display) -> Error {
    Error::CoordinatorLost(format!(
        "lost the coordinator at {coordinator} ({why}); its journal keeps the job: restart it \
         with --resume OUTPUT/_journal, or re-run this command with --resume"
    ))
}

async fn submit_async(
    coordinator: SocketAddr,
    secret: &Secret,
    spec: JobSpec,
    events: &mut dyn FnMut(JobEvent),
) -> Result<JobReport> {
    let started = Instant::now();
    let bind: SocketAddr = if coordinator.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|e| Error::Net(format!("{e}")))?;
    let endpoint = net::endpoint(bind, secret).map_err(net_err)?;
    let conn = net::connect(&endpoint, coordinator)
        .await
        .map_err(|e| match e {
            // The wrong secret is the user's mistake: exit code 2.
            NetError::Auth(_) => Error::Usage(e.to_string()),
            e => net_err(e),
        })?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(net_err)?;
    let hello = encode_msg(&Hello::Client(spec)).map_err(net_err)?;
    net::write_frame(&mut send, &hello).await.map_err(net_err)?;
    let result = loop {
        let Some(frame) = net::read_frame(&mut recv, MAX_FRAME)
            .await
            .map_err(|e| lost(coordinator, e))?
        else {
            break Err(Error::Net(
                "coordinator closed the connection before the job ended".into(),
            ));
        };
        match decode_msg::<ToClient>(&frame).map_err(net_err)? {
            ToClient::Accepted { job, status } => {
                tracing::info!("job {job} accepted by {coordinator}");
                events(JobEvent::Accepted { job, status });
            }
            ToClient::Progress {
                maps_done,
                maps,
                reduces_done,
                reduces,
            } => events(JobEvent::Progress {
                maps_done,
                maps,
                reduces_done,
                reduces,
            }),
            ToClient::Done {
                counters,
                parts,
                map_tasks,
                reduce_tasks,
                skipped,
                report,
            } => {
                let report = match serde_json::from_str::<Report>(&report) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!("the coordinator's job report is unreadable: {e}");
                        None
                    }
                };
                break Ok(JobReport {
                    report,
                    counters: counters_from_msg(&counters),
                    map_tasks: map_tasks as usize,
                    reduce_tasks: reduce_tasks as usize,
                    parts: parts.into_iter().map(PathBuf::from).collect(),
                    elapsed: started.elapsed(),
                    skipped,
                });
            }
            ToClient::Failed { reason, user_error } => {
                break Err(if user_error {
                    Error::Usage(reason)
                } else {
                    Error::JobFailed(reason)
                })
            }
        }
    };
    conn.close(0u32.into(), b"done");
    // Elapsed is the expected outcome: the close is sent, the draining period is not waited out.
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
    result
}
