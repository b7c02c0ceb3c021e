//! The versioned binary frame every message travels in.
//!
//! Layout (little-endian), version 1:
//!
//! ```text
//!  0  magic        u32  b"HGPU"
//!  4  version      u16  1
//!  6  kind         u8   MessageKind
//!  7  codec        u8   CodecId of the payload
//!  8  flags        u8   bit 0: payload is zstd-compressed; other bits 0
//!  9  reserved     u8   0
//! 10  tensors      u16  number of tensor specs
//! 12  specs_len    u32  bytes of the tensor-spec table after the fixed header
//! 16  round        u64
//! 24  node_id      u32
//! 28  payload_crc  u32  CRC-32 of the payload
//! 32  payload_len  u64
//! 40  header_crc   u32  CRC-32 of bytes 0..40 followed by the spec table
//! 44  spec table, then payload
//! ```
//!
//! Each tensor spec: `name_len u16, name (UTF-8), dtype u8, ndim u8,
//! dims u64 × ndim, nbytes u64` (bytes of that tensor inside the payload).
//!
//! Two checksums let a receiver trust the header (and so the payload length)
//! before it reads the payload, then verify the payload as it streams in.
//! The decoder never panics: every read is bounds-checked and every count
//! is limited before it is used to allocate.

use crate::error::{Error, Result};

pub const MAGIC: u32 = u32::from_le_bytes(*b"HGPU");
pub const VERSION: u16 = 1;
pub const FIXED_LEN: usize = 44;
/// Upper bound on the spec table, so a header can never ask for a huge buffer.
pub const MAX_SPECS_LEN: usize = 1 << 20;
pub const MAX_NAME_LEN: usize = 1024;
pub const MAX_NDIM: usize = 8;
pub const FLAG_ZSTD: u8 = 1;
const KNOWN_FLAGS: u8 = FLAG_ZSTD;

macro_rules! byte_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, $err:expr, { $($variant:ident = $val:literal => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $($variant = $val),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn from_u8(v: u8) -> Result<Self> {
                match v {
                    $($val => Ok($name::$variant),)+
                    other => Err($err(format!(concat!("unknown ", $what, " id {}"), other))),
                }
            }

            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn from_name(name: &str) -> Result<Self> {
                match name {
                    $($text => Ok($name::$variant),)+
                    other => Err($err(format!(concat!("unknown ", $what, " {:?}"), other))),
                }
            }
        }
    };
}

byte_enum!(
    /// What a frame carries.
    MessageKind, "message kind", Error::Frame, {
    Hello = 1 => "hello",
    Welcome = 2 => "welcome",
    Heartbeat = 3 => "heartbeat",
    Params = 4 => "params",
    Update = 5 => "update",
    Ack = 6 => "ack",
    Control = 7 => "control",
    Metrics = 8 => "metrics",
    Error = 9 => "error",
    Bye = 10 => "bye",
});

byte_enum!(
    /// How the payload's tensors are encoded.
    CodecId, "codec", Error::UnknownCodec, {
    Raw = 0 => "raw",
    Fp16 = 1 => "fp16",
    Bf16 = 2 => "bf16",
    Int8 = 3 => "int8",
    TopK = 4 => "topk",
    Int4 = 5 => "int4",
});

byte_enum!(
    /// Element type of a tensor as the sender holds it.
    DType, "dtype", Error::Frame, {
    F32 = 0 => "f32",
    F16 = 1 => "f16",
    Bf16 = 2 => "bf16",
    F64 = 3 => "f64",
    I8 = 4 => "i8",
    U8 = 5 => "u8",
    I32 = 6 => "i32",
    I64 = 7 => "i64",
});

/// One tensor inside the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Bytes this tensor occupies in the (decompressed) payload.
    pub nbytes: u64,
}

/// Everything in a frame but the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: MessageKind,
    pub codec: CodecId,
    pub flags: u8,
    pub round: u64,
    pub node_id: u32,
    pub tensors: Vec<TensorSpec>,
    pub payload_len: u64,
    pub payload_crc: u32,
}

impl Header {
    /// A header for `payload`, with its length and checksum filled in.
    pub fn for_payload(
        kind: MessageKind,
        codec: CodecId,
        flags: u8,
        round: u64,
        node_id: u32,
        tensors: Vec<TensorSpec>,
        payload: &[u8],
    ) -> Self {
        Header {
            kind,
            codec,
            flags,
            round,
            node_id,
            tensors,
            payload_len: payload.len() as u64,
            payload_crc: crc32fast::hash(payload),
        }
    }

