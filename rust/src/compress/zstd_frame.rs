//! Optional zstd around an encoded payload (frame flag `FLAG_ZSTD`).
//!
//! Decompression streams into a buffer capped at `max_len`, so a payload
//! that claims (or expands to) more than its codec could ever need is refused
//! instead of exhausting memory.

use std::io::Read;

use crate::error::{Error, Result};

pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

pub fn zstd_compress(payload: &[u8], level: i32) -> Result<Vec<u8>> {
    let range = zstd::compression_level_range();
    if !range.contains(&level) {
        return Err(Error::InvalidArgument(format!(
            "zstd level must be in {}..={}, got {level}",
            range.start(),
            range.end()
        )));
    }
    zstd::bulk::compress(payload, level).map_err(|e| Error::Codec(format!("zstd: {e}")))
}

/// Decompress `data`, refusing output longer than `max_len` bytes.
pub fn zstd_decompress(data: &[u8], max_len: usize) -> Result<Vec<u8>> {
    if data.is_empty() {
        return Err(Error::Codec("zstd payload is empty".into()));
    }
    let zstd_err = |e: std::io::Error| Error::Codec(format!("zstd payload is corrupt: {e}"));
    // The declared size is only a hint for the first allocation; it is
    // untrusted, so it is capped too.
    let hint = zstd::zstd_safe::get_frame_content_size(data)
        .ok()
        .flatten()
        .map_or(0, |s| s.min(max_len as u64).min(1 << 30) as usize);
    let mut out = Vec::with_capacity(hint);
    let decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(zstd_err)?;
    decoder
        .take(max_len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(zstd_err)?;
    if out.len() > max_len {
        return Err(Error::Codec(format!(
            "zstd payload expands past {max_len} bytes, the most its codec needs"
        )));
    }
    Ok(out)
}
