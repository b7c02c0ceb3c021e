//! Joins in flight: how many peers may be between their first packet and an
//! accepted hello at once (all together and per IP address), and when a new
//! peer must first prove it receives at its address (a QUIC retry).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::AdmissionLimits;

/// What the server's admission did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Peers between their first packet and an accepted hello now.
    pub pending: u64,
    /// Peers let in to try (each then joined, or failed, or ran out of time).
    pub admitted: u64,
    /// Peers refused because too many joins were in flight (in all, or from their address).
    pub refused_busy: u64,
    /// Retry packets sent: peers asked to prove their address before a slot was theirs.
    pub retries: u64,
    /// Links closed because no hello was accepted before the deadline.
    pub hello_timeouts: u64,
}

#[derive(Default)]
struct Pending {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

pub(crate) struct Admission {
    limits: AdmissionLimits,
    pending: Mutex<Pending>,
    admitted: AtomicU64,
    refused_busy: AtomicU64,
    retries: AtomicU64,
    hello_timeouts: AtomicU64,
}

pub(crate) enum Decision {
    Admit(Slot),
    Retry,
    Refuse(String),
}

/// One join in flight; dropping it frees the place.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = self.admission.lock();
        p.total = p.total.saturating_sub(1);
        if let Some(n) = p.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                p.by_ip.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            pending: Mutex::new(Pending::default()),
            admitted: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            hello_timeouts: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new peer from `ip`: a place, a retry first (when its address is not
    /// validated and enough joins are in flight), or a refusal saying why.
    pub(crate) fn decide(self: &Arc<Self>, ip: IpAddr, validated: bool) -> Decision {
        let l = &self.limits;
        let mut p = self.lock();
        if !validated && p.total >= l.retry_above {
            self.retries.fetch_add(1, Ordering::Relaxed);
            return Decision::Retry;
        }
        if p.total >= l.max_pending {
            self.refused_busy.fetch_add(1, Ordering::Relaxed);
            return Decision::Refuse(format!(
                "busy: {} joins in flight (at most {})",
                p.total, l.max_pending
            ));
        }
        let from_ip = p.by_ip.entry(ip).or_default();
        if *from_ip >= l.max_pending_per_address {
            self.refused_busy.fetch_add(1, Ordering::Relaxed);
            return Decision::Refuse(format!(
                "busy: {} joins in flight from {ip} (at most {})",
                *from_ip, l.max_pending_per_address
            ));
        }
        *from_ip += 1;
        p.total += 1;
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Decision::Admit(Slot {
            admission: self.clone(),
            ip,
        })
    }

    pub(crate) fn hello_timed_out(&self) {
        self.hello_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            pending: self.lock().total as u64,
            admitted: self.admitted.load(Ordering::Relaxed),
            refused_busy: self.refused_busy.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            hello_timeouts: self.hello_timeouts.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_retries_and_release() {
        let a = Admission::new(AdmissionLimits {
            max_pending: 3,
            max_pending_per_address: 2,
            retry_above: 1,
        });
        let ip: IpAddr = [10, 0, 0, 1].into();
        let other: IpAddr = [10, 0, 0, 2].into();
        let Decision::Admit(first) = a.decide(ip, false) else {
            panic!("the first peer needs no retry")
        };
        assert!(matches!(a.decide(ip, false), Decision::Retry));
        let Decision::Admit(second) = a.decide(ip, true) else {
            panic!("a validated peer gets a place")
        };
        assert!(matches!(a.decide(ip, true), Decision::Refuse(m) if m.contains("from 10.0.0.1")));
        let Decision::Admit(_third) = a.decide(other, true) else {
            panic!("another address has room")
        };
        assert!(matches!(a.decide(other, true), Decision::Refuse(m) if m.contains("at most 3")));
        drop(first);
        drop(second);
        assert_eq!(a.stats().pending, 1);
        assert!(matches!(a.decide(ip, true), Decision::Admit(_)));
        let s = a.stats();
        assert_eq!((s.admitted, s.refused_busy, s.retries), (4, 2, 1));
    }
}
