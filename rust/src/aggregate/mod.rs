//! Aggregating model updates: the fused weighted mean (with per-update L2
//! norms, clipping and a non-finite scan), an incremental accumulator that
//! folds updates in as they arrive, and robust aggregators (coordinate-wise
//! median, trimmed mean, Krum / multi-Krum), and each update's cosine
//! similarity with a reference such as the round's mean.
//!
//! Every kernel reads borrowed [`Values`] (f32, f16 or bf16), widens 16-bit
//! input to f32 one chunk at a time, accumulates in f32 (f64 for sums over
//! a whole update) and runs on the rayon pool, one chunk per task.

mod accumulator;
mod kernels;
mod mean;
mod network;
mod robust;
mod similarity;

pub use accumulator::Accumulator;
pub use mean::{weighted_mean, MeanOptions, MeanOutcome};
pub use robust::{coordinate_median, krum, trimmed_mean, KrumOutcome, RobustOutcome};
pub use similarity::cosines;

use std::ops::Range;

use half::slice::HalfFloatSliceExt;

use crate::dtype::Values;
use crate::error::{Error, Result};

/// Elements per parallel task: large enough to amortise scheduling, small
/// enough that a task's slice of the output stays in L2 while every update
/// is folded into it.
pub(crate) const CHUNK: usize = 32 * 1024;

/// Check that `updates` is a non-empty list of non-empty, equally long
/// updates of one dtype. Returns their common length.
pub(crate) fn check_updates(updates: &[Values<'_>]) -> Result<usize> {
    let first = updates
        .first()
        .ok_or_else(|| Error::Empty("the list of updates is empty".into()))?;
    let len = first.len();
    if len == 0 {
        return Err(Error::Empty("the updates have no elements".into()));
    }
    for (index, u) in updates.iter().enumerate().skip(1) {
        if u.len() != len {
            return Err(Error::ShapeMismatch {
                index,
                expected: vec![len],
                got: vec![u.len()],
            });
        }
        if u.dtype_name() != first.dtype_name() {
            return Err(Error::DtypeMismatch {
                index,
                expected: first.dtype_name().into(),
                got: u.dtype_name().into(),
            });
        }
    }
    Ok(len)
}

/// `v[range]` as f32: borrowed for f32 input, widened into `scratch` otherwise.
pub(crate) fn widen<'a>(
    v: &'a Values<'_>,
    range: Range<usize>,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    let n = range.len();
    if !matches!(v, Values::F32(_)) && scratch.len() < n {
        scratch.resize(n, 0.0);
    }
    match v {
        Values::F32(s) => &s[range],
        Values::F16(s) => {
            s[range].convert_to_f32_slice(&mut scratch[..n]);
            &scratch[..n]
        }
        Values::Bf16(s) => {
            s[range].convert_to_f32_slice(&mut scratch[..n]);
            &scratch[..n]
        }
    }
}

/// Copy `v[range]` into `dst` as f32.
pub(crate) fn widen_into(v: &Values<'_>, range: Range<usize>, dst: &mut [f32]) {
    match v {
        Values::F32(s) => dst.copy_from_slice(&s[range]),
        Values::F16(s) => s[range].convert_to_f32_slice(dst),
        Values::Bf16(s) => s[range].convert_to_f32_slice(dst),
    }
}

/// The error for a weighted sum that overflowed f32.
pub(crate) fn overflow_error() -> Error {
    Error::Weights(
        "the weighted sum overflows float32; use smaller weights (only their ratios matter)".into(),
    )
}

/// Validate a clipping threshold: finite and positive.
pub(crate) fn check_clip_norm(clip_norm: Option<f64>) -> Result<()> {
    match clip_norm {
        Some(c) if !(c.is_finite() && c > 0.0) => Err(Error::InvalidArgument(format!(
            "clip_norm must be a positive finite number, got {c}"
        ))),
        _ => Ok(()),
    }
}

/// Validate one aggregation weight: finite and non-negative.
pub(crate) fn check_weight(index: usize, w: f64) -> Result<()> {
    if !w.is_finite() {
        return Err(Error::Weights(format!(
            "weight {index} is {w}; weights must be finite"
        )));
    }
    if w < 0.0 {
        return Err(Error::Weights(format!(
            "weight {index} is negative ({w}); weights must be >= 0"
        )));
    }
    Ok(())
}

/// The factor an update is multiplied by before summing: its weight, scaled
/// down so that its L2 norm is at most `clip_norm`. Batch and incremental
/// paths share this so their results agree bit for bit.
pub(crate) fn coefficient(
    index: usize,
    weight: f64,
    norm: f64,
    clip_norm: Option<f64>,
) -> Result<f32> {
    let scale = match clip_norm {
        Some(c) if norm > c => c / norm,
        _ => 1.0,
    };
    let k = (weight * scale) as f32;
    if !k.is_finite() {
        return Err(Error::Weights(format!(
            "weight {index} ({weight}) does not fit in float32"
        )));
    }
    Ok(k)
}
