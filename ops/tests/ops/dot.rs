//! `dot` of single tiles (the compiler's test kernels in `nvptx_kernels/dot.kiln`) against the
//! f64 reference: every tile shape tensor cores support, each operand plain or transposed,
//! several warp counts (tiles smaller than the warps are computed by copies), f16 operands,
//! the f32 fallback, and a loop with masked edges and an epilogue on the accumulator.

use crate::harness::{for_each_device, Harness, Tol};
use crate::reference as r;
use kiln_compiler::Source;
use kiln_runtime::Args;

const DOT: &str = include_str!("../../../compiler/tests/compiler/nvptx_kernels/dot.kiln");

/// f32 results of sums of up to 128 products of numbers below 1 (exact in f32 up to rounding
/// of the partial sums, in whatever order the hardware adds them).
const F32_SUMS: Tol = Tol {
    rel: 1e-5,
    abs: 1e-5,
};

fn source() -> Source {
    Source::new("dot.kiln", DOT)
}

include!("../../../compiler/tests/compiler/nvptx_kernels/dot_shapes.rs");

#[test]
fn dot_tile_every_shape_and_orientation() {
    for_each_device(|h: &Harness| {
        let warps: &[u32] = if h.device.is_gpu() { &[1, 4, 8] } else { &[4] };
        for &(m, n, k) in DOT_SHAPES {
            let a = h.rand_bf16(m * k, 1.0);
            let b = h.rand_bf16(k * n, 1.0);
            let bias = h.rand_f32(m * n, 1.0);
            let want: Vec<f64> = r::matmul(&a, &b, m, k, n)
                .iter()
                .zip(&bias)
                .map(|(x, y)| x + y)
                .collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                // Transposed operands are given transposed in memory.
                let a_mem = if ta {
                    r::transpose(&a, m, k)
                } else {
                    a.clone()
                };
                let b_mem = if tb {
                    r::transpose(&b, k, n)
                } else {
                    b.clone()
                };
                let (ab, bb, biasb) = (h.bf16(&a_mem), h.bf16(&b_mem), h.f32_buf(&bias));
                for &w in warps {
                    let mut c = h.poisoned_f32(m * n);
                    let defines = [
                        ("M", m as i64),
                        ("N", n as i64),
                        ("K", k as i64),
                        ("TA", ta as i64),
                        ("TB", tb as i64),
                    ];
                    h.launch_source(
                        &source(),
                        "dot_tile",
                        &defines,
                        (w, 1),
                        [1, 1, 1],
                        &Args::new()
                            .input("a", &ab)
                            .input("b", &bb)
                            .input("bias", &biasb)
                            .output("c", &mut c),
                    );
                    let what = format!("dot {m}x{n}x{k} ta={ta} tb={tb} w{w}");
                    h.assert_close(&what, &h.read(&c), &want, F32_SUMS);
                }
            }
        }
    });
}

#[test]
fn dot_f16_and_f32() {
    for_each_device(|h: &Harness| {
        let (m, n, k) = (32usize, 32usize, 32usize);
        let a = h.rand_f16(m * k, 1.0);
        let b = h.rand_f16(k * n, 1.0);
        let mut c = h.poisoned_f32(m * n);
        let (ab, bb) = (h.f16(&a), h.f16(&b));
        h.launch_source(
            &source(),
            "dot_f16",
            &[],
            (4, 1),
            [1, 1, 1],
            &Args::new()
                .input("a", &ab)
                .input("b", &bb)
                .output("c", &mut c),
        );
        let want = r::matmul(&a, &b, m, k, n);
        h.assert_close("dot f16", &h.read(&c), &want, F32_SUMS);

        let a = h.rand_f32(m * k, 1.0);
        let b = h.rand_f32(k * n, 1.0);
        let mut c = h.poisoned_f32(m * n);
        let (ab, bb) = (h.f32_buf(&a), h.f32_buf(&b));
        h.launch_source(
            &source(),
            "dot_f32",
            &[],
            (4, 1),
            [1, 1, 1],
            &Args::new()
                .input("a", &ab)
                .input("b", &bb)
                .output("c", &mut c),
        );
        let want = r::matmul(&a, &b, m, k, n);
        h.assert_close("dot f32", &h.read(&c), &want, F32_SUMS);
    });
}

/// `(a @ b) * scale` as bf16, over a loop with masks on every edge. On a GPU also with the loop
/// pipeline (`cp.async` ring of 2 and 3 stages), where a shape whose rows are 16-byte aligned
/// lets it copy the operands.
#[test]
fn dot_loop_with_ragged_edges() {
    for_each_device(|h: &Harness| {
        let mut shapes = vec![(75usize, 83usize, 45usize)];
        let (warps, stages): (&[u32], &[u32]) = if h.device.is_gpu() {
            shapes.push((75, 104, 48));
            (&[1, 2, 4, 8], &[1, 2, 3])
        } else {
            (&[4], &[1])
        };
        for (m, k, n) in shapes {
            dot_loop_case(h, (m, k, n), warps, stages);
        }
    });
}

fn dot_loop_case(h: &Harness, (m, k, n): (usize, usize, usize), warps: &[u32], stages: &[u32]) {
    let scale = 0.375;
    let a = h.rand_bf16(m * k, 1.0);
    let b = h.rand_bf16(k * n, 1.0);
    let (ab, bb) = (h.bf16(&a), h.bf16(&b));
    let want: Vec<f64> = r::matmul(&a, &b, m, k, n)
        .iter()
        .map(|x| x * scale)
        .collect();
    for &w in warps {
        for &s in stages {
            for (bm, bn, bk) in [(32i64, 32i64, 16i64), (16, 64, 32), (64, 16, 64)] {
                let mut c = h.poisoned_bf16(m * n);
                let grid = [
                    m.div_ceil(bm as usize) as u32,
                    n.div_ceil(bn as usize) as u32,
                    1,
                ];
                h.launch_source(
                    &source(),
                    "dot_loop",
                    &[("BM", bm), ("BN", bn), ("BK", bk)],
                    (w, s),
                    grid,
                    &Args::new()
                        .input("a", &ab)
                        .input("b", &bb)
                        .output("c", &mut c)
                        .i32("m", m as i32)
                        .i32("n", n as i32)
                        .i32("k", k as i32)
                        .f32("scale", scale as f32),
                );
                let what = format!("dot_loop {m}x{k}x{n} tiles {bm}x{bn}x{bk} w{w} s{s}");
                h.assert_close(
                    &what,
                    &h.read(&c),
                    &want,
                    Tol {
                        rel: 1e-2,
                        abs: 1e-2,
                    },
                );
            }
        }
    }
}
