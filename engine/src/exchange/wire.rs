//! The wire format of a batch sent from one worker to another, also the
//! format of a record of the receiver's inbound journal (the receiver
//! appends the bytes it received, unchanged).
//!
//! Layout: the magic bytes `SLXB`, the format version (`u16`, little
//! endian), then bincode (standard configuration) of a [`BatchHeader`]
//! followed by bincode of the partitions (`Vec<PartitionBatch>`). The header
//! comes first so that a receiver can refuse a batch (other version, other
//! topology) without decoding its records.

use serde::{Deserialize, Serialize};

use crate::value::{Str, Value};

/// The first bytes of every batch.
pub const MAGIC: &[u8; 4] = b"SLXB";

/// The version of the format written by this build. A receiver refuses any
/// other version (it would mean the two workers run different builds).
pub const WIRE_VERSION: u16 = 1;

/// Who sent a batch and where it stands in the sender's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// The topology signature: both workers must compute the same one.
    pub signature: Str,
    /// The sender's worker id.
    pub sender: u32,
    /// Identifies one run of the sender process; larger for a later run
    /// (the start time in nanoseconds). A restarted sender starts a new
    /// session at `seq` 0.
    pub session: u64,
    /// The batch's number in its session to this receiver: 0, 1, 2...
    pub seq: u64,
}

/// The records and watermark of one source partition in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionBatch {
    /// The source's name in the pipeline.
    pub source: Str,
    /// The partition within the source (Kafka partition, the HTTP journal of
    /// one worker, a file...).
    pub partition: u32,
    /// The sender's watermark of this partition after these records: a
    /// heartbeat when `records` is empty.
    pub watermark: i64,
    /// Records in the order of their offsets (strictly increasing).
    pub records: Vec<Record>,
}

/// One keyed record. Its id is `(source, partition, offset)`: a position in
/// the source, the same whichever worker reads it and however often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The position in the source partition (Kafka offset, journal sequence,
    /// byte offset...).
    pub offset: u64,
    /// The key group of `key`; decides the receiving worker.
    pub key_group: u16,
    /// The encoded group key (see [`crate::keys`]).
    pub key: Vec<u8>,
    /// Event time, epoch milliseconds.
    pub time: i64,
    /// The row's watermark stamp (see [`crate::batch::RowMeta::watermark`]).
    pub watermark: i64,
    /// The row after decoding, filtering and mapping.
    pub value: Value,
}

/// A decoded batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Who sent it and its place in the sender's stream.
    pub header: BatchHeader,
    /// The records and watermark of each source partition it carries.
    pub partitions: Vec<PartitionBatch>,
}

/// Why bytes are not a batch this build can read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not an exchange batch (no `SLXB` magic)")]
    NoMagic,
    #[error("exchange format version {found}, this worker speaks version {WIRE_VERSION}")]
    /// Another format version than [`WIRE_VERSION`].
    Version {
        /// The version the bytes carry.
        found: u16,
    },
    /// The header or the records do not decode; the text says which.
    #[error("malformed exchange batch: {0}")]
    Malformed(String),
}

const PREFIX: usize = MAGIC.len() + 2;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a batch.
pub fn encode(header: &BatchHeader, partitions: &[PartitionBatch]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    // Encoding into a Vec cannot fail for these types.
    bincode::serde::encode_into_std_write(header, &mut out, config())
        .and_then(|_| bincode::serde::encode_into_std_write(partitions, &mut out, config()))
        .expect("encoding into memory");
    out
}

/// Decodes only the header; returns it and where the partitions start.
///
/// # Errors
/// [`WireError::NoMagic`], [`WireError::Version`] for another version,
/// [`WireError::Malformed`].
pub fn decode_header(bytes: &[u8]) -> Result<(BatchHeader, usize), WireError> {
    let magic = bytes.get(..MAGIC.len()).ok_or(WireError::NoMagic)?;
    if magic != MAGIC {
        return Err(WireError::NoMagic);
    }
    let version = bytes
        .get(MAGIC.len()..PREFIX)
        .map(|v| u16::from_le_bytes([v[0], v[1]]))
        .ok_or(WireError::NoMagic)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version { found: version });
    }
    let (header, used) = bincode::serde::decode_from_slice(&bytes[PREFIX..], config())
        .map_err(|e| WireError::Malformed(format!("header: {e}")))?;
    Ok((header, PREFIX + used))
}

