//! Group commit. A change is applied to the live model under its lock and queued here; the lock
//! is released before the disk is touched. One task writes what is queued, every batch that
//! arrived while the previous transaction was being written in one transaction (one fsync for
//! all of them), in the order the model saw them. Only then are the callers answered and the
//! agents sent their new desired states, so nothing is promised or run that is not durable.
//!
//! A failed transaction fails every batch in it and bumps the committer's epoch: batches queued
//! on top of the failed ones are refused as stale, and the next holder of the model's lock
//! reloads the model from the store (see `Coordinator::lock_model`) before anything else is
//! planned on state that never reached the disk.

use crate::store::{Store, StoreError, WriteBatch};
use crate::telemetry::Metrics;
use backfill_shared::protocol::DesiredState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// Where a host's agent session takes its desired states from.
pub type DesiredTx = Arc<watch::Sender<Arc<DesiredState>>>;

/// At most this many batches share one transaction (bounds its size and the latency of the
/// first batch in it).
const MAX_GROUP: usize = 512;

struct Pending {
    batch: WriteBatch,
    /// The committer's epoch the model had when this batch was made.
    epoch: u64,
    /// Desired states to hand to agents once the batch is durable.
    pushes: Vec<(DesiredTx, Arc<DesiredState>)>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Debug)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Pending>,
    epoch: Arc<AtomicU64>,
}

/// A queued write: `wait` answers once it is durable (or failed). Dropping it does not cancel
/// the write.
#[derive(Debug)]
#[must_use = "a write is durable only once `wait` answers"]
pub struct Durable(oneshot::Receiver<Result<(), StoreError>>);

impl Durable {
    /// For writes that answer no one (the scheduler's own passes, agents' reports): the write
    /// still happens, in order; a failure reloads the model from the store.
    pub fn detach(self) {}

    pub async fn wait(self) -> Result<(), StoreError> {
        self.0.await.unwrap_or(Err(StoreError::Closed))
    }
}

impl Committer {
    /// Starts the writer task (on the current tokio runtime). It ends when the committer is
    /// dropped and its queue is empty.
    pub fn start(store: Store, metrics: Arc<Metrics>, events_ready: Arc<Notify>) -> Committer {
        let (queue, rx) = mpsc::unbounded_channel();
        let epoch = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(store, rx, epoch.clone(), metrics, events_ready));
        Committer { queue, epoch }
    }

    /// The current epoch: a model made at another epoch must be reloaded before it is used.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Queues `batch`, made on a model of `epoch`. The desired states in `pushes` are sent
    /// once it is durable.
    pub fn submit(
        &self,
        batch: WriteBatch,
        epoch: u64,
        pushes: Vec<(DesiredTx, Arc<DesiredState>)>,
    ) -> Durable {
        let (done, rx) = oneshot::channel();
        let pending = Pending {
            batch,
            epoch,
            pushes,
            done,
        };
        match self.queue.send(pending) {
            Ok(()) => Durable(rx),
            Err(mpsc::error::SendError(p)) => {
                let _ = p.done.send(Err(StoreError::Closed));
                Durable(rx)
            }
        }
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    epoch: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    events_ready: Arc<Notify>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let current = epoch.load(Ordering::Acquire);
        let (live, stale): (Vec<Pending>, Vec<Pending>) =
            group.into_iter().partition(|p| p.epoch == current);
        for p in stale {
            let _ = p.done.send(Err(StoreError::Stale));
        }
        let batches: Vec<&WriteBatch> = live
            .iter()
            .map(|p| &p.batch)
            .filter(|b| !b.is_empty())
            .collect();
        let result = if batches.is_empty() {
            Ok(())
        } else {
            let start = std::time::Instant::now();
            let r = store.write_batches(&batches).await;
            metrics
                .commit_seconds
                .observe(start.elapsed().as_secs_f64());
            metrics.commit_batches.observe(batches.len() as f64);
            r
        };
        match result {
            Ok(()) => {
                if live.iter().any(|p| !p.batch.events.is_empty()) {
                    events_ready.notify_one();
                }
                for p in live {
                    for (tx, desired) in p.pushes {
                        tx.send_replace(desired);
                    }
                    let _ = p.done.send(Ok(()));
                }
            }
            Err(e) => {
                epoch.fetch_add(1, Ordering::AcqRel);
                tracing::error!(error = %e, batches = live.len(), "a group commit failed; the model is reloaded from the store");
                let e = Arc::new(e);
                for p in live {
                    let _ = p.done.send(Err(StoreError::Group(e.clone())));
                }
            }
        }
    }
}
