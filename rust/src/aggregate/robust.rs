//! Aggregators that tolerate a minority of arbitrary (Byzantine) updates:
//! coordinate-wise median, coordinate-wise trimmed mean, Krum and
//! multi-Krum. None of them takes weights: a weight would let one node
//! outvote the others, which is what these aggregators exist to prevent.

use rayon::prelude::*;

use super::kernels::{divide_in_place, pairwise_dist_sq, scan, weighted_sum};
use super::mean::nonfinite_updates;
use super::network::{batcher_pairs, sort_columns};
use super::{check_updates, widen_into, CHUNK};
use crate::dtype::Values;
use crate::error::{Error, Result};

/// Values of all rows held at once while a block is sorted (~128 KiB, so
/// the rows stay in L2 whatever the number of updates).
const ROWS_BUDGET: usize = 32 * 1024;

/// The result of [`coordinate_median`] and [`trimmed_mean`].
#[derive(Clone, Debug, PartialEq)]
pub struct RobustOutcome {
    pub result: Vec<f32>,
    /// Indices of updates left out for holding non-finite values.
    pub skipped: Vec<usize>,
}

/// The result of [`krum`].
#[derive(Clone, Debug, PartialEq)]
pub struct KrumOutcome {
    /// The selected update, or the mean of the `m` selected ones.
    pub result: Vec<f32>,
    /// Indices of the selected updates, best score first.
    pub selected: Vec<usize>,
    /// Each update's Krum score (NaN for skipped ones).
    pub scores: Vec<f64>,
    pub skipped: Vec<usize>,
}

/// The finite updates of a list, with their original indices.
struct Finite<'a> {
    len: usize,
    kept: Vec<usize>,
    values: Vec<Values<'a>>,
    skipped: Vec<usize>,
}

/// Check `updates` and set aside the ones holding non-finite values (or
/// fail on the first of them unless skipping).
fn finite_updates<'a>(updates: &[Values<'a>], skip_nonfinite: bool) -> Result<Finite<'a>> {
    let len = check_updates(updates)?;
    let skipped = nonfinite_updates(&scan(updates, len), skip_nonfinite)?;
    let kept: Vec<usize> = (0..updates.len())
        .filter(|i| !skipped.contains(i))
        .collect();
    let values = kept.iter().map(|&i| updates[i]).collect();
    Ok(Finite {
        len,
        kept,
        values,
        skipped,
    })
}

#[derive(Clone, Copy)]
enum Reduce {
    Median,
    /// Drop this many values at each end, average the rest.
    Trimmed(usize),
}

impl Reduce {
    /// Write the statistic of each column of the sorted `rows` into `out`.
    fn apply(self, rows: &[f32], n: usize, out: &mut [f32]) {
        let w = out.len();
        let row = |r: usize| &rows[r * w..(r + 1) * w];
        match self {
            Reduce::Median if n % 2 == 1 => out.copy_from_slice(row(n / 2)),
            Reduce::Median => {
                for ((o, &lo), &hi) in out.iter_mut().zip(row(n / 2 - 1)).zip(row(n / 2)) {
                    *o = ((lo as f64 + hi as f64) * 0.5) as f32;
                }
            }
            Reduce::Trimmed(k) => {
                out.copy_from_slice(row(k));
                for r in k + 1..n - k {
                    for (o, &v) in out.iter_mut().zip(row(r)) {
                        *o += v;
                    }
                }
                let count = (n - 2 * k) as f32;
                for o in out.iter_mut() {
                    *o /= count;
                }
            }
        }
    }
}

