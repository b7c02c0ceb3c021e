//! Compression of model updates for the wire.
//!
//! Every codec reads a [`Values`] run (f32, f16 or bf16) and decodes to f32.
//! Codec ids are those of the frame format ([`CodecId`]); a zstd-compressed
//! payload is marked by the frame flag [`crate::wire::FLAG_ZSTD`] and handled
//! by [`zstd_compress`] / [`zstd_decompress`] around the codec.
//!
//! # Payload layouts (all little-endian)
//!
//! | codec | layout | bytes for `n` elements |
//! | --- | --- | --- |
//! | `raw`  | `n` × f32 | `4n` |
//! | `fp16` | `n` × IEEE binary16 | `2n` |
//! | `bf16` | `n` × bfloat16 | `2n` |
//! | `int8` | `block_size` u32 · `n` u64 · `⌈n/block_size⌉` × f32 scale · `n` × i8 | `12 + 4⌈n/b⌉ + n` |
//! | `int4` | `block_size` u32 · `n` u64 · `⌈n/block_size⌉` × f32 scale · `⌈n/2⌉` bytes, two 4-bit levels each | `12 + 4⌈n/b⌉ + ⌈n/2⌉` |
//! | `topk` | `n` u64 · `k` u32 · `k` × u32 index (strictly increasing) · `k` × f32 value | `12 + 8k` |
//!
//! The cast codecs carry no header: the element count is the payload length
//! over the element size (the frame's tensor specs carry the shape).
//!
//! # Error bounds (what the tests hold each codec to)
//!
//! * `raw`: exact.
//! * `fp16`: relative error ≤ 2⁻¹¹ for |x| in fp16's normal range
//!   [2⁻¹⁴, 65504]; below it (subnormal or flushed to zero) absolute error
//!   ≤ 2⁻²⁵. A value that would round to infinity (|x| ≥ 65520) is refused
//!   with [`Error::Codec`] naming its position: silent infinities would poison
//!   the aggregate.
//! * `bf16`: relative error ≤ 2⁻⁸ for |x| ≥ 2⁻¹²⁶ (f32's normal range, which
//!   bf16 shares); absolute error ≤ 2⁻¹³⁴ below it. Values within half an ulp
//!   of f32::MAX would round to infinity and are refused like fp16 overflow.
//! * `int8` (blockwise): |x − x̂| ≤ scale/2 per element, where
//!   scale = max|block| / 127 (rounded up), plus f32 rounding of at most
//!   2⁻¹⁵·scale.
//! * `int4` (blockwise): |x − x̂| ≤ scale/2 per element, where
//!   scale = max|block| / 7 (rounded up), plus f32 rounding of at most
//!   2⁻¹⁹·scale (see [`int4`]).
//! * `topk`: exact on the k coordinates sent, zero elsewhere.
//!
//! # Error feedback
//!
//! Every lossy codec (all but `raw`) takes an optional residual, owned by
//! the caller across rounds: the payload encodes update + residual, and the
//! residual keeps what the payload lost, so over many rounds the sum of
//! everything decoded plus the final residual is the sum of the updates
//! (see [`feedback`]). For the dense codecs the bounds above then apply to
//! update + residual.
//!
//! Every encoder refuses NaN and infinity with [`Error::NonFinite`] naming the
//! position, and empty input with [`Error::Empty`]. Every decoder validates
//! its payload completely and answers corrupt or truncated input with
//! [`Error::Codec`]; it never panics. Decoders also refuse non-finite decoded
//! values, which no encoder produces.

mod blockwise;
mod cast;
mod feedback;
mod int4;
mod int8;
pub mod topk;
mod zstd_frame;

use std::ops::Range;

use half::slice::HalfFloatSliceExt;

use crate::dtype::Values;
use crate::error::{Error, Result};
use crate::wire::CodecId;

pub use zstd_frame::{zstd_compress, zstd_decompress, DEFAULT_ZSTD_LEVEL};

