//! Latency histograms as text: HDR V2 (the format every HdrHistogram implementation reads),
//! base64, one per [`Latency`] by name. The `--report` JSON carries them so that reports of
//! several processes or machines add up exactly (`mpush-fleet report merge`), and the
//! supervisor's workers stream them the same way.
//!
//! Decoding takes input that may lie: the header is checked before anything is allocated
//! (bounds must be this crate's, the payload length must match the bytes present), so a
//! broken report is an error naming the histogram, never a panic or a 4 GiB allocation.

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use hdrhistogram::Histogram;

use super::latencies::MAX_MICROS;
use super::{Latencies, Latency};

/// The V2 format's cookie (uncompressed, with the word-size bits every V2 writer sets),
/// big-endian, at the start of every histogram.
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
/// Cookie, payload length, normalizing offset, digits, lowest, highest, int-to-double ratio.
const V2_HEADER: usize = 40;
/// Significant digits of every histogram of [`Latencies`].
const DIGITS: u32 = 3;

/// A histogram that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum HdrError {
    /// Not base64.
    #[error("histogram {name}: not base64 ({why})")]
    Base64 {
        /// The latency's name.
        name: String,
        /// What base64 said.
        why: String,
    },
    /// Not an uncompressed HDR V2 histogram of this crate's bounds.
    #[error("histogram {name}: {why}")]
    Format {
        /// The latency's name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A name that is no [`Latency`].
    #[error("histogram {0:?}: no such latency")]
    Unknown(String),
}

/// One histogram as base64 HDR V2.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail, and the histogram's counts fit the format (its
    // length field is a u32 and our histograms have about 45,000 counts).
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .expect("a V2 histogram serialises into memory");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes one base64 HDR V2 histogram of this crate's bounds (1 us .. 1 h, 3 digits).
///
/// # Errors
///
/// Bad base64, a compressed or foreign histogram, a length that does not match, or counts
/// that do not decode.
pub fn decode(name: &str, text: &str) -> Result<Histogram<u64>, HdrError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| HdrError::Base64 {
            name: name.into(),
            why: e.to_string(),
        })?;
    let bad = |why: String| HdrError::Format {
        name: name.into(),
        why,
    };
    if bytes.len() < V2_HEADER {
        return Err(bad(format!(
            "{} bytes, shorter than a V2 header",
            bytes.len()
        )));
    }
    let u32_at =
        |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
    if u32_at(0) != V2_COOKIE {
        return Err(bad(format!(
            "cookie {:#x} is not an uncompressed HDR V2 histogram",
            u32_at(0)
        )));
    }
    let payload = u32_at(4) as usize;
    if payload != bytes.len() - V2_HEADER {
        return Err(bad(format!(
            "payload length {payload} but {} bytes follow the header",
            bytes.len() - V2_HEADER
        )));
    }
    let (digits, low, high) = (u32_at(12), u64_at(16), u64_at(24));
    if (digits, low, high) != (DIGITS, 1, MAX_MICROS) {
        return Err(bad(format!(
            "bounds {low}..{high} with {digits} digits, not mpush-fleet's 1..{MAX_MICROS} \
             with {DIGITS}"
        )));
    }
    no_overflowing_run(&bytes[V2_HEADER..]).map_err(|why| bad(why.into()))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| bad(format!("{e:?}")))
}

/// Scans the counts (zig-zag LEB128 varints of at most 9 bytes, the 9th of 8 bits; a negative
/// number is a run of zeros) for the one value hdrhistogram 7.6's decoder panics on instead
/// of returning an error: a run of `i64::MIN` zeros, whose negation overflows.
fn no_overflowing_run(payload: &[u8]) -> Result<(), &'static str> {
    let mut bytes = payload.iter();
    while bytes.len() > 0 {
        let mut v: u64 = 0;
        for n in 0..9 {
            let Some(&b) = bytes.next() else {
                return Err("the last count is cut off");
            };
            if n == 8 {
                v |= u64::from(b) << 56;
                break;
            }
            v |= u64::from(b & 0x7f) << (7 * n);
            if b & 0x80 == 0 {
                break;
            }
        }
        if v == u64::MAX {
            return Err("a run of 2^63 zeros");
        }
    }
    Ok(())
}

