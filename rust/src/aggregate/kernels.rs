//! Chunked, vectorisable loops shared by the aggregators, and the rayon
//! drivers that run them over whole updates.
//!
//! Sums of squares are taken in 16 f32 lanes over blocks of 1024 elements
//! (short enough to keep f32 rounding negligible, wide enough to vectorise)
//! and carried across blocks in f64. A non-finite value makes its block's
//! sum non-finite, so the hot loop needs no per-element branch: only such
//! a block is scanned again to find the offending position.

use rayon::prelude::*;

use super::{widen, CHUNK};
use crate::dtype::Values;

const BLOCK: usize = 1024;
const LANES: usize = 16;

/// What one pass over an update found: its sum of squares, or where its
/// first non-finite value sits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Scan {
    pub sum_sq: f64,
    pub first_nonfinite: Option<usize>,
}

impl Scan {
    /// The L2 norm; NaN for an update holding non-finite values.
    pub fn norm(&self) -> f64 {
        if self.first_nonfinite.is_some() {
            f64::NAN
        } else {
            self.sum_sq.sqrt()
        }
    }
}

/// Sum of squares of at most [`BLOCK`] elements, in f32 lanes.
#[inline]
fn lanes_sum_sq(x: &[f32]) -> f64 {
    let mut lanes = [0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for k in 0..LANES {
            lanes[k] += c[k] * c[k];
        }
    }
    let tail: f32 = it.remainder().iter().map(|v| v * v).sum();
    lanes.iter().map(|&l| l as f64).sum::<f64>() + tail as f64
}

/// Sum of squares of one block, or the offset of its first non-finite value.
#[inline]
fn block_sum_sq(x: &[f32]) -> Result<f64, usize> {
    let s = lanes_sum_sq(x);
    if s.is_finite() {
        return Ok(s);
    }
    match x.iter().position(|v| !v.is_finite()) {
        Some(p) => Err(p),
        // Finite values whose squares overflow f32 (|x| > 1.8e19).
        None => Ok(x.iter().map(|&v| v as f64 * v as f64).sum()),
    }
}

/// `acc += k * x`, elementwise.
#[inline]
pub(crate) fn axpy(acc: &mut [f32], x: &[f32], k: f32) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += k * v;
    }
}

/// `acc = 0 + k * x`: the same value [`axpy`] gives on a zeroed `acc`
/// (`0 + -0` is `+0`), without reading `acc`. A fresh output buffer is then
/// first touched by a write, which costs one page fault per page instead
/// of two (a read maps the shared zero page, the write then copies it).
#[inline]
fn assign_scaled(acc: &mut [f32], x: &[f32], k: f32) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = 0.0 + k * v;
    }
}

/// Fold `x` into a chunk of a fresh sum: the first term assigns.
#[inline]
fn fold_term(acc: &mut [f32], x: &[f32], k: f32, first: bool) {
    if first {
        assign_scaled(acc, x, k);
    } else {
        axpy(acc, x, k);
    }
}

/// Sum of squares of a chunk, or the offset of its first non-finite value.
fn chunk_sum_sq(x: &[f32]) -> Result<f64, usize> {
    let mut total = 0f64;
    for (b, blk) in x.chunks(BLOCK).enumerate() {
        total += block_sum_sq(blk).map_err(|p| b * BLOCK + p)?;
    }
    Ok(total)
}

/// `acc += k * x` and the sum of squares of `x`, block by block so each
/// block is read from memory once. Stops at a non-finite block (the caller
/// then discards `acc`).
fn chunk_axpy_sum_sq(acc: &mut [f32], x: &[f32], k: f32, first: bool) -> Result<f64, usize> {
    let mut total = 0f64;
    for (b, (a_blk, x_blk)) in acc.chunks_mut(BLOCK).zip(x.chunks(BLOCK)).enumerate() {
        fold_term(a_blk, x_blk, k, first);
        total += block_sum_sq(x_blk).map_err(|p| b * BLOCK + p)?;
    }
    Ok(total)
}

