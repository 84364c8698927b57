//! Server figures of a remote edge, from the `process_*` lines of its `/metrics`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One reading of a remote edge's process metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: f64,
    /// `process_resident_memory_max_bytes`.
    pub peak_rss_bytes: u64,
}

/// Reads `/metrics` at `addr`; `None` when unreachable or lacking the process metrics.
pub fn sample(addr: SocketAddr) -> Option<Sample> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: missive\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    parse(&text)
}

fn parse(text: &str) -> Option<Sample> {
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    Some(Sample {
        cpu_seconds: value("process_cpu_seconds_total")?,
        peak_rss_bytes: value("process_resident_memory_max_bytes")? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_process_lines() {
        let t = "# TYPE x\nprocess_cpu_seconds_total 1.5\nprocess_resident_memory_max_bytes 2048\n";
        assert_eq!(
            parse(t),
            Some(Sample {
                cpu_seconds: 1.5,
                peak_rss_bytes: 2048
            })
        );
        assert_eq!(parse("nothing"), None);
    }
}
