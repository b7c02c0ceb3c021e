//! Blockwise 4-bit quantisation: each block of `block_size` elements keeps
//! one f32 scale = max|block| / 7 (rounded up; see [`super::blockwise`])
//! and one 4-bit level per element, q = round(x / scale) in −7..=7
//! (nearest, ties to even), x̂ = q · scale.
//!
//! # Bound
//!
//! |x − x̂| ≤ scale/2 + 2⁻¹⁹·scale for every element (the second term is
//! f32 rounding: see [`super::blockwise`]). The block's largest element
//! maps to ±7 (the scale is rounded up so that nothing beyond it needs
//! clamping, except within ulps of f32::MAX); a zero block has scale 0 and
//! decodes to exact zeros.
//!
//! # Payload (little-endian)
//!
//! ```text
//! block_size u32 · n u64 · ⌈n/block_size⌉ × f32 scale · ⌈n/2⌉ bytes of levels
//! ```
//!
//! 12 + 4⌈n/b⌉ + ⌈n/2⌉ bytes. Byte i holds element 2i in its low nibble and
//! element 2i+1 in its high nibble, each a 4-bit two's-complement level;
//! the packing runs across block boundaries, so any block size packs
//! densely. The pattern 0b1000 (−8) is never written, nor a non-zero high
//! nibble after the last element of an odd `n`: the decoder refuses both,
//! so a payload has one reading.

use rayon::prelude::*;

use super::blockwise::{
    self, blocks_per_task, checked_scale, dequantise, keep_error, quantise, scale_for,
};
use super::{all_finite, f32_range, feedback, first_error, first_non_finite};
use crate::dtype::Values;
use crate::error::{Error, Result};

const LEVELS: f32 = 7.0;
/// The level no encoder writes.
const FORBIDDEN: i8 = -8;

pub fn payload_len(n: usize, block_size: u32) -> Option<usize> {
    blockwise::payload_len(n, block_size, n.div_ceil(2))
}

/// Two levels a byte, low nibble first; an odd last level leaves the high
/// nibble 0.
fn pack(levels: &[i8], bytes: &mut [u8]) {
    let mut pairs = levels.chunks_exact(2);
    for (b, p) in bytes.iter_mut().zip(&mut pairs) {
        *b = (p[0] as u8 & 0x0f) | ((p[1] as u8) << 4);
    }
    if let ([last], Some(b)) = (pairs.remainder(), bytes.last_mut()) {
        *b = *last as u8 & 0x0f;
    }
}

/// Sign-extend both nibbles of every byte (shifts on i8 lanes vectorise).
fn unpack(bytes: &[u8], levels: &mut [i8]) {
    for (p, &b) in levels.chunks_exact_mut(2).zip(bytes) {
        p[0] = ((b << 4) as i8) >> 4;
        p[1] = (b as i8) >> 4;
    }
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
    let (scales, packed) = blockwise::write_header(out, n, block_size);
    // An even number of elements per task, so no two tasks share a byte.
    let per_task = blocks_per_task(block_size, true);
    let task_len = per_task * block_size;
    let parts = feedback::parts(residual, n, task_len);
    let results = scales
        .par_chunks_mut(per_task * 4)
        .zip(packed.par_chunks_mut(task_len / 2))
        .zip(parts.into_par_iter())
        .enumerate()
        .map(|(t, ((scales, bytes), residual))| {
            let base = t * task_len;
            let mut levels = vec![0i8; task_len.min(n - base)];
            let mut buf = Vec::new();
            let blocks = scales
                .chunks_exact_mut(4)
                .zip(levels.chunks_mut(block_size));
            match residual {
                Some(r) => {
                    feedback::accumulate(&values, base, r, &mut buf);
                    for (x, (s, q)) in r.chunks_mut(block_size).zip(blocks) {
                        let scale = quantise_block(x, s, q);
                        keep_error(x, q, scale);
                    }
                }
                None => {
                    let x = f32_range(&values, base..base + task_len.min(n - base), &mut buf);
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
            pack(&levels, bytes);
            Ok(())
        })
        .collect();
    first_error(results)
}

fn quantise_block(x: &[f32], scale_out: &mut [u8], q: &mut [i8]) -> f32 {
    let scale = scale_for(x, LEVELS);
    scale_out.copy_from_slice(&scale.to_le_bytes());
    quantise(x, scale, LEVELS, q);
    scale
}

/// Check the header and length of an int4 payload.
pub fn parse(payload: &[u8]) -> Result<blockwise::Parsed<'_>> {
    blockwise::parse(payload, "int4", |n| n.div_ceil(2))
}

/// Dequantise into `out`, which holds `p.n` elements.
pub fn decode_into(p: &blockwise::Parsed<'_>, out: &mut [f32]) -> Result<()> {
    let (block_size, scales, packed) = (p.block_size, p.scales, p.body);
    let per_task = blocks_per_task(block_size, true);
    let task_len = per_task * block_size;
    let results = out
        .par_chunks_mut(task_len)
        .zip(scales.par_chunks(per_task * 4))
        .zip(packed.par_chunks(task_len / 2))
        .enumerate()
        .map(|(t, ((dst, scales), bytes))| {
            let base = t * task_len;
            let mut levels = vec![0i8; 2 * bytes.len()];
            unpack(bytes, &mut levels);
            check_levels(&levels, dst.len(), base)?;
            for (b, ((dst, s), q)) in dst
                .chunks_mut(block_size)
                .zip(scales.chunks_exact(4))
                .zip(levels.chunks(block_size))
                .enumerate()
            {
                let scale = checked_scale(s, LEVELS, "int4", t * per_task + b)?;
                for (o, &v) in dst.iter_mut().zip(q) {
                    *o = dequantise(v, scale);
                }
            }
            Ok(())
        })
        .collect();
    first_error(results)
}

/// Refuse what no encoder writes: the level −8 among the task's `len`
/// elements, or a non-zero nibble after them (an odd `n`'s padding).
fn check_levels(levels: &[i8], len: usize, base: usize) -> Result<()> {
    let (used, padding) = levels.split_at(len);
    if !used.iter().fold(true, |ok, &v| ok & (v != FORBIDDEN)) {
        let p = used.iter().position(|&v| v == FORBIDDEN).unwrap_or(0);
        return Err(Error::Codec(format!(
            "int4 payload holds -8 at position {} (quantised values are in -7..=7)",
            base + p
        )));
    }
    if padding.iter().any(|&v| v != 0) {
        return Err(Error::Codec(format!(
            "int4 payload's padding nibble after element {} is not zero",
            base + len - 1
        )));
    }
    Ok(())
}

/// The stored scale of every block, read straight from a payload, for the
/// bound checks in tests.
#[cfg(test)]
pub fn scales_of(payload: &[u8]) -> Vec<f32> {
    let p = parse(payload).unwrap();
    p.scales
        .chunks_exact(4)
        .map(|s| f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .collect()
}
