//! Recent history for the dashboard: capacity samples (total, free, and what each class uses)
//! and a timeline of preemption actions (downsized, noticed, stopped). Bounded rings in memory:
//! an hour of samples at one per `SAMPLE_EVERY_S`, the last `MAX_EVENTS` preemptions. Usage
//! and the audit log are the durable records; this is for looking at.

use crate::domain::server::holds_resources;
use crate::state::model::Model;
use backfill_shared::{HostId, ServerClass, ServerId};
use serde::Serialize;
use std::collections::VecDeque;

pub const SAMPLE_EVERY_S: i64 = 5;
const MAX_SAMPLES: usize = 720;
const MAX_EVENTS: usize = 500;

/// CPU (MHz) and memory (bytes) of the fleet at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub at: i64,
    pub cpu_total: u64,
    pub cpu_free: u64,
    pub cpu_normal: u64,
    pub cpu_backfill: u64,
    pub cpu_spot: u64,
    pub mem_total: u64,
    pub mem_free: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreemptionEvent {
    pub at: i64,
    /// `downsized`, `noticed` or `stopped`.
    pub kind: &'static str,
    pub server: ServerId,
    pub host: Option<HostId>,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
    events: VecDeque<PreemptionEvent>,
}

impl History {
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    pub fn events(&self) -> impl Iterator<Item = &PreemptionEvent> {
        self.events.iter()
    }

    pub fn record(&mut self, e: PreemptionEvent) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Whether a sample is due at `now` (one per `SAMPLE_EVERY_S`).
    pub fn due(&self, now: i64) -> bool {
        self.samples
            .back()
            .is_none_or(|s| now.saturating_sub(s.at) >= SAMPLE_EVERY_S)
    }

    pub fn push(&mut self, s: Sample) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }
}

/// Capacity of hosts whose agents are connected, what is free for new work, and what each
/// class holds now (after downsizing).
pub fn take_sample(model: &Model, now: i64) -> Sample {
    let (mut cpu_total, mut mem_total) = (0u64, 0u64);
    for (id, h) in &model.hosts {
        if h.session.is_some() {
            let c = model.cluster.capacity(id);
            cpu_total = cpu_total.saturating_add(c.cpu_mhz);
            mem_total = mem_total.saturating_add(c.mem_bytes);
        }
    }
    let (mut normal, mut backfill, mut spot) = (0u64, 0u64, 0u64);
    for s in model.servers.values().filter(|s| holds_resources(s.status)) {
        let held = model.cluster.held(s.uuid).cpu_mhz;
        let slot = match s.class {
            ServerClass::Normal => &mut normal,
            ServerClass::Backfill => &mut backfill,
            ServerClass::Spot => &mut spot,
        };
        *slot = slot.saturating_add(held);
    }
    let free = model.free_resources().total;
    Sample {
        at: now,
        cpu_total,
        cpu_free: free.cpu,
        cpu_normal: normal,
        cpu_backfill: backfill,
        cpu_spot: spot,
        mem_total,
        mem_free: free.mem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: i64) -> PreemptionEvent {
        PreemptionEvent {
            at,
            kind: "stopped",
            server: ServerId::new_random(),
            host: None,
            detail: String::new(),
        }
    }

    #[test]
    fn rings_are_bounded_and_samples_spaced() {
        let mut h = History::default();
        for i in 0..(MAX_EVENTS + 10) {
            h.record(event(i64::try_from(i).unwrap()));
        }
        assert_eq!(h.events().count(), MAX_EVENTS);
        assert_eq!(h.events().next().unwrap().at, 10);
        let m = Model::default();
        let sample = |h: &mut History, t| {
            if h.due(t) {
                h.push(take_sample(&m, t));
            }
        };
        for t in 0..20 {
            sample(&mut h, t);
        }
        let at: Vec<i64> = h.samples().map(|s| s.at).collect();
        assert_eq!(at, vec![0, 5, 10, 15]);
        for t in 0..(MAX_SAMPLES as i64 + 5) {
            sample(&mut h, 100 + t * SAMPLE_EVERY_S);
        }
        assert_eq!(h.samples().count(), MAX_SAMPLES);
    }
}
