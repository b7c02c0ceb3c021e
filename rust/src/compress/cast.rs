//! The cast codecs: raw f32, fp16 and bf16 (layouts and bounds in the
//! module docs of [`crate::compress`]).

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::{
    all_finite, f32_range, feedback, first_error, first_non_finite, read_f32s, write_f32s, CHUNK,
};
use crate::dtype::Values;
use crate::error::{Error, Result};

/// Smallest magnitude that rounds to infinity in fp16 (halfway between
/// 65504 and 65536; ties go to the even pattern, which is infinity).
pub const FP16_OVERFLOW: f32 = 65520.0;
/// Same for bf16: halfway between bf16::MAX and 2¹²⁸.
/// (bit pattern 0x7f7f_8000; a test checks the literal).
pub const BF16_OVERFLOW: f32 = 3.396_177_5e38;

pub fn encode_raw(values: Values<'_>, out: &mut [u8]) -> Result<()> {
    let results = out
        .par_chunks_mut(CHUNK * 4)
        .enumerate()
        .map(|(i, dst)| {
            let base = i * CHUNK;
            let mut buf = Vec::new();
            let x = f32_range(&values, base..base + dst.len() / 4, &mut buf);
            if !all_finite(x) {
                let position = first_non_finite(x, base).unwrap_or(base);
                return Err(Error::NonFinite {
                    update: 0,
                    position,
                });
            }
            write_f32s(x, dst);
            Ok(())
        })
        .collect();
    first_error(results)
}

/// Encode to a 16-bit float type, refusing values at or beyond `overflow`.
/// With a residual (already checked by [`super::feedback::check`]) the
/// chunk encodes `x + residual` and keeps what the cast rounded off.
#[allow(clippy::too_many_arguments)]
fn encode_half<H: Copy + Default + Send>(
    values: Values<'_>,
    out: &mut [u8],
    residual: Option<&mut [f32]>,
    overflow: f32,
    name: &str,
    convert: impl Fn(&mut [H], &[f32]) + Sync,
    widen: impl Fn(&[H], &mut [f32]) + Sync,
    bits: impl Fn(H) -> u16 + Sync,
) -> Result<()> {
    let parts = feedback::parts(residual, values.len(), CHUNK);
    let results = out
        .par_chunks_mut(CHUNK * 2)
        .zip(parts.into_par_iter())
        .enumerate()
        .map(|(i, (dst, residual))| {
            let base = i * CHUNK;
            let mut buf = Vec::new();
            let mut halves = vec![H::default(); dst.len() / 2];
            match residual {
                Some(r) => {
                    feedback::accumulate(&values, base, r, &mut buf);
                    convert(&mut halves, r);
                    // What the cast lost stays behind (exact: see feedback).
                    buf.resize(r.len(), 0.0);
                    widen(&halves, &mut buf);
                    r.iter_mut().zip(&buf).for_each(|(a, b)| *a -= b);
                }
                None => {
                    let x = f32_range(&values, base..base + halves.len(), &mut buf);
                    // NaN fails the comparison too, so one branch-free fold checks all.
                    if !x.iter().fold(true, |ok, v| ok & (v.abs() < overflow)) {
                        return Err(out_of_range(x, base, overflow, name));
                    }
                    convert(&mut halves, x);
                }
            }
            for (o, h) in dst.chunks_exact_mut(2).zip(&halves) {
                o.copy_from_slice(&bits(*h).to_le_bytes());
            }
            Ok(())
        })
        .collect();
    first_error(results)
}

fn out_of_range(x: &[f32], base: usize, overflow: f32, name: &str) -> Error {
    let p = x
        .iter()
        .position(|v| v.abs().partial_cmp(&overflow) != Some(std::cmp::Ordering::Less));
    let p = p.unwrap_or(0);
    if !x[p].is_finite() {
        return Error::NonFinite {
            update: 0,
            position: base + p,
        };
    }
    Error::Codec(format!(
        "value {} at position {} is outside the {name} range (it would become infinity); \
         scale the update or use another codec",
        x[p],
        base + p
    ))
}

pub fn encode_fp16(values: Values<'_>, residual: Option<&mut [f32]>, out: &mut [u8]) -> Result<()> {
    encode_half(
        values,
        out,
        residual,
        FP16_OVERFLOW,
        "fp16",
        |dst: &mut [f16], src| dst.convert_from_f32_slice(src),
        |src: &[f16], dst| src.convert_to_f32_slice(dst),
        f16::to_bits,
    )
}

pub fn encode_bf16(values: Values<'_>, residual: Option<&mut [f32]>, out: &mut [u8]) -> Result<()> {
    encode_half(
        values,
        out,
        residual,
        BF16_OVERFLOW,
        "bf16",
        |dst: &mut [bf16], src| dst.convert_from_f32_slice(src),
        |src: &[bf16], dst| src.convert_to_f32_slice(dst),
        bf16::to_bits,
    )
}

pub fn element_count(payload: &[u8], size: usize, codec: &str) -> Result<usize> {
    if payload.is_empty() {
        return Err(Error::Codec(format!("{codec} payload is empty")));
    }
    if payload.len() % size != 0 {
        return Err(Error::Codec(format!(
            "{codec} payload of {} bytes is not a whole number of {size}-byte elements",
            payload.len()
        )));
    }
    Ok(payload.len() / size)
}

fn corrupt_value(codec: &str, position: usize) -> Error {
    Error::Codec(format!(
        "{codec} payload holds a non-finite value at position {position} (no encoder writes one)"
    ))
}

/// Decode into `out`, which holds [`element_count`] elements.
pub fn decode_raw(payload: &[u8], out: &mut [f32]) -> Result<()> {
    let results = out
        .par_chunks_mut(CHUNK)
        .zip(payload.par_chunks(CHUNK * 4))
        .enumerate()
        .map(|(i, (dst, src))| {
            read_f32s(src, dst);
            match all_finite(dst) {
                true => Ok(()),
                false => Err(corrupt_value(
                    "raw",
                    first_non_finite(dst, i * CHUNK).unwrap_or(0),
                )),
            }
        })
        .collect();
    first_error(results)
}

/// Decode a 16-bit float payload; `exp_mask` is the type's exponent field,
/// all ones for infinity and NaN.
fn decode_half<H: bytemuck::Pod>(
    payload: &[u8],
    out: &mut [f32],
    codec: &str,
    exp_mask: u16,
    convert: impl Fn(&[H], &mut [f32]) + Sync,
) -> Result<()> {
    let results = out
        .par_chunks_mut(CHUNK)
        .zip(payload.par_chunks(CHUNK * 2))
        .enumerate()
        .map(|(i, (dst, src))| {
            let raw: Vec<u16> = src
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            if !raw
                .iter()
                .fold(true, |ok, b| ok & (b & exp_mask != exp_mask))
            {
                let p = raw.iter().position(|b| b & exp_mask == exp_mask);
                return Err(corrupt_value(codec, i * CHUNK + p.unwrap_or(0)));
            }
            convert(bytemuck::cast_slice(&raw), dst);
            Ok(())
        })
        .collect();
    first_error(results)
}

pub fn decode_fp16(payload: &[u8], out: &mut [f32]) -> Result<()> {
    decode_half(payload, out, "fp16", 0x7c00, |src: &[f16], dst| {
        src.convert_to_f32_slice(dst)
    })
}

pub fn decode_bf16(payload: &[u8], out: &mut [f32]) -> Result<()> {
    decode_half(payload, out, "bf16", 0x7f80, |src: &[bf16], dst| {
        src.convert_to_f32_slice(dst)
    })
}
