//! The model for the API's reads: the same lock as writes (a write holds it while it changes the
//! model, never across store IO: see `crate::state::committer`), with the time each read
//! waited for it recorded (`model_read_wait_seconds`), so that a read slowed by writes shows.

use super::Coordinator;
use crate::state::model::Model;
use tokio::sync::MutexGuard;

impl Coordinator {
    /// The model's lock for a read, its wait measured.
    pub(crate) async fn read_model(&self) -> MutexGuard<'_, Model> {
        let asked = std::time::Instant::now();
        let model = self.lock_model().await;
        self.metrics
            .read_wait_seconds
            .observe(asked.elapsed().as_secs_f64());
        model
    }
}