/// Largest int8 or int4 block: a block is quantised by one task, so a
/// larger one would only serialise the work (and is surely a mistake).
pub const MAX_BLOCK_SIZE: u32 = 1 << 24;
/// Most elements a top-k payload can address (its indices are u32).
pub const MAX_TOPK_NUMEL: u64 = 1 << 32;
/// Elements per parallel task: large enough to amortise scheduling, small
/// enough to keep a task's working set in L2.
const CHUNK: usize = 1 << 15;

/// A codec with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Raw,
    Fp16,
    Bf16,
    Int8 { block_size: u32 },
    Int4 { block_size: u32 },
    TopK { k: u64 },
}

impl Codec {
    /// The codec called `name`, taking from `block_size` and `k` the
    /// parameter it needs (`k` is required for top-k).
    pub fn from_name(name: &str, block_size: u32, k: Option<u64>) -> Result<Self> {
        Ok(match CodecId::from_name(name)? {
            CodecId::Raw => Codec::Raw,
            CodecId::Fp16 => Codec::Fp16,
            CodecId::Bf16 => Codec::Bf16,
            CodecId::Int8 => Codec::Int8 { block_size },
            CodecId::Int4 => Codec::Int4 { block_size },
            CodecId::TopK => Codec::TopK {
                k: k.ok_or_else(|| {
                    Error::InvalidArgument("the topk codec needs k (coordinates to send)".into())
                })?,
            },
        })
    }

    pub fn id(self) -> CodecId {
        match self {
            Codec::Raw => CodecId::Raw,
            Codec::Fp16 => CodecId::Fp16,
            Codec::Bf16 => CodecId::Bf16,
            Codec::Int8 { .. } => CodecId::Int8,
            Codec::Int4 { .. } => CodecId::Int4,
            Codec::TopK { .. } => CodecId::TopK,
        }
    }

    /// Check the parameters against an input of `n` elements.
    pub fn validate(self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::Empty("cannot encode an empty update".into()));
        }
        match self {
            Codec::Int8 { block_size } | Codec::Int4 { block_size }
                if block_size == 0 || block_size > MAX_BLOCK_SIZE =>
            {
                Err(Error::InvalidArgument(format!(
                    "{} block_size must be in 1..={MAX_BLOCK_SIZE}, got {block_size}",
                    self.id().name()
                )))
            }
            Codec::TopK { .. } if n as u64 > MAX_TOPK_NUMEL => Err(Error::InvalidArgument(
                format!("topk addresses at most {MAX_TOPK_NUMEL} elements (u32 indices), got {n}"),
            )),
            Codec::TopK { k } if k == 0 || k > n as u64 => Err(Error::InvalidArgument(format!(
                "topk k must be in 1..={n} for {n} elements, got {k}"
            ))),
            _ => Ok(()),
        }
    }

    /// Bytes of the encoded payload for `n` elements (before zstd).
    pub fn encoded_len(self, n: usize) -> Result<usize> {
        self.validate(n)?;
        let too_large = || Error::InvalidArgument(format!("{n} elements overflow the payload"));
        match self {
            Codec::Raw => n.checked_mul(4).ok_or_else(too_large),
            Codec::Fp16 | Codec::Bf16 => n.checked_mul(2).ok_or_else(too_large),
            Codec::Int8 { block_size } => int8::payload_len(n, block_size).ok_or_else(too_large),
            Codec::Int4 { block_size } => int4::payload_len(n, block_size).ok_or_else(too_large),
            Codec::TopK { k } => Ok(topk::payload_len(k as usize)),
        }
    }
}

