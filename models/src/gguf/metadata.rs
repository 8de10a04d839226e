//! GGUF metadata: the typed key-value pairs of a file's header, and getters that name the key
//! in their errors.

use crate::{Error, Result};
use std::collections::HashMap;

/// One metadata value, of any of GGUF's value types.
#[derive(Clone, Debug, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// An array; GGUF requires its elements to share one type (checked when reading).
    Array(Vec<MetadataValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetadataValue {
    /// The value as an integer, if it is one of the integer types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetadataValue::U8(v) => v.into(),
            MetadataValue::I8(v) => v.into(),
            MetadataValue::U16(v) => v.into(),
            MetadataValue::I16(v) => v.into(),
            MetadataValue::U32(v) => v.into(),
            MetadataValue::I32(v) => v.into(),
            MetadataValue::U64(v) => v.into(),
            MetadataValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float, if it is a float or an integer type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// GGUF's name of the value's type (for error messages).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetadataValue::U8(_) => "uint8",
            MetadataValue::I8(_) => "int8",
            MetadataValue::U16(_) => "uint16",
            MetadataValue::I16(_) => "int16",
            MetadataValue::U32(_) => "uint32",
            MetadataValue::I32(_) => "int32",
            MetadataValue::F32(_) => "float32",
            MetadataValue::Bool(_) => "bool",
            MetadataValue::String(_) => "string",
            MetadataValue::Array(_) => "array",
            MetadataValue::U64(_) => "uint64",
            MetadataValue::I64(_) => "int64",
            MetadataValue::F64(_) => "float64",
        }
    }
}

/// The metadata of a GGUF file, in file order, with lookups by key. Getters return
/// `Ok(None)` for a missing key and an error naming the file and key for a value of the wrong
/// type.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    /// The file the metadata came from (for error messages).
    path: String,
    entries: Vec<(String, MetadataValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub(crate) fn new(path: String) -> Metadata {
        Metadata {
            path,
            ..Metadata::default()
        }
    }

    /// Adds a pair; a key seen before is an error (llama.cpp refuses those files too).
    pub(crate) fn insert(&mut self, key: String, value: MetadataValue) -> Result<()> {
        if self.index.contains_key(&key) {
            return Err(Error::format(
                format!("{}: key `{key}`", self.path),
                "the key appears twice in the metadata",
            ));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// The file the metadata came from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The pairs in file order.
    pub fn entries(&self) -> &[(String, MetadataValue)] {
        &self.entries
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    fn wrong_type(&self, key: &str, want: &str, got: &MetadataValue) -> Error {
        Error::format(
            format!("{}: key `{key}`", self.path),
            format!("expected {want}, found a {}", got.type_name()),
        )
    }

    /// An error at `key` of this file.
    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        Error::format(format!("{}: key `{key}`", self.path), message)
    }

    /// `key` as a non-negative integer that fits `usize` (any integer type).
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = v
            .as_i128()
            .ok_or_else(|| self.wrong_type(key, "an integer", v))?;
        usize::try_from(n)
            .map(Some)
            .map_err(|_| self.error(key, format!("{n} is not a valid count or id")))
    }

    /// `key` as a float (any float or integer type).
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a number", v)),
        }
    }

    /// `key` as a boolean.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "a bool", v)),
        }
    }

    /// `key` as a string.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a string", v)),
        }
    }

    /// `key` as an array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.get_array(key, "an array of strings", |v| v.as_str())
    }

    /// `key` as an array of numbers (any float or integer element type).
    pub fn get_f64_array(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.get_array(key, "an array of numbers", MetadataValue::as_f64)
    }

    /// `key` as an array of integers (any integer element type).
    pub fn get_i128_array(&self, key: &str) -> Result<Option<Vec<i128>>> {
        self.get_array(key, "an array of integers", MetadataValue::as_i128)
    }

    fn get_array<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        each: impl Fn(&'a MetadataValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let MetadataValue::Array(items) = v else {
            return Err(self.wrong_type(key, want, v));
        };
        items
            .iter()
            .map(|item| each(item).ok_or_else(|| self.wrong_type(key, want, item)))
            .collect::<Result<Vec<T>>>()
            .map(Some)
    }
}