    /// Serialise the header (fixed part, then spec table).
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(Error::Frame(format!(
                "unknown flag bits {:#04x}",
                self.flags
            )));
        }
        if self.tensors.len() > u16::MAX as usize {
            return Err(Error::Frame(format!(
                "{} tensors exceed the limit of {}",
                self.tensors.len(),
                u16::MAX
            )));
        }
        let mut specs = Vec::new();
        for t in &self.tensors {
            if t.name.len() > MAX_NAME_LEN {
                return Err(Error::Frame(format!(
                    "tensor name of {} bytes exceeds {MAX_NAME_LEN}",
                    t.name.len()
                )));
            }
            if t.shape.len() > MAX_NDIM {
                return Err(Error::Frame(format!(
                    "tensor {:?} has {} dims, limit {MAX_NDIM}",
                    t.name,
                    t.shape.len()
                )));
            }
            specs.extend_from_slice(&(t.name.len() as u16).to_le_bytes());
            specs.extend_from_slice(t.name.as_bytes());
            specs.push(t.dtype as u8);
            specs.push(t.shape.len() as u8);
            for d in &t.shape {
                specs.extend_from_slice(&d.to_le_bytes());
            }
            specs.extend_from_slice(&t.nbytes.to_le_bytes());
        }
        if specs.len() > MAX_SPECS_LEN {
            return Err(Error::Frame(format!(
                "spec table of {} bytes exceeds {MAX_SPECS_LEN}",
                specs.len()
            )));
        }
        let mut out = Vec::with_capacity(FIXED_LEN + specs.len());
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.codec as u8);
        out.push(self.flags);
        out.push(0);
        out.extend_from_slice(&(self.tensors.len() as u16).to_le_bytes());
        out.extend_from_slice(&(specs.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.node_id.to_le_bytes());
        out.extend_from_slice(&self.payload_crc.to_le_bytes());
        out.extend_from_slice(&self.payload_len.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&out);
        crc.update(&specs);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(&specs);
        Ok(out)
    }

    /// Total header length announced by the first [`FIXED_LEN`] bytes, so a
    /// reader knows how much more to read before calling [`Header::decode`].
    pub fn peek_len(buf: &[u8]) -> Result<usize> {
        let fixed = need(buf, 0, FIXED_LEN)?;
        check_magic_version(fixed)?;
        let specs_len = u32_at(fixed, 12) as usize;
        if specs_len > MAX_SPECS_LEN {
            return Err(Error::Frame(format!(
                "spec table of {specs_len} bytes exceeds {MAX_SPECS_LEN}"
            )));
        }
        Ok(FIXED_LEN + specs_len)
    }

    /// Parse and verify a header; returns it and the bytes it occupied.
    pub fn decode(buf: &[u8]) -> Result<(Header, usize)> {
        let total = Header::peek_len(buf)?;
        let all = need(buf, 0, total)?;
        let fixed = &all[..FIXED_LEN];
        let specs = &all[FIXED_LEN..];

        let mut crc = crc32fast::Hasher::new();
        crc.update(&fixed[..40]);
        crc.update(specs);
        let got = crc.finalize();
        let expected = u32_at(fixed, 40);
        if got != expected {
            return Err(Error::Checksum { expected, got });
        }

        let kind = MessageKind::from_u8(fixed[6])?;
        let codec = CodecId::from_u8(fixed[7])?;
        let flags = fixed[8];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::Frame(format!("unknown flag bits {flags:#04x}")));
        }
        if fixed[9] != 0 {
            return Err(Error::Frame(format!(
                "reserved byte is {:#04x}, must be 0",
                fixed[9]
            )));
        }
        let count = u16_at(fixed, 10) as usize;
        let header = Header {
            kind,
            codec,
            flags,
            round: u64_at(fixed, 16),
            node_id: u32_at(fixed, 24),
            payload_crc: u32_at(fixed, 28),
            payload_len: u64_at(fixed, 32),
            tensors: decode_specs(specs, count)?,
        };
        Ok((header, total))
    }

    /// Check a received payload against this header.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<()> {
        if payload.len() as u64 != self.payload_len {
            return Err(Error::Truncated {
                needed: usize::try_from(self.payload_len).unwrap_or(usize::MAX),
                available: payload.len(),
            });
        }
        let got = crc32fast::hash(payload);
        if got != self.payload_crc {
            return Err(Error::Checksum {
                expected: self.payload_crc,
                got,
            });
        }
        Ok(())
    }
}

