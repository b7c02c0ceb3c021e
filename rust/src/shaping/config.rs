//! What a shaped link looks like: per-direction delay, loss, bandwidth and
//! queue, plus link-wide outages and scheduled profile changes. Every value
//! is validated once, with an error naming the offending field.

use std::time::Duration;

use crate::error::{Error, Result};

/// Shape of the random part of the delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitterDist {
    /// Uniform in `[-jitter, +jitter]`.
    Uniform,
    /// Normal with standard deviation `jitter`.
    Normal,
    /// Pareto (shape 3) shifted to mean zero with mean excess `jitter`:
    /// mostly small, with a heavy right tail of late packets.
    Pareto,
}

impl JitterDist {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "uniform" => Ok(JitterDist::Uniform),
            "normal" => Ok(JitterDist::Normal),
            "pareto" => Ok(JitterDist::Pareto),
            other => Err(Error::InvalidArgument(format!(
                "jitter_dist must be one of uniform, normal, pareto; got {other:?}"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            JitterDist::Uniform => "uniform",
            JitterDist::Normal => "normal",
            JitterDist::Pareto => "pareto",
        }
    }
}

/// Gilbert-Elliott bursty loss: a two-state Markov chain stepped once per
/// datagram, with its own loss probability in each state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurstLoss {
    /// P(good -> bad) per datagram.
    pub p_enter_bad: f64,
    /// P(bad -> good) per datagram.
    pub p_exit_bad: f64,
    pub loss_in_good: f64,
    pub loss_in_bad: f64,
}

impl BurstLoss {
    /// Long-run loss rate of the chain.
    pub fn mean_loss(&self) -> f64 {
        let total = self.p_enter_bad + self.p_exit_bad;
        if total == 0.0 {
            return self.loss_in_good;
        }
        let bad = self.p_enter_bad / total;
        bad * self.loss_in_bad + (1.0 - bad) * self.loss_in_good
    }
}

/// One direction (egress or ingress) of a link.
#[derive(Clone, Debug, PartialEq)]
pub struct DirectionShape {
    /// Mean one-way delay added to each datagram.
    pub latency: Duration,
    pub jitter: Duration,
    pub jitter_dist: JitterDist,
    /// Independent random loss probability per datagram.
    pub loss: f64,
    pub burst: Option<BurstLoss>,
    /// Bottleneck rate in bits per second; `None` is unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops (drop-tail).
    pub queue_bytes: u64,
    /// Let jitter reorder datagrams (as netem does); off keeps FIFO order,
    /// as a queueing path does.
    pub reorder: bool,
}

impl Default for DirectionShape {
    fn default() -> Self {
        DirectionShape {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_dist: JitterDist::Uniform,
            loss: 0.0,
            burst: None,
            bandwidth_bps: None,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            reorder: false,
        }
    }
}

/// A router-sized buffer: enough for a few hundred full-size datagrams.
pub const DEFAULT_QUEUE_BYTES: u64 = 512 * 1024;

impl DirectionShape {
    /// True when this direction changes nothing.
    pub fn is_transparent(&self) -> bool {
        self.latency.is_zero()
            && self.jitter.is_zero()
            && self.loss == 0.0
            && self.burst.is_none()
            && self.bandwidth_bps.is_none()
    }

    pub fn validate(&self, what: &str) -> Result<()> {
        let prob = |name: &str, v: f64| -> Result<()> {
            if !(0.0..=1.0).contains(&v) || v.is_nan() {
                return Err(Error::InvalidArgument(format!(
                    "{what}.{name} must be a probability in [0, 1], got {v}"
                )));
            }
            Ok(())
        };
        prob("loss", self.loss)?;
        if let Some(b) = &self.burst {
            prob("burst.p_enter_bad", b.p_enter_bad)?;
            prob("burst.p_exit_bad", b.p_exit_bad)?;
            prob("burst.loss_in_good", b.loss_in_good)?;
            prob("burst.loss_in_bad", b.loss_in_bad)?;
        }
        if self.bandwidth_bps == Some(0) {
            return Err(Error::InvalidArgument(format!(
                "{what}.bandwidth_bps must be positive (use loss=1.0 or an outage for a dead link)"
            )));
        }
        if self.queue_bytes < 1500 {
            return Err(Error::InvalidArgument(format!(
                "{what}.queue_bytes must hold at least one 1500-byte datagram, got {}",
                self.queue_bytes
            )));
        }
        Ok(())
    }
}

