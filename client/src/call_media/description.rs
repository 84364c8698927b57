//! What one side of a call tells the other through signaling: ICE credentials and
//! candidates, in a small validating binary encoding.
//!
//! ```text
//! u8 version (1) | u8 len, ufrag | u8 len, pwd | u8 count | count × candidate
//! candidate: u8 kind | u8 family (4|6) | 4 or 16 bytes IP | u16 port | u32 priority
//! ```

use super::MediaError;
use rand::Rng;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Encoding version this code writes and reads.
const VERSION: u8 = 1;
/// Most candidates one description may carry (a device offers a handful).
pub const MAX_CANDIDATES: usize = 16;
/// ICE's bounds on the username fragment (RFC 8445 §5.3: at least 4 characters; 256 max).
const UFRAG_LEN: std::ops::RangeInclusive<usize> = 4..=64;
/// ICE's bounds on the password (at least 22 characters, 128 bits of randomness).
const PWD_LEN: std::ops::RangeInclusive<usize> = 22..=128;

/// One side's media parameters, carried inside the E2EE offer/answer.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// ICE username fragment (RFC 8445 ice-chars: letters, digits, `+`, `/`).
    pub ufrag: String,
    /// ICE password: keys the connectivity checks' MESSAGE-INTEGRITY. Never logged.
    pub pwd: String,
    /// Candidates gathered so far (more may be trickled).
    pub candidates: Vec<Candidate>,
}

impl std::fmt::Debug for MediaDescription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaDescription")
            .field("ufrag", &self.ufrag)
            .field("candidates", &self.candidates)
            .finish_non_exhaustive()
    }
}

/// How a candidate address was found (RFC 8445 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// An address of the device itself.
    Host,
    /// The device's address as the STUN server saw it (behind a NAT).
    ServerReflexive,
    /// Learned from a connectivity check's source address (never signaled by this code).
    PeerReflexive,
    /// An address allocated on a TURN relay.
    Relayed,
}

impl CandidateKind {
    /// RFC 8445 §5.1.2.2's recommended type preferences.
    pub fn type_preference(self) -> u32 {
        match self {
            Self::Host => 126,
            Self::PeerReflexive => 110,
            Self::ServerReflexive => 100,
            Self::Relayed => 0,
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Host => 1,
            Self::ServerReflexive => 2,
            Self::PeerReflexive => 3,
            Self::Relayed => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Host,
            2 => Self::ServerReflexive,
            3 => Self::PeerReflexive,
            4 => Self::Relayed,
            _ => return None,
        })
    }
}

/// One transport address the peer may reach this side at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// How it was found.
    pub kind: CandidateKind,
    /// The address.
    pub addr: SocketAddr,
    /// ICE priority (RFC 8445 §5.1.2): higher is tried and preferred first.
    pub priority: u32,
}

impl Candidate {
    /// A candidate of `kind` at `addr` with RFC 8445's priority for component 1.
    pub fn new(kind: CandidateKind, addr: SocketAddr) -> Self {
        Self {
            kind,
            addr,
            priority: priority(kind, 65535),
        }
    }
}

/// RFC 8445 §5.1.2.1: `2^24 type preference + 2^8 local preference + (256 - component)`,
/// for component 1.
pub fn priority(kind: CandidateKind, local_preference: u16) -> u32 {
    (kind.type_preference() << 24) | (u32::from(local_preference) << 8) | 255
}

