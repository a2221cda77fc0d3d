//! MM2-compatible wire layouts of kmirror's internal records: Kafka
//! protocol structs, big-endian, strings as `int16` length + UTF-8.
//!
//! - Heartbeat key: source alias, target alias; value: version (int16 0),
//!   timestamp ms (int64).
//! - Checkpoint key: group, topic, partition (int32); value: version
//!   (int16 0), upstream offset, downstream offset (int64), metadata.
//! - OffsetSync key: topic, partition (int32); value: upstream offset,
//!   downstream offset (int64), no version.

use thiserror::Error;

/// A record that does not have the expected layout.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes ended inside a field.
    #[error("truncated record: needed {needed} more byte(s) for {field}")]
    Truncated {
        /// Field being read.
        field: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// A string field is not UTF-8 or has a negative length.
    #[error("invalid string in {0}")]
    BadString(&'static str),
    /// Bytes left after the last field.
    #[error("{0} trailing byte(s)")]
    Trailing(usize),
    /// A version this code does not know.
    #[error("unsupported version {0}")]
    Version(i16),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Truncated {
                field,
                needed: n - self.b.len(),
            });
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn i16(&mut self, f: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(
            self.take(2, f)?.try_into().expect("2 bytes"),
        ))
    }
    fn i32(&mut self, f: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(
            self.take(4, f)?.try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self, f: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(
            self.take(8, f)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self, f: &'static str) -> Result<String, DecodeError> {
        let n = self.i16(f)?;
        if n < 0 {
            return Err(DecodeError::BadString(f));
        }
        let b = self.take(n as usize, f)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::BadString(f))
    }
    fn end(self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.b.len()))
        }
    }
}

/// A heartbeat: written every `heartbeat_interval` to `heartbeats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Source cluster alias.
    pub source: String,
    /// Target cluster alias.
    pub target: String,
    /// Wall-clock time of the heartbeat, ms since the epoch.
    pub timestamp_ms: i64,
}

impl Heartbeat {
    /// Record key.
    pub fn key(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.source.len() + self.target.len());
        put_str(&mut out, &self.source);
        put_str(&mut out, &self.target);
        out
    }
    /// Record value.
    pub fn value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10);
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out
    }
    /// Decodes key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, DecodeError> {
        let mut k = Reader { b: key };
        let source = k.string("heartbeat source alias")?;
        let target = k.string("heartbeat target alias")?;
        k.end()?;
        let mut v = Reader { b: value };
        let version = v.i16("heartbeat version")?;
        if version != 0 {
            return Err(DecodeError::Version(version));
        }
        let timestamp_ms = v.i64("heartbeat timestamp")?;
        v.end()?;
        Ok(Self {
            source,
            target,
            timestamp_ms,
        })
    }
}

/// A checkpoint: a group's committed source offset and its translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Consumer group.
    pub group: String,
    /// Target topic name (as MM2 writes it).
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset on the source.
    pub upstream_offset: i64,
    /// Translated offset on the target.
    pub downstream_offset: i64,
    /// Commit metadata.
    pub metadata: String,
}

impl Checkpoint {
    /// Record key.
    pub fn key(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, &self.group);
        put_str(&mut out, &self.topic);
        out.extend_from_slice(&self.partition.to_be_bytes());
        out
    }
    /// Record value.
    pub fn value(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&self.upstream_offset.to_be_bytes());
        out.extend_from_slice(&self.downstream_offset.to_be_bytes());
        put_str(&mut out, &self.metadata);
        out
    }
    /// Decodes key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, DecodeError> {
        let mut k = Reader { b: key };
        let group = k.string("checkpoint group")?;
        let topic = k.string("checkpoint topic")?;
        let partition = k.i32("checkpoint partition")?;
        k.end()?;
        let mut v = Reader { b: value };
        let version = v.i16("checkpoint version")?;
        if version != 0 {
            return Err(DecodeError::Version(version));
        }
        let upstream_offset = v.i64("checkpoint upstream offset")?;
        let downstream_offset = v.i64("checkpoint downstream offset")?;
        let metadata = v.string("checkpoint metadata")?;
        v.end()?;
        Ok(Self {
            group,
            topic,
            partition,
            upstream_offset,
            downstream_offset,
            metadata,
        })
    }
}

