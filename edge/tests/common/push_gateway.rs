//! A stand-in push gateway for the wake-up tests: one HTTP request at a time, answered with
//! the status the test chooses. (It is the edge's client that is under test, not this.)

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads one HTTP request (headers + Content-Length body), answers with `status` and returns
/// the whole request as text.
pub async fn serve_one(listener: &TcpListener, status: &str) -> String {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "gateway connection closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
                return text;
            }
        }
    }
}

/// The body of a request `serve_one` returned.
pub fn body(request: &str) -> &str {
    request
        .find("\r\n\r\n")
        .map_or("", |end| &request[end + 4..])
}
