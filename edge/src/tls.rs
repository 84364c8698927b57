//! TLS material: load the configured certificate, or make (once) and reuse a self-signed
//! development certificate in the data directory; build the rustls configs for QUIC and TCP.

use crate::config::Config;
use missive_proto::ALPN;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a PEM file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file held no usable certificate or key.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was missing.
        message: String,
    },
    /// Generating the development certificate failed.
    #[error("cannot generate development certificate: {0}")]
    Generate(String),
    /// rustls or quinn refused the material.
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

/// Certificate chain and key, and where the certificate a client must trust lives.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key of the leaf.
    pub key: PrivateKeyDer<'static>,
    /// The PEM file clients should trust (the dev cert, or the configured chain).
    pub trust_path: PathBuf,
    /// True when the material is a generated development certificate.
    pub generated: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads `tls.cert`/`tls.key`, or the development certificate in `<data_dir>/tls/`
/// (generating it on first start).
pub fn load_or_generate(config: &Config) -> Result<TlsMaterial, TlsError> {
    let (cert_path, key_path, generated) = match (&config.tls.cert, &config.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ => {
            let dir = config.data_dir.join("tls");
            let c = dir.join("dev-cert.pem");
            let k = dir.join("dev-key.pem");
            if !c.exists() || !k.exists() {
                generate_dev_cert(&dir, &c, &k, &config.tls.dev_cert_names)?;
            }
            (c, k, true)
        }
    };
    let certs = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    Ok(TlsMaterial {
        certs,
        key,
        trust_path: std::fs::canonicalize(&cert_path).unwrap_or(cert_path),
        generated,
    })
}

fn generate_dev_cert(
    dir: &Path,
    cert: &Path,
    key: &Path,
    names: &[String],
) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(key, ck.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert, ck.cert.pem()).map_err(io(cert))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(io(path))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(io(path))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(io(path))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(io(path))?
        .ok_or_else(|| TlsError::Pem {
            path: path.to_owned(),
            message: "no PRIVATE KEY block".into(),
        })
}

/// The certificate the TLS stack presents, swappable at run time (SIGHUP) without touching
/// live connections: both transports share one rustls config holding this resolver.
#[derive(Debug)]
pub struct ReloadableCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadableCert {
    /// A resolver presenting `m`.
    pub fn new(m: &TlsMaterial) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: std::sync::RwLock::new(certified_key(m)?),
        }))
    }

    /// Presents `m` to every handshake from now on.
    pub fn replace(&self, m: &TlsMaterial) -> Result<(), TlsError> {
        let key = certified_key(m)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = key;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        )
    }
}

fn certified_key(m: &TlsMaterial) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(m.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let ck = rustls::sign::CertifiedKey::new(m.certs.clone(), signer);
    ck.keys_match()
        .map_err(|e| TlsError::Config(format!("certificate and key do not match: {e}")))?;
    Ok(Arc::new(ck))
}

/// rustls server config shared by both transports: TLS 1.3 only, ALPN `missive/1`, the
/// certificate from `resolver`.
pub fn server_config(resolver: Arc<ReloadableCert>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// rustls server config of the HTTPS media listener: TLS 1.2 and 1.3 (CDNs and plain HTTP
/// clients), ALPN `http/1.1`, the same reloadable certificate as the client transports.
pub fn http_server_config(
    resolver: Arc<ReloadableCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
