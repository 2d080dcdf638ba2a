//! Decoding of a consumer group member's assignment as the broker reports it
//! (DescribeGroups `member_assignment`, exposed by rdkafka as
//! `GroupMemberInfo::assignment`).
//!
//! For `protocol_type = "consumer"` these bytes are the Kafka ConsumerProtocol
//! `Assignment` (all versions 0 to 3 share this non-flexible layout; v1+ only
//! appends fields we do not need, which are ignored):
//!
//! ```text
//! version:              i16
//! assigned_partitions:  i32 count, then per topic:
//!     topic:            i16 length + UTF-8 bytes
//!     partitions:       i32 count, then i32 each
//! user_data:            i32 length (-1 = null) + bytes
//! ```
//! All integers are big-endian. A count of -1 (null array) reads as empty.

use std::fmt;

/// A decoded ConsumerProtocol assignment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    /// Protocol version the assignor wrote.
    pub version: i16,
    /// Assigned partitions, per topic, in the order the assignor wrote them.
    pub topics: Vec<(String, Vec<i32>)>,
    /// Assignor user data (`None` when null or absent).
    pub user_data: Option<Vec<u8>>,
}

impl Assignment {
    /// Partitions of `topic` in this assignment, sorted (empty if none).
    pub fn partitions_of(&self, topic: &str) -> Vec<i32> {
        let mut partitions: Vec<i32> = self
            .topics
            .iter()
            .filter(|(t, _)| t == topic)
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        partitions.sort_unstable();
        partitions
    }
}

/// Why assignment bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// What was being read.
    pub field: &'static str,
    /// Byte offset where reading failed.
    pub at: usize,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "truncated or invalid ConsumerProtocol assignment: cannot read {} at byte {}",
            self.field, self.at
        )
    }
}

impl std::error::Error for DecodeError {}

/// Decodes ConsumerProtocol `Assignment` bytes. Empty input (a member that has
/// no assignment yet) decodes to an empty [`Assignment`].
pub fn decode_assignment(bytes: &[u8]) -> Result<Assignment, DecodeError> {
    if bytes.is_empty() {
        return Ok(Assignment::default());
    }
    let mut r = Reader { bytes, at: 0 };
    let version = r.i16("version")?;
    let topic_count = r.i32("topic count")?;
    let mut topics = Vec::new();
    for _ in 0..topic_count.max(0) {
        let name_len = r.i16("topic name length")?;
        let name = r.take(usize::try_from(name_len).unwrap_or(0), "topic name")?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| DecodeError {
            field: "topic name (not UTF-8)",
            at: r.at,
        })?;
        let partition_count = r.i32("partition count")?;
        let mut partitions = Vec::new();
        for _ in 0..partition_count.max(0) {
            partitions.push(r.i32("partition")?);
        }
        topics.push((name, partitions));
    }
    // user_data is absent in some encoders' output; treat end of input as null.
    let user_data = if r.at == bytes.len() {
        None
    } else {
        let len = r.i32("user data length")?;
        match usize::try_from(len) {
            Ok(len) => Some(r.take(len, "user data")?.to_vec()),
            Err(_) => None,
        }
    };
    Ok(Assignment {
        version,
        topics,
        user_data,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError { field, at: self.at })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes the way a Kafka consumer's assignor does.
    fn encode(version: i16, topics: &[(&str, &[i32])], user_data: Option<&[u8]>) -> Vec<u8> {
        let mut out = version.to_be_bytes().to_vec();
        out.extend((topics.len() as i32).to_be_bytes());
        for (topic, partitions) in topics {
            out.extend((topic.len() as i16).to_be_bytes());
            out.extend(topic.as_bytes());
            out.extend((partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                out.extend(p.to_be_bytes());
            }
        }
        match user_data {
            Some(data) => {
                out.extend((data.len() as i32).to_be_bytes());
                out.extend(data);
            }
            None => out.extend((-1i32).to_be_bytes()),
        }
        out
    }

    #[test]
    fn decodes_topics_partitions_and_user_data() {
        let bytes = encode(1, &[("orders", &[2, 0]), ("audit", &[5])], Some(b"gen7"));
        let decoded = decode_assignment(&bytes).expect("valid assignment");
        assert_eq!(
            decoded,
            Assignment {
                version: 1,
                topics: vec![("orders".into(), vec![2, 0]), ("audit".into(), vec![5])],
                user_data: Some(b"gen7".to_vec()),
            }
        );
        assert_eq!(decoded.partitions_of("orders"), vec![0, 2]);
        assert_eq!(decoded.partitions_of("missing"), Vec::<i32>::new());
    }

    #[test]
    fn null_user_data_empty_input_and_missing_user_data() {
        let bytes = encode(0, &[("t", &[0])], None);
        assert_eq!(decode_assignment(&bytes).expect("valid").user_data, None);

        assert_eq!(
            decode_assignment(&[]).expect("empty"),
            Assignment::default()
        );

        let without_user_data = &bytes[..bytes.len() - 4];
        let decoded = decode_assignment(without_user_data).expect("valid without user data");
        assert_eq!(decoded.topics, vec![("t".to_string(), vec![0])]);
        assert_eq!(decoded.user_data, None);
    }

    #[test]
    fn truncated_input_is_an_error_naming_the_field() {
        let bytes = encode(0, &[("orders", &[0, 1, 2])], None);
        // Cut inside the partition array.
        let err = decode_assignment(&bytes[..bytes.len() - 8]).expect_err("truncated");
        assert_eq!(err.field, "partition");
        let err = decode_assignment(&[0]).expect_err("one byte");
        assert_eq!(err.field, "version");
    }
}
