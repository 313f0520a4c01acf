//! The wire format of a batch sent from one worker to another, also the
//! format of a record of the receiver's inbound journal (the receiver
//! appends the bytes it received, unchanged).
//!
//! Layout: the magic bytes `SLXB`, the format version (`u16`, little
//! endian), bincode (standard configuration) of a [`BatchHeader`], then the
//! records section (`Vec<PartitionBatch>`) in the layout of [`codec`]. The
//! header comes first so that a receiver can refuse a batch (other
//! version, other topology) without reading its records.
//!
//! Version 1 wrote the records section in bincode too; version 2 had no
//! combined ranges ([`PartitionBatch::combined_from`]). A receiver accepts
//! only [`WIRE_VERSION`] from its peers, but still reads version 1 and 2
//! batches from its own inbound journal, so that a worker upgraded with
//! batches journaled but not yet applied resumes.

mod codec;

use serde::{Deserialize, Serialize};

use crate::value::{Str, Value};

/// The first bytes of every batch.
pub const MAGIC: &[u8; 4] = b"SLXB";

/// The version of the format written by this build. A receiver refuses any
/// other version from a peer (it would mean the two workers run different
/// builds).
pub const WIRE_VERSION: u16 = 3;

/// Version 2: the layout of [`codec`] without combined ranges.
const V2: u16 = 2;

/// The bincode records section of version 1, still read from journals.
const BINCODE_VERSION: u16 = 1;

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
    /// Records in the order of their offsets (strictly increasing); or,
    /// with `combined_from`, partial results.
    pub records: Vec<Record>,
    /// `Some(first)` when the records are partial results (one per key,
    /// see [`crate::operator::Combiner`]) folded from the records of this
    /// partition at offsets `first` through the records' `offset` (all the
    /// same): the receiver takes them all or, when it applied that range
    /// before, none.
    #[serde(skip)]
    pub combined_from: Option<u64>,
}

/// The offsets one partition of a batch covers (from [`validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The partition's source (stream) name.
    pub source: Str,
    /// The partition.
    pub partition: u32,
    /// The first offset covered: the first record's, or the start of the
    /// combined range.
    pub first: u64,
    /// The last record's offset.
    pub last: u64,
    /// The records are partial results.
    pub combined: bool,
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
    // Encoding into a Vec cannot fail for this type.
    bincode::serde::encode_into_std_write(header, &mut out, config())
        .expect("encoding into memory");
    codec::encode(partitions, &mut out);
    out
}

/// Decodes only the header (of a batch of this version or of version 1);
/// returns it, the version and where the records section starts.
///
/// # Errors
/// [`WireError::NoMagic`], [`WireError::Version`] for a version this build
/// cannot read, [`WireError::Malformed`].
pub fn decode_header(bytes: &[u8]) -> Result<(BatchHeader, usize), WireError> {
    let (_, header, at) = read_header(bytes)?;
    Ok((header, at))
}

fn read_header(bytes: &[u8]) -> Result<(u16, BatchHeader, usize), WireError> {
    let magic = bytes.get(..MAGIC.len()).ok_or(WireError::NoMagic)?;
    if magic != MAGIC {
        return Err(WireError::NoMagic);
    }
    let version = bytes
        .get(MAGIC.len()..PREFIX)
        .map(|v| u16::from_le_bytes([v[0], v[1]]))
        .ok_or(WireError::NoMagic)?;
    if version != WIRE_VERSION && version != V2 && version != BINCODE_VERSION {
        return Err(WireError::Version { found: version });
    }
    let (header, used) = bincode::serde::decode_from_slice(&bytes[PREFIX..], config())
        .map_err(|e| WireError::Malformed(format!("header: {e}")))?;
    Ok((version, header, PREFIX + used))
}

/// Decodes a whole batch (this version or version 1 or 2, as journaled by
/// an earlier build).
///
/// # Errors
/// As [`decode_header`]; trailing bytes are [`WireError::Malformed`].
pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
    let (version, header, at) = read_header(bytes)?;
    let partitions = if version == BINCODE_VERSION {
        decode_bincode(&bytes[at..])?
    } else {
        codec::decode(&bytes[at..], version == WIRE_VERSION)?
    };
    Ok(Batch { header, partitions })
}

fn decode_bincode(bytes: &[u8]) -> Result<Vec<PartitionBatch>, WireError> {
    let (partitions, used): (Vec<PartitionBatch>, usize) =
        bincode::serde::decode_from_slice(bytes, config())
            .map_err(|e| WireError::Malformed(format!("records: {e}")))?;
    if used != bytes.len() {
        return Err(WireError::Malformed(format!(
            "{} bytes after the records",
            bytes.len() - used
        )));
    }
    Ok(partitions)
}

