//! GPUs as a resource of the scheduler: each allocatable device (a whole GPU or a MIG
//! instance) is a slot with attributes; a server asks for a number of devices that match one
//! set of requirements (a device profile's group). Devices are given out exactly: no device to
//! two servers.

use super::ServerSpec;
use super::cluster::HostAcc;

pub use crate::domain::gpu::{GpuKind, GpuMatch, GpuSlot, trait_word};

fn slot<'h>(h: &'h HostAcc, uuid: &str) -> Option<&'h GpuSlot> {
    h.spec.gpus.iter().find(|s| s.uuid == uuid)
}

/// How many of `uuids` (devices of `h`) match what `spec` asks for.
pub(super) fn matching<'a>(
    h: &HostAcc,
    spec: &ServerSpec,
    uuids: impl Iterator<Item = &'a String>,
) -> usize {
    if spec.gpus == 0 {
        return 0; // nothing asked for: no need to look (placement's hot path)
    }
    uuids
        .filter(|u| slot(h, u).is_some_and(|s| spec.gpu_match.matches(s)))
        .count()
}

/// Free devices of `h` that match `spec`.
pub(super) fn free_matching(h: &HostAcc, spec: &ServerSpec) -> usize {
    matching(h, spec, h.free_gpus.iter())
}

/// Every device of `h` that matches `spec`, free or not.
pub(super) fn all_matching(h: &HostAcc, spec: &ServerSpec) -> usize {
    if spec.gpus == 0 {
        return 0;
    }
    h.spec
        .gpus
        .iter()
        .filter(|s| spec.gpu_match.matches(s))
        .count()
}

/// The devices to give `spec` from `h`'s free ones (in uuid order, so plans are
/// deterministic), or fewer when not enough match.
pub(super) fn take(h: &HostAcc, spec: &ServerSpec) -> Vec<String> {
    h.free_gpus
        .iter()
        .filter(|u| slot(h, u).is_some_and(|s| spec.gpu_match.matches(s)))
        .take(usize::try_from(spec.gpus).unwrap_or(usize::MAX))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_have_model_traits_and_requests_match_them() {
        let h100 = GpuSlot::new("GPU-1", "NVIDIA H100 80GB HBM3", 80 << 30, None);
        assert!(
            h100.traits
                .contains(&"CUSTOM_GPU_NVIDIA_H100_80GB_HBM3".to_string())
        );
        assert!(h100.traits.contains(&"CUSTOM_GPU_H100".to_string()));
        let mig = GpuSlot::new("MIG-1", "NVIDIA H100 80GB HBM3", 10 << 30, Some("1g.10gb"));
        assert!(mig.traits.contains(&"CUSTOM_MIG_1G_10GB".to_string()));
        let any = GpuMatch::default();
        assert!(any.matches(&h100) && any.matches(&mig));
        let whole = GpuMatch {
            kind: GpuKind::Whole,
            ..GpuMatch::default()
        };
        assert!(whole.matches(&h100) && !whole.matches(&mig));
        let big = GpuMatch {
            min_memory_mb: 40 * 1024,
            ..GpuMatch::default()
        };
        assert!(big.matches(&h100) && !big.matches(&mig));
        let t4 = GpuMatch {
            required: vec!["CUSTOM_GPU_T4".into()],
            ..GpuMatch::default()
        };
        assert!(!t4.matches(&h100));
        let not_h100 = GpuMatch {
            forbidden: vec!["CUSTOM_GPU_H100".into()],
            ..GpuMatch::default()
        };
        assert!(!not_h100.matches(&h100));
        assert_eq!(trait_word(" Tesla T4 (PCIe) "), "TESLA_T4_PCIE");
    }
}
