//! One test per kernel. Outputs are poisoned (NaN) before each launch so an unwritten element
//! fails. Tolerances: bf16 outputs within 1e-2 relative (8 mantissa bits, plus f32 rounding);
//! f32 outputs within 1e-5 relative plus an absolute term for sums of many terms.

use crate::gradcheck::added;
use crate::harness::{for_each_device, Harness, Tol};
use crate::reference as r;
use kiln_runtime::Args;

const BF16: Tol = Tol {
    rel: 1e-2,
    abs: 1e-2,
};
const F32: Tol = Tol {
    rel: 1e-5,
    abs: 1e-6,
};

#[test]
fn rmsnorm_fwd() {
    for_each_device(|h: &Harness| {
        for (rows, n, block) in [(37usize, 896usize, 1024i64), (5, 1000, 1024), (3, 64, 64)] {
            let x = h.rand_bf16(rows * n, 2.0);
            let w = h.rand_bf16(n, 1.0);
            let (y_ref, rstd_ref) = r::rmsnorm_fwd(&x, &w, n, 1e-6);
            let (xb, wb) = (h.bf16(&x), h.bf16(&w));
            let mut y = h.poisoned_bf16(rows * n);
            let mut rstd = h.poisoned_f32(rows);
            h.launch(
                "rmsnorm.kiln",
                "rmsnorm_fwd",
                &[("BLOCK", block)],
                [rows as u32, 1, 1],
                &Args::new()
                    .input("x", &xb)
                    .input("w", &wb)
                    .output("y", &mut y)
                    .output("rstd", &mut rstd)
                    .i32("n", n as i32)
                    .f32("eps", 1e-6),
            );
            h.assert_close("y", &h.read(&y), &y_ref, BF16);
            h.assert_close(
                "rstd",
                &h.read(&rstd),
                &rstd_ref,
                Tol {
                    rel: 1e-4,
                    abs: 0.0,
                },
            );
        }
    });
}

#[test]
fn rmsnorm_bwd() {
    for_each_device(|h: &Harness| {
        let (rows, n, rows_per_prog) = (45usize, 200usize, 16usize);
        let x = h.rand_bf16(rows * n, 2.0);
        let w = h.rand_bf16(n, 1.0);
        let dy = h.rand_bf16(rows * n, 1.0);
        let (dx_ref, dw_ref) = r::rmsnorm_bwd(&x, &w, &dy, n, 1e-6);
        let (_, rstd_ref) = r::rmsnorm_fwd(&x, &w, n, 1e-6);
        let (xb, wb, dyb) = (h.bf16(&x), h.bf16(&w), h.bf16(&dy));
        let rstd = h.f32_buf(&rstd_ref);
        let programs = rows.div_ceil(rows_per_prog);
        let mut dx = h.poisoned_bf16(rows * n);
        let mut partial = h.poisoned_f32(programs * n);
        h.launch(
            "rmsnorm.kiln",
            "rmsnorm_bwd",
            &[("BLOCK", 256), ("ROWS", rows_per_prog as i64)],
            [programs as u32, 1, 1],
            &Args::new()
                .input("x", &xb)
                .input("w", &wb)
                .input("dy", &dyb)
                .input("rstd", &rstd)
                .output("dx", &mut dx)
                .output("dw_partial", &mut partial)
                .i32("n_rows", rows as i32)
                .i32("n", n as i32),
        );
        h.assert_close("dx", &h.read(&dx), &dx_ref, BF16);
        // dw accumulates in f32: from a gradient so far to that plus this one.
        let dw_before = h.rand_f32(n, 1.0);
        let mut dw = h.f32_buf(&dw_before);
        h.launch(
            "rmsnorm.kiln",
            "rmsnorm_dw_reduce",
            &[("BLOCK", 64)],
            [n.div_ceil(64) as u32, 1, 1],
            &Args::new()
                .input("dw_partial", &partial)
                .in_out("dw", &mut dw)
                .i32("n_partial", programs as i32)
                .i32("n", n as i32),
        );
        let dw_added = added(&h.read(&dw), &dw_before);
        h.assert_close("dw", &dw_added, &dw_ref, BF16);
    });
}

