//! Per-address budgets, checked when a connection arrives and when it registers, before any
//! handshake or storage work: how many connections one address holds, how fast it starts
//! handshakes, how fast it registers accounts.
//!
//! Mobile carriers put many phones behind one address (CGNAT), so the defaults are generous
//! and every budget is a config key; loopback is exempt by default (local tools, load tests).

use crate::budget::{Rate, TokenBucket};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Addresses a bucket table tracks before it drops the buckets that are full again (they
/// say nothing a new bucket would not).
const TABLE_PRUNE_AT: usize = 65_536;

/// A range of addresses written as `addr/prefix` (`10.0.0.0/8`, `::1/128`) or a plain address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    base: IpAddr,
    prefix: u8,
}

impl AddressRange {
    /// Whether `ip` is in the range (an IPv4 address mapped into IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmapped(ip);
        match (self.base, ip) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(b) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(b) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for AddressRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let base: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or addr/prefix range"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0..={max}"))?,
            None => max,
        };
        Ok(Self { base, prefix })
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (a dual-stack socket reports them).
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address a budget is kept for: IPv4 as it is, IPv6 as its /64, the block one
/// subscriber gets (one host can use every address in it).
fn canonical(ip: IpAddr) -> IpAddr {
    match unmapped(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// The budgets, from the edge config.
#[derive(Debug, Clone)]
pub struct AddressBudgets {
    /// Connections one address may hold at once (handshaking or serving).
    pub max_connections: u32,
    /// Connection attempts (handshakes) per address.
    pub handshakes: Rate,
    /// Registrations per address.
    pub registrations: Rate,
    /// Addresses none of these budgets apply to.
    pub exempt: Vec<AddressRange>,
}

/// Why a connection was refused before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRefusal {
    /// The address holds its most connections.
    TooManyConnections,
    /// The address starts handshakes too fast.
    HandshakeRate,
}

/// The per-address state of the edge. One owner: the listeners take permits, sessions ask
/// about registrations.
#[derive(Debug)]
pub struct AddressLimits {
    budgets: Mutex<AddressBudgets>,
    connections: Mutex<HashMap<IpAddr, u32>>,
    handshakes: Mutex<HashMap<IpAddr, TokenBucket>>,
    registrations: Mutex<HashMap<IpAddr, TokenBucket>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AddressLimits {
    /// Limits with these budgets.
    pub fn new(budgets: AddressBudgets) -> Self {
        Self {
            budgets: Mutex::new(budgets),
            connections: Mutex::default(),
            handshakes: Mutex::default(),
            registrations: Mutex::default(),
        }
    }

    /// New budgets (SIGHUP); counts and buckets already made keep going.
    pub fn set_budgets(&self, budgets: AddressBudgets) {
        *lock(&self.budgets) = budgets;
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        lock(&self.budgets).exempt.iter().any(|r| r.contains(ip))
    }

    /// Admits a connection from `ip` or says why not. The permit counts the connection
    /// until it is dropped.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<AddressPermit, AddressRefusal> {
        if self.exempt(ip) {
            return Ok(AddressPermit {
                limits: self.clone(),
                ip: None,
            });
        }
        let ip = canonical(ip);
        let (handshakes, max_connections) = {
            let b = lock(&self.budgets);
            (b.handshakes, b.max_connections)
        };
        if !take(&self.handshakes, ip, handshakes, now) {
            return Err(AddressRefusal::HandshakeRate);
        }
        let mut conns = lock(&self.connections);
        let n = conns.entry(ip).or_insert(0);
        if *n >= max_connections {
            return Err(AddressRefusal::TooManyConnections);
        }
        *n += 1;
        Ok(AddressPermit {
            limits: self.clone(),
            ip: Some(ip),
        })
    }

    /// Whether `ip` may register one more account now (and counts it).
    pub fn allow_registration(&self, ip: IpAddr, now: Instant) -> bool {
        if self.exempt(ip) {
            return true;
        }
        let ip = canonical(ip);
        let rate = lock(&self.budgets).registrations;
        take(&self.registrations, ip, rate, now)
    }

    /// Connections counted for `ip` now (exempt addresses are not counted).
    pub fn connections_of(&self, ip: IpAddr) -> u32 {
        lock(&self.connections)
            .get(&canonical(ip))
            .copied()
            .unwrap_or(0)
    }
}

/// Takes one token from `ip`'s bucket in `table`, making a full one first if needed.
fn take(table: &Mutex<HashMap<IpAddr, TokenBucket>>, ip: IpAddr, rate: Rate, now: Instant) -> bool {
    let mut table = lock(table);
    if table.len() >= TABLE_PRUNE_AT && !table.contains_key(&ip) {
        table.retain(|_, b| !b.is_full(now));
    }
    table
        .entry(ip)
        .or_insert_with(|| TokenBucket::new(rate, now))
        .try_take(now, 1.0)
}

/// One connection counted against its address; released when dropped.
#[derive(Debug)]
pub struct AddressPermit {
    limits: Arc<AddressLimits>,
    ip: Option<IpAddr>,
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut conns = lock(&self.limits.connections);
        if let Some(n) = conns.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                conns.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(exempt: &[&str]) -> Arc<AddressLimits> {
        Arc::new(AddressLimits::new(AddressBudgets {
            max_connections: 2,
            handshakes: Rate::per_second(1, 3),
            registrations: Rate::per_minute(1, 2),
            exempt: exempt.iter().map(|s| s.parse().unwrap()).collect(),
        }))
    }

    #[test]
    fn ranges_parse_and_match() {
        let r: AddressRange = "10.1.0.0/16".parse().unwrap();
        assert!(r.contains("10.1.200.3".parse().unwrap()));
        assert!(!r.contains("10.2.0.1".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.0.9".parse().unwrap()), "mapped v4");
        let one: AddressRange = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: AddressRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<AddressRange>().is_err());
        assert!("host/8".parse::<AddressRange>().is_err());
    }

    #[test]
    fn connections_per_address_are_capped_and_released() {
        let l = limits(&[]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        let a = l.admit(ip, t).unwrap();
        let _b = l.admit(ip, t).unwrap();
        assert_eq!(
            l.admit(ip, t).unwrap_err(),
            AddressRefusal::TooManyConnections
        );
        // Another address is not affected.
        assert!(l.admit("192.0.2.2".parse().unwrap(), t).is_ok());
        drop(a);
        assert_eq!(l.connections_of(ip), 1);
        assert!(l.admit(ip, t + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn an_ipv6_subscriber_block_counts_as_one_address() {
        let l = limits(&[]);
        let t = Instant::now();
        let _a = l.admit("2001:db8:1:2::1".parse().unwrap(), t).unwrap();
        let _b = l.admit("2001:db8:1:2:ffff::9".parse().unwrap(), t).unwrap();
        assert_eq!(
            l.admit("2001:db8:1:2::3".parse().unwrap(), t).unwrap_err(),
            AddressRefusal::TooManyConnections
        );
        assert!(l.admit("2001:db8:1:3::1".parse().unwrap(), t).is_ok());
    }

    #[test]
    fn handshake_rate_is_per_address() {
        let l = limits(&[]);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let t = Instant::now();
        // Burst of three handshakes (two held, one dropped at once), then refused.
        let held: Vec<_> = (0..2).map(|_| l.admit(ip, t).unwrap()).collect();
        drop(held);
        drop(l.admit(ip, t).unwrap());
        assert_eq!(l.admit(ip, t).unwrap_err(), AddressRefusal::HandshakeRate);
        assert!(l.admit(ip, t + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn registrations_are_rate_limited_except_for_exempt_ranges() {
        let l = limits(&["127.0.0.0/8"]);
        let t = Instant::now();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(l.allow_registration(stranger, t));
        assert!(l.allow_registration(stranger, t));
        assert!(!l.allow_registration(stranger, t));
        assert!(l.allow_registration(stranger, t + Duration::from_secs(60)));
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!((0..100).all(|_| l.allow_registration(local, t)));
        assert!((0..100).all(|_| l.admit(local, t).is_ok()));
    }
}
