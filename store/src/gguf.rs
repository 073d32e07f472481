//! A GGUF header reader: metadata scalars and tensor shapes and types, no tensor data.
//!
//! The agent reads this before spawning to estimate what a worker will hold (see
//! [`crate::estimate`]); it never loads weights. Untrusted input: counts, lengths and nesting are
//! bounded, and any malformed header is an error naming the file, never a panic or a huge
//! allocation.
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::StoreError;

/// Most tensors / metadata keys a header may declare before it is called corrupt.
const MAX_ENTRIES: u64 = 1 << 20;
/// Longest key or string value read into memory (longer values are skipped, not kept).
const MAX_KEPT_STRING: u64 = 1 << 20;
/// Most dimensions a tensor may have.
const MAX_DIMS: u32 = 8;

/// A metadata value the estimate can use; arrays keep only their length.
#[derive(Debug, Clone, PartialEq)]
pub enum MdValue {
    /// Any integer type (or bool as 0/1).
    Int(i128),
    /// `f32` or `f64`.
    Float(f64),
    /// A UTF-8 string (lossy); strings over 1 MiB are kept empty.
    Str(String),
    /// An array, by its element count.
    Array(u64),
}

/// One tensor as the header declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// `blk.0.attn_q.weight`, …
    pub name: String,
    /// GGUF order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    /// The ggml type id (`0` f32, `1` f16, `2` q4_0, `3` q4_1, `8` q8_0, `12` q4_K, …).
    pub ggml_type: u32,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// What a GGUF header says about a model.
#[derive(Debug, Clone, Default)]
pub struct GgufHeader {
    /// Metadata by key (`general.architecture`, `llama.block_count`, …).
    pub metadata: HashMap<String, MdValue>,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorInfo>,
}

impl GgufHeader {
    /// Read the header of the GGUF file at `path`.
    pub fn read(path: &Path) -> Result<Self, StoreError> {
        let f = File::open(path).map_err(|e| corrupt(path, format!("cannot open: {e}")))?;
        let mut r = BufReader::with_capacity(1 << 16, f);
        parse(&mut r).map_err(|m| corrupt(path, m))
    }

    /// An integer metadata value.
    pub fn int(&self, key: &str) -> Option<u64> {
        match self.metadata.get(key)? {
            MdValue::Int(i) => u64::try_from(*i).ok(),
            MdValue::Float(f) if *f >= 0.0 => Some(*f as u64),
            _ => None,
        }
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key)? {
            MdValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// `general.architecture` (`llama`, `gemma3`, …), empty when absent.
    pub fn architecture(&self) -> &str {
        self.string("general.architecture").unwrap_or("")
    }

    /// `<architecture>.<key>` as an integer.
    pub fn arch_int(&self, key: &str) -> Option<u64> {
        self.int(&format!("{}.{key}", self.architecture()))
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

fn corrupt(path: &Path, msg: impl std::fmt::Display) -> StoreError {
    StoreError::BadRequest(format!(
        "{} is not a readable GGUF file: {msg}",
        path.display()
    ))
}

type R<T> = Result<T, String>;

fn u32_of<Rd: Read>(r: &mut Rd) -> R<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)
        .map_err(|e| format!("header cut short ({e})"))?;
    Ok(u32::from_le_bytes(b))
}

fn u64_of<Rd: Read>(r: &mut Rd) -> R<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)
        .map_err(|e| format!("header cut short ({e})"))?;
    Ok(u64::from_le_bytes(b))
}

