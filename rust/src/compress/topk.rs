//! Top-k sparsification with error feedback.
//!
//! The encoder sends the `k` coordinates of largest magnitude, exactly, in
//! increasing index order (ties at the threshold go to the lower indices, so
//! the choice is deterministic). With a residual buffer (error feedback,
//! owned by the caller so it survives across rounds):
//!
//! ```text
//! acc = x + residual;  send the k largest |acc|;  residual = acc − sent
//! ```
//!
//! so the sent coordinates of `residual` become 0 and the others keep what
//! was not sent. Over any number of rounds, everything sent plus the final
//! residual equals the sum of all inputs: nothing is lost, only delayed.
//! The residual is validated before it is touched ([`super::feedback`]), so
//! a refused call leaves it as it was.
//!
//! Selection is a parallel radix select on the bit patterns of |acc| (for
//! non-negative floats, the bit order is the numeric order): a histogram of
//! the top 15 bits finds the bin holding the k-th largest, an exact select
//! inside that bin finds the threshold, and one more pass gathers indices.
//! All three passes are O(n) and parallel.

use rayon::prelude::*;

use super::{
    all_finite, convert_into, feedback, first_error, first_non_finite, read_f32s, write_f32s,
    Reader, CHUNK, MAX_TOPK_NUMEL,
};
use crate::dtype::Values;
use crate::error::{Error, Result};

const HEADER_LEN: usize = 12;
const BIN_SHIFT: u32 = 16;
const BINS: usize = 1 << (31 - BIN_SHIFT);

pub fn payload_len(k: usize) -> usize {
    k.saturating_mul(8).saturating_add(HEADER_LEN)
}

/// |x| as an order-preserving integer key.
#[inline(always)]
fn key(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// Encode the `k` largest-magnitude coordinates of `values` (plus
/// `residual`, which is then updated in place; see the module docs). The
/// residual must have passed [`feedback::check`] with `values`, as
/// [`super::encode_into`] does, so a refused call leaves it untouched.
pub fn encode_into(
    values: Values<'_>,
    k: usize,
    residual: Option<&mut [f32]>,
    out: &mut [u8],
) -> Result<()> {
    let n = values.len();
    match residual {
        Some(residual) => {
            // The caller ran feedback::check, so the sum is finite.
            accumulate(&values, residual);
            let indices = select(residual, k);
            write_payload(out, n, &indices, residual);
            for &i in &indices {
                residual[i as usize] = 0.0;
            }
        }
        None => {
            let converted;
            let acc: &[f32] = match values {
                Values::F32(v) => v,
                _ => {
                    converted = to_f32_vec(&values);
                    &converted
                }
            };
            check_finite(acc)?;
            let indices = select(acc, k);
            write_payload(out, n, &indices, acc);
        }
    }
    Ok(())
}

fn to_f32_vec(values: &Values<'_>) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, dst)| convert_into(values, i * CHUNK, dst));
    out
}

fn check_finite(acc: &[f32]) -> Result<()> {
    let results = acc
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(i, x)| match all_finite(x) {
            true => Ok(()),
            false => Err(Error::NonFinite {
                update: 0,
                position: first_non_finite(x, i * CHUNK).unwrap_or(0),
            }),
        })
        .collect();
    first_error(results)
}

fn accumulate(values: &Values<'_>, residual: &mut [f32]) {
    residual
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, r)| feedback::accumulate(values, i * CHUNK, r, &mut Vec::new()));
}

/// Indices (increasing) of the `k` largest |acc|; `1 <= k <= acc.len()`.
pub fn select(acc: &[f32], k: usize) -> Vec<u32> {
    let hist = acc
        .par_chunks(CHUNK)
        .fold(
            || vec![0u64; BINS],
            |mut h, xs| {
                for &x in xs {
                    h[(key(x) >> BIN_SHIFT) as usize] += 1;
                }
                h
            },
        )
        .reduce(
            || vec![0u64; BINS],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    // Walk down from the largest bin to the one holding the k-th largest key.
    let mut above = 0usize;
    let mut bin = BINS - 1;
    loop {
        let count = hist[bin] as usize;
        if above + count >= k || bin == 0 {
            break;
        }
        above += count;
        bin -= 1;
    }
    let need = k - above;
    let mut in_bin: Vec<u32> = acc
        .par_iter()
        .map(|&x| key(x))
        .filter(|&kk| (kk >> BIN_SHIFT) as usize == bin)
        .collect();
    let (_, &mut threshold, _) = in_bin.select_nth_unstable_by(need - 1, |a, b| b.cmp(a));
    let greater = in_bin.iter().filter(|&&kk| kk > threshold).count();
    let mut ties_left = need - greater;

    // Each chunk lists its indices with key >= threshold and how many of
    // them tie; ties are then kept in index order until k are chosen.
    let parts: Vec<(Vec<u32>, usize)> = acc
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, xs)| {
            let base = c * CHUNK;
            let mut picked = Vec::new();
            let mut ties = 0;
            for (j, &x) in xs.iter().enumerate() {
                let kk = key(x);
                if kk >= threshold {
                    picked.push((base + j) as u32);
                    ties += usize::from(kk == threshold);
                }
            }
            (picked, ties)
        })
        .collect();
    let mut indices = Vec::with_capacity(k);
    for (picked, ties) in parts {
        if ties <= ties_left {
            ties_left -= ties;
            indices.extend_from_slice(&picked);
        } else {
            for i in picked {
                if key(acc[i as usize]) > threshold {
                    indices.push(i);
                } else if ties_left > 0 {
                    ties_left -= 1;
                    indices.push(i);
                }
            }
        }
    }
    debug_assert_eq!(indices.len(), k);
    indices
}

