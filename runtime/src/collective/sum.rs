//! Host-side arithmetic of the stand-in's collectives: buffers' bytes as f32 and back, and sums
//! in rank order (so every rank computes the same bits, run after run).

use half::bf16;
use kiln_compiler::DType;

/// The f32 values of the bytes of an f32 or bf16 buffer (bf16 widened exactly).
pub(super) fn decode(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

/// The bytes of `values` as a buffer of `dtype` (f32, or bf16 rounded to nearest even).
pub(super) fn encode(dtype: DType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DType::Bf16 => values
            .iter()
            .flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The element-wise sum, in f32 and in the order given, of byte images of one dtype and
/// length.
pub(super) fn sum_in_order<'a>(dtype: DType, mut parts: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let Some(first) = parts.next() else {
        return vec![];
    };
    let mut acc = decode(dtype, first);
    for p in parts {
        for (a, x) in acc.iter_mut().zip(decode(dtype, p)) {
            *a += x;
        }
    }
    encode(dtype, &acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_round_trip_f32_and_round_bf16() {
        let a = encode(DType::F32, &[1.0, 2.5]);
        let b = encode(DType::F32, &[0.25, -1.0]);
        let s = sum_in_order(DType::F32, [a.as_slice(), b.as_slice()].into_iter());
        assert_eq!(decode(DType::F32, &s), vec![1.25, 1.5]);
        let x = encode(DType::Bf16, &[1.0, 3.0]);
        let s = sum_in_order(DType::Bf16, [x.as_slice(), x.as_slice()].into_iter());
        assert_eq!(decode(DType::Bf16, &s), vec![2.0, 6.0]);
    }
}
