//! The sans-IO heart of shaping: given the time and a datagram's size,
//! decide whether it is dropped (and why) or when it is delivered. Time is
//! an offset from an epoch chosen by the caller, so tests drive it with a
//! virtual clock and the socket wrapper with `Instant`s.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Pareto};

use super::config::{DirectionShape, JitterDist, LinkShape};

/// Why the shaper dropped a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCause {
    RandomLoss,
    BurstLoss,
    QueueFull,
    Outage,
}

impl DropCause {
    pub const ALL: [DropCause; 4] = [
        DropCause::RandomLoss,
        DropCause::BurstLoss,
        DropCause::QueueFull,
        DropCause::Outage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropCause::RandomLoss => "random_loss",
            DropCause::BurstLoss => "burst_loss",
            DropCause::QueueFull => "queue_full",
            DropCause::Outage => "outage",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Drop(DropCause),
    /// Deliver at this offset from the epoch.
    DeliverAt(Duration),
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub packets: u64,
    pub bytes: u64,
    pub delivered_packets: u64,
    pub delivered_bytes: u64,
    /// Indexed like [`DropCause::ALL`].
    pub drops: [u64; 4],
}

/// One direction's shaper.
#[derive(Debug)]
pub struct Shaper {
    shape: DirectionShape,
    rng: ChaCha8Rng,
    in_bad_state: bool,
    /// When the bottleneck finishes sending what is already queued.
    link_free_at: Duration,
    last_delivery: Duration,
    pub stats: DirectionStats,
}

impl Shaper {
    pub fn new(shape: DirectionShape, seed: u64) -> Self {
        Shaper {
            shape,
            rng: ChaCha8Rng::seed_from_u64(seed),
            in_bad_state: false,
            link_free_at: Duration::ZERO,
            last_delivery: Duration::ZERO,
            stats: DirectionStats::default(),
        }
    }

    pub fn shape(&self) -> &DirectionShape {
        &self.shape
    }

    /// Switch shape, keeping the random stream, the queue and the counters.
    pub fn set_shape(&mut self, shape: DirectionShape) {
        self.shape = shape;
    }

    /// Decide the fate of a datagram of `len` bytes arriving at `now`;
    /// `link_down` is true inside an outage.
    pub fn decide(&mut self, now: Duration, len: usize, link_down: bool) -> Verdict {
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        let verdict = self.decide_inner(now, len, link_down);
        match verdict {
            Verdict::Drop(cause) => self.stats.drops[cause as usize] += 1,
            Verdict::DeliverAt(_) => {
                self.stats.delivered_packets += 1;
                self.stats.delivered_bytes += len as u64;
            }
        }
        verdict
    }

    fn decide_inner(&mut self, now: Duration, len: usize, link_down: bool) -> Verdict {
        if link_down {
            return Verdict::Drop(DropCause::Outage);
        }
        // Bottleneck: a token bucket of one packet's depth, i.e. a serialising
        // link; what waits for it is the queue, dropped at the tail when full.
        let mut sent_at = now;
        if let Some(bps) = self.shape.bandwidth_bps {
            let start = self.link_free_at.max(now);
            let backlog = bits_to_bytes((start - now).as_secs_f64() * bps as f64);
            if backlog + len as u64 > self.shape.queue_bytes {
                return Verdict::Drop(DropCause::QueueFull);
            }
            let tx = Duration::from_secs_f64(len as f64 * 8.0 / bps as f64);
            self.link_free_at = start + tx;
            sent_at = self.link_free_at;
        }
        // Loss happens on the wire, after the datagram used the bottleneck.
        if self.shape.loss > 0.0 && self.rng.gen::<f64>() < self.shape.loss {
            return Verdict::Drop(DropCause::RandomLoss);
        }
        if let Some(b) = self.shape.burst {
            let flip = if self.in_bad_state {
                b.p_exit_bad
            } else {
                b.p_enter_bad
            };
            if self.rng.gen::<f64>() < flip {
                self.in_bad_state = !self.in_bad_state;
            }
            let p = if self.in_bad_state {
                b.loss_in_bad
            } else {
                b.loss_in_good
            };
            if self.rng.gen::<f64>() < p {
                return Verdict::Drop(DropCause::BurstLoss);
            }
        }
        let delay = self.sample_delay();
        let mut at = sent_at + delay;
        if !self.shape.reorder {
            at = at.max(self.last_delivery);
        }
        self.last_delivery = self.last_delivery.max(at);
        Verdict::DeliverAt(at)
    }

