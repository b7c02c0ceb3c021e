//! Blockwise int8 quantisation: each block of `block_size` elements keeps
//! one f32 scale = max|block| / 127 and one i8 per element,
//! q = round(x / scale) in [-127, 127], x̂ = q · scale, so |x − x̂| ≤ scale/2.
//! The pattern -128 is never written, so the decoder refuses it.

use rayon::prelude::*;

use super::{all_finite, f32_range, first_error, first_non_finite, Reader, CHUNK, MAX_BLOCK_SIZE};
use crate::dtype::Values;
use crate::error::{Error, Result};

const HEADER_LEN: usize = 12;
/// Adding and subtracting 1.5·2²³ rounds an |y| < 2²² to the nearest
/// integer (ties to even) with two plain adds, which vectorise on any x86_64
/// (`f32::round` needs SSE4.1 to avoid a libm call per element).
const ROUND_MAGIC: f32 = 12_582_912.0;

pub fn payload_len(n: usize, block_size: u32) -> Option<usize> {
    let blocks = n.div_ceil(block_size as usize);
    blocks
        .checked_mul(4)?
        .checked_add(n)?
        .checked_add(HEADER_LEN)
}

/// Blocks handled by one parallel task: about [`CHUNK`] elements.
fn blocks_per_task(block_size: usize) -> usize {
    (CHUNK / block_size).max(1)
}

#[inline]
fn quantise(y: f32) -> u8 {
    let y = y.clamp(-127.0, 127.0);
    ((y + ROUND_MAGIC) - ROUND_MAGIC) as i8 as u8
}

fn quantise_block(x: &[f32], scale_out: &mut [u8], q: &mut [u8]) {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut scale = max / 127.0;
    if !(scale * 127.0).is_finite() {
        // max/127 rounded up past f32::MAX/127; step down so x̂ stays finite.
        scale = f32::from_bits(scale.to_bits() - 1);
    }
    scale_out.copy_from_slice(&scale.to_le_bytes());
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    if inv.is_finite() {
        for (o, v) in q.iter_mut().zip(x) {
            *o = quantise(v * inv);
        }
    } else {
        // A subnormal scale has no finite reciprocal.
        for (o, v) in q.iter_mut().zip(x) {
            *o = quantise(v / scale);
        }
    }
}

pub fn encode_into(values: Values<'_>, block_size: usize, out: &mut [u8]) -> Result<()> {
    let n = values.len();
    let blocks = n.div_ceil(block_size);
    let (header, body) = out.split_at_mut(HEADER_LEN);
    header[..4].copy_from_slice(&(block_size as u32).to_le_bytes());
    header[4..].copy_from_slice(&(n as u64).to_le_bytes());
    let (scales, qs) = body.split_at_mut(blocks * 4);
    let per_task = blocks_per_task(block_size);
    let results = scales
        .par_chunks_mut(per_task * 4)
        .zip(qs.par_chunks_mut(per_task * block_size))
        .enumerate()
        .map(|(t, (scales, qs))| {
            let base = t * per_task * block_size;
            let mut buf = Vec::new();
            let x = f32_range(&values, base..base + qs.len(), &mut buf);
            if !all_finite(x) {
                return Err(Error::NonFinite {
                    update: 0,
                    position: first_non_finite(x, base).unwrap_or(base),
                });
            }
            for ((blk, s), q) in x
                .chunks(block_size)
                .zip(scales.chunks_exact_mut(4))
                .zip(qs.chunks_mut(block_size))
            {
                quantise_block(blk, s, q);
            }
            Ok(())
        })
        .collect();
    first_error(results)
}

/// A validated int8 payload's fields.
pub struct Parsed<'a> {
    pub n: usize,
    block_size: usize,
    scales: &'a [u8],
    qs: &'a [u8],
}

/// Check the header and length of an int8 payload.
pub fn parse(payload: &[u8]) -> Result<Parsed<'_>> {
    let mut r = Reader::new(payload, "int8");
    let block_size = r.u32("block_size")?;
    if block_size == 0 || block_size > MAX_BLOCK_SIZE {
        return Err(Error::Codec(format!(
            "int8 payload has block_size {block_size}, outside 1..={MAX_BLOCK_SIZE}"
        )));
    }
    let n = r.u64("element count")?;
    if n == 0 {
        return Err(Error::Codec("int8 payload declares 0 elements".into()));
    }
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| payload_len(n, block_size).is_some_and(|len| len == payload.len()))
        .ok_or_else(|| {
            Error::Codec(format!(
                "int8 payload is {} bytes; block_size {block_size} and {n} elements need {}",
                payload.len(),
                usize::try_from(n)
                    .ok()
                    .and_then(|n| payload_len(n, block_size))
                    .map_or("more than fits in memory".to_string(), |l| l.to_string())
            ))
        })?;
    let block_size = block_size as usize;
    let blocks = n.div_ceil(block_size);
    let scales = r.take(blocks * 4, "scales")?;
    let qs = r.take(n, "values")?;
    r.finish()?;
    Ok(Parsed {
        n,
        block_size,
        scales,
        qs,
    })
}

/// Dequantise into `out`, which holds `p.n` elements.
pub fn decode_into(p: &Parsed<'_>, out: &mut [f32]) -> Result<()> {
    let (block_size, scales, qs) = (p.block_size, p.scales, p.qs);
    let per_task = blocks_per_task(block_size);
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
                let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                if !((scale * 127.0).is_finite() && scale >= 0.0) {
                    return Err(Error::Codec(format!(
                        "int8 payload has invalid scale {scale} for block {} \
                         (must be ≥ 0 and 127·scale finite)",
                        t * per_task + b
                    )));
                }
                if !q.iter().fold(true, |ok, &v| ok & (v != 0x80)) {
                    let p = q.iter().position(|&v| v == 0x80).unwrap_or(0);
                    return Err(Error::Codec(format!(
                        "int8 payload holds -128 at position {} (quantised values are in -127..=127)",
                        (t * per_task + b) * block_size + p
                    )));
                }
                for (o, &v) in dst.iter_mut().zip(q) {
                    *o = f32::from(v as i8) * scale;
                }
            }
            Ok(())
        })
        .collect();
    first_error(results)
}

/// Dequantise without validation, for the reference check in tests.
#[cfg(test)]
pub fn reference_scales(x: &[f32], block_size: usize) -> Vec<f32> {
    x.chunks(block_size)
        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0)
        .collect()
}
