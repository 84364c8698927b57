//! Two agents on a virtual network and a virtual clock.

use super::*;
use crate::call_media::wire::{classify, Datagram};
use stun_types::message::Message;

const HA: &str = "10.0.0.1:5000";
const RA: &str = "203.0.113.1:40000";
const HB: &str = "10.0.0.2:6000";
const RB: &str = "203.0.113.1:40001";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Net {
    agents: [IceAgent; 2],
    /// Host and relayed address of each agent.
    addrs: [(SocketAddr, SocketAddr); 2],
    in_flight: Vec<(Instant, usize, Via, SocketAddr, Vec<u8>)>,
    now: Instant,
    direct_dead: bool,
    /// Loss (percent), drawn from a seeded generator.
    loss: u64,
    rng: u64,
    sent: usize,
    events: [Vec<IceEvent>; 2],
}

fn creds(n: u8) -> (String, String) {
    (format!("ufrag{n}"), format!("password-password-pw{n}"))
}

impl Net {
    fn new() -> Self {
        let now = Instant::now();
        let host = priority(CandidateKind::Host, 65535);
        let relay = priority(CandidateKind::Relayed, 65535);
        let mk = |role, me: u8, peer: u8| {
            IceAgent::new(
                now,
                IceConfig {
                    role,
                    local: creds(me),
                    remote: creds(peer),
                    locals: vec![(Via::Host, host), (Via::Relay, relay)],
                },
            )
        };
        let mut net = Self {
            agents: [mk(Role::Caller, 0, 1), mk(Role::Callee, 1, 0)],
            addrs: [(addr(HA), addr(RA)), (addr(HB), addr(RB))],
            in_flight: Vec::new(),
            now,
            direct_dead: false,
            loss: 0,
            rng: 0x2545_F491_4F6C_DD1D,
            sent: 0,
            events: [Vec::new(), Vec::new()],
        };
        for (me, (h, r)) in [(0, (HB, RB)), (1, (HA, RA))] {
            net.agents[me].add_remote_candidate(Candidate::new(CandidateKind::Host, addr(h)));
            net.agents[me].add_remote_candidate(Candidate::new(CandidateKind::Relayed, addr(r)));
        }
        net
    }

    fn flush(&mut self) {
        for me in 0..2 {
            while let Some(t) = self.agents[me].poll_transmit() {
                self.sent += 1;
                let from = if t.via == Via::Host {
                    self.addrs[me].0
                } else {
                    self.addrs[me].1
                };
                let peer = 1 - me;
                let via = if t.to == self.addrs[peer].0 {
                    Via::Host
                } else if t.to == self.addrs[peer].1 {
                    Via::Relay
                } else {
                    continue;
                };
                let direct = t.via == Via::Host && via == Via::Host;
                if direct && self.direct_dead {
                    continue;
                }
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                if self.rng % 100 < self.loss {
                    continue;
                }
                let latency = if direct { 5 } else { 20 };
                self.in_flight.push((
                    self.now + Duration::from_millis(latency),
                    peer,
                    via,
                    from,
                    t.data,
                ));
            }
            while let Some(e) = self.agents[me].poll_event() {
                self.events[me].push(e);
            }
        }
    }

    /// Runs the network until `until`.
    fn run(&mut self, until: Instant) {
        let mut spins = 0;
        let mut last = self.now;
        loop {
            self.flush();
            let next_delivery = self.in_flight.iter().map(|d| d.0).min();
            let next_timer = self.agents.iter().filter_map(IceAgent::poll_timeout).min();
            let next = match (next_delivery, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).expect("something always pending"),
            };
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            spins = if now == last { spins + 1 } else { 0 };
            last = now;
            assert!(
                spins < 1000,
                "a timer in the past that handle_timeout never clears"
            );
            let (due, rest): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|d| d.0 <= now);
            self.in_flight = rest;
            for (_, to, via, from, data) in due {
                if let Some(Datagram::Stun(msg)) = classify(&data) {
                    self.agents[to].handle_stun(now, via, from, &msg);
                }
            }
            for a in &mut self.agents {
                a.handle_timeout(now);
            }
        }
    }

    fn paths(&self) -> [Option<PathKind>; 2] {
        [
            self.agents[0].selected().map(|s| s.2),
            self.agents[1].selected().map(|s| s.2),
        ]
    }
}