    fn sample_delay(&mut self) -> Duration {
        let base = self.shape.latency.as_secs_f64();
        let j = self.shape.jitter.as_secs_f64();
        if j == 0.0 {
            return self.shape.latency;
        }
        let offset = match self.shape.jitter_dist {
            JitterDist::Uniform => self.rng.gen_range(-j..=j),
            JitterDist::Normal => Normal::new(0.0, j)
                .map(|d| d.sample(&mut self.rng))
                .unwrap_or(0.0),
            JitterDist::Pareto => {
                // Shape 3 has a finite variance; the scale makes its mean `j`.
                const ALPHA: f64 = 3.0;
                let scale = j * (ALPHA - 1.0) / ALPHA;
                Pareto::new(scale, ALPHA)
                    .map(|d| d.sample(&mut self.rng) - j)
                    .unwrap_or(0.0)
            }
        };
        Duration::from_secs_f64((base + offset).max(0.0))
    }
}

fn bits_to_bytes(bits: f64) -> u64 {
    (bits / 8.0).ceil() as u64
}

/// Both directions of one link, with its outages and schedule.
#[derive(Debug)]
pub struct LinkShaper {
    pub egress: Shaper,
    pub ingress: Shaper,
    shape: LinkShape,
    /// When the current shape (and its outage/schedule clock) started.
    applied_at: Duration,
    next_step: usize,
}

impl LinkShaper {
    pub fn new(shape: LinkShape, now: Duration) -> Self {
        // Distinct streams per direction, both fixed by the one seed.
        let egress = Shaper::new(shape.egress.clone(), shape.seed.wrapping_mul(2));
        let ingress = Shaper::new(shape.ingress.clone(), shape.seed.wrapping_mul(2) + 1);
        LinkShaper {
            egress,
            ingress,
            shape,
            applied_at: now,
            next_step: 0,
        }
    }

    /// Replace the shape now (a new random stream from its seed); counters stay.
    pub fn set_shape(&mut self, shape: LinkShape, now: Duration) {
        let mut fresh = LinkShaper::new(shape, now);
        fresh.egress.stats = self.egress.stats;
        fresh.ingress.stats = self.ingress.stats;
        *self = fresh;
    }

    pub fn shape(&self) -> &LinkShape {
        &self.shape
    }

    pub fn is_transparent(&self) -> bool {
        self.shape.is_transparent()
            && self.egress.shape().is_transparent()
            && self.ingress.shape().is_transparent()
    }

    fn advance(&mut self, now: Duration) {
        let since = now.saturating_sub(self.applied_at);
        while let Some((at, step)) = self.shape.schedule.get(self.next_step) {
            if *at > since {
                break;
            }
            self.egress.set_shape(step.egress.clone());
            self.ingress.set_shape(step.ingress.clone());
            self.next_step += 1;
        }
    }

    fn link_down(&self, now: Duration) -> bool {
        let since = now.saturating_sub(self.applied_at);
        self.shape
            .outages
            .iter()
            .any(|o| since >= o.start && since < o.start + o.duration)
    }

    pub fn decide_egress(&mut self, now: Duration, len: usize) -> Verdict {
        self.advance(now);
        let down = self.link_down(now);
        self.egress.decide(now, len, down)
    }

