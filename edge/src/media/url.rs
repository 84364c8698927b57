//! Signed download URLs: `/media/<blob hex>?e=<expiry secs>&t=<device tag>&s=<signature>`,
//! where the signature is a keyed BLAKE3 MAC over the path, the expiry and the tag. The tag
//! is an opaque per-device number (a keyed hash, so a CDN's logs name no user), which lets
//! the edge count a blob's downloads by distinct devices.

use missive_proto::BlobId;

/// Why a signed URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    /// Missing or malformed query parameters.
    #[error("malformed signature parameters")]
    Malformed,
    /// The signature does not match (forged or tampered).
    #[error("bad signature")]
    Forged,
    /// The signature's time is over.
    #[error("expired")]
    Expired,
}

/// Signs and checks download URLs, and names devices by tag.
#[derive(Clone)]
pub struct UrlSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("UrlSigner")
    }
}

/// The parameters of a signed URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
    /// The device the URL was made for.
    pub tag: u64,
}

impl UrlSigner {
    /// A signer with `key`.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The opaque tag of `user`'s `device`.
    pub fn device_tag(&self, user: &str, device: u32) -> u64 {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(b"device tag\0");
        h.update(user.as_bytes());
        h.update(&[0]);
        h.update(&device.to_be_bytes());
        let out = h.finalize();
        u64::from_be_bytes(out.as_bytes()[..8].try_into().unwrap_or_default())
    }

    fn mac(&self, blob: &BlobId, signed: Signed) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(b"media url\0");
        h.update(path(blob).as_bytes());
        h.update(&signed.expires.to_be_bytes());
        h.update(&signed.tag.to_be_bytes());
        h.finalize()
    }

    /// The path and query of a URL for `blob`, valid until `signed.expires`.
    pub fn sign(&self, blob: &BlobId, signed: Signed) -> String {
        format!(
            "{}?e={}&t={:016x}&s={}",
            path(blob),
            signed.expires,
            signed.tag,
            self.mac(blob, signed).to_hex()
        )
    }

    /// Checks the query of a request for `blob` at `now_secs` (constant-time MAC compare).
    pub fn verify(&self, blob: &BlobId, query: &str, now_secs: u64) -> Result<Signed, UrlRefusal> {
        let (mut e, mut t, mut s) = (None, None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("e", v)) if e.is_none() => e = v.parse::<u64>().ok(),
                Some(("t", v)) if t.is_none() && v.len() == 16 => {
                    t = u64::from_str_radix(v, 16).ok()
                }
                Some(("s", v)) if s.is_none() => s = blake3::Hash::from_hex(v).ok(),
                _ => return Err(UrlRefusal::Malformed),
            }
        }
        let (Some(expires), Some(tag), Some(sig)) = (e, t, s) else {
            return Err(UrlRefusal::Malformed);
        };
        let signed = Signed { expires, tag };
        // blake3::Hash compares in constant time.
        if self.mac(blob, signed) != sig {
            return Err(UrlRefusal::Forged);
        }
        if expires < now_secs {
            return Err(UrlRefusal::Expired);
        }
        Ok(signed)
    }
}

/// The URL path of `blob`.
pub fn path(blob: &BlobId) -> String {
    format!("/media/{}", blob.to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_verify_until_they_expire_and_not_when_touched() {
        let signer = UrlSigner::new([9; 32]);
        let blob = BlobId([1; 32]);
        let signed = Signed {
            expires: 1000,
            tag: signer.device_tag("bob", 2),
        };
        let url = signer.sign(&blob, signed);
        let query = url.split_once('?').unwrap().1;
        assert_eq!(signer.verify(&blob, query, 1000), Ok(signed));
        assert_eq!(signer.verify(&blob, query, 1001), Err(UrlRefusal::Expired));
        assert_eq!(
            signer.verify(&BlobId([2; 32]), query, 0),
            Err(UrlRefusal::Forged)
        );
        let later = query.replace("e=1000", "e=9999");
        assert_eq!(signer.verify(&blob, &later, 0), Err(UrlRefusal::Forged));
        let other_key = UrlSigner::new([8; 32]);
        assert_eq!(other_key.verify(&blob, query, 0), Err(UrlRefusal::Forged));
        assert_eq!(signer.verify(&blob, "e=1", 0), Err(UrlRefusal::Malformed));
        assert_eq!(
            signer.verify(&blob, &format!("{query}&x=1"), 0),
            Err(UrlRefusal::Malformed)
        );
        assert_ne!(signer.device_tag("bob", 2), signer.device_tag("bob", 3));
    }
}