#[test]
fn direct_pair_is_nominated_and_selected_on_both_sides() {
    let mut net = Net::new();
    let t0 = net.now;
    net.run(t0 + Duration::from_millis(500));
    assert_eq!(net.paths(), [Some(PathKind::Direct); 2]);
    let (via, remote, _) = net.agents[0].selected().unwrap();
    assert_eq!((via, remote), (Via::Host, addr(HB)));
    assert_eq!(net.agents[1].selected().unwrap().1, addr(HA));
    // Selected once each, and it stays so while the path works (consent checks answered).
    net.run(t0 + Duration::from_secs(20));
    assert_eq!(net.events[0].len(), 1, "{:?}", net.events[0]);
    assert_eq!(net.events[1].len(), 1, "{:?}", net.events[1]);
}

#[test]
fn without_a_direct_path_the_relay_is_used() {
    let mut net = Net::new();
    net.direct_dead = true;
    let t0 = net.now;
    net.run(t0 + Duration::from_secs(3));
    assert_eq!(net.paths(), [Some(PathKind::Relayed); 2]);
}

#[test]
fn a_dead_direct_path_moves_both_sides_to_the_relay() {
    let mut net = Net::new();
    let t0 = net.now;
    net.run(t0 + Duration::from_secs(3));
    assert_eq!(net.paths(), [Some(PathKind::Direct); 2]);
    net.direct_dead = true;
    let died = net.now;
    net.run(died + CONSENT_TIMEOUT + Duration::from_millis(1500));
    assert_eq!(net.paths(), [Some(PathKind::Relayed); 2]);
    // Not before consent ran out.
    assert!(matches!(
        net.events[0].last(),
        Some(IceEvent::Selected {
            path: PathKind::Relayed,
            ..
        })
    ));
}

#[test]
fn switch_waits_for_consent_to_run_out() {
    let mut net = Net::new();
    let t0 = net.now;
    net.run(t0 + Duration::from_secs(3));
    net.direct_dead = true;
    let died = net.now;
    net.run(died + CONSENT_TIMEOUT - Duration::from_millis(400));
    assert_eq!(net.paths(), [Some(PathKind::Direct); 2]);
}

#[test]
fn checks_survive_loss() {
    let mut net = Net::new();
    net.loss = 20;
    let t0 = net.now;
    net.run(t0 + Duration::from_secs(30));
    assert_eq!(net.paths(), [Some(PathKind::Direct); 2]);
    assert_eq!(
        net.events[0].len(),
        1,
        "no flapping at 20 % loss: {:?}",
        net.events[0]
    );
    assert_eq!(
        net.events[1].len(),
        1,
        "no flapping at 20 % loss: {:?}",
        net.events[1]
    );
}

#[test]
fn wrong_password_gets_no_path() {
    // The callee has a wrong password for the caller: its checks are ignored and the
    // caller's answers do not verify, so it never selects a pair.
    let mut net = Net::new();
    net.agents[1].remote_pwd = "not-the-password-at-all".into();
    let t0 = net.now;
    net.run(t0 + Duration::from_secs(5));
    assert_eq!(net.paths()[1], None);
    // Both wrong: nothing on either side.
    let mut net = Net::new();
    net.agents[0].remote_pwd = "not-the-password-at-all".into();
    net.agents[1].remote_pwd = "not-the-password-at-all".into();
    net.run(t0 + Duration::from_secs(5));
    assert_eq!(net.paths(), [None, None]);
}

