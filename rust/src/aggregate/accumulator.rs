//! Folding updates into a running weighted sum as they arrive, so the
//! coordinator never holds a round's updates all at once.

use super::kernels::{divide_into, scan, weighted_sum_into};
use super::{check_clip_norm, check_weight, coefficient, overflow_error};
use crate::dtype::Values;
use crate::error::{Error, Result};

/// A running weighted sum of updates of one shape and dtype.
///
/// [`add`](Self::add) is atomic: an update it rejects leaves the
/// accumulator exactly as it was. [`finalize`](Self::finalize) returns what
/// [`super::weighted_mean`] returns for the same updates, weights and
/// clipping, bit for bit.
#[derive(Clone, Debug)]
pub struct Accumulator {
    sum: Vec<f32>,
    shape: Vec<usize>,
    dtype: Option<&'static str>,
    count: usize,
    total_weight: f64,
}

impl Accumulator {
    /// An empty accumulator for updates of `shape`.
    pub fn new(shape: Vec<usize>) -> Result<Self> {
        let len = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| Error::InvalidArgument(format!("shape {shape:?} is too large")))?;
        if len == 0 {
            return Err(Error::Empty(format!(
                "an accumulator for shape {shape:?} would hold no elements"
            )));
        }
        // Refuse a shape the machine cannot hold rather than abort the process.
        let mut sum = Vec::new();
        sum.try_reserve_exact(len).map_err(|_| {
            Error::InvalidArgument(format!("cannot allocate an accumulator of shape {shape:?}"))
        })?;
        sum.resize(len, 0.0);
        Ok(Accumulator {
            sum,
            shape,
            dtype: None,
            count: 0,
            total_weight: 0.0,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The dtype fixed by the first accepted update, if any.
    pub fn dtype(&self) -> Option<&'static str> {
        self.dtype
    }

    /// Updates accepted so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Sum of the weights of the updates accepted so far.
    pub fn total_weight(&self) -> f64 {
        self.total_weight
    }

    /// Fold in `update` (of `shape`) with `weight`, clipped to `clip_norm`.
    /// Returns its pre-clip L2 norm.
    ///
    /// The update is scanned (norm and non-finite check) before anything is
    /// folded in: a rejected update must leave the sum untouched, and with
    /// clipping the norm is needed before the update can be scaled anyway.
    /// An error names the update by the index it would have taken.
    pub fn add(
        &mut self,
        update: Values<'_>,
        shape: &[usize],
        weight: f64,
        clip_norm: Option<f64>,
    ) -> Result<f64> {
        let index = self.count;
        if shape != self.shape.as_slice() {
            return Err(Error::ShapeMismatch {
                index,
                expected: self.shape.clone(),
                got: shape.to_vec(),
            });
        }
        if update.len() != self.sum.len() {
            return Err(Error::ShapeMismatch {
                index,
                expected: vec![self.sum.len()],
                got: vec![update.len()],
            });
        }
        if let Some(d) = self.dtype {
            if d != update.dtype_name() {
                return Err(Error::DtypeMismatch {
                    index,
                    expected: d.into(),
                    got: update.dtype_name().into(),
                });
            }
        }
        check_weight(index, weight)?;
        check_clip_norm(clip_norm)?;

        let s = scan(&[update], self.sum.len())[0];
        if let Some(position) = s.first_nonfinite {
            return Err(Error::NonFinite {
                update: index,
                position,
            });
        }
        let norm = s.norm();
        let k = coefficient(index, weight, norm, clip_norm)?;

        weighted_sum_into(&mut self.sum, &[(update, k)]);
        self.dtype = Some(update.dtype_name());
        self.count += 1;
        self.total_weight += weight;
        Ok(norm)
    }

    /// The weighted mean of the updates accepted so far (one pass; the
    /// accumulator is left as it is and can take more updates).
    pub fn finalize(&self) -> Result<Vec<f32>> {
        if self.count == 0 {
            return Err(Error::Empty("no updates have been added".into()));
        }
        if self.total_weight <= 0.0 {
            return Err(Error::Weights("all weights are zero".into()));
        }
        let mut out = vec![0f32; self.sum.len()];
        if !divide_into(&mut out, &self.sum, self.total_weight) {
            return Err(overflow_error());
        }
        Ok(out)
    }

    /// Forget every update, keeping the shape.
    pub fn reset(&mut self) {
        self.sum.fill(0.0);
        self.dtype = None;
        self.count = 0;
        self.total_weight = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{weighted_mean, MeanOptions};
    use super::*;
    use half::bf16;

    fn update(seed: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 - 500.0) * 1e-3)
            .collect()
    }

    #[test]
    fn incremental_equals_batch_bit_for_bit() {
        let len = 3 * super::super::CHUNK + 123;
        let ups: Vec<Vec<f32>> = (0..5).map(|s| update(s, len)).collect();
        let weights = [1.0, 0.5, 2.0, 0.0, 3.25];
        for clip in [None, Some(5.0)] {
            let vals: Vec<Values> = ups.iter().map(|u| Values::F32(u)).collect();
            let batch = weighted_mean(
                &vals,
                Some(&weights),
                MeanOptions {
                    clip_norm: clip,
                    skip_nonfinite: false,
                },
            )
            .unwrap();
            let mut acc = Accumulator::new(vec![len]).unwrap();
            for (i, v) in vals.iter().enumerate() {
                let norm = acc.add(*v, &[len], weights[i], clip).unwrap();
                assert_eq!(norm, batch.norms[i]);
            }
            assert_eq!(acc.finalize().unwrap(), batch.mean);
        }
    }

    #[test]
    fn rejected_update_leaves_state_untouched() {
        let a = vec![1.0f32, 2.0, 3.0];
        let mut acc = Accumulator::new(vec![3]).unwrap();
        acc.add(Values::F32(&a), &[3], 2.0, None).unwrap();
        let before = acc.clone();
        let bad = vec![1.0f32, f32::NAN, 3.0];
        let err = acc.add(Values::F32(&bad), &[3], 1.0, None).unwrap_err();
        assert_eq!(
            err,
            Error::NonFinite {
                update: 1,
                position: 1
            }
        );
        let b16 = vec![bf16::ONE; 3];
        assert!(matches!(
            acc.add(Values::Bf16(&b16), &[3], 1.0, None),
            Err(Error::DtypeMismatch { .. })
        ));
        assert!(matches!(
            acc.add(Values::F32(&a), &[1, 3], 1.0, None),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            acc.add(Values::F32(&a), &[3], -1.0, None),
            Err(Error::Weights(_))
        ));
        assert_eq!(acc.sum, before.sum);
        assert_eq!(acc.count, before.count);
        assert_eq!(acc.total_weight, before.total_weight);
        assert_eq!(acc.finalize().unwrap(), a);
    }

    #[test]
    fn finalize_needs_a_positive_total_weight() {
        let mut acc = Accumulator::new(vec![2]).unwrap();
        assert!(matches!(acc.finalize(), Err(Error::Empty(_))));
        acc.add(Values::F32(&[1.0, 1.0]), &[2], 0.0, None).unwrap();
        assert!(matches!(acc.finalize(), Err(Error::Weights(_))));
        assert!(matches!(Accumulator::new(vec![0, 4]), Err(Error::Empty(_))));
    }
}
