//! The model for reads: a shared lock, so readers do not wait for one another, only for a write
//! changing the model in memory (a write never holds the model across store IO: see
//! `crate::state::committer`). The time each read waited is recorded
//! (`model_read_wait_seconds`), so that a read slowed by writes shows.

use super::Coordinator;
use crate::state::model::Model;
use tokio::sync::RwLockReadGuard;

impl Coordinator {
    /// The model, shared for a read, its wait measured. A model a failed group commit left
    /// behind the store is reloaded first (under the write lock), as `lock_model` does.
    pub(crate) async fn read_model(&self) -> RwLockReadGuard<'_, Model> {
        let asked = std::time::Instant::now();
        let mut model = self.model.read().await;
        if model.epoch != self.committer.epoch() {
            drop(model);
            model = self.lock_model().await.downgrade();
        }
        self.metrics
            .read_wait_seconds
            .observe(asked.elapsed().as_secs_f64());
        model
    }
}
