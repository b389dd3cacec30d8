//! TLS credentials: a directory laid out as QEMU's `tls-creds-x509` object lays it out, turned
//! into rustls configurations that authenticate both ends.
//!
//! | file | used by |
//! |---|---|
//! | `ca-cert.pem` | both ends: the CA every peer's certificate must chain to |
//! | `server-cert.pem`, `server-key.pem` | a destination (the listening end) |
//! | `client-cert.pem`, `client-key.pem` | a source (the connecting end) |
//!
//! A directory may hold one pair or both (a VMM that receives a migration and later sends
//! one on needs both). Both ends speak TLS 1.3 only, with the `ring` provider.
//!
//! What is checked of a peer:
//! * its certificate chains to `ca-cert.pem` and is valid now (both ends; the destination
//!   asks for a client certificate and refuses a source without one);
//! * a source checks the destination's certificate names the host it dialled (a DNS name,
//!   or an IP address SAN for `tcp:127.0.0.1:…`), as any TLS client does;
//! * with an allow-list of peer names, the peer's certificate must also name one of them
//!   (as a subject alternative name, DNS or IP, matched as TLS matches a server name; the
//!   subject's common name is not looked at, as in TLS since RFC 6125).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

/// The CA certificate's file name.
pub const CA_CERT: &str = "ca-cert.pem";
/// The destination's certificate.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The destination's private key.
pub const SERVER_KEY: &str = "server-key.pem";
/// The source's certificate.
pub const CLIENT_CERT: &str = "client-cert.pem";
/// The source's private key.
pub const CLIENT_KEY: &str = "client-key.pem";

/// Why credentials could not be loaded or used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// A file could not be read, or holds no PEM object of the kind needed.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no certificate in the file", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The CA certificate was refused as a trust anchor.
    #[error("{}: not a usable CA certificate: {source}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rustls::Error,
    },
    /// A certificate and key that rustls refused together (e.g. the key does not match).
    #[error("{} with {}: {source}", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The error.
        #[source]
        source: rustls::Error,
    },
    /// The verifier of peers could not be built from the CA.
    #[error("{}: {source}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rustls::client::VerifierBuilderError,
    },
    /// One file of a pair without the other, or the pair a role needs is absent.
    #[error("{}: missing (needed as the {role}'s credentials)", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// `source` or `destination`.
        role: &'static str,
    },
    /// Neither pair is in the directory.
    #[error("{}: holds neither {SERVER_CERT} nor {CLIENT_CERT}", dir.display())]
    NoPair {
        /// The directory.
        dir: PathBuf,
    },
    /// An allowed peer name that is neither a DNS name nor an IP address.
    #[error("allowed peer {name:?} is not a DNS name or an IP address")]
    PeerName {
        /// The name.
        name: String,
    },
}

/// Loaded credentials: what a source uses to connect and a destination to accept, each end
/// authenticating the other. Cheap to share (`Arc`).
pub struct TlsCreds {
    dir: PathBuf,
    allowed: Vec<String>,
    client: Option<Arc<ClientConfig>>,
    server: Option<Arc<ServerConfig>>,
}

impl fmt::Debug for TlsCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCreds")
            .field("dir", &self.dir)
            .field("allowed", &self.allowed)
            .field("client", &self.client.is_some())
            .field("server", &self.server.is_some())
            .finish()
    }
}

