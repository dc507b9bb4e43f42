//! Pure policy: the scheduler (placement, preemption, growth), pools and autoscale. No IO.

pub mod autoscale;
pub mod pools;
pub mod scheduler;
