//! The operator's APIs: Arvados' dispatch, Dynamic Cluster (hosts, pools, auto mode), the
//! dashboard, and who may call them (`auth`: operator certificates or the management token).

pub(in crate::api) mod arvados;
pub(in crate::api) mod auth;
pub(in crate::api) mod dashboard;
pub(in crate::api) mod dynamic_cluster;
#[cfg(test)]
pub(in crate::api) mod tests;