/// Encode `values` into `out`, which must be exactly
/// [`Codec::encoded_len`] bytes. `residual` is the error-feedback buffer of
/// a lossy codec, as long as `values` and updated in place (see
/// [`feedback`]); `raw` is exact and refuses one. A refused call leaves the
/// residual as it was.
pub fn encode_into(
    values: Values<'_>,
    codec: Codec,
    residual: Option<&mut [f32]>,
    out: &mut [u8],
) -> Result<()> {
    let len = codec.encoded_len(values.len())?;
    if out.len() != len {
        return Err(Error::InvalidArgument(format!(
            "output buffer holds {} bytes, the payload needs {len}",
            out.len()
        )));
    }
    if let Some(r) = residual.as_deref() {
        let limit = match codec {
            Codec::Raw => {
                return Err(Error::InvalidArgument(
                    "a residual (error feedback) applies to lossy codecs; raw is exact".into(),
                ))
            }
            Codec::Fp16 => Some((cast::FP16_OVERFLOW, "fp16")),
            Codec::Bf16 => Some((cast::BF16_OVERFLOW, "bf16")),
            Codec::Int8 { .. } | Codec::Int4 { .. } | Codec::TopK { .. } => None,
        };
        feedback::check(&values, r, limit)?;
    }
    match codec {
        Codec::Raw => cast::encode_raw(values, out),
        Codec::Fp16 => cast::encode_fp16(values, residual, out),
        Codec::Bf16 => cast::encode_bf16(values, residual, out),
        Codec::Int8 { block_size } => int8::encode_into(values, block_size as usize, residual, out),
        Codec::Int4 { block_size } => int4::encode_into(values, block_size as usize, residual, out),
        Codec::TopK { k } => topk::encode_into(values, k as usize, residual, out),
    }
}

/// Encode `values` into a new payload.
pub fn encode(values: Values<'_>, codec: Codec, residual: Option<&mut [f32]>) -> Result<Vec<u8>> {
    let mut out = vec![0u8; codec.encoded_len(values.len())?];
    encode_into(values, codec, residual, &mut out)?;
    Ok(out)
}

/// Decode a payload of codec `id` to f32. `numel`, when given, is the
/// element count the caller expects; a payload of any other size is refused
/// before anything is allocated.
pub fn decode(payload: &[u8], id: CodecId, numel: Option<usize>) -> Result<Vec<f32>> {
    let n = decoded_len(payload, id)?;
    check_numel(id, n, numel)?;
    let mut out = vec![0f32; n];
    decode_checked(payload, id, &mut out, true)?;
    Ok(out)
}

/// Refuse a payload whose element count `n` differs from the expected one.
pub fn check_numel(id: CodecId, n: usize, numel: Option<usize>) -> Result<()> {
    match numel {
        Some(expected) if expected != n => Err(Error::Codec(format!(
            "{} payload holds {n} elements, expected {expected}",
            id.name()
        ))),
        _ => Ok(()),
    }
}

/// Elements a payload decodes to, from its header and length (the rest is
/// validated by [`decode_into`]).
pub fn decoded_len(payload: &[u8], id: CodecId) -> Result<usize> {
    match id {
        CodecId::Raw => cast::element_count(payload, 4, "raw"),
        CodecId::Fp16 => cast::element_count(payload, 2, "fp16"),
        CodecId::Bf16 => cast::element_count(payload, 2, "bf16"),
        CodecId::Int8 => Ok(int8::parse(payload)?.n),
        CodecId::Int4 => Ok(int4::parse(payload)?.n),
        CodecId::TopK => Ok(topk::parse(payload)?.n),
    }
}

/// Decode into `out`, which must hold [`decoded_len`] elements; every
/// element is written, so `out` may hold anything beforehand. Lets the
/// caller choose the allocation, e.g. NumPy's, which asks the kernel for
/// huge pages (a fresh Vec of 64 MiB page-faults 4 KiB at a time).
pub fn decode_into(payload: &[u8], id: CodecId, out: &mut [f32]) -> Result<()> {
    decode_checked(payload, id, out, false)
}