/// Checks that `bytes` are a batch of this version that [`decode`] accepts,
/// without building it (no value is allocated): what a receiver does
/// before it journals a peer's batch, which it decodes only when it
/// applies it.
///
/// # Errors
/// As [`decode`]; [`WireError::Version`] for any other version than
/// [`WIRE_VERSION`].
///
/// Returns the offsets each partition with records covers.
pub fn validate(bytes: &[u8]) -> Result<Vec<Span>, WireError> {
    let (version, _, at) = read_header(bytes)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version { found: version });
    }
    codec::validate(&bytes[at..])
}

/// The offsets each partition of a decoded batch with records covers (as
/// [`validate`] returns them).
pub fn spans_of(partitions: &[PartitionBatch]) -> Vec<Span> {
    partitions
        .iter()
        .filter_map(|p| {
            let (first, last) = (p.records.first()?.offset, p.records.last()?.offset);
            Some(Span {
                source: p.source.clone(),
                partition: p.partition,
                first: p.combined_from.unwrap_or(first),
                last,
                combined: p.combined_from.is_some(),
            })
        })
        .collect()
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
            proptest::option::of(0..u64::MAX - 1),
        )
            .prop_map(|(source, partition, watermark, records, combined_from)| {
                PartitionBatch {
                    source: source.into(),
                    partition,
                    watermark,
                    records,
                    combined_from,
                }
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
            prop_assert_eq!(validate(&bytes).unwrap(), spans_of(&partitions));
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
        bytes[4] = 4;
        assert!(matches!(
            decode_header(&bytes),
            Err(WireError::Version { found: 4 })
        ));
        assert!(matches!(decode(b"JSON{}"), Err(WireError::NoMagic)));
    }

    /// Version 1 wrote the records with bincode; an upgraded worker still
    /// reads such batches from its inbound journal, but takes none from a
    /// peer.
    #[test]
    fn version_1_batches_are_read_from_journals_only() {
        let header = BatchHeader {
            signature: "sig".into(),
            sender: 2,
            session: 9,
            seq: 4,
        };
        let partitions = vec![PartitionBatch {
            source: "in".into(),
            partition: 3,
            watermark: 1_000,
            records: vec![Record {
                offset: 7,
                key_group: 12,
                key: Vec::new(),
                time: 1_700_000_000_000,
                watermark: 990,
                value: Value::Object(Map(vec![("country".into(), Value::from("NO"))])),
            }],
            combined_from: None,
        }];
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC);
        v1.extend_from_slice(&1u16.to_le_bytes());
        bincode::serde::encode_into_std_write(&header, &mut v1, config()).unwrap();
        bincode::serde::encode_into_std_write(&partitions, &mut v1, config()).unwrap();
        assert_eq!(
            decode(&v1).unwrap(),
            Batch {
                header: header.clone(),
                partitions: partitions.clone()
            }
        );
        assert_eq!(decode_header(&v1).unwrap().0, header);
        assert!(matches!(
            validate(&v1),
            Err(WireError::Version { found: 1 })
        ));
        assert_eq!(
            decode(&encode(&header, &partitions)).unwrap().partitions,
            partitions
        );
        // Version 2: the same layout without the combined range.
        let v3 = encode(&header, &partitions);
        let (_, at) = decode_header(&v3).unwrap();
        // count, source "in", partition 3, watermark 1000 (2 bytes), then the range
        let range = at + 1 + 3 + 1 + 2;
        assert_eq!(v3[range], 0);
        let mut v2 = v3.clone();
        v2.remove(range);
        v2[MAGIC.len()..PREFIX].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(decode(&v2).unwrap().partitions, partitions);
        assert!(matches!(
            validate(&v2),
            Err(WireError::Version { found: 2 })
        ));
    }

    /// A combined partition comes back with its range, and its span starts
    /// at the range's first offset.
    #[test]
    fn combined_ranges_round_trip_and_span_their_offsets() {
        let header = BatchHeader {
            signature: "s".into(),
            sender: 1,
            session: 0,
            seq: 0,
        };
        let partial = |key: &[u8]| Record {
            offset: 900,
            key_group: 3,
            key: key.to_vec(),
            time: 0,
            watermark: i64::MIN,
            value: Value::Array(vec![Value::Int(41)]),
        };
        let partitions = vec![
            PartitionBatch {
                source: "in\0agg".into(),
                partition: 1 << 20,
                watermark: 5,
                records: vec![Record {
                    offset: 99,
                    ..partial(b"")
                }],
                combined_from: None,
            },
            PartitionBatch {
                source: "in\0agg".into(),
                partition: 1 << 20,
                watermark: 5,
                records: vec![partial(b"a"), partial(b"b")],
                combined_from: Some(100),
            },
            PartitionBatch {
                source: "in".into(),
                partition: u32::MAX,
                watermark: 5,
                records: Vec::new(),
                combined_from: None,
            },
        ];
        let bytes = encode(&header, &partitions);
        assert_eq!(decode(&bytes).unwrap().partitions, partitions);
        let spans = validate(&bytes).unwrap();
        assert_eq!(spans, spans_of(&partitions));
        assert_eq!(
            spans,
            vec![
                Span {
                    source: "in\0agg".into(),
                    partition: 1 << 20,
                    first: 99,
                    last: 99,
                    combined: false
                },
                Span {
                    source: "in\0agg".into(),
                    partition: 1 << 20,
                    first: 100,
                    last: 900,
                    combined: true
                }
            ]
        );
    }

    /// More distinct field names than a batch remembers: the later ones
    /// are written in full each time, and everything comes back.
    #[test]
    fn many_field_names_round_trip() {
        let records = (0..200u64)
            .map(|i| Record {
                offset: i,
                key_group: 0,
                key: Vec::new(),
                time: 0,
                watermark: 0,
                value: Value::Object(Map(vec![
                    (format!("field_{}", i % 150).into(), Value::Int(i as i64)),
                    (
                        "common".into(),
                        Value::Array(vec![Value::Float(0.5), Value::Null]),
                    ),
                ])),
            })
            .collect();
        let partitions = vec![PartitionBatch {
            source: "in".into(),
            partition: 0,
            watermark: 0,
            records,
            combined_from: None,
        }];
        let header = BatchHeader {
            signature: "s".into(),
            sender: 0,
            session: 0,
            seq: 0,
        };
        let bytes = encode(&header, &partitions);
        validate(&bytes).unwrap();
        assert_eq!(decode(&bytes).unwrap().partitions, partitions);
    }

    #[test]
    fn deeply_nested_values_are_malformed_not_a_stack_overflow() {
        let header = BatchHeader {
            signature: "s".into(),
            sender: 0,
            session: 0,
            seq: 0,
        };
        let mut bytes = encode(&header, &[]);
        bytes.pop(); // no partitions: replace the count
                     // one partition "p", number 0, watermark 0, not combined, one record whose value
                     // is an array of an array of ... 100,000 deep
        bytes.extend_from_slice(&[1, 1, b'p', 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[7, 1]);
        }
        bytes.push(1);
        let error = decode(&bytes).unwrap_err().to_string();
        assert!(error.contains("nested too deeply"), "{error}");
        assert!(validate(&bytes).is_err());
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
            combined_from: None,
        };
        let json = serde_json::to_vec(&record).unwrap().len();
        let mut many = one.clone();
        many.records = vec![record; 101];
        let per_record = (encode(&header, &[many]).len() - encode(&header, &[one]).len()) / 100;
        // Varint integers, field names once per batch: well under half the JSON.
        assert!(
            per_record * 2 < json,
            "{per_record} bytes per record, {json} in JSON"
        );
    }

    /// A stream as the exchange carries it (W1a: one field, consecutive
    /// offsets, times a few milliseconds apart) costs 12 bytes a record:
    /// offset, time and watermark as small differences, the field name as
    /// a one-byte reference (bincode took 37).
    #[test]
    fn a_stream_costs_a_dozen_bytes_a_record() {
        let header = BatchHeader {
            signature: "s".into(),
            sender: 0,
            session: 0,
            seq: 0,
        };
        let part = |n: u64| PartitionBatch {
            source: "weather\u{1f}by_country".into(),
            partition: 1 << 20,
            watermark: 1_700_000_000_000,
            records: (0..n)
                .map(|i| Record {
                    offset: 5_000_000 + i,
                    key_group: (i * 37 % 128) as u16,
                    key: Vec::new(),
                    time: 1_700_000_000_000 + i as i64 * 7,
                    watermark: 1_699_999_998_000 + i as i64 * 7,
                    value: Value::Object(Map(vec![("country".into(), Value::from("NO"))])),
                })
                .collect(),
            combined_from: None,
        };
        let per_record =
            (encode(&header, &[part(1001)]).len() - encode(&header, &[part(1)]).len()) / 1000;
        assert_eq!(per_record, 12);
    }
}