/// Decodes a whole batch.
///
/// # Errors
/// As [`decode_header`]; trailing bytes are [`WireError::Malformed`].
pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
    let (header, at) = decode_header(bytes)?;
    let (partitions, used): (Vec<PartitionBatch>, usize) =
        bincode::serde::decode_from_slice(&bytes[at..], config())
            .map_err(|e| WireError::Malformed(format!("records: {e}")))?;
    if at + used != bytes.len() {
        return Err(WireError::Malformed(format!(
            "{} bytes after the records",
            bytes.len() - at - used
        )));
    }
    Ok(Batch { header, partitions })
}

/// Checks that [`decode`] would accept `bytes`, without building the batch
/// (nothing is allocated): what a receiver does before it journals a
/// batch, which it decodes only when it applies it.
///
/// # Errors
/// As [`decode`].
pub fn validate(bytes: &[u8]) -> Result<(), WireError> {
    let (_, at) = decode_header(bytes)?;
    let (_, used): (skip::Seq<skip::Partition<'_>>, usize) =
        bincode::serde::borrow_decode_from_slice(&bytes[at..], config())
            .map_err(|e| WireError::Malformed(format!("records: {e}")))?;
    if at + used != bytes.len() {
        return Err(WireError::Malformed(format!(
            "{} bytes after the records",
            bytes.len() - at - used
        )));
    }
    Ok(())
}

/// Types with the serialized layout of [`PartitionBatch`], [`Record`] and
/// [`Value`] (same fields and variants, in the same order) that read and
/// drop what they decode, borrowing strings from the input.
mod skip {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Deserialize;

    /// A sequence of `T`, each decoded and dropped.
    pub(super) struct Seq<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Each<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for Each<T> {
                type Value = Seq<T>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a sequence")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seq<T>, A::Error> {
                    while seq.next_element::<T>()?.is_some() {}
                    Ok(Seq(PhantomData))
                }
            }
            d.deserialize_seq(Each(PhantomData))
        }
    }

    /// [`super::PartitionBatch`].
    #[derive(Deserialize)]
    pub(super) struct Partition<'a> {
        _source: &'a str,
        _partition: u32,
        _watermark: i64,
        #[serde(borrow)]
        _records: Seq<Record<'a>>,
    }

    /// [`super::Record`].
    #[derive(Deserialize)]
    struct Record<'a> {
        _offset: u64,
        _key_group: u16,
        _key: Seq<u8>,
        _time: i64,
        _watermark: i64,
        #[serde(borrow)]
        _value: Value<'a>,
    }

    /// [`crate::value::Value`] (an object is a [`crate::value::Map`], a
    /// newtype over its fields).
    #[derive(Deserialize)]
    enum Value<'a> {
        Missing,
        Null,
        Bool(#[allow(dead_code)] bool),
        Int(#[allow(dead_code)] i64),
        Float(#[allow(dead_code)] f64),
        Str(#[allow(dead_code)] &'a str),
        Array(#[serde(borrow)] Seq<Value<'a>>),
        Object(#[serde(borrow)] Seq<(&'a str, Value<'a>)>),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::value::Map;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Missing),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            (-1e12f64..1e12).prop_map(Value::Float),
            "[a-z0-9 é]{0,40}".prop_map(|s| Value::from(s.as_str())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-z]{1,8}", inner), 0..4).prop_map(|fields| {
                    Value::Object(Map(fields
                        .into_iter()
                        .map(|(k, v)| (k.into(), v))
                        .collect()))
                }),
            ]
        })
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            any::<u64>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..30),
            any::<i64>(),
            any::<i64>(),
            value(),
        )
            .prop_map(|(offset, key_group, key, time, watermark, value)| Record {
                offset,
                key_group,
                key,
                time,
                watermark,
                value,
            })
    }

    fn partition() -> impl Strategy<Value = PartitionBatch> {
        (
            "[a-z_]{1,12}",
            any::<u32>(),
            any::<i64>(),
            proptest::collection::vec(record(), 0..8),
        )
            .prop_map(|(source, partition, watermark, records)| PartitionBatch {
                source: source.into(),
                partition,
                watermark,
                records,
            })
    }

    fn header() -> impl Strategy<Value = BatchHeader> {
        ("[0-9a-f]{0,16}", any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(signature, sender, session, seq)| BatchHeader {
                signature: signature.into(),
                sender,
                session,
                seq,
            },
        )
    }

    proptest! {
        #[test]
        fn batches_round_trip(header in header(), partitions in proptest::collection::vec(partition(), 0..4)) {
            let bytes = encode(&header, &partitions);
            let (h, _) = decode_header(&bytes).unwrap();
            prop_assert_eq!(&h, &header);
            let batch = decode(&bytes).unwrap();
            prop_assert_eq!(batch, Batch { header, partitions });
        }

        #[test]
        fn truncated_batches_are_refused(header in header(), partitions in proptest::collection::vec(partition(), 1..3), cut in 1usize..64) {
            let bytes = encode(&header, &partitions);
            let cut = cut.min(bytes.len());
            prop_assert!(decode(&bytes[..bytes.len() - cut]).is_err());
            prop_assert!(validate(&bytes[..bytes.len() - cut]).is_err());
        }

        /// What a receiver journals after [`validate`] is what [`decode`]
        /// accepts: whole batches, and damaged ones (a byte changed, bytes
        /// added) alike.
        #[test]
        fn validate_accepts_exactly_what_decode_accepts(
            header in header(),
            partitions in proptest::collection::vec(partition(), 0..4),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let bytes = encode(&header, &partitions);
            prop_assert!(validate(&bytes).is_ok());
            let mut damaged = bytes.clone();
            let i = at.index(damaged.len());
            damaged[i] = byte;
            damaged.extend_from_slice(&extra);
            prop_assert_eq!(validate(&damaged).is_ok(), decode(&damaged).is_ok());
        }
    }

    #[test]
    fn another_version_is_refused_before_decoding() {
        let header = BatchHeader {
            signature: "abc".into(),
            sender: 1,
            session: 2,
            seq: 3,
        };
        let mut bytes = encode(&header, &[]);
        bytes[4] = 2;
        assert!(matches!(
            decode_header(&bytes),
            Err(WireError::Version { found: 2 })
        ));
        assert!(matches!(decode(b"JSON{}"), Err(WireError::NoMagic)));
    }

    #[test]
    fn values_are_compact() {
        let record = Record {
            offset: 1000,
            key_group: 77,
            key: vec![6, 2, b'G', b'T'],
            time: 1_700_000_000_000,
            watermark: 1_699_999_999_000,
            value: Value::Object(Map(vec![
                ("station".into(), Value::from("GT")),
                ("temp".into(), Value::Int(21)),
            ])),
        };
        let header = BatchHeader {
            signature: "s".into(),
            sender: 0,
            session: 0,
            seq: 0,
        };
        let one = PartitionBatch {
            source: "in".into(),
            partition: 0,
            watermark: 0,
            records: vec![record.clone()],
        };
        let json = serde_json::to_vec(&record).unwrap().len();
        let mut many = one.clone();
        many.records = vec![record; 101];
        let per_record = (encode(&header, &[many]).len() - encode(&header, &[one]).len()) / 100;
        // Varint integers, no field names: well under half the JSON.
        assert!(
            per_record * 2 < json,
            "{per_record} bytes per record, {json} in JSON"
        );
    }
}