/// `zeroed`: `out` is known to be all zeros, so sparse codecs only scatter
/// (a zeroed Vec stays lazily mapped until written).
fn decode_checked(payload: &[u8], id: CodecId, out: &mut [f32], zeroed: bool) -> Result<()> {
    let n = decoded_len(payload, id)?;
    if out.len() != n {
        return Err(Error::InvalidArgument(format!(
            "output holds {} elements, the {} payload decodes to {n}",
            out.len(),
            id.name()
        )));
    }
    match id {
        CodecId::Raw => cast::decode_raw(payload, out),
        CodecId::Fp16 => cast::decode_fp16(payload, out),
        CodecId::Bf16 => cast::decode_bf16(payload, out),
        CodecId::Int8 => int8::decode_into(&int8::parse(payload)?, out),
        CodecId::Int4 => int4::decode_into(&int4::parse(payload)?, out),
        CodecId::TopK => topk::decode_into(&topk::parse(payload)?, out, zeroed),
    }
}

/// Most bytes a payload of codec `id` for `numel` elements can have (any
/// parameters): the cap when decompressing an untrusted zstd payload.
pub fn max_encoded_len(id: CodecId, numel: usize) -> usize {
    let n = numel.max(1);
    match id {
        CodecId::Raw => n.saturating_mul(4),
        CodecId::Fp16 | CodecId::Bf16 => n.saturating_mul(2),
        CodecId::Int8 => int8::payload_len(n, 1).unwrap_or(usize::MAX),
        CodecId::Int4 => int4::payload_len(n, 1).unwrap_or(usize::MAX),
        CodecId::TopK => topk::payload_len(n),
    }
}

/// Elements `range` of `values` as f32: borrowed when they already are,
/// converted into `buf` otherwise.
fn f32_range<'v: 'b, 'b>(
    values: &Values<'v>,
    range: Range<usize>,
    buf: &'b mut Vec<f32>,
) -> &'b [f32] {
    if let Values::F32(v) = values {
        return &v[range];
    }
    buf.clear();
    buf.resize(range.len(), 0.0);
    convert_into(values, range.start, buf);
    buf
}

/// Write elements `start..start + dst.len()` of `values` into `dst` as f32
/// (half's conversion uses F16C where the CPU has it).
fn convert_into(values: &Values<'_>, start: usize, dst: &mut [f32]) {
    let range = start..start + dst.len();
    match values {
        Values::F32(v) => dst.copy_from_slice(&v[range]),
        Values::F16(v) => v[range].convert_to_f32_slice(dst),
        Values::Bf16(v) => v[range].convert_to_f32_slice(dst),
    }
}

/// Position of the first non-finite element of `xs`, offset by `base`.
/// Callers first test finiteness with a branch-free fold (which vectorises)
/// and only search when it failed.
fn first_non_finite(xs: &[f32], base: usize) -> Option<usize> {
    xs.iter().position(|x| !x.is_finite()).map(|p| base + p)
}

/// The first error among per-chunk results, in chunk order, so the error
/// names the lowest bad position whatever the thread schedule.
fn first_error(results: Vec<Result<()>>) -> Result<()> {
    results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
}

/// `true` when every element is finite; branch-free so it vectorises.
#[inline]
fn all_finite(xs: &[f32]) -> bool {
    xs.iter().fold(true, |ok, x| ok & x.is_finite())
}

/// Little-endian reader over a payload that names what is missing.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    codec: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], codec: &'static str) -> Self {
        Reader { buf, pos: 0, codec }
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(len).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::Codec(format!(
                "{} payload truncated: {what} needs {len} bytes at offset {}, payload has {}",
                self.codec,
                self.pos,
                self.buf.len()
            ))),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Refuse bytes after the last field (a payload has exactly one length).
    fn finish(self) -> Result<()> {
        if self.pos != self.buf.len() {
            return Err(Error::Codec(format!(
                "{} payload has {} trailing bytes after its {} expected bytes",
                self.codec,
                self.buf.len() - self.pos,
                self.pos
            )));
        }
        Ok(())
    }
}

/// Read little-endian f32s.
#[inline]
fn read_f32s(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Write little-endian f32s.
#[inline]
fn write_f32s(xs: &[f32], out: &mut [u8]) {
    for (o, x) in out.chunks_exact_mut(4).zip(xs) {
        o.copy_from_slice(&x.to_le_bytes());
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_int4;