    pub fn decide_ingress(&mut self, now: Duration, len: usize) -> Verdict {
        self.advance(now);
        let down = self.link_down(now);
        self.ingress.decide(now, len, down)
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::{BurstLoss, Outage};
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn dir() -> DirectionShape {
        DirectionShape::default()
    }

    #[test]
    fn fixed_latency_on_a_virtual_clock() {
        let mut s = Shaper::new(
            DirectionShape {
                latency: 40 * MS,
                ..dir()
            },
            1,
        );
        assert_eq!(s.decide(10 * MS, 100, false), Verdict::DeliverAt(50 * MS));
    }

    #[test]
    fn jitter_means_match_for_each_distribution() {
        for dist in [JitterDist::Uniform, JitterDist::Normal, JitterDist::Pareto] {
            let mut s = Shaper::new(
                DirectionShape {
                    latency: 100 * MS,
                    jitter: 30 * MS,
                    jitter_dist: dist,
                    reorder: true,
                    ..dir()
                },
                7,
            );
            let n = 20_000;
            let mut sum = 0.0;
            for i in 0..n {
                let now = Duration::from_secs(i);
                match s.decide(now, 100, false) {
                    Verdict::DeliverAt(at) => sum += (at - now).as_secs_f64(),
                    v => panic!("{v:?}"),
                }
            }
            let mean = sum / n as f64;
            assert!((mean - 0.1).abs() < 0.003, "{dist:?}: mean {mean}");
        }
    }

    #[test]
    fn random_loss_rate_and_replay() {
        let shape = DirectionShape {
            loss: 0.05,
            ..dir()
        };
        let run = |seed| {
            let mut s = Shaper::new(shape.clone(), seed);
            (0..100_000)
                .map(|_| s.decide(Duration::ZERO, 1200, false))
                .collect::<Vec<_>>()
        };
        let a = run(3);
        assert_eq!(a, run(3), "same seed, same decisions");
        assert_ne!(a, run(4));
        let lost = a.iter().filter(|v| matches!(v, Verdict::Drop(_))).count() as f64;
        let p = lost / a.len() as f64;
        let sigma = (0.05f64 * 0.95 / a.len() as f64).sqrt();
        assert!((p - 0.05).abs() < 3.0 * sigma, "loss {p}");
    }

    #[test]
    fn burst_loss_is_bursty_and_matches_its_mean() {
        let b = BurstLoss {
            p_enter_bad: 0.005,
            p_exit_bad: 0.095,
            loss_in_good: 0.0,
            loss_in_bad: 0.8,
        };
        let mut s = Shaper::new(
            DirectionShape {
                burst: Some(b),
                ..dir()
            },
            9,
        );
        let drops: Vec<bool> = (0..200_000)
            .map(|_| matches!(s.decide(Duration::ZERO, 1200, false), Verdict::Drop(_)))
            .collect();
        let p = drops.iter().filter(|d| **d).count() as f64 / drops.len() as f64;
        assert!((p - b.mean_loss()).abs() < 0.005, "loss {p}");
        // A loss is far more likely right after a loss than on average.
        let after_loss = drops.windows(2).filter(|w| w[0]).count() as f64;
        let both = drops.windows(2).filter(|w| w[0] && w[1]).count() as f64;
        assert!(both / after_loss > 5.0 * p);
    }

    #[test]
    fn bandwidth_cap_and_drop_tail() {
        // 8 Mbit/s = 1 byte per microsecond; 1000-byte packets take 1 ms.
        let mut s = Shaper::new(
            DirectionShape {
                bandwidth_bps: Some(8_000_000),
                queue_bytes: 10_000,
                ..dir()
            },
            1,
        );
        let mut delivered = Vec::new();
        let mut full = 0;
        for _ in 0..20 {
            match s.decide(Duration::ZERO, 1000, false) {
                Verdict::DeliverAt(at) => delivered.push(at),
                Verdict::Drop(DropCause::QueueFull) => full += 1,
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(delivered.len(), 10);
        assert_eq!(full, 10);
        assert_eq!(delivered[9], 10 * MS);
        // Offered at exactly the cap for a long time: nothing is dropped and the
        // delivered rate is the cap.
        let mut s = Shaper::new(
            DirectionShape {
                bandwidth_bps: Some(8_000_000),
                ..dir()
            },
            1,
        );
        let mut last = Duration::ZERO;
        for i in 0..10_000u64 {
            match s.decide(Duration::from_micros(i * 1000), 1000, false) {
                Verdict::DeliverAt(at) => last = at,
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(last, Duration::from_secs(10));
    }

    #[test]
    fn outages_and_schedule_follow_the_clock() {
        let mut shape = LinkShape::symmetric(dir(), 1);
        shape.outages.push(Outage {
            start: Duration::from_secs(1),
            duration: Duration::from_secs(2),
        });
        let mut late = LinkShape::symmetric(
            DirectionShape {
                latency: 50 * MS,
                ..dir()
            },
            1,
        );
        late.egress.loss = 0.0;
        shape.schedule.push((Duration::from_secs(5), late));
        let mut l = LinkShaper::new(shape, Duration::from_secs(10));
        let at = |s: u64| Duration::from_secs(10 + s);
        assert_eq!(l.decide_egress(at(0), 10), Verdict::DeliverAt(at(0)));
        assert_eq!(
            l.decide_ingress(at(2), 10),
            Verdict::Drop(DropCause::Outage)
        );
        assert_eq!(l.decide_egress(at(3), 10), Verdict::DeliverAt(at(3)));
        assert_eq!(
            l.decide_egress(at(6), 10),
            Verdict::DeliverAt(at(6) + 50 * MS)
        );
        assert_eq!(l.ingress.stats.drops[DropCause::Outage as usize], 1);
    }

    #[test]
    fn fifo_unless_reorder() {
        let shape = DirectionShape {
            latency: 50 * MS,
            jitter: 40 * MS,
            ..dir()
        };
        let mut s = Shaper::new(shape.clone(), 5);
        let times: Vec<Duration> = (0..1000)
            .map(|i| match s.decide(i * MS / 10, 100, false) {
                Verdict::DeliverAt(at) => at,
                v => panic!("{v:?}"),
            })
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        let mut s = Shaper::new(
            DirectionShape {
                reorder: true,
                ..shape
            },
            5,
        );
        let times: Vec<Duration> = (0..1000)
            .map(|i| match s.decide(i * MS / 10, 100, false) {
                Verdict::DeliverAt(at) => at,
                v => panic!("{v:?}"),
            })
            .collect();
        assert!(times.windows(2).any(|w| w[0] > w[1]));
    }
}
