//! A strict scan of a GGUF header before candle parses it: every count and length is bounded by
//! the bytes that remain, the memory candle would spend on the metadata is bounded, and
//! `general.alignment` must be a power of two. A crafted header is then a load failure with a
//! clear message, never a panic (alignment 0) or a memory blow-up (candle turns each element of
//! a metadata array into a 32-byte value: a file that is one long byte array costs 32× its size).
//!
//! Plain `std` on purpose: the fuzz target `gguf_header` compiles this very file.
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes candle spends per metadata value (`gguf_file::Value`), before a string's bytes.
pub const VALUE_BYTES: u64 = 32;
/// Bytes of one `String`/`Vec` header (a key, a tensor name, an array).
const HEADER_BYTES: u64 = 24;
/// Metadata may never cost more memory than this.
pub const MAX_METADATA_BYTES: u64 = 256 << 20;
/// Below this, metadata is accepted whatever the file's size (tokenizer-only files).
const SMALL_METADATA_BYTES: u64 = 16 << 20;
/// Metadata may cost at most this many times the file's size (above the small floor).
const FILE_SIZE_FACTOR: u64 = 4;
/// Deepest nesting of arrays accepted (GGUF files in use have none).
const MAX_DEPTH: usize = 4;
/// Most dimensions of a tensor (as ggml).
const MAX_DIMS: u32 = 4;
/// The largest `general.alignment` accepted.
const MAX_ALIGNMENT: u64 = 1 << 20;

/// Why a GGUF header is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardError(pub String);

impl std::fmt::Display for GuardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GGUF header refused: {}", self.0)
    }
}

impl std::error::Error for GuardError {}

/// What a header that passed holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFacts {
    /// Tensors declared.
    pub tensors: u64,
    /// Metadata entries declared.
    pub metadata: u64,
    /// Memory candle's parse of the header will take, estimated from above.
    pub memory_bytes: u64,
}

/// Scan the GGUF header of the file at `path`.
pub fn check_file(path: &Path) -> Result<HeaderFacts, GuardError> {
    let f = std::fs::File::open(path).map_err(|e| GuardError(format!("cannot open: {e}")))?;
    check(&mut std::io::BufReader::new(f))
}

/// Scan the GGUF header of `bytes` (what the fuzz target and the tests call).
pub fn check_bytes(bytes: &[u8]) -> Result<HeaderFacts, GuardError> {
    check(&mut std::io::Cursor::new(bytes))
}

/// Scan the GGUF header `r` starts with; `r` is left anywhere.
pub fn check<R: Read + Seek>(r: &mut R) -> Result<HeaderFacts, GuardError> {
    let size = r.seek(SeekFrom::End(0)).map_err(io)?;
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut s = Scan {
        r,
        size,
        pos: 0,
        wide: true,
        memory: 0,
        limit: metadata_limit(size),
        alignment_seen: false,
    };
    if s.u32()? != u32::from_le_bytes(*b"GGUF") {
        return Err(GuardError("not a GGUF file (bad magic)".into()));
    }
    match s.u32()? {
        1 => s.wide = false,
        2 | 3 => {}
        v => return Err(GuardError(format!("unsupported GGUF version {v}"))),
    }
    let tensors = s.len()?;
    let metadata = s.len()?;
    // The least each entry takes on disk: a length prefix and a type (and a value or shape).
    let prefix = s.prefix();
    s.fits(metadata, prefix + 4 + 1, "metadata entries")?;
    s.fits(tensors, prefix + 4 + 4 + 8, "tensors")?;
    for _ in 0..metadata {
        let key = s.string("metadata key")?;
        let ty = s.u32()?;
        s.spend(2 * HEADER_BYTES + VALUE_BYTES + key.len() as u64, &key)?;
        if key == "general.alignment" {
            s.alignment(ty)?;
        } else {
            s.value(ty, &key, 0)?;
        }
    }
    for _ in 0..tensors {
        s.tensor()?;
    }
    Ok(HeaderFacts {
        tensors,
        metadata,
        memory_bytes: s.memory,
    })
}

/// The most memory the metadata of a file of `size` bytes may take.
pub fn metadata_limit(size: u64) -> u64 {
    size.saturating_mul(FILE_SIZE_FACTOR)
        .clamp(SMALL_METADATA_BYTES, MAX_METADATA_BYTES)
}

fn io(e: std::io::Error) -> GuardError {
    GuardError(format!("unreadable: {e}"))
}

struct Scan<'r, R> {
    r: &'r mut R,
    size: u64,
    pos: u64,
    /// Version 2 and 3 lengths are u64; version 1's are u32.
    wide: bool,
    memory: u64,
    limit: u64,
    alignment_seen: bool,
}