#[test]
fn swiglu_fwd_bwd() {
    for_each_device(|h: &Harness| {
        let len: usize = 3 * 4864 + 17;
        let g = h.rand_bf16(len, 4.0);
        let u = h.rand_bf16(len, 2.0);
        let d = h.rand_bf16(len, 1.0);
        let (gb, ub, db) = (h.bf16(&g), h.bf16(&u), h.bf16(&d));
        let grid = [len.div_ceil(1024) as u32, 1, 1];
        let mut out = h.poisoned_bf16(len);
        h.launch(
            "swiglu.kiln",
            "swiglu_fwd",
            &[],
            grid,
            &Args::new()
                .input("gate", &gb)
                .input("up", &ub)
                .output("out", &mut out)
                .i64("n", len as i64),
        );
        h.assert_close("out", &h.read(&out), &r::swiglu_fwd(&g, &u), BF16);
        let (mut dg, mut du) = (h.poisoned_bf16(len), h.poisoned_bf16(len));
        h.launch(
            "swiglu.kiln",
            "swiglu_bwd",
            &[],
            grid,
            &Args::new()
                .input("gate", &gb)
                .input("up", &ub)
                .input("dout", &db)
                .output("dgate", &mut dg)
                .output("dup", &mut du)
                .i64("n", len as i64),
        );
        let (dg_ref, du_ref) = r::swiglu_bwd(&g, &u, &d);
        h.assert_close("dgate", &h.read(&dg), &dg_ref, BF16);
        h.assert_close("dup", &h.read(&du), &du_ref, BF16);
    });
}

#[test]
fn rope_fwd_bwd() {
    for_each_device(|h: &Harness| {
        let (tokens, qh, kh, dim) = (19usize, 14usize, 2usize, 64usize);
        // Packed sequences: positions restart at 0.
        let positions: Vec<i32> = (0..tokens as i32)
            .map(|t| if t < 7 { t } else { t - 7 })
            .collect();
        let q = h.rand_bf16(tokens * qh * dim, 2.0);
        let k = h.rand_bf16(tokens * kh * dim, 2.0);
        for backward in [false, true] {
            let (mut qb, mut kb) = (h.bf16(&q), h.bf16(&k));
            let pos = h.i32_buf(&positions);
            h.launch(
                "rope.kiln",
                "rope",
                &[
                    ("QHEADS", 16),
                    ("KHEADS", 2),
                    ("HALF", 32),
                    ("BACKWARD", backward as i64),
                ],
                [tokens as u32, 1, 1],
                &Args::new()
                    .in_out("q", &mut qb)
                    .in_out("k", &mut kb)
                    .input("positions", &pos)
                    .i32("n_q_heads", qh as i32)
                    .i32("n_kv_heads", kh as i32)
                    .i32("half_dim", (dim / 2) as i32)
                    .f32("theta", 10000.0),
            );
            let (mut q_ref, mut k_ref) = (q.clone(), k.clone());
            r::rope(&mut q_ref, &positions, qh, dim, 10000.0, backward);
            r::rope(&mut k_ref, &positions, kh, dim, 10000.0, backward);
            h.assert_close("q", &h.read(&qb), &q_ref, BF16);
            h.assert_close("k", &h.read(&kb), &k_ref, BF16);
        }
    });
}

