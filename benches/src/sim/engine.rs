//! The simulation loop: simulated machines and attempts around a real `Scheduler`.
//!
//! Each step of `sim.step_ms`: (1) the shared capacities are divided (bisection, the
//! disk seeks the cluster can serve for fetches), (2) every running attempt advances, and
//! the exact time it finishes within the step is noted, (3) the step's events — joins,
//! heartbeats, successes, in time order — are handed to the scheduler, and its commands
//! carried out at once, (4) a `Tick` if `poll_timeout` has come.

use std::time::{Duration, Instant};

use quern_runtime::report::{AttemptRecord, Outcome as AttemptOutcome, PhaseName, RateSeries};
use quern_scheduler::{
    AttemptId, AttemptState, Command, Config, Event, JournalEvent, Phase, Scheduler, Stats, TaskId,
    WorkerId,
};

use super::params::{Params, Run};
use super::SimError;

/// What one simulated job did.
#[derive(Debug)]
pub struct Outcome {
    /// Which run.
    pub run: Run,
    /// The parameters it ran with.
    pub params: Params,
    /// Simulated job start → `JobDone`, s.
    pub total_s: f64,
    /// When the last map committed for the last time, s.
    pub map_phase_end_s: f64,
    /// Every attempt, in id order (= launch order).
    pub attempts: Vec<AttemptRecord>,
    /// Bytes moved over time, as a real run's report has them.
    pub rates: RateSeries,
    /// Input bytes of committed map outputs lost, per rate bucket (the paper's negative
    /// input rate, which `RateSeries` cannot hold).
    pub lost_input: Vec<u64>,
    /// Worker ids that took part, with their slots.
    pub workers: Vec<(u32, u32)>,
    /// Commits journaled per map task (at least 1 each when the job is done).
    pub map_commits: Vec<u32>,
    /// Commits journaled per reduce task (exactly 1 each when the job is done).
    pub reduce_commits: Vec<u32>,
    /// The scheduler's counters at the end.
    pub stats: Stats,
    /// Events handed to `Scheduler::handle`.
    pub events: u64,
    /// Commands drained from `Scheduler::poll`.
    pub commands: u64,
    /// Of which `MapOutputReady`.
    pub map_output_ready: u64,
    /// Wall time spent in the whole simulation, s (not part of the model).
    pub wall_s: f64,
    /// Wall time spent in `Scheduler::handle` and draining its queues, s.
    pub scheduler_wall_s: f64,
    /// The scheduler, as the job left it (for inspection and for measuring its memory).
    pub scheduler: Scheduler,
}

/// Runs `run` of `params` to the end of the job; `Err` if it did not finish within
/// `sim.max_sim_s` or failed.
pub fn simulate(params: &Params, run: Run) -> Result<Outcome, SimError> {
    let started = Instant::now();
    let mut sim = Sim::new(params, run);
    sim.run()?;
    Ok(sim.finish(started.elapsed().as_secs_f64()))
}

