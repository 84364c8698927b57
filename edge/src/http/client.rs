//! A minimal HTTP/1.1 client on hyper: one request per connection, for the push gateway.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Why a request got no status.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    /// HTTP failed (handshake, request or response).
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a bad path or header).
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// POSTs `body` as `content_type` to `http://authority/path`; returns the response status.
/// The response body is read and dropped, so the connection closes cleanly.
pub async fn post(
    authority: &str,
    path: &str,
    content_type: &str,
    body: String,
) -> Result<u16, ClientError> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(conn);
    let request = Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::USER_AGENT, "missive-edge")
        .header(hyper::header::CONNECTION, "close")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    // Bounded by the caller's timeout; the gateway's answer body carries nothing we use.
    let _ = response.into_body().collect().await;
    driver.abort();
    Ok(status)
}