#[test]
fn cross_entropy_fwd_bwd() {
    for_each_device(|h: &Harness| {
        let (rows, vocab, block) = (9usize, 5000usize, 1024i64);
        let logits = h.rand_bf16(rows * vocab, 6.0);
        let mut labels: Vec<i32> = h.rand_labels(rows, vocab);
        labels[3] = -100;
        labels[5] = vocab as i32 - 1; // in the last, partial chunk
        let dloss: Vec<f64> = (0..rows).map(|i| 0.5 + i as f64 / 7.0).collect();
        let (loss_ref, lse_ref) = r::cross_entropy_fwd(&logits, &labels, vocab, -100);
        let lb = h.bf16(&logits);
        let lab = h.i32_buf(&labels);
        let (mut loss, mut lse) = (h.poisoned_f32(rows), h.poisoned_f32(rows));
        h.launch(
            "cross_entropy.kiln",
            "cross_entropy_fwd",
            &[("BLOCK", block)],
            [rows as u32, 1, 1],
            &Args::new()
                .input("logits", &lb)
                .input("labels", &lab)
                .output("loss", &mut loss)
                .output("lse", &mut lse)
                .i32("vocab", vocab as i32)
                .i32("ignore_index", -100),
        );
        h.assert_close(
            "lse",
            &h.read(&lse),
            &lse_ref,
            Tol {
                rel: 1e-5,
                abs: 1e-5,
            },
        );
        h.assert_close(
            "loss",
            &h.read(&loss),
            &loss_ref,
            Tol {
                rel: 1e-5,
                abs: 1e-5,
            },
        );
        let dl = h.f32_buf(&dloss);
        let mut dlogits = h.poisoned_bf16(rows * vocab);
        h.launch(
            "cross_entropy.kiln",
            "cross_entropy_bwd",
            &[("BLOCK", block)],
            [rows as u32, 1, 1],
            &Args::new()
                .input("logits", &lb)
                .input("labels", &lab)
                .input("lse", &lse)
                .input("dloss", &dl)
                .output("dlogits", &mut dlogits)
                .i32("vocab", vocab as i32)
                .i32("ignore_index", -100),
        );
        let d_ref = r::cross_entropy_bwd(&logits, &labels, &dloss, vocab, -100);
        h.assert_close(
            "dlogits",
            &h.read(&dlogits),
            &d_ref,
            Tol {
                rel: 1e-2,
                abs: 1e-4,
            },
        );
    });
}

#[test]
fn adamw_step() {
    for_each_device(|h: &Harness| {
        let n: usize = 10_000 + 13;
        // The kernel receives the hyper-parameters as f32; the reference starts from the same values.
        let f = |x: f64| x as f32 as f64;
        let hp = r::AdamW {
            lr: f(1e-3),
            beta1: f(0.9),
            beta2: f(0.999),
            eps: f(1e-8),
            weight_decay: f(0.01),
            step: 7,
        };
        let p0 = h.rand_f32(n, 1.0);
        let g = h.rand_f32(n, 1.0);
        let m0 = h.rand_f32(n, 0.1);
        let v0: Vec<f64> = h.rand_f32(n, 0.1).iter().map(|x| x * x).collect();
        let scale = 0.75;
        let (mut p_ref, mut m_ref, mut v_ref) = (p0.clone(), m0.clone(), v0.clone());
        r::adamw(&mut p_ref, &g, &mut m_ref, &mut v_ref, scale, &hp);
        let (mut p, gb, mut m, mut v) = (
            h.f32_buf(&p0),
            h.f32_buf(&g),
            h.f32_buf(&m0),
            h.f32_buf(&v0),
        );
        let mut pb = h.poisoned_bf16(n);
        let b1 = 1.0 - hp.beta1.powi(hp.step);
        let b2 = 1.0 - hp.beta2.powi(hp.step);
        // The control block `step_control` would write: clip, norm, apply, loss, tokens, t,
        // bias1, bias2_sqrt.
        let control = h.f32_buf(&[scale, 1.0, 1.0, 0.0, 0.0, hp.step as f64, b1, b2.sqrt()]);
        h.launch(
            "adamw.kiln",
            "adamw",
            &[],
            [n.div_ceil(1024) as u32, 1, 1],
            &Args::new()
                .in_out("param", &mut p)
                .input("grad", &gb)
                .in_out("exp_avg", &mut m)
                .in_out("exp_avg_sq", &mut v)
                .output("param_copy", &mut pb)
                .input("control", &control)
                .i64("n", n as i64)
                .f32("decay", (1.0 - hp.lr * hp.weight_decay) as f32)
                .f32("lr", hp.lr as f32)
                .f32("beta1", hp.beta1 as f32)
                .f32("beta2", hp.beta2 as f32)
                .f32("eps", hp.eps as f32),
        );
        h.assert_close("exp_avg", &h.read(&m), &m_ref, F32);
        h.assert_close(
            "exp_avg_sq",
            &h.read(&v),
            &v_ref,
            Tol {
                rel: 1e-5,
                abs: 1e-9,
            },
        );
        h.assert_close(
            "param",
            &h.read(&p),
            &p_ref,
            Tol {
                rel: 1e-6,
                abs: 1e-6,
            },
        );
        h.assert_close("param_bf16", &h.read(&pb), &p_ref, BF16);
    });
}

