//! f32 values to the GGUF element types Kiln writes (F32, F16, BF16, Q8_0), bit for bit what
//! llama.cpp's reference `gguf.quants.quantize` (the `gguf` Python package) computes; the
//! inverse of [`super::dequantize`] for these types.
//!
//! - F16: IEEE half, rounded to nearest even (overflow to infinity), as numpy's `astype`.
//! - BF16: the top 16 bits rounded to nearest even; a NaN keeps its sign and top bits and is
//!   made quiet (`ggml_compute_fp32_to_bf16`).
//! - Q8_0 (blocks of 32): `d = max|x| / 127` (f32), `q = round(x · (1/d))` rounded half away
//!   from zero (0 where `d = 0`), `d` stored as f16.

use super::types::GgmlType;

/// The types [`quantize`] produces.
pub const ENCODABLE: &[GgmlType] = &[GgmlType::F32, GgmlType::F16, GgmlType::Bf16, GgmlType::Q8_0];

/// Why some values could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantizeError {
    /// Kiln does not write this type.
    #[error("Kiln cannot write tensors of type {0} (it writes F32, F16, BF16 and Q8_0)")]
    Unsupported(GgmlType),
    /// The values are not whole blocks.
    #[error("{len} values are not whole {ty} blocks of {block}")]
    Length {
        ty: GgmlType,
        len: usize,
        block: u64,
    },
}

/// Encodes `values` as `ty` (little-endian bytes).
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, QuantizeError> {
    if !ENCODABLE.contains(&ty) {
        return Err(QuantizeError::Unsupported(ty));
    }
    let block = ty.block_size() as usize;
    if values.len() % block != 0 {
        return Err(QuantizeError::Length {
            ty,
            len: values.len(),
            block: ty.block_size(),
        });
    }
    let mut out = Vec::with_capacity(values.len() / block * ty.type_size() as usize);
    match ty {
        GgmlType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => values
            .iter()
            .for_each(|&v| out.extend(f32_to_f16(v).to_le_bytes())),
        GgmlType::Bf16 => values
            .iter()
            .for_each(|&v| out.extend(f32_to_bf16(v).to_le_bytes())),
        GgmlType::Q8_0 => values.chunks_exact(32).for_each(|b| q8_0(b, &mut out)),
        _ => return Err(QuantizeError::Unsupported(ty)),
    }
    Ok(out)
}

/// f32 to IEEE half, rounded to nearest even.
pub fn f32_to_f16(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

/// f32 to bfloat16 as ggml rounds it: nearest even, NaNs made quiet.
pub fn f32_to_bf16(v: f32) -> u16 {
    let mut n = u64::from(v.to_bits());
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((n + (0x7fff + ((n >> 16) & 1))) >> 16) as u16
}

fn q8_0(block: &[f32], out: &mut Vec<u8>) {
    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    out.extend(f32_to_f16(d).to_le_bytes());
    // f32::round is round half away from zero, numpy's `np_roundf` in gguf.quants.
    out.extend(block.iter().map(|&x| (x * id).round() as i8 as u8));
}
