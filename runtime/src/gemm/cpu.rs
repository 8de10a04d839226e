//! GEMM on the CPU with the `gemm` crate, on all of rayon's threads.
//!
//! The crate multiplies f32 matrices of arbitrary row and column strides, so transposes are
//! stride swaps. bf16 operands are widened to f32 scratch first (exact), and a bf16 C is
//! computed in f32 scratch and rounded once at the end.

use std::borrow::Cow;

use ::gemm::Parallelism;
use half::bf16;
use kiln_compiler::DType;
use rayon::prelude::*;

use super::Gemm;
use crate::buffer::BufferView;
use crate::element::Element;
use crate::{Error, Result};

/// Runs a checked product (see [`super::check`]) whose operands are in host memory.
pub(super) fn run(
    spec: &Gemm,
    a: BufferView<'_>,
    b: BufferView<'_>,
    c: BufferView<'_>,
    bias: Option<BufferView<'_>>,
) -> Result<()> {
    if spec.m <= SKINNY_ROWS && spec.trans_b && !spec.trans_a && spec.k >= 8 {
        return skinny(spec, a, b, c, bias);
    }
    let a = widened(&a)?;
    let b = widened(&b)?;
    let bias = bias.as_ref().map(widened).transpose()?;
    let bias = bias.as_deref();
    match c.dtype() {
        DType::F32 => {
            // SAFETY: `check` made `c` an f32 view that overlaps no other operand.
            let out = unsafe { host_slice_mut::<f32>(&c)? };
            let read_c = match bias {
                Some(bias) => {
                    // C = beta * C + bias first, then the product is added to it.
                    out.par_chunks_mut(spec.n).for_each(|row| {
                        for (x, &b) in row.iter_mut().zip(bias) {
                            *x = if spec.beta == 0.0 {
                                b
                            } else {
                                spec.beta * *x + b
                            };
                        }
                    });
                    Some(1.0)
                }
                None => (spec.beta != 0.0).then_some(spec.beta),
            };
            multiply(spec, &a, &b, out, read_c);
        }
        DType::Bf16 => {
            // SAFETY: `check` made `c` a bf16 view that overlaps no other operand.
            let out = unsafe { host_slice_mut::<bf16>(&c)? };
            let mut acc = vec![0.0f32; out.len()];
            acc.par_chunks_mut(spec.n)
                .zip(out.par_chunks(spec.n))
                .for_each(|(row, old)| {
                    for (j, (x, old)) in row.iter_mut().zip(old).enumerate() {
                        let old = if spec.beta == 0.0 {
                            0.0
                        } else {
                            spec.beta * old.to_f32()
                        };
                        *x = old + bias.map_or(0.0, |bias| bias[j]);
                    }
                });
            let read_c = (spec.beta != 0.0 || bias.is_some()).then_some(1.0);
            multiply(spec, &a, &b, &mut acc, read_c);
            out.par_iter_mut()
                .zip(acc.par_iter())
                .for_each(|(o, &x)| *o = bf16::from_f32(x));
        }
        other => unreachable!("gemm::check admits no {other} C"),
    }
    Ok(())
}

/// The most rows of A the skinny path takes.
const SKINNY_ROWS: usize = 8;

/// `C = alpha * A Bᵀ + beta * C (+ bias)` for a few rows of A against a B stored `[n, k]`: a
/// linear layer's forward for a few tokens (a decode step). Written by hand because the `gemm`
/// crate multiplies f32 only: it would widen all of a bf16 B (every weight of the layer) into
/// scratch on every call, reading and writing it three times over where this reads it once,
/// widening each element in registers. Memory-bound: each row of B is read once for all rows of
/// A, with eight independent accumulators so the compiler vectorises the dot products.
fn skinny(
    spec: &Gemm,
    a: BufferView<'_>,
    b: BufferView<'_>,
    c: BufferView<'_>,
    bias: Option<BufferView<'_>>,
) -> Result<()> {
    let (m, n, k) = (spec.m, spec.n, spec.k);
    let a = widened(&a)?;
    let bias = bias.as_ref().map(widened).transpose()?;
    // The products, `[m, n]`, computed block of columns by block of columns in parallel.
    const COLUMNS: usize = 64;
    let blocks = n.div_ceil(COLUMNS);
    let mut scratch = vec![0.0f32; blocks * m * COLUMNS];
    let a = &*a;
    match b.dtype() {
        DType::F32 => {
            // SAFETY: the view's dtype is f32; nothing writes B during the product.
            let b = unsafe { host_slice::<f32>(&b)? };
            skinny_blocks(&mut scratch, m, n, COLUMNS, |i, j| {
                dot_f32(&a[i * k..(i + 1) * k], &b[j * k..(j + 1) * k])
            });
        }
        DType::Bf16 => {
            // SAFETY: the view's dtype is bf16; nothing writes B during the product.
            let b = unsafe { host_slice::<bf16>(&b)? };
            skinny_blocks(&mut scratch, m, n, COLUMNS, |i, j| {
                dot_bf16(&a[i * k..(i + 1) * k], &b[j * k..(j + 1) * k])
            });
        }
        other => unreachable!("gemm::check admits no {other} operand"),
    }
    let mut products = vec![0.0f32; m * n];
    for blk in 0..blocks {
        for i in 0..m {
            for jj in 0..COLUMNS.min(n - blk * COLUMNS) {
                products[i * n + blk * COLUMNS + jj] =
                    scratch[blk * m * COLUMNS + i * COLUMNS + jj];
            }
        }
    }
    let finish = |j: usize, old: f32, product: f32| {
        let old = if spec.beta == 0.0 {
            0.0
        } else {
            spec.beta * old
        };
        old + spec.alpha * product + bias.as_deref().map_or(0.0, |b| b[j])
    };
    match c.dtype() {
        DType::F32 => {
            // SAFETY: `check` made `c` an f32 view that overlaps no other operand.
            let out = unsafe { host_slice_mut::<f32>(&c)? };
            for (idx, (o, &p)) in out.iter_mut().zip(&products).enumerate() {
                *o = finish(idx % n, *o, p);
            }
        }
        DType::Bf16 => {
            // SAFETY: `check` made `c` a bf16 view that overlaps no other operand.
            let out = unsafe { host_slice_mut::<bf16>(&c)? };
            for (idx, (o, &p)) in out.iter_mut().zip(&products).enumerate() {
                *o = bf16::from_f32(finish(idx % n, o.to_f32(), p));
            }
        }
        other => unreachable!("gemm::check admits no {other} C"),
    }
    Ok(())
}

