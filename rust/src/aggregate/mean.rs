//! The weighted mean of a list of updates, with their L2 norms, optional
//! per-update norm clipping, and non-finite detection, in one pass over
//! the data whenever possible.

use super::kernels::{divide_in_place, fused_weighted_sum, scan, weighted_sum, Scan};
use super::{check_clip_norm, check_updates, check_weight, coefficient, overflow_error};
use crate::dtype::Values;
use crate::error::{Error, Result};

/// How [`weighted_mean`] treats clipping and non-finite updates.
#[derive(Clone, Copy, Debug, Default)]
pub struct MeanOptions {
    /// Scale each update down to at most this L2 norm before averaging.
    pub clip_norm: Option<f64>,
    /// Leave out updates holding NaN/inf (renormalising the weights)
    /// instead of failing with [`Error::NonFinite`].
    pub skip_nonfinite: bool,
}

/// The result of [`weighted_mean`].
#[derive(Clone, Debug, PartialEq)]
pub struct MeanOutcome {
    pub mean: Vec<f32>,
    /// Pre-clip L2 norm of every update (NaN for one holding non-finite values).
    pub norms: Vec<f64>,
    /// Indices of updates left out for holding non-finite values.
    pub skipped: Vec<usize>,
    /// Indices of updates scaled down by clipping.
    pub clipped: Vec<usize>,
    /// The normalised weight each update was given (0 for skipped ones).
    pub weights: Vec<f64>,
}

fn check_weights(weights: Option<&[f64]>, n: usize) -> Result<Vec<f64>> {
    let Some(w) = weights else {
        return Ok(vec![1.0; n]);
    };
    if w.len() != n {
        return Err(Error::Weights(format!(
            "{} weights given for {n} updates",
            w.len()
        )));
    }
    for (i, &x) in w.iter().enumerate() {
        check_weight(i, x)?;
    }
    Ok(w.to_vec())
}

/// `Σ w_i · c_i · x_i / Σ w_i` over the finite updates, where `c_i` clips
/// update `i` to `clip_norm`.
///
/// Without clipping this is a single pass that sums, takes norms and scans
/// for non-finite values together; only when an update is found non-finite
/// in skip mode is the sum redone without it. With clipping the norms are
/// needed before any update can be scaled, so a read-only scan comes first.
pub fn weighted_mean(
    updates: &[Values<'_>],
    weights: Option<&[f64]>,
    opts: MeanOptions,
) -> Result<MeanOutcome> {
    let len = check_updates(updates)?;
    let weights = check_weights(weights, updates.len())?;
    check_clip_norm(opts.clip_norm)?;
    if weights.iter().sum::<f64>() <= 0.0 {
        return Err(Error::Weights("all weights are zero".into()));
    }

    let (fused_sum, scans) = if opts.clip_norm.is_none() {
        let coeffs = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| coefficient(i, w, 0.0, None))
            .collect::<Result<Vec<_>>>()?;
        let (acc, scans) = fused_weighted_sum(updates, &coeffs, len);
        (Some(acc), scans)
    } else {
        (None, scan(updates, len))
    };

    let skipped = nonfinite_updates(&scans, opts.skip_nonfinite)?;
    let norms: Vec<f64> = scans.iter().map(Scan::norm).collect();
    let kept = |i: &usize| !skipped.contains(i);
    let total: f64 = (0..updates.len()).filter(kept).map(|i| weights[i]).sum();
    if total <= 0.0 {
        return Err(Error::Weights(
            "every update with a non-zero weight was skipped as non-finite".into(),
        ));
    }

    let mut sum = match fused_sum {
        Some(acc) if skipped.is_empty() => acc,
        _ => {
            let terms = (0..updates.len())
                .filter(kept)
                .map(|i| {
                    Ok((
                        updates[i],
                        coefficient(i, weights[i], norms[i], opts.clip_norm)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            weighted_sum(&terms, len)
        }
    };
    if !divide_in_place(&mut sum, total) {
        return Err(overflow_error());
    }

    let clipped = match opts.clip_norm {
        Some(c) => (0..updates.len())
            .filter(kept)
            .filter(|&i| norms[i] > c)
            .collect(),
        None => Vec::new(),
    };
    let weights = (0..updates.len())
        .map(|i| if kept(&i) { weights[i] / total } else { 0.0 })
        .collect();
    Ok(MeanOutcome {
        mean: sum,
        norms,
        skipped,
        clipped,
        weights,
    })
}

/// Indices of the updates holding non-finite values; an error for the first
/// of them unless skipping, or when nothing would be left.
pub(crate) fn nonfinite_updates(scans: &[Scan], skip: bool) -> Result<Vec<usize>> {
    let bad: Vec<usize> = (0..scans.len())
        .filter(|&i| scans[i].first_nonfinite.is_some())
        .collect();
    if let Some(&first) = bad.first() {
        if !skip || bad.len() == scans.len() {
            return Err(Error::NonFinite {
                update: first,
                position: scans[first].first_nonfinite.unwrap_or(0),
            });
        }
    }
    Ok(bad)
}
