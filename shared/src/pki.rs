//! The deployment's PKI: one CA, certificates whose OU is the role and whose CN is the identity.
//! `backfill-coordinator pki init|issue` and dev mode use these functions; so do the tests.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// The longest validity `pki issue` gives: a hundred years.
pub const MAX_DAYS: i64 = 36_500;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0} is not a valid certificate: {1}")]
    Parse(String, String),
    #[error("certificate has no {0} in its subject")]
    MissingField(&'static str),
    #[error("unknown role {0:?}: expected agent, admin, account or coordinator")]
    UnknownRole(String),
    #[error("{0:?} is not a valid name: use 1 to 63 characters from a-z, A-Z, 0-9, '.', '-', '_'")]
    BadName(String),
    #[error("{0:?} is not a valid subject alternative name")]
    BadSan(String),
}

/// Who a certificate speaks for: the OU of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Agent,
    Admin,
    Account,
    /// The coordinator's own certificate (server and client auth).
    Coordinator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Account => "account",
            Role::Coordinator => "coordinator",
        }
    }
}

impl FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        match s {
            "agent" => Ok(Role::Agent),
            "admin" => Ok(Role::Admin),
            "account" => Ok(Role::Account),
            "coordinator" => Ok(Role::Coordinator),
            other => Err(PkiError::UnknownRole(other.chars().take(40).collect())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated peer of a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
}

/// Reads role (OU) and identity (CN) from a DER certificate. The chain was verified by rustls
/// before this is called; this only interprets the subject.
pub fn identity_from_der(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Parse("peer certificate".into(), e.to_string()))?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or(PkiError::MissingField("CN"))?;
    let ou = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or(PkiError::MissingField("OU"))?;
    let role: Role = ou.parse()?;
    validate_name(cn)?;
    Ok(PeerIdentity {
        role,
        name: cn.to_owned(),
    })
}

/// Names (CNs) become ids, file names and cgroup components: same rules as a host id.
pub fn validate_name(name: &str) -> Result<(), PkiError> {
    name.parse::<crate::ids::HostId>()
        .map(|_| ())
        .map_err(|_| PkiError::BadName(name.chars().take(80).collect()))
}

/// A CA loaded from (or just written to) a directory.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Makes a new CA in memory.
    pub fn generate(common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "backfill");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Ca {
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// `pki init`: makes a CA and writes `ca.pem` and `ca.key` (0600) into `dir`.
    pub fn init(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        if cert_path.exists() {
            return Err(PkiError::Exists { path: cert_path });
        }
        create_dir(dir)?;
        let ca = Ca::generate("backfill CA")?;
        write_file(
            &dir.join(CA_KEY_FILE),
            ca.issuer.key().serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(&cert_path, ca.cert_pem.as_bytes(), 0o644)?;
        Ok(ca)
    }

    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_pem = read_string(&dir.join(CA_CERT_FILE))?;
        let key_path = dir.join(CA_KEY_FILE);
        let key_pem = read_string(&key_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| PkiError::Parse(key_path.display().to_string(), e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| {
            PkiError::Parse(dir.join(CA_CERT_FILE).display().to_string(), e.to_string())
        })?;
        Ok(Ca { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate. `sans` are DNS names or IP addresses (coordinator only).
    pub fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, PkiError> {
        validate_name(req.name)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.name);
        dn.push(DnType::OrganizationalUnitName, req.role.as_str());
        dn.push(DnType::OrganizationName, "backfill");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if req.role == Role::Coordinator {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            for san in req.sans {
                params.subject_alt_names.push(parse_san(san)?);
            }
        }
        params.use_authority_key_identifier_extension = true;
        params.not_before = req.not_before;
        params.not_after = req.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// `pki issue`: issues and writes `<dir>/<stem>.pem` and `<dir>/<stem>.key` (0600).
    pub fn issue_to_dir(
        &self,
        dir: &Path,
        stem: &str,
        req: &IssueRequest<'_>,
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        validate_name(stem)?;
        let issued = self.issue(req)?;
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        write_file(&key_path, issued.key_pem.as_bytes(), 0o600)?;
        write_file(&cert_path, issued.cert_pem.as_bytes(), 0o644)?;
        Ok((cert_path, key_path))
    }
}

/// What to issue.
pub struct IssueRequest<'a> {
    pub role: Role,
    pub name: &'a str,
    pub sans: &'a [String],
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

impl<'a> IssueRequest<'a> {
    /// Valid from an hour ago (clock skew) for `days` days (clamped to 1 to 36500).
    pub fn new(role: Role, name: &'a str, sans: &'a [String], days: i64) -> Self {
        let now = time::OffsetDateTime::now_utc();
        let days = time::Duration::days(days.clamp(1, MAX_DAYS));
        IssueRequest {
            role,
            name,
            sans,
            not_before: now - time::Duration::hours(1),
            not_after: now.checked_add(days).unwrap_or(now),
        }
    }
}

pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn parse_san(s: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'*');
    if !valid {
        return Err(PkiError::BadSan(s.chars().take(80).collect()));
    }
    s.to_owned()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| PkiError::BadSan(s.chars().take(80).collect()))
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file with `mode` from the start (no window where a key is world-readable).
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    // An existing file keeps its old mode through open(); set it explicitly.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn role_and_cn_come_from_the_subject() {
        let ca = Ca::generate("test").unwrap();
        for role in [Role::Agent, Role::Admin, Role::Account] {
            let issued = ca
                .issue(&IssueRequest::new(role, "node-7", &[], 1))
                .unwrap();
            let id = identity_from_der(&der(&issued.cert_pem)).unwrap();
            assert_eq!(
                id,
                PeerIdentity {
                    role,
                    name: "node-7".into()
                }
            );
        }
    }

    #[test]
    fn a_cert_without_ou_has_no_role() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "x");
        let cert = params.self_signed(&key).unwrap();
        assert!(matches!(
            identity_from_der(cert.der()),
            Err(PkiError::MissingField("OU"))
        ));
    }

    #[test]
    fn bad_names_and_roles_are_refused() {
        let ca = Ca::generate("test").unwrap();
        assert!(
            ca.issue(&IssueRequest::new(Role::Agent, "../x", &[], 1))
                .is_err()
        );
        assert!("root".parse::<Role>().is_err());
        let sans = vec!["bad host".to_string()];
        assert!(
            ca.issue(&IssueRequest::new(Role::Coordinator, "c", &sans, 1))
                .is_err()
        );
    }

    #[test]
    fn init_writes_private_keys_0600_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(Ca::init(dir.path()), Err(PkiError::Exists { .. })));
        let loaded = Ca::load(dir.path()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let (_, key) = loaded
            .issue_to_dir(
                dir.path(),
                "a1",
                &IssueRequest::new(Role::Agent, "a1", &[], 1),
            )
            .unwrap();
        let mode = std::fs::metadata(key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
