//! Progress bars for job commands: one per phase, on a terminal only.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use quern_runtime::cluster::client::JobEvent;

/// Shows a job's progress on stderr while it runs. Draws nothing when stderr is not a
/// terminal, or when asked to be quiet.
#[derive(Debug)]
pub struct Progress {
    job: String,
    enabled: bool,
    verbose: bool,
    multi: MultiProgress,
    bars: Option<(ProgressBar, ProgressBar)>,
}

impl Progress {
    /// Progress of job `job`; `quiet` silences it, `verbose` also prints the status page URL.
    pub fn new(job: &str, quiet: bool, verbose: bool) -> Progress {
        let enabled = !quiet && std::io::stderr().is_terminal();
        Progress {
            job: job.to_string(),
            enabled,
            verbose,
            multi: MultiProgress::with_draw_target(if enabled {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            }),
            bars: None,
        }
    }

    fn bar(&self, phase: &str, len: u32) -> ProgressBar {
        let style = ProgressStyle::with_template(
            "{prefix:>16} {bar:40.cyan/blue} {pos:>6}/{len:<6} {elapsed_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("█▉▊▋▌▍▎▏ ");
        let bar = self
            .multi
            .add(ProgressBar::new(u64::from(len)).with_style(style));
        bar.set_prefix(format!("{} {phase}", self.job));
        bar
    }

    /// Takes one event of the job.
    pub fn event(&mut self, event: JobEvent) {
        match event {
            JobEvent::Accepted { job, status } => {
                if status.is_empty() {
                    return;
                }
                let line = format!("quern {}: job {job}, status page {status}", self.job);
                if self.enabled {
                    let _ = self.multi.println(line);
                } else if self.verbose {
                    eprintln!("{line}");
                }
            }
            JobEvent::Progress {
                maps_done,
                maps,
                reduces_done,
                reduces,
            } => {
                if self.bars.is_none() {
                    let map = self.bar("map", maps);
                    let reduce = self.bar("reduce", reduces);
                    if reduces == 0 {
                        reduce.finish_and_clear();
                    }
                    self.bars = Some((map, reduce));
                }
                if let Some((map, reduce)) = &self.bars {
                    map.set_position(u64::from(maps_done));
                    reduce.set_position(u64::from(reduces_done));
                }
            }
        }
    }

    /// Removes the bars (before the summary is printed).
    pub fn finish(&mut self) {
        if let Some((map, reduce)) = self.bars.take() {
            map.finish_and_clear();
            reduce.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}
