//! Certificates made at test time: a CA, a server certificate for `localhost` and
//! `127.0.0.1`, and client certificates, as PEM files in a temp dir, for tests of TLS
//! through real sockets (gRPC, webhooks, Redis).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// A certificate authority that issues test certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("ca key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca certificate"),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> PemPair {
        self.issue(
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose subject common name is `name`.
    pub fn client(&self, name: &str) -> PemPair {
        self.issue(name, &[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, common_name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> PemPair {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("certificate params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A CA with a server and a client certificate, written as PEM files to a temp dir
/// (removed on drop).
#[derive(Debug)]
pub struct TlsFiles {
    dir: TempDir,
    /// The CA.
    pub ca: TestCa,
    /// `ca.pem`.
    pub ca_file: PathBuf,
    /// `server.pem`, for `localhost` and `127.0.0.1`.
    pub server_cert_file: PathBuf,
    /// `server.key`.
    pub server_key_file: PathBuf,
    /// `client.pem`, common name `client`.
    pub client_cert_file: PathBuf,
    /// `client.key`.
    pub client_key_file: PathBuf,
}

impl TlsFiles {
    /// A fresh CA and its certificates, written out.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ratemesh-tls-")
            .tempdir()
            .expect("temp dir for certificates");
        let ca = TestCa::new("ratemesh test ca");
        let path = |name: &str| dir.path().join(name);
        let files = Self {
            ca_file: path("ca.pem"),
            server_cert_file: path("server.pem"),
            server_key_file: path("server.key"),
            client_cert_file: path("client.pem"),
            client_key_file: path("client.key"),
            ca,
            dir,
        };
        write(&files.ca_file, &files.ca.cert_pem());
        files.write_server(&files.ca.server());
        let client = files.ca.client("client");
        write(&files.client_cert_file, &client.cert);
        write(&files.client_key_file, &client.key);
        files
    }

    /// Replaces the server certificate and key files with `pair` (the key first, then
    /// the certificate, each by rename, as certificate managers do).
    pub fn write_server(&self, pair: &PemPair) {
        write(&self.server_key_file, &pair.key);
        write(&self.server_cert_file, &pair.cert);
    }

    /// The temp dir holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `contents` to a sibling temp file and renames it over `path`, so a reader never
/// sees half a file.
fn write(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write certificate file");
    std::fs::rename(&tmp, path).expect("rename certificate file");
}
