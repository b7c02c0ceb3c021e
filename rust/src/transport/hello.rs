//! The join exchange on the first bidirectional stream: the node sends a
//! `hello` frame (token, its size limit, its name), the coordinator answers
//! with `welcome` (its size limit, its name, a fresh 32-byte challenge for
//! the node to sign in its own hello) or closes the connection.

use crate::error::{Error, Result};
use crate::wire::{self, CodecId, Header, MessageKind};

/// Bound on a hello/welcome frame, far above what they need.
pub const MAX_HELLO: usize = 8 * 1024;
const MAX_FIELD: usize = 1024;

#[derive(Debug, PartialEq, Eq)]
pub struct Hello {
    pub token: String,
    pub max_message_bytes: u64,
    pub name: String,
}

fn frame(kind: MessageKind, payload: &[u8]) -> Result<Vec<u8>> {
    let h = Header::for_payload(kind, CodecId::Raw, 0, 0, 0, Vec::new(), payload);
    wire::encode_frame(&h, payload)
}

fn put_str(out: &mut Vec<u8>, what: &str, s: &str) -> Result<()> {
    if s.len() > MAX_FIELD {
        return Err(Error::InvalidArgument(format!(
            "{what} of {} bytes exceeds {MAX_FIELD}",
            s.len()
        )));
    }
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Error::Frame("join message is truncated".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn string(&mut self) -> Result<String> {
        let b = self.take(2)?;
        let n = u16::from_le_bytes([b[0], b[1]]) as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| Error::Frame("join message holds a non-UTF-8 string".into()))
    }
}

fn open(buf: &[u8], kind: MessageKind) -> Result<&[u8]> {
    let (h, payload) = wire::decode_frame(buf, MAX_HELLO as u64)?;
    if h.kind != kind {
        return Err(Error::Frame(format!(
            "expected a {} frame, got {}",
            kind.name(),
            h.kind.name()
        )));
    }
    Ok(payload)
}

impl Hello {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut p = Vec::new();
        put_str(&mut p, "token", &self.token)?;
        p.extend_from_slice(&self.max_message_bytes.to_le_bytes());
        put_str(&mut p, "name", &self.name)?;
        frame(MessageKind::Hello, &p)
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader(open(buf, MessageKind::Hello)?);
        Ok(Hello {
            token: r.string()?,
            max_message_bytes: r.u64()?,
            name: r.string()?,
        })
    }
}

/// Bytes in a join challenge.
pub const CHALLENGE_LEN: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub struct Welcome {
    pub max_message_bytes: u64,
    pub name: String,
    /// Fresh for every connection: what the node signs, so its hello cannot
    /// be replayed on another connection.
    pub challenge: [u8; CHALLENGE_LEN],
}

impl Welcome {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut p = self.max_message_bytes.to_le_bytes().to_vec();
        put_str(&mut p, "name", &self.name)?;
        p.extend_from_slice(&self.challenge);
        frame(MessageKind::Welcome, &p)
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader(open(buf, MessageKind::Welcome)?);
        Ok(Welcome {
            max_message_bytes: r.u64()?,
            name: r.string()?,
            challenge: r.take(CHALLENGE_LEN)?.try_into().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let h = Hello {
            token: "s3cret".into(),
            max_message_bytes: 1 << 20,
            name: "node-3".into(),
        };
        let buf = h.encode().unwrap();
        assert_eq!(Hello::decode(&buf).unwrap(), h);
        assert!(Welcome::decode(&buf).is_err());
        assert!(Hello::decode(&buf[..buf.len() - 1]).is_err());
        let w = Welcome {
            max_message_bytes: 9,
            name: "coordinator".into(),
            challenge: [7; CHALLENGE_LEN],
        };
        assert_eq!(Welcome::decode(&w.encode().unwrap()).unwrap(), w);
    }
}
