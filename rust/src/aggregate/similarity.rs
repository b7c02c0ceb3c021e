//! How far each update agrees with a reference (the round's mean): the
//! cosine of the angle between them, in one read of every update.
//!
//! Dot products and sums of squares are taken in f32 lanes over blocks of
//! [`BLOCK`] elements and carried across blocks and chunks in f64, in a
//! fixed order, so a result does not depend on the thread count.

use rayon::prelude::*;

use super::{check_updates, widen, CHUNK};
use crate::dtype::Values;
use crate::error::{Error, Result};

const BLOCK: usize = 1024;
const LANES: usize = 16;

/// `(x·r, x·x)` of at most [`BLOCK`] elements, in f32 lanes.
#[inline]
fn lanes_products(x: &[f32], r: &[f32]) -> (f64, f64) {
    let (mut xr, mut xx) = ([0f32; LANES], [0f32; LANES]);
    let mut xs = x.chunks_exact(LANES);
    let mut rs = r.chunks_exact(LANES);
    for (a, b) in (&mut xs).zip(&mut rs) {
        for k in 0..LANES {
            xr[k] += a[k] * b[k];
            xx[k] += a[k] * a[k];
        }
    }
    let sum = |l: [f32; LANES]| l.iter().map(|&v| v as f64).sum::<f64>();
    let (mut dot, mut sx) = (sum(xr), sum(xx));
    for (&a, &b) in xs.remainder().iter().zip(rs.remainder()) {
        dot += a as f64 * b as f64;
        sx += a as f64 * a as f64;
    }
    (dot, sx)
}

/// `(x·r, x·x)` of one chunk, block by block.
fn chunk_products(x: &[f32], r: &[f32]) -> (f64, f64) {
    x.chunks(BLOCK)
        .zip(r.chunks(BLOCK))
        .map(|(a, b)| lanes_products(a, b))
        .fold((0.0, 0.0), |t, p| (t.0 + p.0, t.1 + p.1))
}

/// The cosine similarity of each update with `reference`, in `[-1, 1]`.
///
/// NaN for an update (or a reference) that is all zeros or holds a
/// non-finite value: it has no direction to compare.
pub fn cosines(updates: &[Values<'_>], reference: &Values<'_>) -> Result<Vec<f64>> {
    let len = check_updates(updates)?;
    if reference.len() != len {
        return Err(Error::ShapeMismatch {
            index: updates.len(),
            expected: vec![len],
            got: vec![reference.len()],
        });
    }
    // Per chunk: the reference's own sum of squares, then each update's products with it.
    let per_chunk: Vec<(f64, Vec<(f64, f64)>)> = (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(scratch, ref_scratch), c| {
                let range = c * CHUNK..((c + 1) * CHUNK).min(len);
                let r = widen(reference, range.clone(), ref_scratch);
                let rr = chunk_products(r, r).0;
                let products = updates
                    .iter()
                    .map(|u| chunk_products(widen(u, range.clone(), scratch), r))
                    .collect();
                (rr, products)
            },
        )
        .collect();
    let mut rr = 0f64;
    let mut totals = vec![(0f64, 0f64); updates.len()];
    for (chunk_rr, chunk) in per_chunk {
        rr += chunk_rr;
        for (t, p) in totals.iter_mut().zip(chunk) {
            *t = (t.0 + p.0, t.1 + p.1);
        }
    }
    Ok(totals
        .into_iter()
        .map(|(dot, xx)| {
            let norms = (xx * rr).sqrt();
            if norms > 0.0 && norms.is_finite() && dot.is_finite() {
                (dot / norms).clamp(-1.0, 1.0)
            } else {
                f64::NAN
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], r: &[f32]) -> f64 {
        let dot: f64 = x.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum();
        let nx: f64 = x.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt();
        let nr: f64 = r.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt();
        dot / (nx * nr)
    }

    #[test]
    fn matches_the_definition_across_chunks_and_tails() {
        let len = 2 * CHUNK + 1037; // several chunks, a partial block, a lane tail
        let r: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let same = r.clone();
        let opposite: Vec<f32> = r.iter().map(|v| -2.0 * v).collect();
        let other: Vec<f32> = (0..len)
            .map(|i| ((i * 104_729) % 997) as f32 / 498.0 - 1.0)
            .collect();
        let updates = [
            Values::F32(&same),
            Values::F32(&opposite),
            Values::F32(&other),
        ];
        let got = cosines(&updates, &Values::F32(&r)).unwrap();
        assert!((got[0] - 1.0).abs() < 1e-9, "{got:?}");
        assert!((got[1] + 1.0).abs() < 1e-9, "{got:?}");
        assert!((got[2] - naive(&other, &r)).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn no_direction_gives_nan_and_lengths_are_checked() {
        let r = [1.0f32, 2.0, 3.0];
        let zeros = [0.0f32; 3];
        let nan = [1.0, f32::NAN, 0.0];
        let got = cosines(&[Values::F32(&zeros), Values::F32(&nan)], &Values::F32(&r)).unwrap();
        assert!(got.iter().all(|c| c.is_nan()), "{got:?}");
        let short = [1.0f32; 2];
        let err = cosines(&[Values::F32(&r)], &Values::F32(&short)).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    }
}