fn write_payload(out: &mut [u8], n: usize, indices: &[u32], acc: &[f32]) {
    let k = indices.len();
    let (header, body) = out.split_at_mut(HEADER_LEN);
    header[..8].copy_from_slice(&(n as u64).to_le_bytes());
    header[8..].copy_from_slice(&(k as u32).to_le_bytes());
    let (idx_bytes, val_bytes) = body.split_at_mut(4 * k);
    idx_bytes
        .par_chunks_mut(4 * CHUNK)
        .zip(val_bytes.par_chunks_mut(4 * CHUNK))
        .zip(indices.par_chunks(CHUNK))
        .for_each(|((ib, vb), idx)| {
            for (o, i) in ib.chunks_exact_mut(4).zip(idx) {
                o.copy_from_slice(&i.to_le_bytes());
            }
            let vals: Vec<f32> = idx.iter().map(|&i| acc[i as usize]).collect();
            write_f32s(&vals, vb);
        });
}

/// A top-k payload whose header and length are valid.
pub struct Parsed<'a> {
    pub n: usize,
    idx_bytes: &'a [u8],
    val_bytes: &'a [u8],
}

/// Check the header and length of a top-k payload.
pub fn parse(payload: &[u8]) -> Result<Parsed<'_>> {
    let mut r = Reader::new(payload, "topk");
    let n = r.u64("element count")?;
    if n == 0 || n > MAX_TOPK_NUMEL {
        return Err(Error::Codec(format!(
            "topk payload declares {n} elements, outside 1..={MAX_TOPK_NUMEL}"
        )));
    }
    let k = r.u32("k")? as u64;
    if k == 0 || k > n {
        return Err(Error::Codec(format!(
            "topk payload has k = {k}, outside 1..={n}"
        )));
    }
    let k = k as usize;
    if payload.len() != payload_len(k) {
        return Err(Error::Codec(format!(
            "topk payload is {} bytes; k = {k} needs {}",
            payload.len(),
            payload_len(k)
        )));
    }
    let idx_bytes = r.take(4 * k, "indices")?;
    let val_bytes = r.take(4 * k, "values")?;
    r.finish()?;
    Ok(Parsed {
        n: n as usize,
        idx_bytes,
        val_bytes,
    })
}

/// Scatter into `out` (`p.n` elements, zeroed here first unless `zeroed`).
pub fn decode_into(p: &Parsed<'_>, out: &mut [f32], zeroed: bool) -> Result<()> {
    let (n, idx_bytes, val_bytes) = (p.n as u64, p.idx_bytes, p.val_bytes);
    let k = idx_bytes.len() / 4;
    let indices: Vec<u32> = idx_bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if !indices.par_windows(2).all(|w| w[0] < w[1]) {
        let p = indices.windows(2).position(|w| w[0] >= w[1]).unwrap_or(0);
        return Err(Error::Codec(format!(
            "topk indices must strictly increase: entry {} is {} after {}",
            p + 1,
            indices[p + 1],
            indices[p]
        )));
    }
    let last = indices[k - 1] as u64;
    if last >= n {
        return Err(Error::Codec(format!(
            "topk index {last} is out of range for {n} elements"
        )));
    }
    let mut values = vec![0f32; k];
    read_f32s(val_bytes, &mut values);
    if !all_finite(&values) {
        let p = first_non_finite(&values, 0).unwrap_or(0);
        return Err(Error::Codec(format!(
            "topk payload holds a non-finite value for index {}",
            indices[p]
        )));
    }
    if !zeroed {
        out.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0));
    }
    for (&i, &v) in indices.iter().zip(&values) {
        out[i as usize] = v;
    }
    Ok(())
}
