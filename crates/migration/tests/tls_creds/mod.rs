//! Credentials for the TLS tests, made with throwaway CAs in temporary directories (no key
//! is kept in the repository).
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use vfmig_migration::transport::{TlsCreds, TransportSecurity};

/// A throwaway CA.
pub struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// A certificate (PEM) for `names` with extended key usage `usage`, and its key (PEM).
    pub fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A fresh directory for one test's credentials.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vfmig-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `ca-cert.pem` (the CA trusted) and, with `issuer` signing them, the server pair for
/// `server` names and the client pair for `client` names.
pub fn write_creds(dir: &Path, trusted: &Ca, issuer: &Ca, server: &[&str], client: &[&str]) {
    std::fs::write(dir.join("ca-cert.pem"), trusted.0.pem()).unwrap();
    let (cert, key) = issuer.issue(server, ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::write(dir.join("server-cert.pem"), cert).unwrap();
    std::fs::write(dir.join("server-key.pem"), key).unwrap();
    let (cert, key) = issuer.issue(client, ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(dir.join("client-cert.pem"), cert).unwrap();
    std::fs::write(dir.join("client-key.pem"), key).unwrap();
}

pub fn tls(dir: &Path, allowed: &[&str]) -> TransportSecurity {
    let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
    TransportSecurity::Tls(Arc::new(TlsCreds::load(dir, &allowed).unwrap()))
}

/// Good credentials of one CA: the destination named for 127.0.0.1, the source
/// `vfmig-source`.
pub fn good_creds(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    let ca = Ca::new("vfmig test CA");
    write_creds(
        &dir,
        &ca,
        &ca,
        &["localhost", "127.0.0.1"],
        &["vfmig-source"],
    );
    dir
}