/// Fills `scratch` (`[blocks][m][columns]`) with `dot(i, j)` for every row `i` of A and column
/// `j`, one block of columns per rayon task.
fn skinny_blocks(
    scratch: &mut [f32],
    m: usize,
    n: usize,
    columns: usize,
    dot: impl Fn(usize, usize) -> f32 + Sync,
) {
    scratch
        .par_chunks_mut(m * columns)
        .enumerate()
        .for_each(|(blk, block)| {
            let j0 = blk * columns;
            for (jj, j) in (j0..(j0 + columns).min(n)).enumerate() {
                for i in 0..m {
                    block[i * columns + jj] = dot(i, j);
                }
            }
        });
}

/// The dot products, compiled twice: for AVX2 when the CPU has it (chosen at run
/// time, so one binary runs everywhere), and for the baseline x86-64 or other targets. Eight
/// independent partial sums let the compiler keep one vector register of them.
macro_rules! dot_kernel {
    ($name:ident, $simd:ident, $elem:ty, $widen:expr) => {
        fn $name(x: &[f32], y: &[$elem]) -> f32 {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { $simd(x, y) };
                }
            }
            dot_body(x, y, $widen)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $simd(x: &[f32], y: &[$elem]) -> f32 {
            dot_body(x, y, $widen)
        }
    };
}

dot_kernel!(dot_f32, dot_f32_avx2, f32, |v: f32| v);
dot_kernel!(dot_bf16, dot_bf16_avx2, bf16, |v: bf16| f32::from_bits(
    (v.to_bits() as u32) << 16
));

/// `Σ x[i] widen(y[i])` with eight partial sums.
#[inline(always)]
fn dot_body<T: Copy>(x: &[f32], y: &[T], widen: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(&a, &b)| a * widen(b))
        .sum();
    for (xs, ys) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += xs[l] * widen(ys[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out = alpha * op(a) @ op(b) + read_c * out`, where `read_c: None` leaves `out` unread.
fn multiply(spec: &Gemm, a: &[f32], b: &[f32], out: &mut [f32], read_c: Option<f32>) {
    let (m, n, k) = (spec.m, spec.n, spec.k);
    debug_assert_eq!((a.len(), b.len(), out.len()), (m * k, k * n, m * n));
    // (row stride, column stride) of op(A) and op(B) in their row-major storage.
    let (a_rs, a_cs) = if spec.trans_a { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if spec.trans_b { (1, k) } else { (n, 1) };
    // SAFETY: the three slices hold exactly `m*k`, `k*n` and `m*n` elements (asserted by
    // `check`), which is what these strides reach; `out` is a unique borrow, so it overlaps
    // neither input. The crate's `alpha` scales the destination and `beta` the product.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            read_c.is_some(),
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            read_c.unwrap_or(0.0),
            spec.alpha,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        )
    }
}

/// The elements of an f32 or bf16 view as f32: borrowed, or widened into scratch.
fn widened<'a>(view: &BufferView<'a>) -> Result<Cow<'a, [f32]>> {
    match view.dtype() {
        // SAFETY (both arms): the view's dtype is the slice's element type.
        DType::F32 => Ok(Cow::Borrowed(unsafe { host_slice::<f32>(view)? })),
        DType::Bf16 => {
            let src = unsafe { host_slice::<bf16>(view)? };
            Ok(Cow::Owned(src.par_iter().map(|x| x.to_f32()).collect()))
        }
        other => unreachable!("gemm::check admits no {other} operand"),
    }
}

/// The elements of a host view.
///
/// # Safety
/// `T` must be the view's element type, and nothing may write the view while the slice lives.
unsafe fn host_slice<'a, T: Element>(view: &BufferView<'a>) -> Result<&'a [T]> {
    let ptr = host_ptr::<T>(view)?;
    // SAFETY: the view lies inside a live, 64-byte aligned allocation of `T`s (the offset is a
    // whole number of elements); the caller excludes writers.
    Ok(unsafe { std::slice::from_raw_parts(ptr, view.len()) })
}

/// The elements of a host view, for writing.
///
/// # Safety
/// As [`host_slice`], and nothing else may read or write the view while the slice lives.
#[allow(clippy::mut_from_ref)]
unsafe fn host_slice_mut<'a, T: Element>(view: &BufferView<'a>) -> Result<&'a mut [T]> {
    let ptr = host_ptr::<T>(view)?;
    // SAFETY: as in `host_slice`; the caller excludes every other access.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, view.len()) })
}

fn host_ptr<T: Element>(view: &BufferView<'_>) -> Result<*mut T> {
    debug_assert_eq!(view.dtype(), T::DTYPE);
    view.host_ptr().map(|p| p.cast::<T>()).ok_or_else(|| {
        Error::Unsupported(format!(
            "a CPU gemm on {view:?}, which is not in host memory (internal error)"
        ))
    })
}