/// Encode a whole frame: header followed by `payload`.
pub fn encode_frame(header: &Header, payload: &[u8]) -> Result<Vec<u8>> {
    if header.payload_len != payload.len() as u64 || header.payload_crc != crc32fast::hash(payload)
    {
        return Err(Error::Frame(
            "header does not describe the payload (use Header::for_payload)".into(),
        ));
    }
    let mut out = header.encode()?;
    out.extend_from_slice(payload);
    Ok(out)
}

/// Decode a whole frame held in memory, refusing payloads over `max_payload`.
pub fn decode_frame(buf: &[u8], max_payload: u64) -> Result<(Header, &[u8])> {
    let (header, used) = Header::decode(buf)?;
    if header.payload_len > max_payload {
        return Err(Error::TooLarge {
            size: header.payload_len,
            limit: max_payload,
        });
    }
    let rest = &buf[used..];
    if (rest.len() as u64) < header.payload_len {
        return Err(Error::Truncated {
            needed: used.saturating_add(header.payload_len as usize),
            available: buf.len(),
        });
    }
    if rest.len() as u64 > header.payload_len {
        return Err(Error::Frame(format!(
            "{} trailing bytes after the payload",
            rest.len() as u64 - header.payload_len
        )));
    }
    header.verify_payload(rest)?;
    Ok((header, rest))
}

fn check_magic_version(fixed: &[u8]) -> Result<()> {
    let magic = u32_at(fixed, 0);
    if magic != MAGIC {
        return Err(Error::BadMagic {
            expected: MAGIC,
            got: magic,
        });
    }
    let version = u16_at(fixed, 4);
    if version != VERSION {
        return Err(Error::UnsupportedVersion {
            got: version,
            supported: VERSION,
        });
    }
    Ok(())
}

fn decode_specs(buf: &[u8], count: usize) -> Result<Vec<TensorSpec>> {
    // Each spec takes at least 12 bytes, which bounds `count` by the buffer.
    if count > buf.len() / 12 {
        return Err(Error::Frame(format!(
            "{count} tensor specs cannot fit in {} bytes",
            buf.len()
        )));
    }
    let mut at = 0;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let name_len = u16_at(need(buf, at, 2)?, 0) as usize;
        at += 2;
        if name_len > MAX_NAME_LEN {
            return Err(Error::Frame(format!(
                "tensor {i}: name of {name_len} bytes exceeds {MAX_NAME_LEN}"
            )));
        }
        let name = std::str::from_utf8(need(buf, at, name_len)?)
            .map_err(|_| Error::Frame(format!("tensor {i}: name is not UTF-8")))?
            .to_owned();
        at += name_len;
        let two = need(buf, at, 2)?;
        let dtype = DType::from_u8(two[0])?;
        let ndim = two[1] as usize;
        at += 2;
        if ndim > MAX_NDIM {
            return Err(Error::Frame(format!(
                "tensor {name:?}: {ndim} dims exceed {MAX_NDIM}"
            )));
        }
        let mut shape = Vec::with_capacity(ndim);
        for _ in 0..ndim {
            shape.push(u64_at(need(buf, at, 8)?, 0));
            at += 8;
        }
        let nbytes = u64_at(need(buf, at, 8)?, 0);
        at += 8;
        out.push(TensorSpec {
            name,
            dtype,
            shape,
            nbytes,
        });
    }
    if at != buf.len() {
        return Err(Error::Frame(format!(
            "spec table has {} bytes left over",
            buf.len() - at
        )));
    }
    Ok(out)
}

/// `buf[at..at + len]`, or a typed error if the buffer is too short.
fn need(buf: &[u8], at: usize, len: usize) -> Result<&[u8]> {
    let end = at
        .checked_add(len)
        .ok_or_else(|| Error::Frame("length overflow".into()))?;
    buf.get(at..end).ok_or(Error::Truncated {
        needed: end,
        available: buf.len(),
    })
}

