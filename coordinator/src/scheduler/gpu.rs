//! GPUs as a resource of the scheduler: each allocatable device (a whole GPU or a MIG
//! instance) is a slot with attributes; a server asks for a number of devices that match one
//! set of requirements (a device profile's group). Devices are given out exactly: no device to
//! two servers.

use super::ServerSpec;
use super::cluster::HostAcc;

/// One allocatable GPU device of a host, with what requirements can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSlot {
    pub uuid: String,
    /// Traits it has: `CUSTOM_GPU_<MODEL>` (the whole normalized name) and `CUSTOM_GPU_<WORD>`
    /// for each word of it (`CUSTOM_GPU_H100`), `CUSTOM_MIG_<PROFILE>` for a MIG instance.
    pub traits: Vec<String>,
    pub memory_mb: u64,
    /// `Some(profile)` for a MIG instance.
    pub mig_profile: Option<String>,
}

/// `[A-Z0-9_]` form of a name for traits: "NVIDIA H100 80GB HBM3" -> "NVIDIA_H100_80GB_HBM3".
pub fn trait_word(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_uppercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_owned()
}

impl GpuSlot {
    /// A slot from what discovery knows: model name, memory, MIG profile.
    pub fn new(uuid: &str, name: &str, memory_bytes: u64, mig_profile: Option<&str>) -> GpuSlot {
        let full = trait_word(name);
        let mut traits = vec![format!("CUSTOM_GPU_{full}")];
        for word in full.split('_').filter(|w| !w.is_empty()) {
            let t = format!("CUSTOM_GPU_{word}");
            if !traits.contains(&t) {
                traits.push(t);
            }
        }
        if let Some(p) = mig_profile {
            traits.push(format!("CUSTOM_MIG_{}", trait_word(p)));
        }
        GpuSlot {
            uuid: uuid.to_owned(),
            traits,
            memory_mb: memory_bytes >> 20,
            mig_profile: mig_profile.map(str::to_owned),
        }
    }
}

/// Which kind of device a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuKind {
    /// `resources:GPU`: a whole GPU or a MIG instance.
    #[default]
    Any,
    /// `resources:PGPU`: a whole GPU.
    Whole,
    /// `resources:VGPU`: a MIG instance.
    Mig,
}

/// What each device given to a server must be.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct GpuMatch {
    pub kind: GpuKind,
    pub required: Vec<String>,
    pub forbidden: Vec<String>,
    pub min_memory_mb: u64,
}

impl GpuMatch {
    pub fn matches(&self, slot: &GpuSlot) -> bool {
        let kind = match self.kind {
            GpuKind::Any => true,
            GpuKind::Whole => slot.mig_profile.is_none(),
            GpuKind::Mig => slot.mig_profile.is_some(),
        };
        kind && slot.memory_mb >= self.min_memory_mb
            && self.required.iter().all(|t| slot.traits.contains(t))
            && !self.forbidden.iter().any(|t| slot.traits.contains(t))
    }
}

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
