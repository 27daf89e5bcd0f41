//! The model file format, version 1. All integers little-endian.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `ISPAMCLF` |
//! | 8 | 2 | format version (`u16`, 1) |
//! | 10 | 4 | total file length in bytes (`u32`), checksum included |
//! | 14 | 1 | feature set version (must match this build's extractor) |
//! | 15 | 1 | `hash_bits` |
//! | 16 | 4 | `epochs` (`u32`) |
//! | 20 | 4 | `learning_rate` (`f32`) |
//! | 24 | 4 | `l2` (`f32`) |
//! | 28 | 4 | `nb_alpha` (`f32`) |
//! | 32 | 4 | `spam_weight` (`f32`) |
//! | 36 | 8 | `target_fpr` (`f64`) |
//! | 44 | 4 | `threshold_folds` (`u32`) |
//! | 48 | 8 | `seed` (`u64`) |
//! | 56 | 8 | threshold (`f64`, in `[0, 1]`) |
//! | 64 | 4 | bias (`f32`) |
//! | 68 | 4 | weight step (`f32`, positive) |
//! | 72 | 4 | number of non-zero weights `n` (`u32`) |
//! | 76 | ... | `n` entries: gap to the previous bucket + 1 as unsigned LEB128 (the first is its bucket), then the weight as an `i16` multiple of the step |
//! | len - 4 | 4 | CRC-32 (IEEE) of all bytes before it |
//!
//! Loading checks, in order: magic, version, declared length against actual length, checksum, then every field
//! (ranges, strictly increasing buckets below `2^hash_bits`, entries ending exactly at the checksum).

use crate::features::FEATURE_SET;
use crate::model::{quantise, Model, TrainParams, MAX_HASH_BITS, MIN_HASH_BITS};

/// First eight bytes of every model file.
pub const MAGIC: [u8; 8] = *b"ISPAMCLF";
/// The file format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 76;

/// Why bytes could not be loaded as a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not a spam-classifier model (bad magic bytes)")]
    BadMagic,
    /// The format version is not [`FORMAT_VERSION`].
    #[error(
        "model format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The file is shorter than its header says, or than a header.
    #[error("model file is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Bytes present.
        actual: usize,
        /// Bytes needed.
        expected: usize,
    },
    /// The file is longer than its header says.
    #[error("model file has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Bytes beyond the declared length.
        extra: usize,
    },
    /// The checksum does not match: the file is corrupt.
    #[error(
        "model file is corrupt: checksum {computed:#010x} does not match the stored {stored:#010x}"
    )]
    Checksum {
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// The model was trained with other features than this build extracts.
    #[error("model uses feature set {found}, this build extracts feature set {supported}: retrain the model")]
    FeatureSetMismatch {
        /// Feature set in the file.
        found: u8,
        /// Feature set of this build.
        supported: u8,
    },
    /// A field has a value no trained model can have.
    #[error("model file has an invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ModelError {
    ModelError::Invalid {
        field,
        reason: reason.into(),
    }
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 as in zlib and PNG.
fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ModelError> {
        let end = self.pos + N;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| invalid("entries", "run past the checksum"))?;
        self.pos = end;
        let mut out = [0; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ModelError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ModelError> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, ModelError> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, ModelError> {
        self.take().map(u64::from_le_bytes)
    }
    fn f32(&mut self) -> Result<f32, ModelError> {
        self.take().map(f32::from_le_bytes)
    }
    fn f64(&mut self) -> Result<f64, ModelError> {
        self.take().map(f64::from_le_bytes)
    }

    fn leb128(&mut self) -> Result<u32, ModelError> {
        let mut value = 0u64;
        for shift in (0..35).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return u32::try_from(value)
                    .map_err(|_| invalid("entries", "bucket gap overflows"));
            }
        }
        Err(invalid("entries", "bucket gap longer than 5 bytes"))
    }
}