// Callers pass slices already checked by `need`, so the conversions cannot fail.
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(payload: &[u8]) -> Header {
        Header::for_payload(
            MessageKind::Update,
            CodecId::Int8,
            FLAG_ZSTD,
            42,
            7,
            vec![
                TensorSpec {
                    name: "conv1.weight".into(),
                    dtype: DType::F32,
                    shape: vec![8, 1, 3, 3],
                    nbytes: 3,
                },
                TensorSpec {
                    name: "fc.bias".into(),
                    dtype: DType::Bf16,
                    shape: vec![10],
                    nbytes: payload.len() as u64 - 3,
                },
            ],
            payload,
        )
    }

    #[test]
    fn round_trip() {
        let payload = b"abcdefghij";
        let h = sample(payload);
        let frame = encode_frame(&h, payload).unwrap();
        let (back, body) = decode_frame(&frame, u64::MAX).unwrap();
        assert_eq!(back, h);
        assert_eq!(body, payload);
        assert_eq!(
            Header::peek_len(&frame).unwrap(),
            frame.len() - payload.len()
        );
    }

    #[test]
    fn typed_errors() {
        let payload = b"abcdefghij";
        let frame = encode_frame(&sample(payload), payload).unwrap();
        assert!(matches!(
            decode_frame(&frame[..10], u64::MAX),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            decode_frame(&frame[..frame.len() - 1], u64::MAX),
            Err(Error::Truncated { .. })
        ));
        let mut bad = frame.clone();
        bad[0] ^= 1;
        assert!(matches!(
            decode_frame(&bad, u64::MAX),
            Err(Error::BadMagic { .. })
        ));
        let mut bad = frame.clone();
        bad[4] = 9;
        assert!(matches!(
            decode_frame(&bad, u64::MAX),
            Err(Error::UnsupportedVersion { got: 9, .. })
        ));
        let mut bad = frame.clone();
        bad[20] ^= 0xff; // round
        assert!(matches!(
            decode_frame(&bad, u64::MAX),
            Err(Error::Checksum { .. })
        ));
        let mut bad = frame.clone();
        *bad.last_mut().unwrap() ^= 1; // payload
        assert!(matches!(
            decode_frame(&bad, u64::MAX),
            Err(Error::Checksum { .. })
        ));
        assert!(matches!(
            decode_frame(&frame, 4),
            Err(Error::TooLarge { size: 10, limit: 4 })
        ));
        let mut long = frame.clone();
        long.push(0);
        assert!(matches!(
            decode_frame(&long, u64::MAX),
            Err(Error::Frame(_))
        ));
    }

    #[test]
    fn unknown_codec_is_typed() {
        let payload = b"xy";
        let h = Header::for_payload(
            MessageKind::Update,
            CodecId::Int8,
            0,
            42,
            7,
            Vec::new(),
            payload,
        );
        let mut frame = encode_frame(&h, payload).unwrap();
        frame[7] = 200;
        // Re-seal the header so only the codec byte is wrong.
        let crc = crc32fast::hash(&frame[..40]);
        frame[40..44].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_frame(&frame, u64::MAX),
            Err(Error::UnknownCodec(_))
        ));
    }

    fn arb_header() -> impl Strategy<Value = (Header, Vec<u8>)> {
        let spec = (
            "[a-z0-9._]{0,24}",
            prop::sample::select(DType::ALL.to_vec()),
            prop::collection::vec(0u64..1 << 20, 0..=MAX_NDIM),
            any::<u64>(),
        )
            .prop_map(|(name, dtype, shape, nbytes)| TensorSpec {
                name,
                dtype,
                shape,
                nbytes,
            });
        (
            prop::sample::select(MessageKind::ALL.to_vec()),
            prop::sample::select(CodecId::ALL.to_vec()),
            0u8..=KNOWN_FLAGS,
            any::<u64>(),
            any::<u32>(),
            prop::collection::vec(spec, 0..6),
            prop::collection::vec(any::<u8>(), 0..256),
        )
            .prop_map(|(kind, codec, flags, round, node_id, tensors, payload)| {
                (
                    Header::for_payload(kind, codec, flags, round, node_id, tensors, &payload),
                    payload,
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
        ))]

        #[test]
        fn encode_decode_round_trips((h, payload) in arb_header()) {
            let frame = encode_frame(&h, &payload).unwrap();
            let (back, body) = decode_frame(&frame, u64::MAX).unwrap();
            prop_assert_eq!(back, h);
            prop_assert_eq!(body, &payload[..]);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes, 1 << 20);
            let _ = Header::peek_len(&bytes);
        }

        #[test]
        fn mutated_frames_are_rejected_or_identical(
            (h, payload) in arb_header(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let frame = encode_frame(&h, &payload).unwrap();
            let mut bad = frame.clone();
            for (at, mask) in &flips {
                let i = at.index(bad.len());
                bad[i] ^= mask;
            }
            if truncate {
                bad.truncate(cut.index(bad.len()));
            }
            // A corrupted frame must never decode to something silently
            // different: either an error, or (flips cancelled out) the original.
            if let Ok((back, body)) = decode_frame(&bad, u64::MAX) {
                prop_assert_eq!(back, h);
                prop_assert_eq!(body, &payload[..]);
            }
        }
    }
}