impl<R: Read + Seek> Scan<'_, R> {
    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GuardError> {
        let mut b = [0u8; N];
        if (N as u64) > self.remaining() {
            return Err(GuardError(format!("truncated at byte {}", self.pos)));
        }
        self.r.read_exact(&mut b).map_err(io)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, GuardError> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, GuardError> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }

    fn prefix(&self) -> u64 {
        if self.wide {
            8
        } else {
            4
        }
    }

    fn len(&mut self) -> Result<u64, GuardError> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    /// `count` items of at least `each` bytes must fit in what remains.
    fn fits(&self, count: u64, each: u64, what: &str) -> Result<(), GuardError> {
        let needed = count.saturating_mul(each);
        if needed > self.remaining() {
            return Err(GuardError(format!(
                "{count} {what} need at least {needed} bytes, only {} remain at byte {}",
                self.remaining(),
                self.pos
            )));
        }
        Ok(())
    }

    /// Count `bytes` of memory candle will spend for `key`, against the limit.
    fn spend(&mut self, bytes: u64, key: &str) -> Result<(), GuardError> {
        self.memory = self.memory.saturating_add(bytes);
        if self.memory > self.limit {
            return Err(GuardError(format!(
                "its metadata would take over {} MiB of memory (at `{}`), more than the {} MiB \
                 allowed for a file of {} bytes",
                self.memory >> 20,
                printable(key),
                self.limit >> 20,
                self.size
            )));
        }
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), GuardError> {
        self.r.seek(SeekFrom::Current(n as i64)).map_err(io)?;
        self.pos += n;
        Ok(())
    }

    /// A length-prefixed string; its bytes are skipped except for short ones (keys), returned.
    fn string(&mut self, what: &str) -> Result<String, GuardError> {
        let len = self.len()?;
        if len > self.remaining() {
            return Err(GuardError(format!(
                "{what} of {len} bytes at byte {} runs past the end of the file ({} remain)",
                self.pos,
                self.remaining()
            )));
        }
        if len > 4096 {
            self.skip(len)?;
            return Ok(format!("<{len}-byte {what}>"));
        }
        let mut b = vec![0u8; len as usize];
        self.r.read_exact(&mut b).map_err(io)?;
        self.pos += len;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// Bytes on disk of one value of scalar type `ty`; `None` for strings and arrays.
    fn scalar_size(ty: u32) -> Result<Option<u64>, GuardError> {
        Ok(match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            8 | 9 => None,
            t => return Err(GuardError(format!("unknown metadata value type {t}"))),
        })
    }

    /// One value of type `ty` belonging to `key` (its 32 bytes already counted).
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<(), GuardError> {
        match Self::scalar_size(ty)? {
            Some(n) => {
                if n > self.remaining() {
                    return Err(GuardError(format!(
                        "value of `{}` truncated",
                        printable(key)
                    )));
                }
                self.skip(n)
            }
            None if ty == 8 => {
                let len = self.len()?;
                if len > self.remaining() {
                    return Err(GuardError(format!(
                        "string of {len} bytes in `{}` runs past the end of the file ({} remain)",
                        printable(key),
                        self.remaining()
                    )));
                }
                self.spend(len, key)?;
                self.skip(len)
            }
            None => self.array(key, depth),
        }
    }

    fn array(&mut self, key: &str, depth: usize) -> Result<(), GuardError> {
        if depth >= MAX_DEPTH {
            return Err(GuardError(format!(
                "arrays nested deeper than {MAX_DEPTH} in `{}`",
                printable(key)
            )));
        }
        let ty = self.u32()?;
        let len = self.len()?;
        let least = match Self::scalar_size(ty)? {
            Some(n) => n,
            None if ty == 8 => self.prefix(),
            None => 4 + self.prefix(),
        };
        self.fits(
            len,
            least,
            &format!("array elements of `{}`", printable(key)),
        )?;
        // Each element becomes one 32-byte value in memory, whatever it takes on disk.
        self.spend(len.saturating_mul(VALUE_BYTES), key)?;
        match Self::scalar_size(ty)? {
            Some(n) => self.skip(len * n),
            None => (0..len).try_for_each(|_| self.value(ty, key, depth + 1)),
        }
    }

    /// `general.alignment`: an unsigned integer, a power of two (candle divides by it).
    fn alignment(&mut self, ty: u32) -> Result<(), GuardError> {
        let value = match ty {
            0 | 1 => u64::from(self.bytes::<1>()?[0]),
            2 | 3 => u64::from(u16::from_le_bytes(self.bytes::<2>()?)),
            4 | 5 => u64::from(self.u32()?),
            10 | 11 => self.u64()?,
            t => {
                return Err(GuardError(format!(
                    "`general.alignment` must be an unsigned integer, not of value type {t}"
                )))
            }
        };
        if matches!(ty, 1 | 3 | 5 | 11) && value >> (8 * width(ty) - 1) == 1 {
            return Err(GuardError("`general.alignment` is negative".into()));
        }
        if value == 0 || !value.is_power_of_two() || value > MAX_ALIGNMENT {
            return Err(GuardError(format!(
                "`general.alignment` is {value}; it must be a power of two from 1 to {MAX_ALIGNMENT}"
            )));
        }
        if std::mem::replace(&mut self.alignment_seen, true) {
            return Err(GuardError("`general.alignment` is given twice".into()));
        }
        Ok(())
    }

    /// One tensor's name, shape, type and offset.
    fn tensor(&mut self) -> Result<(), GuardError> {
        let name = self.string("tensor name")?;
        let dims = self.u32()?;
        if dims > MAX_DIMS {
            return Err(GuardError(format!(
                "tensor `{}` has {dims} dimensions (at most {MAX_DIMS})",
                printable(&name)
            )));
        }
        let mut elements: u64 = 1;
        for _ in 0..dims {
            let d = self.len()?;
            elements = elements
                .checked_mul(d)
                .filter(|n| *n <= 1 << 48)
                .ok_or_else(|| {
                    GuardError(format!("tensor `{}` has an absurd shape", printable(&name)))
                })?;
        }
        let _dtype = self.u32()?;
        let _offset = self.u64()?;
        let cost = 3 * HEADER_BYTES + name.len() as u64 + 8 * u64::from(dims) + 16;
        self.spend(cost, &name)
    }
}