/// Sort every coordinate's values across `updates` (all finite) and reduce.
fn order_statistic(updates: &[Values<'_>], len: usize, reduce: Reduce) -> Vec<f32> {
    let n = updates.len();
    let pairs = batcher_pairs(n);
    let width = (ROWS_BUDGET / n).clamp(16, 1024);
    let mut out = vec![0f32; len];
    out.par_chunks_mut(CHUNK).enumerate().for_each_init(
        || vec![0f32; n * width],
        |rows, (c, out_chunk)| {
            for (b, o) in out_chunk.chunks_mut(width).enumerate() {
                let start = c * CHUNK + b * width;
                let w = o.len();
                let rows = &mut rows[..n * w];
                for (u, dst) in updates.iter().zip(rows.chunks_exact_mut(w)) {
                    widen_into(u, start..start + w, dst);
                }
                sort_columns(rows, w, &pairs);
                reduce.apply(rows, n, o);
            }
        },
    );
    out
}

/// Coordinate-wise median (the mean of the two middle values for an even
/// number of updates, as `numpy.median`).
pub fn coordinate_median(updates: &[Values<'_>], skip_nonfinite: bool) -> Result<RobustOutcome> {
    let fin = finite_updates(updates, skip_nonfinite)?;
    Ok(RobustOutcome {
        result: order_statistic(&fin.values, fin.len, Reduce::Median),
        skipped: fin.skipped,
    })
}

/// Coordinate-wise trimmed mean: at every coordinate drop the
/// `floor(trim · n)` largest and smallest values and average the rest
/// (as `scipy.stats.trim_mean`). `trim` is in `[0, 0.5)`.
pub fn trimmed_mean(
    updates: &[Values<'_>],
    trim: f64,
    skip_nonfinite: bool,
) -> Result<RobustOutcome> {
    if !(0.0..0.5).contains(&trim) {
        return Err(Error::InvalidArgument(format!(
            "trim must be in [0, 0.5) (the fraction cut from each end), got {trim}"
        )));
    }
    let fin = finite_updates(updates, skip_nonfinite)?;
    let k = (trim * fin.values.len() as f64).floor() as usize;
    Ok(RobustOutcome {
        result: order_statistic(&fin.values, fin.len, Reduce::Trimmed(k)),
        skipped: fin.skipped,
    })
}

/// Krum (Blanchard et al., 2017): score each update by the summed squared
/// distances to its `n - f - 2` nearest neighbours and select the lowest
/// score; with `m > 1` (multi-Krum) average the `m` best. Tolerates `f`
/// Byzantine updates when `n >= 2f + 3`.
pub fn krum(
    updates: &[Values<'_>],
    f: usize,
    m: usize,
    skip_nonfinite: bool,
) -> Result<KrumOutcome> {
    let Finite {
        len,
        kept,
        values,
        skipped,
    } = finite_updates(updates, skip_nonfinite)?;
    let n = values.len();
    let needed = f.saturating_mul(2).saturating_add(3);
    if n < needed {
        return Err(Error::InvalidArgument(format!(
            "krum with f={f} needs at least 2f+3 = {needed} finite updates, got {n}"
        )));
    }
    if m == 0 || m > n - f {
        return Err(Error::InvalidArgument(format!(
            "m must be between 1 and n - f = {}, got {m}",
            n - f
        )));
    }

    let d = pairwise_dist_sq(&values, len);
    let neighbours = n - f - 2;
    let local_scores: Vec<f64> = (0..n)
        .map(|i| {
            let mut row: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| d[i * n + j]).collect();
            row.sort_by(f64::total_cmp);
            row[..neighbours].iter().sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| local_scores[a].total_cmp(&local_scores[b]));
    let best = &order[..m];

    let terms: Vec<(Values<'_>, f32)> = best.iter().map(|&i| (values[i], 1.0)).collect();
    let mut result = weighted_sum(&terms, len);
    if m > 1 && !divide_in_place(&mut result, m as f64) {
        return Err(Error::InvalidArgument(
            "the mean of the selected updates overflows float32".into(),
        ));
    }

    let mut scores = vec![f64::NAN; updates.len()];
    for (i, &orig) in kept.iter().enumerate() {
        scores[orig] = local_scores[i];
    }
    Ok(KrumOutcome {
        result,
        selected: best.iter().map(|&i| kept[i]).collect(),
        scores,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn reference(ups: &[Vec<f32>], j: usize, trim: Option<usize>) -> f32 {
        let mut col: Vec<f32> = ups.iter().map(|u| u[j]).collect();
        col.sort_by(f32::total_cmp);
        let n = col.len();
        match trim {
            None if n % 2 == 1 => col[n / 2],
            None => ((col[n / 2 - 1] as f64 + col[n / 2] as f64) / 2.0) as f32,
            Some(k) => {
                col[k..n - k].iter().map(|&v| v as f64).sum::<f64>() as f32 / (n - 2 * k) as f32
            }
        }
    }

    #[test]
    fn median_and_trimmed_mean_match_a_sort_per_coordinate() {
        let len = CHUNK + 77;
        for n in [1usize, 2, 5, 10] {
            let ups: Vec<Vec<f32>> = (0..n).map(|s| lcg(s as u64, len)).collect();
            let vals: Vec<Values> = ups.iter().map(|u| Values::F32(u)).collect();
            let med = coordinate_median(&vals, false).unwrap().result;
            let tm = trimmed_mean(&vals, 0.2, false).unwrap().result;
            let k = (0.2 * n as f64).floor() as usize;
            for j in (0..len).step_by(97) {
                assert_eq!(med[j], reference(&ups, j, None));
                assert!((tm[j] - reference(&ups, j, Some(k))).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn median_reads_f16() {
        let ups: Vec<Vec<f16>> = (0..3)
            .map(|s| lcg(s, 100).into_iter().map(f16::from_f32).collect())
            .collect();
        let vals: Vec<Values> = ups.iter().map(|u| Values::F16(u)).collect();
        let med = coordinate_median(&vals, false).unwrap().result;
        let wide: Vec<Vec<f32>> = ups
            .iter()
            .map(|u| u.iter().map(|v| v.to_f32()).collect())
            .collect();
        for (j, &m) in med.iter().enumerate() {
            assert_eq!(m, reference(&wide, j, None));
        }
    }

    #[test]
    fn krum_selects_an_honest_update_among_outliers() {
        let len = 5000;
        let centre = lcg(99, len);
        let mut ups: Vec<Vec<f32>> = (0..7)
            .map(|s| {
                centre
                    .iter()
                    .zip(lcg(s, len))
                    .map(|(c, e)| c + 0.01 * e)
                    .collect()
            })
            .collect();
        ups.push(vec![100.0; len]);
        ups.push(vec![-100.0; len]);
        let vals: Vec<Values> = ups.iter().map(|u| Values::F32(u)).collect();
        let out = krum(&vals, 2, 1, false).unwrap();
        assert!(out.selected[0] < 7);
        assert_eq!(out.result, ups[out.selected[0]]);
        let multi = krum(&vals, 2, 3, false).unwrap();
        assert!(multi.selected.iter().all(|&i| i < 7));
        assert!(matches!(
            krum(&vals, 4, 1, false),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            krum(&vals, 2, 8, false),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn trim_out_of_range_is_rejected() {
        let a = [1f32];
        for t in [-0.1, 0.5, f64::NAN] {
            assert!(matches!(
                trimmed_mean(&[Values::F32(&a)], t, false),
                Err(Error::InvalidArgument(_))
            ));
        }
    }
}
