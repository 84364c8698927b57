//! The baseline of the `media` scenario: a file copied over one plain TLS 1.3 connection on
//! loopback (rustls with ring, as the edge; a fresh self-signed certificate), read and
//! written in 256 KiB pieces; at the far end the bytes are dropped (the wire alone), written
//! to a file (a copy, as `scp` makes one: what a downloading client does), or written and
//! synced (what the edge does before it calls an upload stored).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the receiving end of a copy does with the bytes.
#[derive(Debug, Clone, Copy)]
pub enum Sink<'a> {
    /// Drops them.
    Drop,
    /// Writes them to a file.
    File(&'a Path),
    /// Writes them to a file and syncs it at the end.
    SyncedFile(&'a Path),
}

/// Copies `path` from a TLS client to a TLS server in this process, the server handling what
/// it reads as `sink` says; seconds from the first byte written to the last byte read (and
/// written, and synced).
pub async fn copy_file(path: &Path, sink: Sink<'_>) -> Result<f64, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).map_err(|e| err(&e))?;
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .map_err(|e| err(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).map_err(|e| err(&e))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err(&e))?;
    let addr = listener.local_addr().map_err(|e| err(&e))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let (dest, sync) = match sink {
        Sink::Drop => (None, false),
        Sink::File(dest) => (Some(dest), false),
        Sink::SyncedFile(dest) => (Some(dest), true),
    };
    let mut sink = match dest {
        Some(dest) => Some(tokio::fs::File::create(dest).await.map_err(|e| err(&e))?),
        None => None,
    };
    let receiving = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if let Some(sink) = sink.as_mut() {
                sink.write_all(&buf[..n]).await?;
            }
            total += n as u64;
        }
        if let Some(sink) = sink.as_mut() {
            sink.flush().await?;
            if sync {
                sink.sync_data().await?;
            }
        }
        Ok::<_, std::io::Error>((total, Instant::now()))
    });
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| err(&e))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| err(&e))?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .map_err(|e| err(&e))?;
    let mut file = tokio::fs::File::open(path).await.map_err(|e| err(&e))?;
    let mut buf = vec![0u8; 256 * 1024];
    let started = Instant::now();
    loop {
        let n = file.read(&mut buf).await.map_err(|e| err(&e))?;
        if n == 0 {
            break;
        }
        tls.write_all(&buf[..n]).await.map_err(|e| err(&e))?;
    }
    tls.shutdown().await.map_err(|e| err(&e))?;
    let (_, done) = receiving.await.map_err(|e| err(&e))?.map_err(|e| err(&e))?;
    Ok(done.duration_since(started).as_secs_f64())
}
