//! Accounts: created by the operator, bound to certificates by CN, with quotas.

/// Per-account limits; `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// MHz over all the account's servers that hold resources.
    pub cpu: Option<u64>,
    /// Bytes.
    pub mem: Option<u64>,
    pub gpus: Option<u64>,
    /// Servers that exist (any status).
    pub servers: Option<u64>,
    /// Bytes of drives; `None` = the configured default (`[drives] storage_quota_bytes`,
    /// itself unlimited when unset); [`UNLIMITED_STORAGE`] = unlimited whatever the default.
    pub storage: Option<u64>,
}

/// A storage quota the operator set to unlimited explicitly (the API's `"unlimited"`): the
/// largest quota the store keeps (a signed 64-bit column), which no account can reach.
pub const UNLIMITED_STORAGE: u64 = i64::MAX.unsigned_abs();

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uuid: String,
    pub backfill: bool,
    pub quota: Quota,
    pub created_at: i64,
}

/// A change to an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountChange {
    pub backfill: Option<bool>,
    /// Each present field replaces that quota (its inner `None` = unlimited).
    pub quota: QuotaChange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaChange {
    pub cpu: Option<Option<u64>>,
    pub mem: Option<Option<u64>>,
    pub gpus: Option<Option<u64>>,
    pub servers: Option<Option<u64>>,
    /// Its inner `None` = the configured default.
    pub storage: Option<Option<u64>>,
}