/// A period during which the link carries nothing, in either direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outage {
    /// From when the shape is applied.
    pub start: Duration,
    pub duration: Duration,
}

/// Both directions of a link, its outages and its scheduled changes.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct LinkShape {
    pub egress: DirectionShape,
    pub ingress: DirectionShape,
    pub outages: Vec<Outage>,
    /// At each offset (from when the shape is applied), switch to that shape.
    /// The shapes in a schedule carry no schedule of their own.
    pub schedule: Vec<(Duration, LinkShape)>,
    /// Seed of the shaping randomness, so a run can be replayed exactly.
    pub seed: u64,
}

/// The named profiles: `(name, latency ms, jitter ms, loss, bandwidth bps)`.
/// Latency ranges are one-way, per direction, as `latency ± jitter` (uniform).
pub const PROFILES: &[(&str, u64, u64, f64, Option<u64>)] = &[
    ("perfect", 0, 0, 0.0, None),
    ("good", 30, 20, 0.001, Some(100_000_000)),
    ("average", 100, 50, 0.01, Some(20_000_000)),
    ("poor", 225, 75, 0.05, Some(5_000_000)),
    ("unstable", 275, 225, 0.10, Some(2_000_000)),
];

impl LinkShape {
    /// The same shape in both directions.
    pub fn symmetric(dir: DirectionShape, seed: u64) -> Self {
        LinkShape {
            egress: dir.clone(),
            ingress: dir,
            seed,
            ..LinkShape::default()
        }
    }

    pub fn profile(name: &str, seed: u64) -> Result<Self> {
        let (_, lat, jit, loss, bw) = PROFILES.iter().find(|p| p.0 == name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "profile must be one of {}; got {name:?}",
                PROFILES.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok(LinkShape::symmetric(
            DirectionShape {
                latency: Duration::from_millis(*lat),
                jitter: Duration::from_millis(*jit),
                loss: *loss,
                bandwidth_bps: *bw,
                ..DirectionShape::default()
            },
            seed,
        ))
    }

    pub fn is_transparent(&self) -> bool {
        self.egress.is_transparent()
            && self.ingress.is_transparent()
            && self.outages.is_empty()
            && self.schedule.is_empty()
    }

    pub fn validate(&self) -> Result<()> {
        self.egress.validate("egress")?;
        self.ingress.validate("ingress")?;
        for (i, (_, shape)) in self.schedule.iter().enumerate() {
            if !shape.schedule.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "schedule[{i}] has a schedule of its own; flatten it into one list"
                )));
            }
            shape
                .validate()
                .map_err(|e| Error::InvalidArgument(format!("schedule[{i}]: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_validate_and_bad_fields_are_named() {
        for (name, ..) in PROFILES {
            LinkShape::profile(name, 1).unwrap().validate().unwrap();
        }
        assert!(LinkShape::profile("lunar", 0).is_err());
        let mut s = LinkShape::profile("good", 0).unwrap();
        s.ingress.loss = 1.5;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("ingress.loss"), "{err}");
    }

    #[test]
    fn burst_mean_loss() {
        let b = BurstLoss {
            p_enter_bad: 0.01,
            p_exit_bad: 0.09,
            loss_in_good: 0.0,
            loss_in_bad: 0.5,
        };
        assert!((b.mean_loss() - 0.05).abs() < 1e-12);
    }
}
