//! A certificate authority and collector certificates made inside a test, and auth files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`, written as PEM
/// files in a directory.
pub struct Pki {
    /// The CA's certificate (what clients trust with `--ca-cert`).
    pub ca: PathBuf,
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl Pki {
    /// Makes a new CA and server certificate in `dir` (files `NAME-ca.pem`, `NAME-cert.pem`,
    /// `NAME-key.pem`, so that several can share a directory).
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("logdog test CA {name}"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("a server key");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("the server certificate");

        let pki = Self {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&pki.ca, ca_cert.pem()).expect("writing the CA");
        std::fs::write(&pki.cert, cert.pem()).expect("writing the certificate");
        std::fs::write(&pki.key, key.serialize_pem()).expect("writing the key");
        pki
    }

    /// The collector flags that serve TLS with this certificate.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_string(),
            self.cert.display().to_string(),
            "--tls-key".to_string(),
            self.key.display().to_string(),
        ]
    }
}

/// One token of an auth file: its name, the token, and the projects it may write and read.
pub struct TestToken {
    /// The name shown in log lines.
    pub name: &'static str,
    /// The token clients send.
    pub token: String,
    /// Projects it may write (`*`: all).
    pub write: &'static [&'static str],
    /// Projects it may read (`*`: all).
    pub read: &'static [&'static str],
}

impl TestToken {
    /// A token named `name` whose value is derived from the name (tests only).
    pub fn new(
        name: &'static str,
        write: &'static [&'static str],
        read: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            token: format!("ldt_test_{name}_0123456789abcdef"),
            write,
            read,
        }
    }
}

/// Writes an auth file holding `tokens` (by their SHA-256 hashes) to `path`, through
/// `logdog_collector token new`'s entry format.
pub fn write_auth_file(path: &Path, tokens: &[TestToken]) {
    use sha2::{Digest, Sha256};
    let mut text = String::new();
    for t in tokens {
        let hash: String = Sha256::digest(t.token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let list = |ps: &[&str]| {
            ps.iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        text.push_str(&format!(
            "[[token]]\nname = {:?}\nsha256 = \"{hash}\"\nwrite = [{}]\nread = [{}]\n\n",
            t.name,
            list(t.write),
            list(t.read)
        ));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