fn write_leb128(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl Model {
    /// Serialises the model (format in [`crate::codec`]). Only non-zero weights are stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        let p = &self.params;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // Length, filled in below.
        out.push(FEATURE_SET);
        out.push(p.hash_bits);
        out.extend_from_slice(&p.epochs.to_le_bytes());
        out.extend_from_slice(&p.learning_rate.to_le_bytes());
        out.extend_from_slice(&p.l2.to_le_bytes());
        out.extend_from_slice(&p.nb_alpha.to_le_bytes());
        out.extend_from_slice(&p.spam_weight.to_le_bytes());
        out.extend_from_slice(&p.target_fpr.to_le_bytes());
        out.extend_from_slice(&p.threshold_folds.to_le_bytes());
        out.extend_from_slice(&p.seed.to_le_bytes());
        out.extend_from_slice(&self.threshold.to_le_bytes());
        out.extend_from_slice(&self.bias.to_le_bytes());
        out.extend_from_slice(&self.scale.to_le_bytes());
        let count_at = out.len();
        out.extend_from_slice(&[0; 4]);
        debug_assert_eq!(out.len(), HEADER_LEN);
        let mut count = 0u32;
        let mut next = 0u32;
        for (bucket, &w) in self.weights.iter().enumerate() {
            let q = quantise(w, self.scale);
            if q != 0 {
                // Buckets are below 2^24: they fit in u32.
                let bucket = bucket as u32;
                write_leb128(&mut out, bucket - next);
                out.extend_from_slice(&q.to_le_bytes());
                next = bucket + 1;
                count += 1;
            }
        }
        out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        // A model of at most 2^24 entries of at most 6 bytes is far below 4 GiB.
        let len = (out.len() + 4) as u32;
        out[10..14].copy_from_slice(&len.to_le_bytes());
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Loads and validates a model written by [`Model::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(if MAGIC.starts_with(bytes) {
                ModelError::Truncated {
                    actual: bytes.len(),
                    expected: HEADER_LEN + 4,
                }
            } else {
                ModelError::BadMagic
            });
        }
        if bytes.len() < HEADER_LEN + 4 {
            if bytes.len() >= 10 {
                check_version(u16::from_le_bytes([bytes[8], bytes[9]]))?;
            }
            return Err(ModelError::Truncated {
                actual: bytes.len(),
                expected: HEADER_LEN + 4,
            });
        }
        let mut r = Reader {
            bytes,
            pos: MAGIC.len(),
        };
        check_version(r.u16()?)?;
        let declared = r.u32()? as usize;
        if bytes.len() < declared {
            return Err(ModelError::Truncated {
                actual: bytes.len(),
                expected: declared,
            });
        }
        if bytes.len() > declared {
            return Err(ModelError::TrailingBytes {
                extra: bytes.len() - declared,
            });
        }
        let (body, stored) = bytes.split_at(bytes.len() - 4);
        // `split_at` left exactly four bytes.
        let stored = u32::from_le_bytes(stored.try_into().expect("four bytes"));
        let computed = crc32(body);
        if stored != computed {
            return Err(ModelError::Checksum { stored, computed });
        }

        let mut r = Reader {
            bytes: body,
            pos: 14,
        };
        let feature_set = r.u8()?;
        if feature_set != FEATURE_SET {
            return Err(ModelError::FeatureSetMismatch {
                found: feature_set,
                supported: FEATURE_SET,
            });
        }
        let params = TrainParams {
            hash_bits: r.u8()?,
            epochs: r.u32()?,
            learning_rate: r.f32()?,
            l2: r.f32()?,
            nb_alpha: r.f32()?,
            spam_weight: r.f32()?,
            target_fpr: r.f64()?,
            threshold_folds: r.u32()?,
            seed: r.u64()?,
        };
        if !(MIN_HASH_BITS..=MAX_HASH_BITS).contains(&params.hash_bits) {
            return Err(invalid(
                "hash_bits",
                format!(
                    "{} is outside {MIN_HASH_BITS}..={MAX_HASH_BITS}",
                    params.hash_bits
                ),
            ));
        }
        let threshold = r.f64()?;
        if !(0.0..=1.0).contains(&threshold) {
            return Err(invalid(
                "threshold",
                format!("{threshold} is outside [0, 1]"),
            ));
        }
        let bias = r.f32()?;
        if !bias.is_finite() {
            return Err(invalid("bias", format!("{bias} is not finite")));
        }
        let scale = r.f32()?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(invalid(
                "weight step",
                format!("{scale} is not a positive number"),
            ));
        }
        let dim = 1usize << params.hash_bits;
        let count = r.u32()? as usize;
        if count > dim {
            return Err(invalid(
                "weight count",
                format!("{count} exceeds the {dim} buckets"),
            ));
        }
        let mut weights = vec![0.0f32; dim];
        let mut next = 0usize;
        for _ in 0..count {
            let bucket = next + r.leb128()? as usize;
            if bucket >= dim {
                return Err(invalid(
                    "entries",
                    format!("bucket {bucket} is beyond {dim}"),
                ));
            }
            let q = i16::from_le_bytes(r.take()?);
            if q == 0 {
                return Err(invalid(
                    "entries",
                    format!("bucket {bucket} stores a zero weight"),
                ));
            }
            weights[bucket] = f32::from(q) * scale;
            next = bucket + 1;
        }
        if r.pos != body.len() {
            return Err(invalid(
                "entries",
                format!("{} bytes left after the last entry", body.len() - r.pos),
            ));
        }
        Ok(Model {
            params,
            threshold,
            bias,
            scale,
            weights,
        })
    }
}

fn check_version(found: u16) -> Result<(), ModelError> {
    if found == FORMAT_VERSION {
        Ok(())
    } else {
        Err(ModelError::UnsupportedVersion {
            found,
            supported: FORMAT_VERSION,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    fn sample() -> Model {
        let scale = 0.01f32;
        Model {
            params: TrainParams {
                hash_bits: 10,
                ..TrainParams::default()
            },
            threshold: 0.7,
            bias: -1.5,
            scale,
            weights: (0..1024i16)
                .map(|i| {
                    if i % 3 == 0 {
                        f32::from(i % 200 - 99) * scale
                    } else {
                        0.0
                    }
                })
                .collect(),
        }
    }

    /// Recomputes the checksum after an edit, so that the field checks are reached.
    fn resealed(mut bytes: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        edit(&mut bytes);
        let n = bytes.len() - 4;
        let crc = crc32(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn invalid_field(bytes: &[u8]) -> &'static str {
        match Model::from_bytes(bytes) {
            Err(ModelError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_including_an_all_zero_model() {
        let model = sample();
        assert_eq!(Model::from_bytes(&model.to_bytes()), Ok(model.clone()));
        let zero = Model {
            weights: vec![0.0; 1024],
            ..model
        };
        let bytes = zero.to_bytes();
        assert_eq!(bytes.len(), HEADER_LEN + 4);
        assert_eq!(Model::from_bytes(&bytes), Ok(zero));
    }

    #[test]
    fn every_field_is_validated() {
        let bytes = sample().to_bytes();
        assert_eq!(
            bytes[HEADER_LEN], 0,
            "first entry is bucket 0, one LEB128 byte"
        );
        assert_eq!(
            Model::from_bytes(&resealed(bytes.clone(), |b| b[14] = FEATURE_SET + 1)),
            Err(ModelError::FeatureSetMismatch {
                found: FEATURE_SET + 1,
                supported: FEATURE_SET
            })
        );
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b[15] = 9)),
            "hash_bits"
        );
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b[15] = 25)),
            "hash_bits"
        );
        let nan = f64::NAN.to_le_bytes();
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b[56..64].copy_from_slice(&nan))),
            "threshold"
        );
        let above_one = 1.5f64.to_le_bytes();
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b[56..64].copy_from_slice(&above_one))),
            "threshold"
        );
        let inf = f32::INFINITY.to_le_bytes();
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b[64..68].copy_from_slice(&inf))),
            "bias"
        );
        let zero = 0f32.to_le_bytes();
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b[68..72].copy_from_slice(&zero))),
            "weight step"
        );
        let too_many = 1025u32.to_le_bytes();
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b[72..76].copy_from_slice(&too_many))),
            "weight count"
        );
        let one_more =
            (u32::from_le_bytes([bytes[72], bytes[73], bytes[74], bytes[75]]) + 1).to_le_bytes();
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b[72..76].copy_from_slice(&one_more))),
            "entries"
        );
        let one_less =
            (u32::from_le_bytes([bytes[72], bytes[73], bytes[74], bytes[75]]) - 1).to_le_bytes();
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b[72..76].copy_from_slice(&one_less))),
            "entries"
        );
        // The first entry moved to bucket 127 pushes the last one past bucket 1023.
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b[HEADER_LEN] = 127)),
            "entries"
        );
        assert_eq!(
            invalid_field(&resealed(bytes.clone(), |b| b
                [HEADER_LEN + 1..HEADER_LEN + 3]
                .copy_from_slice(&[0, 0]))),
            "entries"
        );
    }

    #[test]
    fn leb128_round_trip() {
        for value in [0, 1, 127, 128, 300, 1 << 21, u32::MAX] {
            let mut out = Vec::new();
            write_leb128(&mut out, value);
            let mut r = Reader {
                bytes: &out,
                pos: 0,
            };
            assert_eq!(r.leb128().unwrap(), value);
            assert_eq!(r.pos, out.len());
        }
    }
}
