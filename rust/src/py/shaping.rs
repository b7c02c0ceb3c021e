//! Python face of [`crate::shaping`]: the `LinkShape` class and `LINK_PROFILES`.

use std::collections::HashMap;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::seconds;
use crate::error::{Error, Result};
use crate::shaping::{
    BurstLoss, DirectionShape, JitterDist, LinkShape, LinkShaper, Outage, Verdict, PROFILES,
};

fn burst_from(map: HashMap<String, f64>) -> Result<BurstLoss> {
    const KEYS: [&str; 4] = ["p_enter_bad", "p_exit_bad", "loss_in_good", "loss_in_bad"];
    if let Some(k) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(Error::InvalidArgument(format!(
            "burst_loss has unknown key {k:?}; expected {}",
            KEYS.join(", ")
        )));
    }
    let get = |k: &str| {
        map.get(k)
            .copied()
            .ok_or_else(|| Error::InvalidArgument(format!("burst_loss is missing {k:?}")))
    };
    Ok(BurstLoss {
        p_enter_bad: get("p_enter_bad")?,
        p_exit_bad: get("p_exit_bad")?,
        loss_in_good: get("loss_in_good")?,
        loss_in_bad: get("loss_in_bad")?,
    })
}

fn outages_from(outages: Vec<(f64, f64)>) -> Result<Vec<Outage>> {
    outages
        .into_iter()
        .enumerate()
        .map(|(i, (start, dur))| {
            Ok(Outage {
                start: seconds(&format!("outages[{i}].start_s"), start)?,
                duration: seconds(&format!("outages[{i}].duration_s"), dur)?,
            })
        })
        .collect()
}

fn schedule_from(
    schedule: Vec<(f64, PyRef<'_, PyLinkShape>)>,
) -> Result<Vec<(Duration, LinkShape)>> {
    let mut out = schedule
        .into_iter()
        .enumerate()
        .map(|(i, (at, s))| {
            Ok((
                seconds(&format!("schedule[{i}].at_s"), at)?,
                s.inner.clone(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort_by_key(|(at, _)| *at);
    Ok(out)
}

/// How a link is shaped: per direction delay, loss, bandwidth and queue;
/// outages; scheduled changes; and the seed that makes it replayable.
#[pyclass(module = "hypergpu._core", name = "LinkShape", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PyLinkShape {
    pub inner: LinkShape,
}

#[pymethods]
impl PyLinkShape {
    /// The same shape in both directions.
    #[new]
    #[pyo3(signature = (*, latency_ms=0.0, jitter_ms=0.0, jitter_dist="uniform", loss=0.0,
        burst_loss=None, bandwidth_bps=None, queue_bytes=crate::shaping::config::DEFAULT_QUEUE_BYTES,
        reorder=false, outages=Vec::new(), schedule=Vec::new(), seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        latency_ms: f64,
        jitter_ms: f64,
        jitter_dist: &str,
        loss: f64,
        burst_loss: Option<HashMap<String, f64>>,
        bandwidth_bps: Option<u64>,
        queue_bytes: u64,
        reorder: bool,
        outages: Vec<(f64, f64)>,
        schedule: Vec<(f64, PyRef<'_, PyLinkShape>)>,
        seed: u64,
    ) -> Result<Self> {
        let dir = DirectionShape {
            latency: seconds("latency_ms", latency_ms / 1e3)?,
            jitter: seconds("jitter_ms", jitter_ms / 1e3)?,
            jitter_dist: JitterDist::from_name(jitter_dist)?,
            loss,
            burst: burst_loss.map(burst_from).transpose()?,
            bandwidth_bps,
            queue_bytes,
            reorder,
        };
        let mut inner = LinkShape::symmetric(dir, seed);
        inner.outages = outages_from(outages)?;
        inner.schedule = schedule_from(schedule)?;
        inner.validate()?;
        Ok(PyLinkShape { inner })
    }

    /// A named profile: perfect, good, average, poor, unstable.
    #[staticmethod]
    #[pyo3(signature = (name, *, seed=0))]
    fn profile(name: &str, seed: u64) -> Result<Self> {
        Ok(PyLinkShape {
            inner: LinkShape::profile(name, seed)?,
        })
    }

    /// Egress from `egress`'s egress direction, ingress from `ingress`'s.
    #[staticmethod]
    #[pyo3(signature = (egress, ingress, *, seed=0))]
    fn asymmetric(egress: &PyLinkShape, ingress: &PyLinkShape, seed: u64) -> Result<Self> {
        let inner = LinkShape {
            egress: egress.inner.egress.clone(),
            ingress: ingress.inner.ingress.clone(),
            seed,
            ..LinkShape::default()
        };
        inner.validate()?;
        Ok(PyLinkShape { inner })
    }

    /// This shape with the link down in each `(start_s, duration_s)` window,
    /// counted from when the shape is applied.
    fn with_outages(&self, outages: Vec<(f64, f64)>) -> Result<Self> {
        let mut inner = self.inner.clone();
        inner.outages = outages_from(outages)?;
        Ok(PyLinkShape { inner })
    }

    /// This shape, switching to each `(at_s, shape)` at that offset from when
    /// it is applied.
    fn with_schedule(&self, schedule: Vec<(f64, PyRef<'_, PyLinkShape>)>) -> Result<Self> {
        let mut inner = self.inner.clone();
        inner.schedule = schedule_from(schedule)?;
        inner.validate()?;
        Ok(PyLinkShape { inner })
    }

    fn with_seed(&self, seed: u64) -> Self {
        let mut inner = self.inner.clone();
        inner.seed = seed;
        PyLinkShape { inner }
    }

    /// Run this shape's shaper on a virtual clock, with no network: for each
    /// `(arrival_s, size)` datagram (in order), its delivery time in seconds
    /// or the name of the drop cause. Same seed, same answers.
    #[pyo3(signature = (datagrams, direction="egress"))]
    fn simulate<'py>(
        &self,
        py: Python<'py>,
        datagrams: Vec<(f64, usize)>,
        direction: &str,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let egress = match direction {
            "egress" => true,
            "ingress" => false,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "direction must be \"egress\" or \"ingress\", got {other:?}"
                ))
                .into())
            }
        };
        let mut link = LinkShaper::new(self.inner.clone(), Duration::ZERO);
        let mut last = Duration::ZERO;
        let mut out = Vec::with_capacity(datagrams.len());
        for (i, (at, len)) in datagrams.into_iter().enumerate() {
            let now = seconds(&format!("datagrams[{i}].arrival_s"), at)?;
            if now < last {
                return Err(Error::InvalidArgument(format!(
                    "datagrams[{i}] arrives before the one before it"
                ))
                .into());
            }
            last = now;
            let verdict = if egress {
                link.decide_egress(now, len)
            } else {
                link.decide_ingress(now, len)
            };
            out.push(match verdict {
                Verdict::DeliverAt(t) => t.as_secs_f64().into_pyobject(py)?.into_any(),
                Verdict::Drop(cause) => cause.name().into_pyobject(py)?.into_any(),
            });
        }
        Ok(out)
    }

    #[getter]
    fn seed(&self) -> u64 {
        self.inner.seed
    }

    #[getter]
    fn is_transparent(&self) -> bool {
        self.inner.is_transparent()
    }

    /// Everything about this shape as plain Python values.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        shape_dict(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        let d = |s: &DirectionShape| {
            format!(
                "latency_ms={}, jitter_ms={} ({}), loss={}, burst={}, bandwidth_bps={:?}, queue_bytes={}",
                s.latency.as_secs_f64() * 1e3,
                s.jitter.as_secs_f64() * 1e3,
                s.jitter_dist.name(),
                s.loss,
                s.burst.is_some(),
                s.bandwidth_bps,
                s.queue_bytes
            )
        };
        format!(
            "LinkShape(egress=[{}], ingress=[{}], outages={}, schedule={}, seed={})",
            d(&self.inner.egress),
            d(&self.inner.ingress),
            self.inner.outages.len(),
            self.inner.schedule.len(),
            self.inner.seed
        )
    }
}

