//! Signed media downloads over HTTPS, fetched by curl (a client nobody here wrote): the whole
//! blob, a `Range` (206), `If-None-Match` (304) with cache headers a CDN can keep; expired,
//! forged and tampered signatures get 403, names that try to leave the blob directory 404.
//! And the collector: an upload left unfinished is removed after the stall timeout.

mod common;

use common::{config_file, Edge};
use missive_client::transfer::upload::UploadSource;
use missive_client::{Client, ClientConfig, Identity};
use missive_edge::media::url::{Signed, UrlSigner};
use missive_proto::{BlobId, DeviceId};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

async fn user(edge: &Edge, name: &str) -> Client {
    let cfg = ClientConfig::new(
        edge.quic,
        edge.ca_pem(),
        Identity::generate(name, DeviceId(1)),
    );
    missive_client::register(&cfg, None).await.unwrap();
    Client::connect(cfg).await.unwrap().0
}

fn source(path: &Path, len: usize) -> UploadSource {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(path, &data).unwrap();
    UploadSource {
        path: path.to_owned(),
        blob: BlobId(*blake3::hash(&data).as_bytes()),
        size: len as u64,
        downloads: 0,
    }
}

/// curl against the edge's HTTPS listener: (status, headers, body).
fn curl(edge: &Edge, url: &str, extra: &[&str]) -> (u16, String, Vec<u8>) {
    let port = edge.media.unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(["--cacert", edge.cert.to_str().unwrap()])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--dump-header", headers.to_str().unwrap()])
        .args(["--write-out", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').unwrap();
    let status = String::from_utf8_lossy(&body[split + 1..])
        .parse()
        .unwrap_or(0);
    body.truncate(split);
    let headers = std::fs::read_to_string(headers).unwrap_or_default();
    (status, headers.to_ascii_lowercase(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_signed_cacheable_ranges_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let edge = Edge::start(dir.path(), &["--media-listen", "127.0.0.1:0"]);
    let alice = user(&edge, "alice").await;
    let src = source(&dir.path().join("blob"), 700_000);
    let data = std::fs::read(&src.path).unwrap();
    alice.upload_blob(&src, 2, |_| {}).await.unwrap();
    let signed = alice.media_url(src.blob).await.unwrap();
    assert!(
        signed.url.starts_with("https://localhost:"),
        "{}",
        signed.url
    );

    let (status, headers, body) = curl(&edge, &signed.url, &[]);
    assert_eq!(status, 200, "{headers}");
    assert_eq!(body, data);
    let etag = format!("\"{}\"", src.blob.to_hex());
    assert!(headers.contains(&format!("etag: {etag}")), "{headers}");
    assert!(headers.contains("cache-control: public, max-age=31536000, immutable"));
    assert!(headers.contains("accept-ranges: bytes"));

    let (status, headers, body) = curl(&edge, &signed.url, &["--range", "100-299"]);
    assert_eq!(status, 206);
    assert_eq!(body, data[100..300]);
    assert!(
        headers.contains("content-range: bytes 100-299/700000"),
        "{headers}"
    );
    let (status, _, body) = curl(&edge, &signed.url, &["--range", "699990-"]);
    assert_eq!((status, body.len()), (206, 10));
    let (status, headers, _) = curl(&edge, &signed.url, &["--range", "800000-"]);
    assert_eq!(status, 416);
    assert!(
        headers.contains("content-range: bytes */700000"),
        "{headers}"
    );

    let inm = format!("If-None-Match: {etag}");
    let (status, headers, body) = curl(&edge, &signed.url, &["--header", &inm]);
    assert_eq!((status, body.len()), (304, 0));
    assert!(headers.contains(&format!("etag: {etag}")));

    // Tampered: another expiry, another signature, another blob under the same signature.
    let later = signed.url.replace(
        &format!("e={}", signed.expires_at_secs),
        &format!("e={}", signed.expires_at_secs + 3600),
    );
    assert_eq!(curl(&edge, &later, &[]).0, 403);
    let (head, sig) = signed.url.rsplit_once("s=").unwrap();
    let flipped = format!(
        "{head}s={}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    assert_eq!(curl(&edge, &flipped, &[]).0, 403);
    let other = signed
        .url
        .replace(&src.blob.to_hex(), &BlobId([7; 32]).to_hex());
    assert_eq!(curl(&edge, &other, &[]).0, 403);
    let unsigned = signed.url.split('?').next().unwrap().to_owned();
    assert_eq!(curl(&edge, &unsigned, &[]).0, 403);

    // Expired: signed with the edge's own key, a minute in the past.
    let keys = missive_edge::reset_key::load_or_create(&edge.data_dir).unwrap();
    let signer = UrlSigner::new(keys.media_url);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = signed.url.split("/media/").next().unwrap();
    let tag = signer.device_tag("alice", 1);
    let stale = Signed {
        expires: now - 60,
        tag,
    };
    let expired = format!("{base}{}", signer.sign(&src.blob, stale));
    assert_eq!(curl(&edge, &expired, &[]).0, 403);
    // The same key and a future expiry: accepted (so the 403 above is the expiry).
    let fresh = format!(
        "{base}{}",
        signer.sign(
            &src.blob,
            Signed {
                expires: now + 60,
                tag
            }
        )
    );
    assert_eq!(curl(&edge, &fresh, &[]).0, 200);

    // Names that try to leave the blob directory.
    let query = signed.url.split_once('?').unwrap().1;
    for path in [
        "/media/../../etc/passwd",
        "/media/..%2f..%2fetc%2fpasswd",
        "/media/%2e%2e",
        "/etc/passwd",
    ] {
        let url = format!("{base}{path}?{query}");
        let status = curl(&edge, &url, &["--path-as-is"]).0;
        assert!(status == 404 || status == 400, "{path}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(
        dir.path(),
        "[media]\nstall_secs = 1\ncollect_interval_secs = 1\nquota_bytes = 5000000\n",
    );
    let edge = Edge::start(dir.path(), &[&cfg[0], &cfg[1]]);
    let alice_cfg = ClientConfig::new(
        edge.quic,
        edge.ca_pem(),
        Identity::generate("alice", DeviceId(1)),
    );
    missive_client::register(&alice_cfg, None).await.unwrap();
    let alice = Client::connect(alice_cfg.clone()).await.unwrap().0;
    let src = source(&dir.path().join("big"), 4_000_000);
    // The upload stops after its first acknowledged chunk: the client goes away.
    let a = alice.clone();
    let stopped = alice
        .upload_blob(&src, 1, move |p| {
            if p.done > 0 {
                let a = a.clone();
                tokio::spawn(async move { a.close().await });
            }
        })
        .await;
    assert!(stopped.is_err());
    let partial = edge.data_dir.join("media/partial");
    let parts = || std::fs::read_dir(&partial).map_or(0, |d| d.count());
    assert!(parts() > 0, "the unfinished upload is on disk");
    common::eventually(
        "the stalled upload collected",
        Duration::from_secs(15),
        || parts() == 0,
    )
    .await;
    // Its 4 MB left alice's 5 MB quota too: another 4 MB upload fits.
    let alice = Client::connect(alice_cfg).await.unwrap().0;
    let mut other = source(&dir.path().join("other"), 4_000_001);
    other.downloads = 1;
    alice.upload_blob(&other, 2, |_| {}).await.unwrap();
}