impl TlsCreds {
    /// Loads `dir`: the CA, and each pair present. `allowed_peers`, if not empty, are the
    /// only names a peer's certificate may carry to be accepted.
    ///
    /// # Errors
    /// [`CredsError`], naming the file at fault.
    pub fn load(dir: &Path, allowed_peers: &[String]) -> Result<TlsCreds, CredsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_path = dir.join(CA_CERT);
        let mut roots = RootCertStore::empty();
        for cert in read_certs(&ca_path)? {
            roots.add(cert).map_err(|source| CredsError::Ca {
                path: ca_path.clone(),
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let allowed = AllowList::new(allowed_peers)?;
        let verifier_error = |source| CredsError::Verifier {
            path: ca_path.clone(),
            source,
        };

        let client = match read_pair(dir, CLIENT_CERT, CLIENT_KEY, "source")? {
            None => None,
            Some((certs, key)) => {
                let inner =
                    WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                        .build()
                        .map_err(verifier_error)?;
                let verifier = Arc::new(PeerVerifier {
                    inner,
                    allowed: allowed.clone(),
                });
                let mut config = ClientConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(|source| pair_error(dir, CLIENT_CERT, CLIENT_KEY, source))?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_client_auth_cert(certs, key)
                    .map_err(|source| pair_error(dir, CLIENT_CERT, CLIENT_KEY, source))?;
                config.resumption = rustls::client::Resumption::disabled();
                Some(Arc::new(config))
            }
        };
        let server = match read_pair(dir, SERVER_CERT, SERVER_KEY, "destination")? {
            None => None,
            Some((certs, key)) => {
                let inner =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                        .build()
                        .map_err(verifier_error)?;
                let verifier = Arc::new(PeerVerifier {
                    inner,
                    allowed: allowed.clone(),
                });
                let mut config = ServerConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(|source| pair_error(dir, SERVER_CERT, SERVER_KEY, source))?
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(certs, key)
                    .map_err(|source| pair_error(dir, SERVER_CERT, SERVER_KEY, source))?;
                // No session tickets: a migration is one connection, never resumed, and a
                // ticket the source never reads would make its close a reset that discards
                // stream bytes the destination has not read yet.
                config.send_tls13_tickets = 0;
                config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
                Some(Arc::new(config))
            }
        };
        if client.is_none() && server.is_none() {
            return Err(CredsError::NoPair {
                dir: dir.to_path_buf(),
            });
        }
        Ok(TlsCreds {
            dir: dir.to_path_buf(),
            allowed: allowed_peers.to_vec(),
            client,
            server,
        })
    }

    /// The directory loaded.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The allowed peer names (empty: any peer the CA signed).
    pub fn allowed_peers(&self) -> &[String] {
        &self.allowed
    }

    /// The source's configuration.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, CredsError> {
        self.client.clone().ok_or_else(|| CredsError::Missing {
            path: self.dir.join(CLIENT_CERT),
            role: "source",
        })
    }

    /// The destination's configuration.
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, CredsError> {
        self.server.clone().ok_or_else(|| CredsError::Missing {
            path: self.dir.join(SERVER_CERT),
            role: "destination",
        })
    }
}

fn pair_error(dir: &Path, cert: &str, key: &str, source: rustls::Error) -> CredsError {
    CredsError::Pair {
        cert: dir.join(cert),
        key: dir.join(key),
        source,
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CredsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| CredsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CredsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

type Pair = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A certificate chain and its key, if the certificate file exists; one without the other
/// is an error.
fn read_pair(
    dir: &Path,
    cert: &str,
    key: &str,
    role: &'static str,
) -> Result<Option<Pair>, CredsError> {
    let (cert, key) = (dir.join(cert), dir.join(key));
    match (cert.exists(), key.exists()) {
        (false, false) => return Ok(None),
        (true, false) => return Err(CredsError::Missing { path: key, role }),
        (false, true) => return Err(CredsError::Missing { path: cert, role }),
        (true, true) => {}
    }
    let certs = read_certs(&cert)?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|source| CredsError::Read {
        path: key.clone(),
        source,
    })?;
    Ok(Some((certs, key)))
}

/// The names a peer's certificate may carry; empty allows any.
#[derive(Clone, Debug)]
struct AllowList(Arc<[ServerName<'static>]>);

/// A peer certificate that names none of the allowed peers.
#[derive(thiserror::Error)]
#[error("the certificate names none of the allowed peers ({allowed})")]
struct NotAllowed {
    allowed: String,
}

/// The message, since rustls shows a [`CertificateError::Other`] by its `Debug`.
impl fmt::Debug for NotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl AllowList {
    fn new(names: &[String]) -> Result<AllowList, CredsError> {
        names
            .iter()
            .map(|name| {
                ServerName::try_from(name.clone())
                    .map_err(|_| CredsError::PeerName { name: name.clone() })
            })
            .collect::<Result<Arc<[_]>, _>>()
            .map(AllowList)
    }

    /// Accepts `cert` (already verified against the CA) if it names an allowed peer.
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let parsed = ParsedCertificate::try_from(cert)?;
        if self
            .0
            .iter()
            .any(|name| rustls::client::verify_server_name(&parsed, name).is_ok())
        {
            return Ok(());
        }
        let allowed = self
            .0
            .iter()
            .map(|n| n.to_str().into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(NotAllowed { allowed })),
        )))
    }
}

/// A webpki verifier (the CA chain, validity, and for a source the dialled host name), then
/// the allow-list.
#[derive(Debug)]
struct PeerVerifier<V: ?Sized> {
    inner: Arc<V>,
    allowed: AllowList,
}

impl ServerCertVerifier for PeerVerifier<WebPkiServerVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.allowed.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier<dyn ClientCertVerifier> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
