//! `GET /media/<blob hex>?e=..&t=..&s=..`: signed downloads of complete blobs, made for a
//! CDN in front: `ETag` is the blob's hash (the content never changes), `If-None-Match`
//! answers 304, `Range` answers 206 (one range; several get the whole blob), and the cache
//! headers let a CDN keep the ciphertext for a year.
//!
//! Refusals: 404 for a name that is not a blob hash (nothing outside the blob directory can
//! be named) or a blob that is gone, 403 for a forged, tampered or expired signature, 416
//! for a range past the end.

use crate::media::MediaService;
use crate::shared::now_ms;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use missive_proto::BlobId;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Bytes read from the blob file per body chunk.
const BODY_CHUNK: usize = 256 * 1024;
/// What a CDN may do with a blob: keep it, it never changes under its name.
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The media download route.
pub fn routes(media: Arc<MediaService>) -> Router {
    Router::new()
        .route("/media/{name}", get(download))
        .with_state(media)
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, text).into_response()
}

async fn download(
    State(media): State<Arc<MediaService>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(blob) = BlobId::from_hex(&name) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let signed = media
        .signer()
        .verify(&blob, query.as_deref().unwrap_or(""), now_ms() / 1000);
    let Ok(signed) = signed else {
        return plain(StatusCode::FORBIDDEN, "forbidden\n");
    };
    let etag = format!("\"{}\"", blob.to_hex());
    if if_none_match(&headers, &etag) {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, CACHE_CONTROL.to_owned()),
            ],
        )
            .into_response();
    }
    let Ok((file, size)) = media.source(&blob) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let (status, start, end) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (StatusCode::OK, 0, size),
        Some(spec) => match parse_range(spec, size) {
            RangeAsk::Whole => (StatusCode::OK, 0, size),
            RangeAsk::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e),
            RangeAsk::Unsatisfiable => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response();
            }
        },
    };
    let body = body_of(
        media.clone(),
        Arc::new(file),
        blob,
        signed.tag,
        start,
        end,
        size,
    );
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, value((end - start).to_string()));
    h.insert(header::ETAG, value(etag));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            value(format!("bytes {start}-{}/{size}", end - 1)),
        );
    }
    response
}

/// Whether `If-None-Match` names `etag` (or `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// What a `Range` header asks of a blob of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// No usable single byte range: the whole blob (RFC 9110 lets a server ignore Range).
    Whole,
    /// Bytes `start..end`.
    Part(u64, u64),
    /// A valid range that starts past the end.
    Unsatisfiable,
}

fn parse_range(spec: &str, size: u64) -> RangeAsk {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if set.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if size == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part(size.saturating_sub(n), size),
            None => RangeAsk::Whole,
        },
        (a, "") => match number(a) {
            Some(s) if s < size => RangeAsk::Part(s, size),
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        },
        (a, b) => match (number(a), number(b)) {
            (Some(s), Some(e)) if s <= e && s < size => RangeAsk::Part(s, (e + 1).min(size)),
            (Some(s), Some(e)) if s <= e => RangeAsk::Unsatisfiable,
            _ => RangeAsk::Whole,
        },
    }
}

/// The body: `start..end` of the file read in chunks off the async threads. A body that
/// reaches the blob's last byte counts as the downloading device's (by its URL's tag).
fn body_of(
    media: Arc<MediaService>,
    file: Arc<std::fs::File>,
    blob: BlobId,
    tag: u64,
    start: u64,
    end: u64,
    size: u64,
) -> Body {
    let stream = futures_util::stream::unfold(start, move |offset| {
        let (media, file) = (media.clone(), file.clone());
        async move {
            if offset >= end {
                return None;
            }
            let len = ((end - offset) as usize).min(BODY_CHUNK);
            let read = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, offset).map(|_| buf)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match read {
                Ok(buf) => {
                    media
                        .stats
                        .bytes_sent
                        .fetch_add(len as u64, Ordering::Relaxed);
                    let next = offset + len as u64;
                    if next == end && end == size {
                        media.downloaded(blob, tag).await;
                    }
                    Some((Ok::<_, std::io::Error>(Bytes::from(buf)), next))
                }
                Err(e) => Some((Err(e), end)),
            }
        }
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAsk::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 100));
        assert_eq!(parse_range("bytes=-200", 100), Part(0, 100));
        assert_eq!(parse_range("bytes=50-500", 100), Part(50, 100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("bytes=9-1", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=+1-2", 100), Whole);
        assert_eq!(parse_range("bytes=a-", 100), Whole);
    }
}