#[test]
fn garbage_and_forged_messages_change_nothing() {
    let mut net = Net::new();
    let now = net.now;
    // A Binding request with the right username but no integrity, and one signed with a
    // wrong password.
    for pwd in [None, Some("wrong-password-wrong-pw")] {
        let b = Builder::binding()
            .username("ufrag1:ufrag0")
            .raw(attr::USE_CANDIDATE, &[]);
        let bytes = match pwd {
            Some(p) => b.sign_short(p),
            None => b.finish(),
        };
        let msg = Message::from_bytes(&bytes).unwrap();
        assert!(!net.agents[1].handle_stun(now, Via::Host, addr(HA), &msg));
    }
    let mut x: u32 = 7;
    for len in 20..300usize {
        let mut b: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        b[0] = 0;
        b[1] = 1;
        let l = (len - 20) as u16;
        b[2..4].copy_from_slice(&l.to_be_bytes());
        b[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        if let Some(Datagram::Stun(msg)) = classify(&b) {
            net.agents[1].handle_stun(now, Via::Host, addr(HA), &msg);
        }
    }
    assert!(net.agents[1].poll_transmit().is_none());
    assert_eq!(net.agents[1].selected(), None);
}

#[test]
fn peer_reflexive_address_learned_through_the_relay_is_not_tried_direct() {
    let mut net = Net::new();
    let now = net.now;
    let x = addr("192.0.2.77:7777");
    let req = Builder::binding()
        .username("ufrag1:ufrag0")
        .u32(attr::PRIORITY, priority(CandidateKind::Host, 65535))
        .u64(attr::ICE_CONTROLLING, 1)
        .sign_short(&creds(1).1);
    let msg = Message::from_bytes(&req).unwrap();
    assert!(net.agents[1].handle_stun(now, Via::Relay, x, &msg));
    let mut to_x = Vec::new();
    let mut t = now;
    for _ in 0..200 {
        while let Some(tr) = net.agents[1].poll_transmit() {
            if tr.to == x {
                to_x.push(tr.via);
            }
        }
        t += Duration::from_millis(10);
        net.agents[1].handle_timeout(t);
    }
    // Answered and checked back through the relay, never straight from the host.
    assert!(to_x.contains(&Via::Relay), "{to_x:?}");
    assert!(!to_x.contains(&Via::Host), "{to_x:?}");
}

#[test]
fn a_direct_path_that_comes_back_is_used_again() {
    let mut net = Net::new();
    let t0 = net.now;
    net.run(t0 + Duration::from_secs(3));
    net.direct_dead = true;
    let t1 = net.now;
    net.run(t1 + Duration::from_secs(5));
    assert_eq!(net.paths(), [Some(PathKind::Relayed); 2]);
    net.direct_dead = false;
    let t2 = net.now;
    // Not before the hold...
    net.run(t2 + RECOVERY_HOLD - Duration::from_millis(200));
    assert_eq!(net.paths(), [Some(PathKind::Relayed); 2]);
    // ...but within the hold plus a round of backup checks.
    net.run(t2 + RECOVERY_HOLD + Duration::from_millis(2500));
    assert_eq!(net.paths(), [Some(PathKind::Direct); 2]);
    assert_eq!(net.events[0].len(), 3, "{:?}", net.events[0]);
    // And it stays there.
    let t3 = net.now;
    net.run(t3 + Duration::from_secs(20));
    assert_eq!(net.events[0].len(), 3, "{:?}", net.events[0]);
    assert_eq!(net.events[1].len(), 3, "{:?}", net.events[1]);
}

#[test]
fn a_request_from_the_peer_resends_a_pending_check_at_once() {
    let mut net = Net::new();
    let now = net.now;
    net.agents[0].handle_timeout(now);
    // The first check is lost (say, the peer's relay had no permission for it yet).
    let first: Vec<Transmit> = std::iter::from_fn(|| net.agents[0].poll_transmit()).collect();
    let lost = first.first().expect("a first check").clone();
    let req = Builder::binding()
        .username("ufrag0:ufrag1")
        .u32(attr::PRIORITY, priority(CandidateKind::Host, 65535))
        .u64(attr::ICE_CONTROLLED, 1)
        .sign_short(&creds(0).1);
    let later = now + Duration::from_millis(5);
    assert!(net.agents[0].handle_stun(
        later,
        lost.via,
        lost.to,
        &Message::from_bytes(&req).unwrap()
    ));
    net.agents[0].handle_timeout(later);
    let again: Vec<Transmit> = std::iter::from_fn(|| net.agents[0].poll_transmit()).collect();
    // The answer, and the lost check again 5 ms in rather than at its 100 ms timer.
    assert!(again.iter().any(|t| t.data == lost.data), "{again:?}");
}