impl MediaDescription {
    /// Fresh random ICE credentials and no candidates.
    pub fn random_credentials() -> (String, String) {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut rng = rand::thread_rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
                .collect()
        };
        (pick(8), pick(24))
    }

    /// The wire form (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.ufrag.len() + self.pwd.len() + 24 * 4);
        out.push(VERSION);
        for s in [&self.ufrag, &self.pwd] {
            // Lengths are bounded by decode and by the generator; clamp rather than wrap.
            let b = &s.as_bytes()[..s.len().min(255)];
            out.push(b.len() as u8);
            out.extend_from_slice(b);
        }
        let cands = &self.candidates[..self.candidates.len().min(MAX_CANDIDATES)];
        out.push(cands.len() as u8);
        for c in cands {
            out.push(c.kind.code());
            match c.addr.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&c.addr.port().to_be_bytes());
            out.extend_from_slice(&c.priority.to_be_bytes());
        }
        out
    }

    /// Parses and checks a description from the peer: version, ICE character set and
    /// lengths, at most [`MAX_CANDIDATES`] candidates with known kinds, non-zero ports,
    /// no unspecified or multicast addresses, no trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, MediaError> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return Err(MediaError::BadDescription("unknown version"));
        }
        let ufrag = r.ice_string(UFRAG_LEN, "ufrag")?;
        let pwd = r.ice_string(PWD_LEN, "pwd")?;
        let count = usize::from(r.u8()?);
        if count > MAX_CANDIDATES {
            return Err(MediaError::BadDescription("too many candidates"));
        }
        let mut candidates = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = CandidateKind::from_code(r.u8()?)
                .ok_or(MediaError::BadDescription("unknown candidate kind"))?;
            let ip = match r.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(r.take(4)?)
                        .map_err(|_| MediaError::BadDescription("truncated"))?,
                )),
                6 => IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(r.take(16)?)
                        .map_err(|_| MediaError::BadDescription("truncated"))?,
                )),
                _ => return Err(MediaError::BadDescription("unknown address family")),
            };
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(MediaError::BadDescription("unusable candidate address"));
            }
            let port = u16::from_be_bytes([r.u8()?, r.u8()?]);
            if port == 0 {
                return Err(MediaError::BadDescription("port 0"));
            }
            let priority = u32::from_be_bytes([r.u8()?, r.u8()?, r.u8()?, r.u8()?]);
            if priority == 0 {
                return Err(MediaError::BadDescription("priority 0"));
            }
            candidates.push(Candidate {
                kind,
                addr: SocketAddr::new(ip, port),
                priority,
            });
        }
        if !r.0.is_empty() {
            return Err(MediaError::BadDescription("trailing bytes"));
        }
        Ok(Self {
            ufrag,
            pwd,
            candidates,
        })
    }
}

/// A cursor over the bytes being decoded.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MediaError> {
        if self.0.len() < n {
            return Err(MediaError::BadDescription("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, MediaError> {
        Ok(self.take(1)?[0])
    }

    fn ice_string(
        &mut self,
        len: std::ops::RangeInclusive<usize>,
        what: &'static str,
    ) -> Result<String, MediaError> {
        let n = usize::from(self.u8()?);
        if !len.contains(&n) {
            return Err(MediaError::BadDescription(what));
        }
        let b = self.take(n)?;
        if !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        {
            return Err(MediaError::BadDescription(what));
        }
        // ASCII checked just above.
        Ok(String::from_utf8_lossy(b).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MediaDescription {
        let (ufrag, pwd) = MediaDescription::random_credentials();
        MediaDescription {
            ufrag,
            pwd,
            candidates: vec![
                Candidate::new(CandidateKind::Host, "192.0.2.1:5000".parse().unwrap()),
                Candidate::new(
                    CandidateKind::Relayed,
                    "[2001:db8::1]:6000".parse().unwrap(),
                ),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let d = sample();
        assert_eq!(MediaDescription::decode(&d.encode()).unwrap(), d);
        assert!(!format!("{d:?}").contains(&d.pwd));
    }

    #[test]
    fn host_outranks_reflexive_outranks_relayed() {
        let p = |k| priority(k, 65535);
        assert!(p(CandidateKind::Host) > p(CandidateKind::ServerReflexive));
        assert!(p(CandidateKind::ServerReflexive) > p(CandidateKind::Relayed));
    }

    #[test]
    fn refuses_malformed_descriptions() {
        let good = sample().encode();
        // Every truncation and a trailing byte.
        for n in 0..good.len() {
            assert!(MediaDescription::decode(&good[..n]).is_err(), "prefix {n}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(MediaDescription::decode(&long).is_err());
        // Bad version, bad ufrag characters, too many candidates, port 0.
        let mut v = good.clone();
        v[0] = 9;
        assert!(MediaDescription::decode(&v).is_err());
        let mut d = sample();
        d.ufrag = "ab c".into();
        assert!(MediaDescription::decode(&d.encode()).is_err());
        let mut d = sample();
        d.candidates = vec![d.candidates[0]; MAX_CANDIDATES];
        let mut many = d.encode();
        let count_at = 1 + 1 + d.ufrag.len() + 1 + d.pwd.len();
        many[count_at] = (MAX_CANDIDATES + 1) as u8;
        assert!(MediaDescription::decode(&many).is_err());
        let mut d = sample();
        d.candidates[0].addr.set_port(0);
        assert!(MediaDescription::decode(&d.encode()).is_err());
        let mut d = sample();
        d.candidates[0].addr = "0.0.0.0:5".parse().unwrap();
        assert!(MediaDescription::decode(&d.encode()).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = MediaDescription::decode(&bytes);
            let mut b = sample().encode();
            if let Some(i) = b.len().checked_sub(1 + (len % b.len().max(1))) {
                b[i] ^= x as u8;
            }
            let _ = MediaDescription::decode(&b);
        }
    }
}