/// A length-prefixed string: kept when short enough, else skipped and returned empty.
fn string_of<Rd: Read + Seek>(r: &mut Rd) -> R<String> {
    let n = u64_of(r)?;
    if n > MAX_KEPT_STRING {
        skip(r, n)?;
        return Ok(String::new());
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b)
        .map_err(|e| format!("string cut short ({e})"))?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

fn skip<Rd: Seek>(r: &mut Rd, n: u64) -> R<()> {
    let n = i64::try_from(n).map_err(|_| "length out of range".to_string())?;
    r.seek(SeekFrom::Current(n)).map_err(|e| e.to_string())?;
    Ok(())
}

/// Bytes of a fixed-size scalar type, `None` for strings and arrays.
fn scalar_size(t: u32) -> Option<u64> {
    match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn scalar_of<Rd: Read>(r: &mut Rd, t: u32) -> R<MdValue> {
    let size = scalar_size(t).ok_or_else(|| format!("unknown value type {t}"))?;
    let mut b = [0u8; 8];
    r.read_exact(&mut b[..size as usize])
        .map_err(|e| format!("value cut short ({e})"))?;
    let u = u64::from_le_bytes(b);
    Ok(match t {
        0 | 7 => MdValue::Int(i128::from(b[0])),
        1 => MdValue::Int(i128::from(b[0] as i8)),
        2 => MdValue::Int(i128::from(u as u16)),
        3 => MdValue::Int(i128::from(u as u16 as i16)),
        4 => MdValue::Int(i128::from(u as u32)),
        5 => MdValue::Int(i128::from(u as u32 as i32)),
        6 => MdValue::Float(f64::from(f32::from_bits(u as u32))),
        10 => MdValue::Int(i128::from(u)),
        11 => MdValue::Int(i128::from(u as i64)),
        _ => MdValue::Float(f64::from_bits(u)),
    })
}

fn value_of<Rd: Read + Seek>(r: &mut Rd, t: u32, depth: u32) -> R<MdValue> {
    match t {
        8 => Ok(MdValue::Str(string_of(r)?)),
        9 => {
            if depth > 2 {
                return Err("arrays nested too deep".into());
            }
            let et = u32_of(r)?;
            let n = u64_of(r)?;
            match scalar_size(et) {
                Some(s) => skip(r, n.checked_mul(s).ok_or("array too long")?)?,
                None => {
                    for _ in 0..n {
                        value_of(r, et, depth + 1)?;
                    }
                }
            }
            Ok(MdValue::Array(n))
        }
        _ => scalar_of(r, t),
    }
}

fn parse<Rd: Read + Seek>(r: &mut Rd) -> R<GgufHeader> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)
        .map_err(|_| "too short".to_string())?;
    if &magic != b"GGUF" {
        return Err("no GGUF magic".into());
    }
    let version = u32_of(r)?;
    let count = |r: &mut Rd| -> R<u64> {
        let n = if version == 1 {
            u64::from(u32_of(r)?)
        } else {
            u64_of(r)?
        };
        if n > MAX_ENTRIES {
            return Err(format!("declares {n} entries"));
        }
        Ok(n)
    };
    let (n_tensors, n_kv) = (count(r)?, count(r)?);
    let mut h = GgufHeader::default();
    for _ in 0..n_kv {
        let key = string_of(r)?;
        let t = u32_of(r)?;
        let v = value_of(r, t, 0)?;
        h.metadata.insert(key, v);
    }
    for _ in 0..n_tensors {
        let name = string_of(r)?;
        let nd = u32_of(r)?;
        if nd > MAX_DIMS {
            return Err(format!("tensor `{name}` has {nd} dimensions"));
        }
        let dims = (0..nd).map(|_| u64_of(r)).collect::<R<Vec<u64>>>()?;
        let ggml_type = u32_of(r)?;
        let _offset = u64_of(r)?;
        h.tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
        });
    }
    Ok(h)
}

/// `(elements per block, bytes per block)` of a ggml type, for the types candle loads.
pub fn block_layout(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),
        1 | 30 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        9 => (32, 36),
        10 => (256, 84),
        11 => (256, 110),
        12 => (256, 144),
        13 => (256, 176),
        14 => (256, 210),
        15 => (256, 292),
        _ => return None,
    })
}

/// Bytes of `elements` values stored as `ggml_type` (unknown types counted as f32).
pub fn bytes_as(ggml_type: u32, elements: u64) -> u64 {
    let (block, size) = block_layout(ggml_type).unwrap_or((1, 4));
    elements.div_ceil(block) * size
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }

    #[test]
    fn a_small_header_reads_and_a_hostile_one_is_refused() {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(3u64.to_le_bytes()); // kv
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "llama.block_count");
        b.extend(4u32.to_le_bytes());
        b.extend(30u32.to_le_bytes());
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "a");
        s(&mut b, "bc");
        s(&mut b, "token_embd.weight");
        b.extend(2u32.to_le_bytes());
        b.extend(576u64.to_le_bytes());
        b.extend(49152u64.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let h = parse(&mut Cursor::new(b.clone())).unwrap();
        assert_eq!(h.architecture(), "llama");
        assert_eq!(h.arch_int("block_count"), Some(30));
        assert_eq!(h.metadata["tokenizer.ggml.tokens"], MdValue::Array(2));
        let t = h.tensor("token_embd.weight").unwrap();
        assert_eq!(t.elements(), 576 * 49152);
        assert_eq!(bytes_as(t.ggml_type, t.elements()), 576 * 49152 / 32 * 20);
        // Every truncation is an error, never a panic.
        for cut in 0..b.len() {
            assert!(parse(&mut Cursor::new(&b[..cut])).is_err(), "cut at {cut}");
        }
        let mut huge = b"GGUF".to_vec();
        huge.extend(3u32.to_le_bytes());
        huge.extend(u64::MAX.to_le_bytes());
        huge.extend(0u64.to_le_bytes());
        let e = parse(&mut Cursor::new(huge)).unwrap_err();
        assert!(e.contains("entries"), "{e}");
    }
}