#[test]
fn add() {
    for_each_device(|h: &Harness| {
        let n: usize = 4099;
        let (a, b) = (h.rand_bf16(n, 3.0), h.rand_bf16(n, 3.0));
        let (ab, bb) = (h.bf16(&a), h.bf16(&b));
        let mut out = h.poisoned_bf16(n);
        h.launch(
            "add.kiln",
            "add",
            &[],
            [n.div_ceil(1024) as u32, 1, 1],
            &Args::new()
                .input("a", &ab)
                .input("b", &bb)
                .output("out", &mut out)
                .i64("n", n as i64),
        );
        let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        h.assert_close("out", &h.read(&out), &want, BF16);
    });
}

/// The Kiln GEMM: small odd sizes with small tiles everywhere; on a GPU also the tiles the
/// benchmark picks (tensor cores, several warp counts, the loop pipeline of 1 to 4 stages) on a
/// multiple of the tile, on ragged edges, and with fewer iterations than stages. On sm_90a
/// the tiles of 16 rows per warp in whole warpgroups run on `wgmma`.
#[test]
fn gemm() {
    for_each_device(|h: &Harness| {
        // (m, k, n, [BM, BN, BK], warps, stages)
        let mut cases = vec![(70usize, 40usize, 50usize, [32i64, 32, 16], 4u32, 1u32)];
        if h.device.is_gpu() {
            cases.extend([
                (512, 256, 384, [128, 128, 32], 4, 1),
                (1000, 300, 520, [128, 128, 32], 4, 1),
                (1000, 300, 520, [128, 128, 32], 8, 3),
                (512, 256, 384, [128, 256, 32], 8, 3),
                (512, 256, 384, [128, 256, 64], 8, 4),
                (1000, 296, 520, [128, 256, 32], 8, 4),
                (333, 200, 192, [64, 128, 32], 4, 2),
                (256, 40, 256, [128, 128, 32], 4, 4),
                (512, 256, 384, [128, 128, 64], 8, 4),
                (1000, 296, 520, [64, 128, 64], 4, 4),
                (8, 64, 256, [128, 256, 64], 8, 3),
            ]);
        }
        let f = kiln_ops::kernels::file("gemm.kiln").unwrap();
        let src = kiln_compiler::Source::new(f.name, f.source);
        for (m, k, n, [bm, bn, bk], warps, stages) in cases {
            let a = h.rand_bf16(m * k, 1.0);
            let b = h.rand_bf16(k * n, 1.0);
            let (ab, bb) = (h.bf16(&a), h.bf16(&b));
            let mut c = h.poisoned_bf16(m * n);
            let grid = (m.div_ceil(bm as usize) * n.div_ceil(bn as usize)) as u32;
            h.launch_source(
                &src,
                "gemm",
                &[("BM", bm), ("BN", bn), ("BK", bk)],
                (warps, stages),
                [grid, 1, 1],
                &Args::new()
                    .input("a", &ab)
                    .input("b", &bb)
                    .output("c", &mut c)
                    .i32("m", m as i32)
                    .i32("n", n as i32)
                    .i32("k", k as i32),
            );
            let what = format!("gemm {m}x{k}x{n} tiles {bm}x{bn}x{bk} w{warps} s{stages}");
            h.assert_close(&what, &h.read(&c), &r::matmul(&a, &b, m, k, n), BF16);
        }
    });
}
