//! `vfmig tls gen DIR`: a throwaway CA and both ends' credentials, laid out as
//! `--tls-creds DIR` reads them (QEMU's `tls-creds-x509` layout): `ca-cert.pem`,
//! `server-cert.pem` and `server-key.pem` for the destination, `client-cert.pem` and
//! `client-key.pem` for the source. Keys are written 0600; nothing is overwritten. The CA's
//! own key is not kept, so no further certificate can be issued under it.

use crate::out::say;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use vfmig_migration::transport::creds::{
    CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY,
};

/// `vfmig tls …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TlsCommand {
    /// Make a throwaway CA and credentials for both ends of a migration in DIR.
    Gen(GenArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GenArgs {
    /// The directory to write (created if missing; existing files are not overwritten).
    pub(crate) dir: std::path::PathBuf,
    /// A name of the destination host, for its certificate (repeat for several); `localhost`,
    /// `127.0.0.1` and `::1` are always included. A source checks the host it dials is named.
    #[arg(long = "server-name")]
    pub(crate) server_names: Vec<String>,
    /// The source's name in its certificate (what a destination's allow-list names).
    #[arg(long, default_value = "vfmig-source")]
    pub(crate) client_name: String,
}

/// Runs a `tls` subcommand.
pub(crate) fn run(cmd: TlsCommand) -> anyhow::Result<()> {
    match cmd {
        TlsCommand::Gen(args) => {
            let mut server = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            server.extend(args.server_names);
            generate(&args.dir, &server, &args.client_name)?;
            say!("credentials written to {}", args.dir.display());
            Ok(())
        }
    }
}

/// Writes a fresh CA certificate and a server and a client pair it signed into `dir`.
pub(crate) fn generate(
    dir: &Path,
    server_names: &[String],
    client_name: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "vfmig throwaway CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let issue = |names: &[String], usage| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = issue(server_names, ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_cert, client_key) = issue(
        &[client_name.to_string()],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    write_new(&dir.join(CA_CERT), &ca.pem(), 0o644)?;
    write_new(&dir.join(SERVER_CERT), &server_cert, 0o644)?;
    write_new(&dir.join(SERVER_KEY), &server_key, 0o600)?;
    write_new(&dir.join(CLIENT_CERT), &client_cert, 0o644)?;
    write_new(&dir.join(CLIENT_KEY), &client_key, 0o600)?;
    Ok(())
}

/// Creates `path` with `mode` (it must not exist) and writes `text`.
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use vfmig_migration::transport::TlsCreds;

    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vfmig-tls-gen-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn generated_credentials_load_for_both_ends() {
        let dir = temp_dir("load");
        generate(&dir, &["localhost".into()], "vfmig-source").unwrap();
        TlsCreds::load(&dir, &["vfmig-source".into()]).unwrap();
    }

    #[test]
    fn keys_are_readable_by_their_owner_only() {
        let dir = temp_dir("modes");
        generate(&dir, &["localhost".into()], "vfmig-source").unwrap();
        for key in [SERVER_KEY, CLIENT_KEY] {
            let mode = std::fs::metadata(dir.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    #[test]
    fn existing_credentials_are_not_overwritten() {
        let dir = temp_dir("exists");
        generate(&dir, &["localhost".into()], "vfmig-source").unwrap();
        let before = std::fs::read(dir.join(CA_CERT)).unwrap();
        let err = generate(&dir, &["localhost".into()], "vfmig-source").unwrap_err();
        assert!(format!("{err:#}").contains(CA_CERT), "{err:#}");
        assert_eq!(std::fs::read(dir.join(CA_CERT)).unwrap(), before);
    }
}
