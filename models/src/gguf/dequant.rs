//! Dequantization of GGUF tensor data to f32, bit for bit what llama.cpp's reference
//! `gguf.quants.dequantize` (the `gguf` Python package) computes: the same products in the same
//! order, each rounded to f32, with no fused multiply-adds.
//!
//! Block layouts (all little-endian, `d`/`m`/`dmin` are f16):
//! - Q8_0 (32): `d`, 32 × i8; `x = q · d`.
//! - Q4_0 (32): `d`, 16 bytes; element `i < 16` is the low nibble of byte `i`, `i ≥ 16` the high
//!   nibble of byte `i − 16`; `x = d · (q − 8)`.
//! - Q4_1 (32): `d`, `m`, 16 bytes as Q4_0; `x = d · q + m`.
//! - Q5_0 / Q5_1 (32): as Q4_0 / Q4_1 with a u32 `qh` of fifth bits (bit `i` for element `i`)
//!   after `d` (`m`); Q5_0 subtracts 16.
//! - Q4_K (256): `d`, `dmin`, 12 bytes packing eight 6-bit scales and mins, 128 bytes; eight
//!   sub-blocks of 32 (pairs share 32 bytes: low nibbles, then high); `x = (d·sc)·q − dmin·mn`.
//! - Q5_K (256): as Q4_K with 32 bytes of fifth bits (bit `j/32` of byte `j % 32`) before the
//!   nibbles.
//! - Q6_K (256): 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8 scales, `d` last;
//!   `x = (d·sc) · (q − 32)` with one scale per 16 elements.

use super::types::GgmlType;

/// Why some bytes could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// Kiln has no dequantization for this type.
    #[error(
        "tensors of type {0} cannot be dequantized (supported: {list})",
        list = GgmlType::supported_list()
    )]
    Unsupported(GgmlType),
    /// The bytes are not a whole number of blocks.
    #[error("{len} bytes are not whole {ty} blocks of {block} bytes")]
    Length {
        ty: GgmlType,
        len: usize,
        block: u64,
    },
}

/// Converts `bytes` of type `ty` to f32 values.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, DequantError> {
    if !ty.can_dequantize() {
        return Err(DequantError::Unsupported(ty));
    }
    let block_bytes = ty.type_size() as usize;
    if bytes.len() % block_bytes != 0 {
        return Err(DequantError::Length {
            ty,
            len: bytes.len(),
            block: ty.type_size(),
        });
    }
    let n = bytes.len() / block_bytes * ty.block_size() as usize;
    let mut out = Vec::with_capacity(n);
    let blocks = bytes.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))),
        GgmlType::Bf16 => out.extend(
            blocks.map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)),
        ),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, &mut out)),
        GgmlType::Q5_0 => blocks.for_each(|b| q5_0(b, &mut out)),
        GgmlType::Q5_1 => blocks.for_each(|b| q5_1(b, &mut out)),
        GgmlType::Q4K => blocks.for_each(|b| q4_k(b, &mut out)),
        GgmlType::Q5K => blocks.for_each(|b| q5_k(b, &mut out)),
        GgmlType::Q6K => blocks.for_each(|b| q6_k(b, &mut out)),
        _ => return Err(DequantError::Unsupported(ty)),
    }
    debug_assert_eq!(out.len(), n);
    Ok(out)
}

/// IEEE half to single precision, exact, keeping a NaN's payload bits as numpy does.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from(h >> 10) & 0x1f;
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: shift the mantissa up until its leading one is the implicit bit.
            let shift = man.leading_zeros() - 21;
            let man = (man << shift) & 0x3ff;
            sign | ((113 - shift) << 23) | (man << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
}

/// The 4-bit value of element `i` (of 32) from 16 packed bytes.
fn nibble32(qs: &[u8], i: usize) -> u8 {
    (qs[i % 16] >> (4 * (i / 16))) & 0x0f
}

fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let qs = &b[2..18];
    out.extend((0..32).map(|i| d * f32::from(nibble32(qs, i) as i8 - 8)));
}

fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qs = &b[4..20];
    out.extend((0..32).map(|i| d * f32::from(nibble32(qs, i)) + m));
}

fn fifth_bit(qh: u32, i: usize) -> u8 {
    ((qh >> i) & 1) as u8
}

fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    out.extend((0..32).map(|i| {
        let q = nibble32(qs, i) | (fifth_bit(qh, i) << 4);
        d * f32::from(q as i8 - 16)
    }));
}

fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    out.extend((0..32).map(|i| {
        let q = nibble32(qs, i) | (fifth_bit(qh, i) << 4);
        d * f32::from(q) + m
    }));
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K block from their 12 packed bytes: bytes 0–3
/// hold scales 0–3 (low 6 bits) and the top bits of scales 4–7, bytes 4–7 the same for the mins,
/// bytes 8–11 the low nibbles of scales 4–7 (low half) and mins 4–7 (high half).
fn k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[4 + j] & 0x3f;
        sc[4 + j] = (s[8 + j] & 0x0f) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

/// The 4-bit value of element `i` (of 256) of a K-quant block: sub-block pairs share 32 bytes,
/// the even sub-block in the low nibbles.
fn nibble256(qs: &[u8], i: usize) -> u8 {
    let (pair, within) = (i / 64, i % 64);
    (qs[pair * 32 + within % 32] >> (4 * (within / 32))) & 0x0f
}

fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (sc, mn) = k_scales(&b[4..16]);
    let qs = &b[16..144];
    out.extend((0..256).map(|i| {
        let sub = i / 32;
        let scale = d * f32::from(sc[sub]);
        let min = dmin * f32::from(mn[sub]);
        scale * f32::from(nibble256(qs, i)) - min
    }));
}

fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (sc, mn) = k_scales(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    out.extend((0..256).map(|i| {
        let sub = i / 32;
        let scale = d * f32::from(sc[sub]);
        let min = dmin * f32::from(mn[sub]);
        let q = nibble256(qs, i) | (((qh[i % 32] >> (i / 32)) & 1) << 4);
        scale * f32::from(q) - min
    }));
}

fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = half(b, 208);
    out.extend((0..256).map(|i| {
        // Two halves of 128; in each, 64 bytes of low nibbles (low then high) and 32 bytes of
        // high bit pairs (four 2-bit fields per byte).
        let (h, r) = (i / 128, i % 128);
        let low = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
        let high = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
        let q = (low | (high << 4)) as i8 - 32;
        let scale = d * f32::from(scales[i / 16] as i8);
        scale * f32::from(q)
    }));
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_conversion_is_exact_for_every_finite_half() {
        for h in 0..=u16::MAX {
            let ours = f16_to_f32(h);
            let reference = half::f16::from_bits(h).to_f32();
            if reference.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), reference.to_bits(), "{h:#06x}");
            }
        }
    }
}