/// Bytes of an integer value type.
fn width(ty: u32) -> u64 {
    match ty {
        0 | 1 => 1,
        2 | 3 => 2,
        4 | 5 => 4,
        _ => 8,
    }
}

/// A name from the file as a message may show it (control characters escaped, length capped).
fn printable(s: &str) -> String {
    s.chars()
        .take(128)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{DType, Device, Tensor};

    /// A GGUF v3 file written by hand: the header counts, then raw entries.
    struct Raw(Vec<u8>);

    impl Raw {
        fn new(tensors: u64, kvs: u64) -> Raw {
            let mut b = b"GGUF".to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend(tensors.to_le_bytes());
            b.extend(kvs.to_le_bytes());
            Raw(b)
        }
        fn str(mut self, s: &str) -> Raw {
            self.0.extend((s.len() as u64).to_le_bytes());
            self.0.extend(s.as_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Raw {
            self.0.extend(v.to_le_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Raw {
            self.0.extend(v.to_le_bytes());
            self
        }
        /// A key whose value is an array of `n` u8 (type 0), with `n` bytes present.
        fn byte_array(self, key: &str, n: usize) -> Raw {
            let mut r = self.str(key).u32(9).u32(0).u64(n as u64);
            r.0.resize(r.0.len() + n, 7);
            r
        }
    }

    fn refused(bytes: &[u8]) -> String {
        let e = check_bytes(bytes).unwrap_err().to_string();
        assert!(e.starts_with("GGUF header refused: "), "{e}");
        e
    }

    /// What candle makes of the same bytes: Ok, Err or a panic.
    fn candle_reads(bytes: &[u8]) -> std::thread::Result<candle_core::Result<gguf_file::Content>> {
        let bytes = bytes.to_vec();
        std::panic::catch_unwind(move || gguf_file::Content::read(&mut std::io::Cursor::new(bytes)))
    }

    /// A small valid file written by candle itself: metadata of every kind and two tensors.
    fn candle_written() -> Vec<u8> {
        let t = |n: usize| {
            let x = Tensor::zeros((n, 32), DType::F32, &Device::Cpu).unwrap();
            QTensor::quantize(&x, GgmlDType::F32).unwrap()
        };
        let (a, b) = (t(2), t(3));
        let md = [
            ("general.architecture", Value::String("llama".into())),
            ("general.alignment", Value::U32(32)),
            ("n", Value::I64(-3)),
            ("f", Value::F32(0.5)),
            ("ok", Value::Bool(true)),
            (
                "tokens",
                Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
            ),
            (
                "bytes",
                Value::Array(vec![Value::U8(1), Value::U8(2), Value::U8(3)]),
            ),
            (
                "nested",
                Value::Array(vec![Value::Array(vec![Value::U16(9)])]),
            ),
        ];
        let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &md, &[("a", &a), ("b", &b)]).unwrap();
        out.into_inner()
    }

    #[test]
    fn candle_value_is_as_large_as_counted() {
        assert_eq!(std::mem::size_of::<Value>() as u64, VALUE_BYTES);
    }

    #[test]
    fn files_candle_writes_and_the_test_model_pass() {
        let bytes = candle_written();
        let facts = check_bytes(&bytes).unwrap();
        assert_eq!((facts.tensors, facts.metadata), (2, 8));
        assert!(candle_reads(&bytes).unwrap().is_ok());
        let model = check_file(&rbee_testkit::model_path()).unwrap();
        assert!(
            model.tensors > 0 && model.memory_bytes < MAX_METADATA_BYTES,
            "{model:?}"
        );
    }

    #[test]
    fn alignment_zero_is_refused_where_candle_would_panic() {
        let bytes = Raw::new(0, 1).str("general.alignment").u32(4).u32(0).0;
        assert!(
            candle_reads(&bytes).is_err(),
            "candle panics on alignment 0"
        );
        assert!(refused(&bytes).contains("`general.alignment` is 0"));
        for bad in [3u32, 48, 1 << 30] {
            let bytes = Raw::new(0, 1).str("general.alignment").u32(4).u32(bad).0;
            assert!(refused(&bytes).contains("power of two"), "{bad}");
        }
        let string = Raw::new(0, 1).str("general.alignment").u32(8).str("32").0;
        assert!(refused(&string).contains("unsigned integer"));
        let negative = Raw::new(0, 1)
            .str("general.alignment")
            .u32(5)
            .u32(u32::MAX)
            .0;
        assert!(refused(&negative).contains("negative"));
        let fine = Raw::new(0, 1).str("general.alignment").u32(4).u32(64).0;
        check_bytes(&fine).unwrap();
    }

    #[test]
    fn byte_arrays_that_would_blow_up_in_memory_are_refused() {
        // 1 MiB of bytes on disk would be 32 MiB of values: over the 16 MiB floor.
        let bytes = Raw::new(0, 1).byte_array("junk", 1 << 20).0;
        assert!(
            refused(&bytes).contains("metadata would take over"),
            "{}",
            refused(&bytes)
        );
        // A short array is fine.
        check_bytes(&Raw::new(0, 1).byte_array("junk", 1000).0).unwrap();
        assert_eq!(metadata_limit(1 << 30), MAX_METADATA_BYTES);
        assert_eq!(metadata_limit(10 << 20), 40 << 20);
    }

    #[test]
    fn counts_and_lengths_beyond_the_file_are_refused() {
        let huge_array = Raw::new(0, 1).str("a").u32(9).u32(0).u64(u64::MAX).0;
        assert!(refused(&huge_array).contains("array elements of `a` need at least"));
        let huge_counts = Raw::new(u64::MAX, u64::MAX).0;
        assert!(refused(&huge_counts).contains("need at least"));
        let long_key = Raw::new(0, 1).u64(100).u64(0).u64(0).0;
        assert!(refused(&long_key).contains("runs past the end"));
        let long_value = Raw::new(0, 1).str("k").u32(8).u64(1 << 40).0;
        assert!(refused(&long_value).contains("runs past the end"));
        let deep = (0..6)
            .fold(Raw::new(0, 1).str("d").u32(9), |r, _| r.u32(9).u64(1))
            .0;
        assert!(refused(&deep).contains("nested deeper"));
        let dims = Raw::new(1, 0).str("t").u32(5).u64(0).u64(0).0;
        assert!(refused(&dims).contains("5 dimensions"));
        let shape = Raw::new(1, 0)
            .str("t")
            .u32(2)
            .u64(u64::MAX)
            .u64(3)
            .u32(0)
            .u64(0)
            .0;
        assert!(refused(&shape).contains("absurd shape"));
        assert!(refused(b"GGML\x03\0\0\0").contains("bad magic"));
        assert!(refused(&Raw(b"GGUF\x09\0\0\0".to_vec()).u64(0).u64(0).0).contains("version 9"));
        assert!(refused(b"GG").contains("truncated"));
    }

    #[test]
    fn every_truncation_and_byte_flip_of_a_real_header_is_safe() {
        let bytes = candle_written();
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            if check_bytes(part).is_ok() {
                assert!(candle_reads(part).is_ok(), "candle panicked at cut {cut}");
            }
        }
        for i in 0..bytes.len().min(600) {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                if check_bytes(&b).is_ok() {
                    assert!(
                        candle_reads(&b).is_ok(),
                        "candle panicked: byte {i} ^ {flip:#x}"
                    );
                }
            }
        }
    }
}
