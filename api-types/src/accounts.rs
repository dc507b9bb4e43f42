//! `/accounts/` (operators) and `/usage/`.

use crate::common::{ListMeta, lists, objects};
use serde::{Deserialize, Deserializer, Serialize};

/// An account's quotas as answered; null = unlimited (storage: the configured default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct QuotaView {
    /// MHz; null = unlimited.
    pub cpu: Option<u64>,
    /// Bytes; null = unlimited.
    pub mem: Option<u64>,
    pub gpus: Option<u64>,
    pub servers: Option<u64>,
    /// Bytes of drives; null = the configured default (`[drives] storage_quota_bytes`,
    /// unlimited when unset); `"unlimited"` = unlimited whatever the default.
    pub storage: Option<StorageQuota>,
}

/// An account's own storage quota: bytes, or the word `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum StorageQuota {
    Bytes(u64),
    Unlimited(Unlimited),
}

/// The word `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum Unlimited {
    #[serde(rename = "unlimited")]
    Unlimited,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct InUseView {
    pub cpu: u64,
    pub mem: u64,
    pub gpus: u64,
    pub servers: u64,
    /// Bytes of drives the account holds.
    pub storage: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct AccountView {
    pub name: String,
    pub uuid: String,
    pub backfill: bool,
    pub quota: QuotaView,
    pub in_use: InUseView,
    pub created_at: String,
    pub resource_uri: String,
}

lists! {
    /// `GET /accounts/`.
    AccountList: AccountView;
}

objects! {
    /// A create's answer.
    CreatedAccounts: AccountView;
    /// `POST /accounts/`.
    AccountCreate: AccountFields;
}

/// A quota change: a field left out stays as it is, null makes it unlimited (storage: the
/// configured default), a number sets it (storage also takes `"unlimited"`: unlimited whatever
/// the default). In Rust: absent `None`, null `Some(None)`, a value `Some(Some(n))`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct QuotaFields {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub cpu: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub mem: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub gpus: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub servers: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub storage: Option<Option<StorageQuota>>,
}

/// A field that is present: `null` is `Some(None)` (absent is the `default`, `None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl QuotaFields {
    pub fn is_empty(&self) -> bool {
        self == &QuotaFields::default()
    }
}

/// An account to create; `quota` fields null or absent = unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct AccountFields {
    /// The CN of the account's certificates.
    #[cfg_attr(
        feature = "utoipa",
        schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,62}$")
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaFields>,
}

/// A change to an account (`PUT /accounts/{name}/`): present fields change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct AccountEdit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaFields>,
}

/// One server's usage over the period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct UsageLine {
    pub server: String,
    pub name: String,
    pub account: String,
    pub class: String,
    pub seconds: u64,
    /// Allocated MHz times the CPU perf_factor in force, summed over the seconds.
    pub cpu_mhz_seconds: u64,
    pub mem_byte_seconds: u64,
    /// Decimal string in `currency`.
    pub amount: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct UsageTotals {
    pub seconds: u64,
    pub cpu_mhz_seconds: u64,
    pub mem_byte_seconds: u64,
    pub amount: String,
}

/// `GET /usage/?start=&end=&account=`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct UsageReport {
    pub start: String,
    pub end: String,
    pub currency: String,
    /// `limit` (default 0: all lines), `offset` and the number of lines in the period.
    pub meta: ListMeta,
    /// One line per server; `totals` cover every line of the period, not only this page.
    pub objects: Vec<UsageLine>,
    pub totals: UsageTotals,
}

/// One debit of the ledger (`GET /ledger/`): what a server or drive cost over the period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct LedgerEntry {
    pub id: String,
    pub time: String,
    pub start: String,
    pub end: String,
    /// Negative: a debit.
    pub amount: String,
    pub currency: String,
    pub resource: String,
    pub resource_uuid: String,
    pub user: String,
    pub reason: String,
}

lists! {
    /// `GET /ledger/?start=&end=&account=`.
    LedgerList: LedgerEntry;
}
