//! GPUs as a resource: each allocatable device (a whole GPU or a MIG instance) is a slot with
//! attributes; a request names one set of requirements each device given must match.

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