impl Latencies {
    /// Every histogram, base64 HDR V2, by latency name.
    pub fn encode(&self) -> BTreeMap<&'static str, String> {
        Latency::ALL
            .iter()
            .map(|&l| (l.name(), encode(self.get(l))))
            .collect()
    }

    /// Histograms from their names and base64 HDR V2 text; a latency left out is empty.
    ///
    /// # Errors
    ///
    /// An unknown name or a histogram that does not decode.
    pub fn decode<'a>(
        encoded: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Latencies, HdrError> {
        let mut out = Latencies::default();
        for (name, text) in encoded {
            let which = Latency::ALL
                .into_iter()
                .find(|l| l.name() == name)
                .ok_or_else(|| HdrError::Unknown(name.into()))?;
            let h = decode(name, text)?;
            // Same bounds as ours (checked in decode): the addition cannot fail, but a
            // failure is still an error here, not a panic.
            out.hist_mut(which).add(&h).map_err(|e| HdrError::Format {
                name: name.into(),
                why: format!("{e:?}"),
            })?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Latencies {
        let mut l = Latencies::default();
        for us in [1, 800, 1_200, 1_500, 2_000, 3_600_000_000] {
            l.record(Latency::Connect, us);
        }
        l.record(Latency::Handshake, 25_000);
        l
    }

    #[test]
    fn histograms_round_trip_exactly() {
        let l = sample();
        let text = l.encode();
        assert_eq!(text.len(), Latency::ALL.len());
        let back = Latencies::decode(text.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
        for w in Latency::ALL {
            assert_eq!(back.get(w), l.get(w), "{}", w.name());
        }
    }

    #[test]
    fn decoded_histograms_add_up() {
        let (a, b) = (sample(), sample());
        let mut sum = a.clone();
        sum.merge(&b);
        let mut decoded = Latencies::decode(
            a.encode()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<Vec<_>>()
                .iter()
                .map(|(k, v)| (*k, v.as_str())),
        )
        .unwrap();
        decoded.merge(&b);
        assert_eq!(decoded.get(Latency::Connect), sum.get(Latency::Connect));
        assert_eq!(decoded.get(Latency::Connect).len(), 12);
    }

    #[test]
    fn lies_are_errors_not_panics() {
        let good = encode(sample().get(Latency::Connect));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&good)
            .unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut huge_len = raw.clone();
        huge_len[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut other_bounds = raw.clone();
        other_bounds[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
        let mut garbage = raw[..V2_HEADER].to_vec();
        garbage.extend([0xff; 9]);
        garbage[4..8].copy_from_slice(&9u32.to_be_bytes());
        for (what, text) in [
            ("not base64", "%%%".to_string()),
            ("empty", String::new()),
            ("short", b64(&raw[..10])),
            ("truncated", b64(&raw[..raw.len() - 1])),
            ("huge length", b64(&huge_len)),
            ("other bounds", b64(&other_bounds)),
            ("garbage counts", b64(&garbage)),
        ] {
            assert!(decode("connect", &text).is_err(), "{what} decoded");
        }
        assert!(Latencies::decode([("warp", good.as_str())]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_counts_decode_or_fail_without_panic(
            counts in proptest::collection::vec(proptest::num::u8::ANY, 0..48)
        ) {
            let mut raw = base64::engine::general_purpose::STANDARD
                .decode(encode(&Histogram::new_with_bounds(1, MAX_MICROS, 3).unwrap()))
                .unwrap();
            raw.truncate(V2_HEADER);
            raw[4..8].copy_from_slice(&(counts.len() as u32).to_be_bytes());
            raw.extend(&counts);
            let _ = decode("connect", &base64::engine::general_purpose::STANDARD.encode(raw));
        }
    }
}
