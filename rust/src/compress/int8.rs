//! Blockwise int8 quantisation: each block of `block_size` elements keeps
//! one f32 scale = max|block| / 127 (rounded up; see [`super::blockwise`])
//! and one i8 per element, q = round(x / scale) in [-127, 127],
//! x̂ = q · scale, so |x − x̂| ≤ scale/2 (plus f32 rounding).
//! The pattern -128 is never written, so the decoder refuses it.

use rayon::prelude::*;

use super::blockwise::{
    self, blocks_per_task, checked_scale, dequantise, keep_error, quantise, scale_for,
};
use super::{all_finite, f32_range, feedback, first_error, first_non_finite};
use crate::dtype::Values;
use crate::error::{Error, Result};

const LEVELS: f32 = 127.0;

pub fn payload_len(n: usize, block_size: u32) -> Option<usize> {
    blockwise::payload_len(n, block_size, n)
}

/// Quantise one block into its scale bytes and levels; returns the scale.
fn quantise_block(x: &[f32], scale_out: &mut [u8], q: &mut [u8]) -> f32 {
    let scale = scale_for(x, LEVELS);
    scale_out.copy_from_slice(&scale.to_le_bytes());
    quantise(x, scale, LEVELS, bytemuck::cast_slice_mut(q));
    scale
}

/// Encode `values` (plus `residual`, checked by the caller and updated in
/// place: see [`feedback`]).
pub fn encode_into(
    values: Values<'_>,
    block_size: usize,
    residual: Option<&mut [f32]>,
    out: &mut [u8],
) -> Result<()> {
    let n = values.len();
    let (scales, qs) = blockwise::write_header(out, n, block_size);
    let per_task = blocks_per_task(block_size, false);
    let parts = feedback::parts(residual, n, per_task * block_size);
    let results = scales
        .par_chunks_mut(per_task * 4)
        .zip(qs.par_chunks_mut(per_task * block_size))
        .zip(parts.into_par_iter())
        .enumerate()
        .map(|(t, ((scales, qs), residual))| {
            let base = t * per_task * block_size;
            let mut buf = Vec::new();
            let len = qs.len();
            let blocks = scales.chunks_exact_mut(4).zip(qs.chunks_mut(block_size));
            match residual {
                Some(r) => {
                    feedback::accumulate(&values, base, r, &mut buf);
                    for (x, (s, q)) in r.chunks_mut(block_size).zip(blocks) {
                        let scale = quantise_block(x, s, q);
                        keep_error(x, bytemuck::cast_slice(q), scale);
                    }
                }
                None => {
                    let x = f32_range(&values, base..base + len, &mut buf);
                    if !all_finite(x) {
                        return Err(Error::NonFinite {
                            update: 0,
                            position: first_non_finite(x, base).unwrap_or(base),
                        });
                    }
                    for (x, (s, q)) in x.chunks(block_size).zip(blocks) {
                        quantise_block(x, s, q);
                    }
                }
            }
            Ok(())
        })
        .collect();
    first_error(results)
}

/// Check the header and length of an int8 payload.
pub fn parse(payload: &[u8]) -> Result<blockwise::Parsed<'_>> {
    blockwise::parse(payload, "int8", |n| n)
}

/// Dequantise into `out`, which holds `p.n` elements.
pub fn decode_into(p: &blockwise::Parsed<'_>, out: &mut [f32]) -> Result<()> {
    let (block_size, scales, qs) = (p.block_size, p.scales, p.body);
    let per_task = blocks_per_task(block_size, false);
    let results = out
        .par_chunks_mut(per_task * block_size)
        .zip(scales.par_chunks(per_task * 4))
        .zip(qs.par_chunks(per_task * block_size))
        .enumerate()
        .map(|(t, ((dst, scales), qs))| {
            for (b, ((dst, s), q)) in dst
                .chunks_mut(block_size)
                .zip(scales.chunks_exact(4))
                .zip(qs.chunks(block_size))
                .enumerate()
            {
                let scale = checked_scale(s, LEVELS, "int8", t * per_task + b)?;
                if !q.iter().fold(true, |ok, &v| ok & (v != 0x80)) {
                    let p = q.iter().position(|&v| v == 0x80).unwrap_or(0);
                    return Err(Error::Codec(format!(
                        "int8 payload holds -128 at position {} (quantised values are in -127..=127)",
                        (t * per_task + b) * block_size + p
                    )));
                }
                for (o, &v) in dst.iter_mut().zip(q) {
                    *o = dequantise(v as i8, scale);
                }
            }
            Ok(())
        })
        .collect();
    first_error(results)
}

/// max|block| / 127 per block, computed apart from the encoder, for the
/// reference check in tests.
#[cfg(test)]
pub fn reference_scales(x: &[f32], block_size: usize) -> Vec<f32> {
    x.chunks(block_size)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0)
        .collect()
}
