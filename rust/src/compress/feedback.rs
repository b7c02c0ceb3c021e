//! Error feedback, shared by every lossy codec.
//!
//! The caller owns a float32 residual as long as the update and keeps it
//! from round to round. An encode with a residual sends
//!
//! ```text
//! x = update + residual;  payload = encode(x);  residual = x − decode(payload)
//! ```
//!
//! so what one round's quantisation (or sparsification) loses is added to
//! the next round's update instead of being dropped. For the dense codecs
//! the subtraction is exact in f32 (x̂ is within a factor of two of x, or
//! zero; Sterbenz), so `decode(payload) + residual == x` bit for bit, and
//! over any number of rounds everything decoded plus the final residual
//! equals the sum of the updates up to the f32 rounding of each `x`.
//!
//! A refused call must leave the residual as it was (the caller retries or
//! falls back to another codec), so [`check`] reads the whole input first
//! and the codecs mutate the residual only after it passed.

use std::cmp::Ordering;

use rayon::prelude::*;

use super::{f32_range, first_error, CHUNK};
use crate::dtype::Values;
use crate::error::{Error, Result};

/// Refuse, before anything is mutated, a residual of the wrong length or a
/// sum `update + residual` that is not finite or reaches `limit` in
/// magnitude (the value at which the codec would produce infinity; `None`:
/// any finite sum). The error names the argument at fault: a non-finite
/// update is `NonFinite { update: 0 }`, a non-finite residual
/// `NonFinite { update: 1 }`.
pub fn check(values: &Values<'_>, residual: &[f32], limit: Option<(f32, &str)>) -> Result<()> {
    if residual.len() != values.len() {
        return Err(Error::ShapeMismatch {
            index: 1,
            expected: vec![values.len()],
            got: vec![residual.len()],
        });
    }
    let bound = limit.map_or(f32::INFINITY, |(l, _)| l);
    let results = residual
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(i, r)| {
            let base = i * CHUNK;
            let mut buf = Vec::new();
            let x = f32_range(values, base..base + r.len(), &mut buf);
            // `<` is false for NaN, so one branch-free fold checks everything.
            let ok = x
                .iter()
                .zip(r)
                .fold(true, |ok, (a, b)| ok & ((a + b).abs() < bound));
            match ok {
                true => Ok(()),
                false => Err(refusal(x, r, base, limit)),
            }
        })
        .collect();
    first_error(results)
}

fn refusal(x: &[f32], r: &[f32], base: usize, limit: Option<(f32, &str)>) -> Error {
    let bound = limit.map_or(f32::INFINITY, |(l, _)| l);
    let p = x
        .iter()
        .zip(r)
        .position(|(a, b)| (a + b).abs().partial_cmp(&bound) != Some(Ordering::Less))
        .unwrap_or(0);
    let position = base + p;
    if !x[p].is_finite() {
        return Error::NonFinite {
            update: 0,
            position,
        };
    }
    if !r[p].is_finite() {
        return Error::NonFinite {
            update: 1,
            position,
        };
    }
    match limit {
        Some((_, name)) => Error::Codec(format!(
            "update + residual = {} at position {position} is outside the {name} range \
             (it would become infinity); scale the update or use another codec",
            x[p] + r[p]
        )),
        None => Error::InvalidArgument(format!(
            "update + residual overflows float32 at position {position}"
        )),
    }
}

/// `r += values[base .. base + r.len()]`: the residual chunk becomes the
/// vector to encode. Only after [`check`] passed for the whole input.
pub fn accumulate(values: &Values<'_>, base: usize, r: &mut [f32], buf: &mut Vec<f32>) {
    let x = f32_range(values, base..base + r.len(), buf);
    for (a, b) in r.iter_mut().zip(x) {
        *a += b;
    }
}

/// The residual split into the codec's parallel tasks of `task_len`
/// elements, or one `None` per task without error feedback, so a codec
/// zips the same iterator either way.
pub fn parts(residual: Option<&mut [f32]>, n: usize, task_len: usize) -> Vec<Option<&mut [f32]>> {
    match residual {
        Some(r) => r.chunks_mut(task_len).map(Some).collect(),
        None => (0..n.div_ceil(task_len)).map(|_| None).collect(),
    }
}
