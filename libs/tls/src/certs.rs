//! A cluster CA and node certificates for [`crate::ClusterTls`], for clusters without a
//! certificate manager (`spindle certs`).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::TlsError;

/// The files [`write_cluster_certs`] wrote.
#[derive(Debug, Clone)]
pub struct ClusterCertFiles {
    /// The CA certificate every node trusts (`--internal-tls-ca-file`).
    pub ca: PathBuf,
    /// The CA's private key: keep it off the nodes; only new node certificates need it.
    pub ca_key: PathBuf,
    /// Whether the CA was made now (else the one in the directory signed the node certificate).
    pub ca_created: bool,
    /// The node certificate (`--internal-tls-cert-file`).
    pub cert: PathBuf,
    /// Its private key (`--internal-tls-key-file`).
    pub key: PathBuf,
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "Spindle cluster CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Read { path: path.to_path_buf(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = private;
    options.open(path).and_then(|mut f| f.write_all(data.as_bytes())).map_err(err)
}

/// Writes a node certificate valid for `names` (DNS names or IP addresses, server and client
/// use) to `dir/<first name>.pem` and `dir/<first name>-key.pem`, signed by the CA in
/// `dir/ca.pem` + `dir/ca-key.pem`, which is made first if the directory has none.
pub fn write_cluster_certs(dir: &Path, names: &[String]) -> Result<ClusterCertFiles, TlsError> {
    let first = names.first().ok_or_else(|| TlsError::ServerName { name: String::new() })?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read { path: dir.to_path_buf(), source })?;
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let ca_created = !ca_key.exists();
    let ca_pair = if ca_created {
        KeyPair::generate()?
    } else {
        let pem = std::fs::read_to_string(&ca_key).map_err(|source| TlsError::Read { path: ca_key.clone(), source })?;
        KeyPair::from_pem(&pem)?
    };
    // The same subject and key as the CA certificate on disk: what signing needs of it.
    let ca_cert = ca_params()?.self_signed(&ca_pair)?;
    if ca_created {
        write(&ca, &ca_cert.pem(), false)?;
        write(&ca_key, &ca_pair.serialize_pem(), true)?;
    }
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, first.as_str());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let pair = KeyPair::generate()?;
    let cert_pem = params.signed_by(&pair, &ca_cert, &ca_pair)?.pem();
    let stem: String =
        first.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    let (cert, key) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}-key.pem")));
    write(&cert, &cert_pem, false)?;
    write(&key, &pair.serialize_pem(), true)?;
    Ok(ClusterCertFiles { ca, ca_key, ca_created, cert, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterTls;

    #[test]
    fn certificates_of_one_ca_make_a_cluster_identity() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_cluster_certs(dir.path(), &["node-a".into(), "127.0.0.1".into()]).unwrap();
        assert!(a.ca_created);
        let b = write_cluster_certs(dir.path(), &["node-b".into()]).unwrap();
        assert!(!b.ca_created, "the second node is signed by the first CA");
        for files in [&a, &b] {
            let tls = ClusterTls::from_files(&files.ca, &files.cert, &files.key, None).unwrap();
            tls.server_config().unwrap();
            tls.connector("127.0.0.1").unwrap();
        }
        assert!(write_cluster_certs(dir.path(), &[]).is_err());
    }
}