/// Fold per-chunk results (in chunk order, so the f64 sums are the same on
/// every run and in every path) into one [`Scan`] per update.
fn merge(per_chunk: Vec<Vec<Result<f64, usize>>>, n_updates: usize) -> Vec<Scan> {
    let mut scans = vec![
        Scan {
            sum_sq: 0.0,
            first_nonfinite: None,
        };
        n_updates
    ];
    for (c, chunk) in per_chunk.into_iter().enumerate() {
        for (scan, r) in scans.iter_mut().zip(chunk) {
            match r {
                Ok(s) => scan.sum_sq += s,
                Err(p) => {
                    if scan.first_nonfinite.is_none() {
                        scan.first_nonfinite = Some(c * CHUNK + p);
                    }
                }
            }
        }
    }
    scans
}

fn chunk_range(c: usize, len: usize) -> std::ops::Range<usize> {
    c * CHUNK..((c + 1) * CHUNK).min(len)
}

/// Sum of squares and non-finite scan of each update, read-only.
pub(crate) fn scan(updates: &[Values<'_>], len: usize) -> Vec<Scan> {
    let per_chunk = (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(Vec::new, |scratch, c| {
            let range = chunk_range(c, len);
            updates
                .iter()
                .map(|u| chunk_sum_sq(widen(u, range.clone(), scratch)))
                .collect()
        })
        .collect();
    merge(per_chunk, updates.len())
}

/// One pass: `Σ k_i · x_i` and the scan of every update. Where an update
/// holds a non-finite value the sum is meaningless and must be discarded.
pub(crate) fn fused_weighted_sum(
    updates: &[Values<'_>],
    coeffs: &[f32],
    len: usize,
) -> (Vec<f32>, Vec<Scan>) {
    let mut acc = vec![0f32; len];
    let per_chunk = acc
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map_init(Vec::new, |scratch, (c, out)| {
            let range = chunk_range(c, len);
            updates
                .iter()
                .zip(coeffs)
                .enumerate()
                .map(|(i, (u, &k))| {
                    chunk_axpy_sum_sq(out, widen(u, range.clone(), scratch), k, i == 0)
                })
                .collect()
        })
        .collect();
    (acc, merge(per_chunk, updates.len()))
}

/// `Σ k_i · x_i` over `terms`, in order, into a fresh buffer.
pub(crate) fn weighted_sum(terms: &[(Values<'_>, f32)], len: usize) -> Vec<f32> {
    let mut acc = vec![0f32; len];
    weighted_sum_impl(&mut acc, terms, true);
    acc
}

/// `acc += Σ k_i · x_i` over `terms`, in order.
pub(crate) fn weighted_sum_into(acc: &mut [f32], terms: &[(Values<'_>, f32)]) {
    weighted_sum_impl(acc, terms, false);
}

fn weighted_sum_impl(acc: &mut [f32], terms: &[(Values<'_>, f32)], fresh: bool) {
    let len = acc.len();
    acc.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each_init(Vec::new, |scratch, (c, out)| {
            let range = chunk_range(c, len);
            for (i, (u, k)) in terms.iter().enumerate() {
                fold_term(out, widen(u, range.clone(), scratch), *k, fresh && i == 0);
            }
        });
}

#[inline]
fn divide(a: f32, total: f64) -> f32 {
    (a as f64 / total) as f32
}

/// `acc[j] /= total`, rounded once from f64. Returns whether every
/// result is finite (a sum can overflow f32 even when the mean would not).
#[must_use]
pub(crate) fn divide_in_place(acc: &mut [f32], total: f64) -> bool {
    acc.par_chunks_mut(CHUNK)
        .map(|a| {
            let mut finite = true;
            for a in a.iter_mut() {
                *a = divide(*a, total);
                finite &= a.is_finite();
            }
            finite
        })
        .reduce(|| true, |x, y| x && y)
}

/// `out[j] = acc[j] / total`, as [`divide_in_place`].
#[must_use]
pub(crate) fn divide_into(out: &mut [f32], acc: &[f32], total: f64) -> bool {
    out.par_chunks_mut(CHUNK)
        .zip(acc.par_chunks(CHUNK))
        .map(|(o, a)| {
            let mut finite = true;
            for (o, &a) in o.iter_mut().zip(a) {
                *o = divide(a, total);
                finite &= o.is_finite();
            }
            finite
        })
        .reduce(|| true, |x, y| x && y)
}

/// Squared L2 distance of two equally long slices, f32 lanes per block.
fn dist_sq(a: &[f32], b: &[f32]) -> f64 {
    let mut total = 0f64;
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let mut lanes = [0f32; LANES];
        let mut ia = ab.chunks_exact(LANES);
        let mut ib = bb.chunks_exact(LANES);
        for (ca, cb) in (&mut ia).zip(&mut ib) {
            for k in 0..LANES {
                let d = ca[k] - cb[k];
                lanes[k] += d * d;
            }
        }
        let tail: f32 = ia
            .remainder()
            .iter()
            .zip(ib.remainder())
            .map(|(x, y)| (x - y) * (x - y))
            .sum();
        total += lanes.iter().map(|&l| l as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// Squared distances between every pair of (finite) updates, as a full
/// symmetric `n × n` matrix in row-major order.
pub(crate) fn pairwise_dist_sq(updates: &[Values<'_>], len: usize) -> Vec<f64> {
    let n = updates.len();
    let per_chunk: Vec<Vec<f64>> = (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(
            || vec![Vec::new(); n],
            |scratch, c| {
                let range = chunk_range(c, len);
                let rows: Vec<&[f32]> = updates
                    .iter()
                    .zip(scratch.iter_mut())
                    .map(|(u, s)| widen(u, range.clone(), s))
                    .collect();
                let mut part = Vec::with_capacity(n * (n - 1) / 2);
                for i in 0..n {
                    for j in i + 1..n {
                        part.push(dist_sq(rows[i], rows[j]));
                    }
                }
                part
            },
        )
        .collect();
    let mut d = vec![0f64; n * n];
    for part in per_chunk {
        let mut p = part.into_iter();
        for i in 0..n {
            for j in i + 1..n {
                let v = p.next().unwrap_or(0.0);
                d[i * n + j] += v;
                d[j * n + i] += v;
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(v: &[f32]) -> Values<'_> {
        Values::F32(v)
    }

    #[test]
    fn scan_finds_norms_and_first_nonfinite_across_chunks() {
        let len = 3 * CHUNK + 17;
        let a: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut b = a.clone();
        b[2 * CHUNK + 5] = f32::NAN;
        b[3 * CHUNK + 1] = f32::INFINITY;
        let scans = scan(&[values(&a), values(&b)], len);
        let expect: f64 = a.iter().map(|&v| (v as f64).powi(2)).sum();
        assert_eq!(scans[0].first_nonfinite, None);
        assert!((scans[0].sum_sq - expect).abs() <= 1e-9 * expect);
        assert_eq!(scans[1].first_nonfinite, Some(2 * CHUNK + 5));
        assert!(scans[1].norm().is_nan());
    }

    #[test]
    fn huge_finite_values_are_not_flagged() {
        let x = vec![1e20f32, -2e20, 3.0];
        let s = scan(&[values(&x)], 3);
        assert_eq!(s[0].first_nonfinite, None);
        assert!((s[0].norm() - (5e40f64 + 9.0).sqrt()).abs() / s[0].norm() < 1e-6);
    }

    #[test]
    fn fused_pass_matches_scan_then_sum_bit_for_bit() {
        let len = CHUNK + 1000;
        let a: Vec<f32> = (0..len).map(|i| ((i * 31) % 101) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..len).map(|i| ((i * 17) % 89) as f32 * -0.02).collect();
        let ups = [values(&a), values(&b)];
        let (acc, scans) = fused_weighted_sum(&ups, &[0.3, 1.7], len);
        assert_eq!(scans, scan(&ups, len));
        let terms = [(ups[0], 0.3), (ups[1], 1.7)];
        assert_eq!(acc, weighted_sum(&terms, len));
        let mut acc2 = vec![0f32; len];
        weighted_sum_into(&mut acc2, &terms);
        assert_eq!(acc, acc2);
    }

    #[test]
    fn pairwise_distances_are_symmetric_and_exact_on_small_input() {
        let a = [0f32, 0.0, 0.0];
        let b = [1f32, 2.0, 2.0];
        let c = [3f32, 0.0, 4.0];
        let d = pairwise_dist_sq(&[values(&a), values(&b), values(&c)], 3);
        assert_eq!(d, vec![0.0, 9.0, 25.0, 9.0, 0.0, 12.0, 25.0, 12.0, 0.0]);
    }
}