/// splitmix64: small, fast and the same on every platform and version.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0.0..1.0`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `k` distinct indices of `0..n`, in random order.
    fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        for i in 0..k {
            let j = i + self.below(n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

/// One worker process and its machine.
#[derive(Debug)]
struct Machine {
    /// Disk read rate multiplier (1, or 1 / `bad_disk_factor`).
    read_factor: f64,
    /// CPU rate multiplier.
    cpu_factor: f64,
    /// From this time on (s; infinite: never) other work shares the machine: its CPU,
    /// disks and NIC run at `busy_factor` of their rate.
    busy_at: f64,
    busy_factor: f64,
    join_at: f64,
    joined: bool,
    /// Killed: silent, runs nothing, its map outputs are gone.
    dead: bool,
    next_heartbeat: f64,
    /// Attempt ids running here.
    running: Vec<u64>,
}

impl Machine {
    /// The share of its CPU, disks and NIC the job's attempts get at `now`.
    fn share(&self, now: f64) -> f64 {
        if now >= self.busy_at {
            self.busy_factor
        } else {
            1.0
        }
    }
}

#[derive(Debug)]
enum Work {
    Map {
        read: f64,
        sorted: f64,
        spilled: f64,
    },
    Reduce {
        /// Bit `m`: map `m`'s region is here.
        have: Vec<u64>,
        n_have: u32,
        /// Next entry of the news log to look at.
        cursor: usize,
        /// Bytes of the region at `cursor` already received.
        partial: f64,
        /// Bytes read back, sorted and merged.
        merged: f64,
        /// Output bytes written.
        written: f64,
    },
}

#[derive(Debug)]
struct Running {
    worker: u32,
    /// Rate multiplier of this attempt (jitter).
    speed: f64,
    /// Index in `Sim::active`.
    pos: usize,
    /// This step's shuffle (fetch) or network (write) rate, bytes/s.
    net_rate: f64,
    work: Work,
}

/// A map output as announced: the worker holding it and its announcement number.
#[derive(Debug, Clone, Copy)]
struct Location {
    worker: u32,
    epoch: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SimEvent {
    Join(u32),
    Heartbeat(u32),
    Done(u64),
}

/// Derived sizes and rates, bytes and seconds.
#[derive(Debug, Clone, Copy)]
struct Model {
    split: f64,
    inter_per_map: f64,
    /// One map's region for one reduce.
    region: f64,
    partition: f64,
    out_per_reduce: f64,
    spills: bool,
    disks: f64,
    disk_rate: f64,
    seek: f64,
    chunk: f64,
    nic: f64,
    bisection: f64,
    /// One fetch: a round trip, a seek and the transfer.
    fetch_latency: f64,
    replicas: f64,
    output_write: f64,
    map_cpu: f64,
    map_sort: f64,
    reduce_sort: f64,
    reduce_cpu: f64,
    in_flight: f64,
}

impl Model {
    fn of(p: &Params) -> Model {
        let maps = f64::from(p.job.maps);
        let reduces = f64::from(p.job.reduces.max(1));
        let split = p.job.input_bytes / maps;
        let inter_per_map = split * p.job.intermediate_ratio;
        let partition = inter_per_map * maps / reduces;
        let disk_rate = p.cluster.disk_mb_s * 1e6;
        let region = inter_per_map / reduces;
        let seek = p.cluster.disk_seek_ms / 1e3;
        let nic = p.cluster.nic_mb_s * 1e6;
        let per_byte = |ns: f64| if ns > 0.0 { 1e9 / ns } else { f64::INFINITY };
        Model {
            split,
            inter_per_map,
            region,
            partition,
            out_per_reduce: partition * p.job.output_ratio,
            spills: partition > p.cluster.reduce_memory_mb * 1e6,
            disks: f64::from(p.cluster.disks),
            disk_rate,
            seek,
            chunk: p.cluster.io_chunk_kib * 1024.0,
            nic,
            bisection: p.cluster.bisection_gbps * 1e9 / 8.0,
            fetch_latency: p.cluster.rtt_ms / 1e3 + seek + region / disk_rate + region / nic,
            replicas: f64::from(p.job.output_replicas),
            output_write: p.cluster.output_write_mb_s * 1e6,
            map_cpu: per_byte(p.costs.map_ns_per_byte),
            map_sort: per_byte(p.costs.map_sort_ns_per_byte),
            reduce_sort: per_byte(p.costs.reduce_sort_ns_per_byte),
            reduce_cpu: per_byte(p.costs.reduce_ns_per_byte),
            in_flight: f64::from(p.costs.fetches_in_flight),
        }
    }

    /// A machine's disks streaming at `rate` per disk, shared with other streams: each
    /// chunk costs a seek. `free` is the disk time the fetches it serves leave.
    fn stream(&self, rate: f64, free: f64) -> f64 {
        self.disks * self.chunk / (self.seek + self.chunk / rate) * free
    }
}

struct Sim {
    params: Params,
    run: Run,
    model: Model,
    rng: Rng,
    sched: Scheduler,
    now: f64,
    step: f64,
    machines: Vec<Machine>,
    /// Running attempts by attempt id.
    running: Vec<Option<Running>>,
    /// Ids of the running attempts.
    active: Vec<u64>,
    /// Per map: where its current output lives, if it is announced and not lost.
    located: Vec<Option<Location>>,
    /// Announcements per map so far.
    epochs: Vec<u32>,
    /// Maps announced at least once.
    ever_located: u32,
    /// Every announcement in order: (map, epoch).
    news: Vec<(u32, u32)>,
    records: Vec<AttemptRecord>,
    rates: RateSeries,
    lost_input: Vec<u64>,
    map_commits: Vec<u32>,
    reduce_commits: Vec<u32>,
    map_phase_end: f64,
    done: Option<f64>,
    failed: Option<String>,
    /// Fetches served last step, per second (their seeks load every disk).
    fetch_ops: f64,
    kill_done: bool,
    /// Killed machines waiting to be restarted: (when, the dead machine).
    restarts: Vec<(f64, usize)>,
    events: u64,
    commands: u64,
    map_output_ready: u64,
    scheduler_wall: Duration,
}

fn secs(t: f64) -> Duration {
    Duration::from_secs_f64(t.max(0.0))
}

fn micros(t: f64) -> u64 {
    (t.max(0.0) * 1e6).round() as u64
}

impl Sim {
    fn new(params: &Params, run: Run) -> Sim {
        let p = params;
        let mut rng = Rng(p.seed);
        let n = p.cluster.workers as usize;
        let mut machines: Vec<Machine> = (0..n)
            .map(|_| Machine {
                read_factor: 1.0,
                cpu_factor: 1.0,
                busy_at: f64::INFINITY,
                busy_factor: 1.0,
                join_at: 0.0,
                joined: false,
                dead: false,
                next_heartbeat: 0.0,
                running: Vec::new(),
            })
            .collect();
        let s = &p.stragglers;
        let (bad, busy) = (s.bad_disk_workers as usize, s.busy_workers as usize);
        let slow = rng.sample(n, bad + busy + s.no_cache_workers as usize);
        for (i, &m) in slow.iter().enumerate() {
            if i < bad {
                machines[m].read_factor = 1.0 / s.bad_disk_factor;
            } else if i < bad + busy {
                machines[m].busy_at = rng.unit() * s.busy_onset_s;
                machines[m].busy_factor = 1.0 / s.busy_factor;
            } else {
                machines[m].cpu_factor = 1.0 / s.no_cache_factor;
            }
        }
        for m in &mut machines {
            m.join_at = rng.unit() * p.cluster.startup_s;
        }
        let config = Config {
            maps: p.job.maps,
            reduces: p.job.reduces,
            heartbeat_timeout: Duration::from_millis(p.cluster.heartbeat_timeout_ms),
            speculation: run != Run::NoBackups,
            min_runtime: secs(p.scheduler.min_runtime_s),
            ..Config::default()
        };
        let bucket = p.sim.rate_bucket_ms * 1000;
        Sim {
            params: p.clone(),
            run,
            model: Model::of(p),
            rng,
            sched: Scheduler::new(config),
            now: 0.0,
            step: p.sim.step_ms as f64 / 1e3,
            machines,
            running: Vec::new(),
            active: Vec::new(),
            located: vec![None; p.job.maps as usize],
            epochs: vec![0; p.job.maps as usize],
            ever_located: 0,
            news: Vec::new(),
            records: Vec::new(),
            rates: RateSeries {
                bucket_us: bucket,
                ..RateSeries::default()
            },
            lost_input: Vec::new(),
            map_commits: vec![0; p.job.maps as usize],
            reduce_commits: vec![0; p.job.reduces as usize],
            map_phase_end: 0.0,
            done: None,
            failed: None,
            fetch_ops: 0.0,
            kill_done: false,
            restarts: Vec::new(),
            events: 0,
            commands: 0,
            map_output_ready: 0,
            scheduler_wall: Duration::ZERO,
        }
    }

    fn run(&mut self) -> Result<(), SimError> {
        self.handle(Event::Tick); // drains `JobDone` of an empty job
        while self.done.is_none() {
            if let Some(reason) = &self.failed {
                return Err(SimError::Unfinished(format!("the job failed: {reason}")));
            }
            if self.now > self.params.sim.max_sim_s {
                return Err(SimError::Unfinished(format!(
                    "not done after {:.0} simulated s ({} of {} reduces committed)",
                    self.params.sim.max_sim_s,
                    self.sched.stats().reduces_committed,
                    self.params.job.reduces
                )));
            }
            self.step();
        }
        Ok(())
    }

    fn finish(self, wall_s: f64) -> Outcome {
        let workers = (0u32..)
            .zip(&self.machines)
            .filter(|(_, m)| m.joined)
            .map(|(id, _)| (id, self.params.cluster.slots))
            .collect();
        Outcome {
            run: self.run,
            params: self.params,
            total_s: self.done.unwrap_or(self.now),
            map_phase_end_s: self.map_phase_end,
            attempts: self.records,
            rates: self.rates,
            lost_input: self.lost_input,
            workers,
            map_commits: self.map_commits,
            reduce_commits: self.reduce_commits,
            stats: self.sched.stats(),
            events: self.events,
            commands: self.commands,
            map_output_ready: self.map_output_ready,
            wall_s,
            scheduler_wall_s: self.scheduler_wall.as_secs_f64(),
            scheduler: self.sched,
        }
    }

    /// One step of the fluid model, then its events.
    fn step(&mut self) {
        let (t0, dt) = (self.now, self.step);
        let t1 = t0 + dt;
        let mut events: Vec<(f64, SimEvent)> = Vec::new();
        self.failures(t0, t1);
        for (id, m) in (0u32..).zip(&self.machines) {
            if !m.joined && !m.dead && m.join_at < t1 {
                events.push((m.join_at.max(t0), SimEvent::Join(id)));
            }
        }
        let free = self.divide_capacity(dt);
        let mut fetched_regions = 0u64;
        for i in 0..self.active.len() {
            let id = self.active[i];
            if let Some(finished) = self.advance(id, t0, dt, free, &mut fetched_regions) {
                events.push((finished, SimEvent::Done(id)));
            }
        }
        self.fetch_ops = fetched_regions as f64 / dt;
        let period = self.params.cluster.heartbeat_ms as f64 / 1e3;
        for (id, m) in (0u32..).zip(&mut self.machines) {
            if m.joined && !m.dead {
                while m.next_heartbeat < t1 {
                    events.push((m.next_heartbeat.max(t0), SimEvent::Heartbeat(id)));
                    m.next_heartbeat += period;
                }
            }
        }
        // Stable: ties keep the order above (joins, then successes, then heartbeats).
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (at, event) in events {
            if self.done.is_some() || self.failed.is_some() {
                break;
            }
            self.now = at.max(self.now);
            match event {
                SimEvent::Join(id) => {
                    let m = &mut self.machines[id as usize];
                    m.joined = true;
                    // Heartbeats start one period after the join, at a random phase.
                    m.next_heartbeat = at + period * (0.5 + self.rng.unit());
                    let slots = self.params.cluster.slots;
                    self.handle(Event::WorkerJoined {
                        worker: WorkerId(id),
                        slots,
                    });
                }
                SimEvent::Heartbeat(id) => {
                    if self.machines[id as usize].dead {
                        continue;
                    }
                    let progress = self.machines[id as usize]
                        .running
                        .iter()
                        .filter_map(|a| Some((AttemptId(*a), self.progress(*a)?)))
                        .collect();
                    self.handle(Event::Heartbeat {
                        worker: WorkerId(id),
                        progress,
                    });
                }
                SimEvent::Done(attempt) => {
                    // It may have been cancelled earlier in this step.
                    if self.take_running(attempt).is_none() {
                        continue;
                    }
                    let id = AttemptId(attempt);
                    self.handle(Event::AttemptSucceeded { attempt: id });
                    let committed = self
                        .sched
                        .attempt(id)
                        .is_some_and(|a| matches!(a.state, AttemptState::Committed));
                    let outcome = if committed {
                        AttemptOutcome::Committed
                    } else {
                        AttemptOutcome::Cancelled
                    };
                    self.end_record(attempt, at, outcome);
                }
            }
        }
        self.now = t1.max(self.now);
        if self.done.is_none() && self.sched.poll_timeout().is_some_and(|t| t <= secs(t1)) {
            self.handle(Event::Tick);
        }
    }

    /// The kill (and the restarts it leads to) of the `killed` run.
    fn failures(&mut self, t0: f64, t1: f64) {
        if self.run == Run::Killed && !self.kill_done && self.params.kill.at_s < t1 {
            self.kill_done = true;
            let at = self.params.kill.at_s.max(t0);
            let live: Vec<usize> = (0..self.machines.len())
                .filter(|i| self.machines[*i].joined && !self.machines[*i].dead)
                .collect();
            let victims = self
                .rng
                .sample(live.len(), self.params.kill.workers as usize);
            for v in victims {
                let m = live[v];
                self.machines[m].dead = true;
                for attempt in std::mem::take(&mut self.machines[m].running) {
                    self.take_running(attempt);
                    self.end_record(attempt, at, AttemptOutcome::Lost);
                }
                self.restarts.push((at + self.params.kill.restart_s, m));
            }
        }
        let due: Vec<usize> = self
            .restarts
            .iter()
            .filter(|(when, _)| *when < t1)
            .map(|(_, m)| *m)
            .collect();
        self.restarts.retain(|(when, _)| *when >= t1);
        for m in due {
            let old = &self.machines[m];
            let restarted = Machine {
                read_factor: old.read_factor,
                cpu_factor: old.cpu_factor,
                busy_at: old.busy_at,
                busy_factor: old.busy_factor,
                join_at: t0,
                joined: false,
                dead: false,
                next_heartbeat: 0.0,
                running: Vec::new(),
            };
            self.machines.push(restarted);
        }
    }

    /// Divides this step's shared capacity: sets every running attempt's `net_rate` (fetch
    /// or output network rate) and returns the disk time left to local streams.
    fn divide_capacity(&mut self, dt: f64) -> f64 {
        let md = self.model;
        let live = self
            .machines
            .iter()
            .filter(|m| m.joined && !m.dead)
            .count()
            .max(1) as f64;
        // Disk time of the seeks the fetches of the last step cost, per disk.
        let per_fetch = md.seek + md.region / md.disk_rate;
        let busy = (self.fetch_ops / (live * md.disks) * per_fetch).min(0.9);
        let free = 1.0 - busy;
        // What the cluster's disks can serve: 90% of their time in seeks at most.
        let serve_cap = 0.9 * live * md.disks / per_fetch * md.region;
        let mut writers = 0.0;
        let mut demands: Vec<(f64, u64)> = Vec::new();
        let mut writing: Vec<(f64, u64)> = Vec::new();
        let news = self.news.len();
        for &id in &self.active {
            let Some(r) = self.running.get(id as usize).and_then(Option::as_ref) else {
                continue;
            };
            let Work::Reduce {
                n_have,
                cursor,
                partial,
                merged,
                ..
            } = &r.work
            else {
                continue;
            };
            if *n_have < self.params.job.maps {
                let share = self.machines[r.worker as usize].share(self.now);
                let mut cap =
                    (md.nic * share).min(md.in_flight * md.region / md.fetch_latency) * r.speed;
                if md.spills {
                    cap = cap.min(md.stream(md.disk_rate, free) * share);
                }
                let waiting = (news - cursor) as f64 * md.region - partial;
                demands.push((cap.min(waiting.max(0.0) / dt), id));
            } else if *merged >= md.partition {
                let rate = self.write_rate(r, free);
                writers += rate * (md.replicas - 1.0);
                writing.push((rate, id));
            } else {
                writing.push((0.0, id));
            }
        }
        // Output copies cross the root first (they are few); the fetches share the rest,
        // and the disks' seek budget, fairly (water-filling).
        let scale_writes = if writers > md.bisection {
            md.bisection / writers
        } else {
            1.0
        };
        let cap = (md.bisection - writers * scale_writes)
            .min(serve_cap)
            .max(0.0);
        let total: f64 = demands.iter().map(|d| d.0).sum();
        let level = if total <= cap {
            f64::INFINITY
        } else {
            demands.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut left = cap;
            let mut level = 0.0;
            let n = demands.len();
            for (i, d) in demands.iter().enumerate() {
                let share = left / (n - i) as f64;
                if d.0 <= share {
                    left -= d.0;
                } else {
                    level = share;
                    break;
                }
            }
            level
        };
        let rates = demands
            .into_iter()
            .map(|(demand, id)| (demand.min(level), id))
            .chain(
                writing
                    .into_iter()
                    .map(|(rate, id)| (rate * scale_writes, id)),
            );
        for (rate, id) in rates {
            if let Some(Some(r)) = self.running.get_mut(id as usize) {
                r.net_rate = rate;
            }
        }
        free
    }

    /// Output bytes/s a reduce can write: its local copy and a peer's copy on its disks,
    /// the other copies over its NIC, at its CPU's pace and the output file system's.
    fn write_rate(&self, r: &Running, free: f64) -> f64 {
        let md = &self.model;
        let m = &self.machines[r.worker as usize];
        let disk = md.stream(md.disk_rate, free) / md.replicas.min(2.0);
        let nic = if md.replicas > 1.0 {
            md.nic / (md.replicas - 1.0)
        } else {
            f64::INFINITY
        };
        disk.min(nic)
            .min(md.output_write)
            .min(md.reduce_cpu * m.cpu_factor)
            * m.share(self.now)
            * r.speed
    }

    /// Moves attempt `id` forward by `dt`; `Some(when)` if it finished in this step.
    fn advance(
        &mut self,
        id: u64,
        t0: f64,
        dt: f64,
        free: f64,
        fetched_regions: &mut u64,
    ) -> Option<f64> {
        let md = self.model;
        let maps = self.params.job.maps;
        let bucket = self.params.sim.rate_bucket_ms as f64 / 1e3;
        let slot = (t0 / bucket) as usize;
        let r = self.running.get_mut(id as usize)?.as_mut()?;
        let m = &self.machines[r.worker as usize];
        // Jitter and the machine's share (contention slows every resource alike).
        let speed = r.speed * m.share(t0);
        let mut left = dt;
        match &mut r.work {
            Work::Map {
                read,
                sorted,
                spilled,
            } => {
                let stages = [
                    (
                        read,
                        md.split,
                        md.stream(md.disk_rate * m.read_factor, free)
                            .min(md.map_cpu * m.cpu_factor),
                    ),
                    (sorted, md.inter_per_map, md.map_sort * m.cpu_factor),
                    (spilled, md.inter_per_map, md.stream(md.disk_rate, free)),
                ];
                let mut input = 0.0;
                for (i, (done, total, rate)) in stages.into_iter().enumerate() {
                    if *done >= total {
                        continue;
                    }
                    let rate = rate * speed;
                    let moved = (rate * left).min(total - *done);
                    *done += moved;
                    left -= moved / rate;
                    if i == 0 {
                        input = moved;
                    }
                    if *done < total {
                        left = 0.0;
                        break;
                    }
                }
                add(&mut self.rates.input, slot, input);
                (left > 0.0 || spilled_all(&r.work, md.inter_per_map)).then_some(t0 + dt - left)
            }
            Work::Reduce {
                have,
                n_have,
                cursor,
                partial,
                merged,
                written,
            } => {
                if *n_have < maps {
                    let mut bytes = r.net_rate * dt + *partial;
                    let mut got = 0u64;
                    while *cursor < self.news.len() {
                        let (map, epoch) = self.news[*cursor];
                        let (word, bit) = (map as usize / 64, 1u64 << (map % 64));
                        let valid = self.located[map as usize].is_some_and(|l| {
                            l.epoch == epoch && !self.machines[l.worker as usize].dead
                        });
                        if have[word] & bit != 0 || !valid {
                            *cursor += 1;
                            continue;
                        }
                        if bytes < md.region {
                            break;
                        }
                        bytes -= md.region;
                        have[word] |= bit;
                        *n_have += 1;
                        got += 1;
                        *cursor += 1;
                    }
                    *partial = if *cursor < self.news.len() {
                        bytes.min(md.region)
                    } else {
                        0.0
                    };
                    *fetched_regions += got;
                    add(&mut self.rates.shuffle, slot, got as f64 * md.region);
                    if *n_have < maps {
                        return None;
                    }
                    left = 0.0; // merging starts next step
                }
                let merge_rate = if md.spills {
                    md.stream(md.disk_rate * m.read_factor, free)
                        .min(md.reduce_sort * m.cpu_factor)
                } else {
                    md.reduce_sort * m.cpu_factor
                } * speed;
                if *merged < md.partition && left > 0.0 {
                    let moved = (merge_rate * left).min(md.partition - *merged);
                    *merged += moved;
                    left -= moved / merge_rate;
                    if *merged < md.partition {
                        return None;
                    }
                }
                if left > 0.0 && r.net_rate > 0.0 {
                    let moved = (r.net_rate * left).min(md.out_per_reduce - *written);
                    *written += moved;
                    left -= moved / r.net_rate;
                    add(&mut self.rates.output, slot, moved);
                }
                (*written >= md.out_per_reduce).then_some(t0 + dt - left.max(0.0))
            }
        }
    }

    /// Attempt `id`'s progress as the real worker reports it.
    fn progress(&self, id: u64) -> Option<f64> {
        let md = &self.model;
        let r = self.running.get(id as usize)?.as_ref()?;
        Some(
            match &r.work {
                Work::Map {
                    read,
                    sorted,
                    spilled,
                } => {
                    (read / md.split + sorted / md.inter_per_map + 2.0 * spilled / md.inter_per_map)
                        / 4.0
                }
                Work::Reduce {
                    n_have,
                    partial,
                    merged,
                    written,
                    ..
                } => {
                    // 0 until every map's output size is known, as the real reduce reports.
                    if self.ever_located < self.params.job.maps {
                        return Some(0.0);
                    }
                    let fetched = (f64::from(*n_have) * md.region + partial) / md.partition;
                    let out = if md.out_per_reduce > 0.0 {
                        written / md.out_per_reduce
                    } else {
                        1.0
                    };
                    (fetched + merged / md.partition + out) / 3.0
                }
            }
            .clamp(0.0, 1.0),
        )
    }

    fn take_running(&mut self, id: u64) -> Option<Running> {
        let r = self.running.get_mut(id as usize)?.take()?;
        let last = self.active.len() - 1;
        self.active.swap_remove(r.pos);
        if r.pos < last {
            let moved = self.active[r.pos];
            if let Some(Some(o)) = self.running.get_mut(moved as usize) {
                o.pos = r.pos;
            }
        }
        if let Some(m) = self.machines.get_mut(r.worker as usize) {
            m.running.retain(|a| *a != id);
        }
        Some(r)
    }

    fn end_record(&mut self, id: u64, at: f64, outcome: AttemptOutcome) {
        if let Some(rec) = self.records.get_mut(id as usize) {
            if rec.outcome == AttemptOutcome::Running {
                rec.end_us = micros(at);
                rec.outcome = outcome;
            }
        }
    }

    /// Hands `event` to the scheduler at `self.now`, then carries out its commands.
    fn handle(&mut self, event: Event) {
        let clock = Instant::now();
        self.events += 1;
        self.sched.handle(secs(self.now), event);
        while let Some(j) = self.sched.poll_journal() {
            if let JournalEvent::TaskCommitted { task, .. } = j {
                let counts = match task.phase {
                    Phase::Map => &mut self.map_commits,
                    Phase::Reduce => &mut self.reduce_commits,
                };
                if let Some(c) = counts.get_mut(task.index as usize) {
                    *c += 1;
                }
                if task.phase == Phase::Map {
                    self.map_phase_end = self.map_phase_end.max(self.now);
                }
            }
        }
        let mut commands = Vec::new();
        while let Some(c) = self.sched.poll() {
            self.commands += 1;
            commands.push(c);
        }
        self.scheduler_wall += clock.elapsed();
        for c in commands {
            self.apply(c);
        }
    }

    fn apply(&mut self, command: Command) {
        let now = self.now;
        match command {
            Command::Assign {
                attempt,
                task,
                worker,
                backup,
            } => self.assign(attempt, task, worker, backup.is_some()),
            Command::Cancel { attempt, .. } => {
                self.take_running(attempt.0);
                self.end_record(attempt.0, now, AttemptOutcome::Cancelled);
            }
            Command::MapOutputReady { map, worker } => {
                self.map_output_ready += 1;
                let m = map as usize;
                if self.located.get(m).is_some_and(Option::is_none) {
                    self.epochs[m] += 1;
                    if self.epochs[m] == 1 {
                        self.ever_located += 1;
                    }
                    self.located[m] = Some(Location {
                        worker: worker.0,
                        epoch: self.epochs[m],
                    });
                    self.news.push((map, self.epochs[m]));
                }
            }
            Command::MapOutputLost { map } => {
                if let Some(l) = self.located.get_mut(map as usize) {
                    *l = None;
                }
                let bucket = self.params.sim.rate_bucket_ms as f64 / 1e3;
                add(
                    &mut self.lost_input,
                    (now / bucket) as usize,
                    self.model.split,
                );
            }
            Command::JobDone => self.done = Some(now),
            Command::JobFailed { reason } => self.failed = Some(reason),
        }
    }

    fn assign(&mut self, attempt: AttemptId, task: TaskId, worker: WorkerId, backup: bool) {
        let id = attempt.0;
        let phase = match task.phase {
            Phase::Map => PhaseName::Map,
            Phase::Reduce => PhaseName::Reduce,
        };
        let start = micros(self.now);
        // Attempt ids are dense from 0; records are indexed by them.
        while self.records.len() <= id as usize {
            let filler = self.records.len() as u64;
            self.records.push(AttemptRecord {
                phase,
                task: task.index,
                attempt: filler,
                worker: worker.0,
                start_us: start,
                end_us: start,
                outcome: AttemptOutcome::Cancelled,
                backup: false,
            });
        }
        self.records[id as usize] = AttemptRecord {
            phase,
            task: task.index,
            attempt: id,
            worker: worker.0,
            start_us: start,
            end_us: start,
            outcome: AttemptOutcome::Running,
            backup,
        };
        let Some(m) = self.machines.get_mut(worker.0 as usize) else {
            return;
        };
        if m.dead {
            // Assigned to a process that is already gone: the scheduler will find out.
            self.end_record(id, self.now, AttemptOutcome::Lost);
            return;
        }
        m.running.push(id);
        let jitter = self.params.costs.task_jitter;
        let speed = 1.0 + jitter * (2.0 * self.rng.unit() - 1.0);
        let work = match task.phase {
            Phase::Map => Work::Map {
                read: 0.0,
                sorted: 0.0,
                spilled: 0.0,
            },
            Phase::Reduce => Work::Reduce {
                have: vec![0; (self.params.job.maps as usize).div_ceil(64)],
                n_have: 0,
                cursor: 0,
                partial: 0.0,
                merged: 0.0,
                written: 0.0,
            },
        };
        if self.running.len() <= id as usize {
            self.running.resize_with(id as usize + 1, || None);
        }
        self.running[id as usize] = Some(Running {
            worker: worker.0,
            speed,
            pos: self.active.len(),
            net_rate: 0.0,
            work,
        });
        self.active.push(id);
    }
}

fn spilled_all(work: &Work, total: f64) -> bool {
    matches!(work, Work::Map { spilled, .. } if *spilled >= total)
}

/// Adds `bytes` to bucket `slot` of `series`, growing it.
fn add(series: &mut Vec<u64>, slot: usize, bytes: f64) {
    if bytes <= 0.0 {
        return;
    }
    if series.len() <= slot {
        series.resize(slot + 1, 0);
    }
    series[slot] += bytes.round() as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's machines and costs, at 1/100 of its size: 18 workers, 150 maps of the
    /// same 64 MB, 40 reduces, 1 s heartbeats.
    fn small() -> Params {
        let mut p = Params::paper_sort().expect("the shipped parameters parse");
        p.job.maps = 150;
        p.job.reduces = 40;
        p.job.input_bytes = 150.0 * 64e6;
        p.cluster.workers = 18;
        p.cluster.startup_s = 5.0;
        p.stragglers.bad_disk_workers = 1;
        p.stragglers.busy_workers = 1;
        p.stragglers.no_cache_workers = 1;
        p.kill.workers = 4;
        p.kill.at_s = 30.0;
        p
    }

    fn check_exactly_once(o: &Outcome) {
        assert!(
            o.reduce_commits.iter().all(|c| *c == 1),
            "{:?}",
            o.reduce_commits
        );
        assert!(o.map_commits.iter().all(|c| *c >= 1), "{:?}", o.map_commits);
        assert!(o.scheduler.is_finished());
        assert_eq!(o.scheduler.check_invariants(), Ok(()));
        let committed = o
            .attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Committed)
            .count();
        assert_eq!(committed as u64, o.stats.attempts_committed);
        assert!(o.total_s > o.map_phase_end_s && o.map_phase_end_s > 0.0);
    }

    #[test]
    fn a_small_cluster_commits_every_task_exactly_once() {
        let o = simulate(&small(), Run::Normal).expect("finishes");
        check_exactly_once(&o);
        assert_eq!(o.stats.workers_lost, 0);
        // Every input byte was read, every intermediate byte fetched, every output written.
        let sum = |v: &[u64]| v.iter().sum::<u64>() as f64;
        let p = small();
        assert!(sum(&o.rates.input) >= p.job.input_bytes * 0.999);
        assert!(sum(&o.rates.shuffle) >= p.job.input_bytes * 0.999);
        assert!(sum(&o.rates.output) >= p.job.input_bytes * 0.999);
    }

    #[test]
    fn killed_workers_maps_run_again() {
        let o = simulate(&small(), Run::Killed).expect("finishes");
        check_exactly_once(&o);
        assert_eq!(o.stats.workers_lost, 4);
        assert!(o.stats.map_outputs_lost > 0, "{:?}", o.stats);
        assert!(o.map_commits.iter().any(|c| *c > 1));
        assert!(o.lost_input.iter().sum::<u64>() > 0);
        // The restarted processes joined under new ids.
        assert!(o.workers.len() > 18);
    }

    #[test]
    fn without_backups_nothing_is_backed_up() {
        let o = simulate(&small(), Run::NoBackups).expect("finishes");
        check_exactly_once(&o);
        assert_eq!(o.stats.backups_launched, 0);
    }

    #[test]
    fn the_same_seed_gives_the_same_job() {
        let a = simulate(&small(), Run::Killed).expect("finishes");
        let b = simulate(&small(), Run::Killed).expect("finishes");
        assert_eq!(a.total_s, b.total_s);
        assert_eq!(a.attempts, b.attempts);
        assert_eq!(a.rates, b.rates);
        let mut other = small();
        other.seed += 1;
        let c = simulate(&other, Run::Killed).expect("finishes");
        assert_ne!(a.attempts, c.attempts);
    }

    #[test]
    fn a_bad_parameter_file_is_an_error() {
        let text = PAPER_SORT_FOR_TESTS.replace("slots = 1", "slots = 0");
        assert!(Params::parse(&text, "t").is_err());
        assert!(Params::parse("seed = 1", "t").is_err());
    }

    const PAPER_SORT_FOR_TESTS: &str = crate::sim::params::PAPER_SORT;
}
