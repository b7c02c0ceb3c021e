//! Symmetric blockwise quantisation shared by `int8` (levels −127..=127)
//! and `int4` (levels −7..=7); the codecs differ only in how they pack the
//! levels.
//!
//! A block's scale is max|block| / L rounded *up* to an f32 (never below
//! the exact quotient), so every |x| / scale ≤ L and rounding to the
//! nearest level is off by at most half a step: |x − q·scale| ≤ scale/2
//! plus the f32 rounding of 1/scale, of x·(1/scale) and of q·scale, at
//! most 1.5·L·2⁻²³·scale: under 2⁻¹⁵·scale for int8, 2⁻¹⁹·scale for
//! int4. Rounding the scale to nearest instead could leave a scale of zero
//! for a block of tiny subnormals (max/127 < 2⁻¹⁵⁰), which would decode
//! the whole block to 0.
//!
//! Payload: `block_size` u32 · `n` u64 · ⌈n/block_size⌉ × f32 scale · the
//! levels, packed by the codec.

use super::{Reader, MAX_BLOCK_SIZE};
use crate::error::{Error, Result};

/// Adding and subtracting 1.5·2²³ rounds an |y| < 2²² to the nearest
/// integer (ties to even) with two plain adds, which vectorise on any x86_64
/// (`f32::round` needs SSE4.1 to avoid a libm call per element).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// The scale of block `x` for levels −`levels`..=`levels`: max|x| / levels
/// rounded up, except where `levels`·scale would then overflow (the decoder
/// refuses such a scale): the element at f32::MAX then clamps to the top
/// level, off by a few ulps of scale.
pub fn scale_for(x: &[f32], levels: f32) -> f32 {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut scale = max / levels;
    // The f64 product of a 24-bit and a 7-bit significand is exact.
    // scale ≥ 0 and finite, so its bit pattern steps to the neighbours
    // (f32::next_up is newer than the crate's MSRV).
    if f64::from(scale) * f64::from(levels) < f64::from(max) {
        scale = f32::from_bits(scale.to_bits() + 1);
    }
    if !(scale * levels).is_finite() {
        scale = f32::from_bits(scale.to_bits() - 1);
    }
    scale
}

/// Levels of `x` for `scale` (from [`scale_for`]) into `q`.
pub fn quantise(x: &[f32], scale: f32, levels: f32, q: &mut [i8]) {
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let level = |y: f32| ((y.clamp(-levels, levels) + ROUND_MAGIC) - ROUND_MAGIC) as i8;
    if inv.is_finite() {
        for (o, v) in q.iter_mut().zip(x) {
            *o = level(v * inv);
        }
    } else {
        // A subnormal scale has no finite reciprocal.
        for (o, v) in q.iter_mut().zip(x) {
            *o = level(v / scale);
        }
    }
}

/// What the decoder makes of level `q` at `scale`; the one expression both
/// sides use, so error feedback subtracts exactly what the receiver adds.
#[inline(always)]
pub fn dequantise(q: i8, scale: f32) -> f32 {
    f32::from(q) * scale
}

/// Error feedback: `r` held the block encoded as `q` at `scale`; keep in
/// it what the receiver will not see.
pub fn keep_error(r: &mut [f32], q: &[i8], scale: f32) {
    for (a, &v) in r.iter_mut().zip(q) {
        *a -= dequantise(v, scale);
    }
}

/// Blocks handled by one parallel task: about [`super::CHUNK`] elements.
/// `even`: the task's element count must be even (int4 packs two elements
/// a byte, so tasks must not share a byte).
pub fn blocks_per_task(block_size: usize, even: bool) -> usize {
    let per_task = (super::CHUNK / block_size).max(1);
    if even && per_task % 2 == 1 && block_size % 2 == 1 {
        return per_task + 1;
    }
    per_task
}

/// Bytes of a blockwise payload's header: block_size u32, element count u64.
pub const HEADER_LEN: usize = 12;

/// Bytes of a blockwise payload: header, one f32 scale per block, then
/// `body` bytes of levels.
pub fn payload_len(n: usize, block_size: u32, body: usize) -> Option<usize> {
    let blocks = n.div_ceil(block_size as usize);
    blocks
        .checked_mul(4)?
        .checked_add(body)?
        .checked_add(HEADER_LEN)
}

/// Write the header; returns the scales and the levels' bytes.
pub fn write_header(out: &mut [u8], n: usize, block_size: usize) -> (&mut [u8], &mut [u8]) {
    let (header, body) = out.split_at_mut(HEADER_LEN);
    header[..4].copy_from_slice(&(block_size as u32).to_le_bytes());
    header[4..].copy_from_slice(&(n as u64).to_le_bytes());
    body.split_at_mut(n.div_ceil(block_size) * 4)
}

/// A blockwise payload whose header and length are valid.
pub struct Parsed<'a> {
    pub n: usize,
    pub block_size: usize,
    pub scales: &'a [u8],
    /// The packed levels.
    pub body: &'a [u8],
}

/// Check the header and length of a `codec` payload whose levels take
/// `body_len(n)` bytes for `n` elements.
pub fn parse<'a>(
    payload: &'a [u8],
    codec: &'static str,
    body_len: fn(usize) -> usize,
) -> Result<Parsed<'a>> {
    let mut r = Reader::new(payload, codec);
    let block_size = r.u32("block_size")?;
    if block_size == 0 || block_size > MAX_BLOCK_SIZE {
        return Err(Error::Codec(format!(
            "{codec} payload has block_size {block_size}, outside 1..={MAX_BLOCK_SIZE}"
        )));
    }
    let n = r.u64("element count")?;
    if n == 0 {
        return Err(Error::Codec(format!("{codec} payload declares 0 elements")));
    }
    let needs = |n: u64| {
        usize::try_from(n)
            .ok()
            .and_then(|n| payload_len(n, block_size, body_len(n)))
    };
    let n = match needs(n) {
        Some(len) if len == payload.len() => n as usize,
        other => {
            return Err(Error::Codec(format!(
                "{codec} payload is {} bytes; block_size {block_size} and {n} elements need {}",
                payload.len(),
                other.map_or("more than fits in memory".to_string(), |l| l.to_string())
            )))
        }
    };
    let block_size = block_size as usize;
    let scales = r.take(n.div_ceil(block_size) * 4, "scales")?;
    let body = r.take(body_len(n), "values")?;
    r.finish()?;
    Ok(Parsed {
        n,
        block_size,
        scales,
        body,
    })
}

/// The scale of block `b` read from a payload, refused unless an encoder
/// could have written it.
pub fn checked_scale(s: &[u8], levels: f32, codec: &str, block: usize) -> Result<f32> {
    let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    if !((scale * levels).is_finite() && scale >= 0.0) {
        return Err(Error::Codec(format!(
            "{codec} payload has invalid scale {scale} for block {block} \
             (must be ≥ 0 and {levels}·scale finite)"
        )));
    }
    Ok(scale)
}