fn direction_dict<'py>(py: Python<'py>, s: &DirectionShape) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("latency_ms", s.latency.as_secs_f64() * 1e3)?;
    d.set_item("jitter_ms", s.jitter.as_secs_f64() * 1e3)?;
    d.set_item("jitter_dist", s.jitter_dist.name())?;
    d.set_item("loss", s.loss)?;
    match &s.burst {
        Some(b) => {
            let bd = PyDict::new(py);
            bd.set_item("p_enter_bad", b.p_enter_bad)?;
            bd.set_item("p_exit_bad", b.p_exit_bad)?;
            bd.set_item("loss_in_good", b.loss_in_good)?;
            bd.set_item("loss_in_bad", b.loss_in_bad)?;
            d.set_item("burst_loss", bd)?;
        }
        None => d.set_item("burst_loss", py.None())?,
    }
    d.set_item("bandwidth_bps", s.bandwidth_bps)?;
    d.set_item("queue_bytes", s.queue_bytes)?;
    d.set_item("reorder", s.reorder)?;
    Ok(d)
}

fn shape_dict<'py>(py: Python<'py>, s: &LinkShape) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("egress", direction_dict(py, &s.egress)?)?;
    d.set_item("ingress", direction_dict(py, &s.ingress)?)?;
    let outages: Vec<(f64, f64)> = s
        .outages
        .iter()
        .map(|o| (o.start.as_secs_f64(), o.duration.as_secs_f64()))
        .collect();
    d.set_item("outages", outages)?;
    let schedule = s
        .schedule
        .iter()
        .map(|(at, step)| Ok((at.as_secs_f64(), shape_dict(py, step)?)))
        .collect::<PyResult<Vec<_>>>()?;
    d.set_item("schedule", schedule)?;
    d.set_item("seed", s.seed)?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLinkShape>()?;
    m.add(
        "LINK_PROFILES",
        PROFILES.iter().map(|p| p.0).collect::<Vec<_>>(),
    )?;
    Ok(())
}