/// An offset-sync point: source offset `upstream` was written at target
/// offset `downstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetSync {
    /// Source topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Source offset.
    pub upstream_offset: i64,
    /// Target offset.
    pub downstream_offset: i64,
}

impl OffsetSync {
    /// Record key.
    pub fn key(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6 + self.topic.len());
        put_str(&mut out, &self.topic);
        out.extend_from_slice(&self.partition.to_be_bytes());
        out
    }
    /// Record value.
    pub fn value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.upstream_offset.to_be_bytes());
        out.extend_from_slice(&self.downstream_offset.to_be_bytes());
        out
    }
    /// Decodes key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, DecodeError> {
        let mut k = Reader { b: key };
        let topic = k.string("offset-sync topic")?;
        let partition = k.i32("offset-sync partition")?;
        k.end()?;
        let mut v = Reader { b: value };
        let upstream_offset = v.i64("offset-sync upstream offset")?;
        let downstream_offset = v.i64("offset-sync downstream offset")?;
        v.end()?;
        Ok(Self {
            topic,
            partition,
            upstream_offset,
            downstream_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors written by hand from the layouts, not from the encoder.

    #[test]
    fn heartbeat_bytes() {
        let hb = Heartbeat {
            source: "east".into(),
            target: "west".into(),
            timestamp_ms: 0x0102_0304_0506_0708,
        };
        let key = [0, 4, b'e', b'a', b's', b't', 0, 4, b'w', b'e', b's', b't'];
        let value = [0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(hb.key(), key);
        assert_eq!(hb.value(), value);
        assert_eq!(Heartbeat::decode(&key, &value).unwrap(), hb);
    }

    #[test]
    fn checkpoint_bytes() {
        let cp = Checkpoint {
            group: "g1".into(),
            topic: "east.t".into(),
            partition: 2,
            upstream_offset: 100,
            downstream_offset: 258,
            metadata: "m".into(),
        };
        let key = [
            0, 2, b'g', b'1', 0, 6, b'e', b'a', b's', b't', b'.', b't', 0, 0, 0, 2,
        ];
        let value = [
            0, 0, // version
            0, 0, 0, 0, 0, 0, 0, 100, // upstream
            0, 0, 0, 0, 0, 0, 1, 2, // downstream = 258
            0, 1, b'm', // metadata
        ];
        assert_eq!(cp.key(), key);
        assert_eq!(cp.value(), value);
        assert_eq!(Checkpoint::decode(&key, &value).unwrap(), cp);
    }

    #[test]
    fn offset_sync_bytes() {
        let os = OffsetSync {
            topic: "t".into(),
            partition: 1,
            upstream_offset: 7,
            downstream_offset: -1,
        };
        let key = [0, 1, b't', 0, 0, 0, 1];
        let value = [
            0, 0, 0, 0, 0, 0, 0, 7, 255, 255, 255, 255, 255, 255, 255, 255,
        ];
        assert_eq!(os.key(), key);
        assert_eq!(os.value(), value);
        assert_eq!(OffsetSync::decode(&key, &value).unwrap(), os);
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(matches!(
            Heartbeat::decode(&[0, 9, b'a'], &[0, 0]),
            Err(DecodeError::Truncated { .. })
        ));
        assert_eq!(
            Heartbeat::decode(&[0, 0, 0, 0], &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Version(1))
        );
        assert_eq!(
            OffsetSync::decode(&[0, 0, 0, 0, 0, 0, 9], &[0; 16]),
            Err(DecodeError::Trailing(1))
        );
    }
}
