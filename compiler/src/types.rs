//! Element types shared by the AST, the checker and the tile IR.

use std::fmt;

/// A scalar element type. Tiles, scalars and pointees all use these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    Bool,
    I32,
    I64,
    F16,
    Bf16,
    F32,
}

impl DType {
    /// All element types, in a fixed order.
    pub const ALL: [DType; 6] = [
        DType::Bool,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::Bf16,
        DType::F32,
    ];

    /// The name used in source and in the IR text form.
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::F32 => "f32",
        }
    }

    /// Parses a type name (`"bf16"`, `"i32"`, ...).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::Bf16 | DType::F32)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }

    /// Size of one element in memory, in bytes (`bool` is stored as one byte).
    pub fn size_bytes(self) -> usize {
        match self {
            DType::Bool => 1,
            DType::F16 | DType::Bf16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 => 8,
        }
    }

    /// Width in bits of the value representation (`bool` is 1).
    pub fn bits(self) -> u32 {
        match self {
            DType::Bool => 1,
            DType::F16 | DType::Bf16 => 16,
            DType::I32 | DType::F32 => 32,
            DType::I64 => 64,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
