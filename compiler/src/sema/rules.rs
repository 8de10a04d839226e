//! The typing rules as pure functions: broadcasting of shapes and promotion of element types.

use crate::types::DType;

/// The largest number of elements a tile may have.
pub const MAX_TILE_ELEMS: u64 = 1 << 20;

/// NumPy broadcasting: shapes aligned at the right; each pair of dimensions must be equal or one of
/// them 1. Returns the broadcast shape, or `None` if the shapes are incompatible.
pub fn broadcast_shapes(a: &[u32], b: &[u32]) -> Option<Vec<u32>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[u32], i: usize| -> u32 {
        let pad = rank - s.len();
        if i < pad {
            1
        } else {
            s[i - pad]
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// An error message if a tile of `shape` holds more than [`MAX_TILE_ELEMS`] elements.
pub fn too_many_elems(shape: &[u32]) -> Option<String> {
    let numel: u64 = shape.iter().map(|&d| u64::from(d)).product();
    (numel > MAX_TILE_ELEMS).then(|| {
        format!("a tile may hold at most {MAX_TILE_ELEMS} elements, this one would hold {numel}")
    })
}

/// Can a tile of shape `from` be broadcast to exactly `to`?
pub fn broadcasts_to(from: &[u32], to: &[u32]) -> bool {
    broadcast_shapes(from, to).as_deref() == Some(to)
}

/// The common element type of two operands of an arithmetic or comparison operator, or a
/// sentence saying why there is none.
pub fn promote(a: DType, b: DType) -> Result<DType, String> {
    use DType::*;
    if a == b {
        return Ok(a);
    }
    match (a, b) {
        (I32, I64) | (I64, I32) => Ok(I64),
        (F32, F16 | Bf16) | (F16 | Bf16, F32) => Ok(F32),
        (Bf16, F16) | (F16, Bf16) => Err("`bf16` and `f16` do not mix; cast one with `as`".into()),
        (Bool, _) | (_, Bool) => Err(format!(
            "`{a}` and `{b}` do not mix; compare or cast the `bool` explicitly"
        )),
        _ => Err(format!(
            "integer and float operands do not mix (`{a}` and `{b}`); cast one with `as`"
        )),
    }
}

/// Is `n` a power of two (1, 2, 4, ...)?
pub fn is_pow2(n: i64) -> bool {
    n > 0 && (n & (n - 1)) == 0
}
