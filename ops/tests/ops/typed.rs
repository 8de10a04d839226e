//! The typed operations of `kiln_ops`: forward against the f64 references, every backward
//! against central finite differences of the f64 forward, on small odd sizes (CPU and GPU),
//! plus the model's full sizes where a GPU runs them. The activation ops run in each element type
//! they are generic over (bf16, f32, f16), with that type's tolerance.

use crate::gradcheck::{added, dot, numeric_grad};
use crate::harness::{for_each_device, Harness, Tol};
use crate::reference as r;
use kiln_compiler::DType;
use kiln_ops::adamw::{control as c, AdamW, MultiTensor, ParamState, StepControl};
use kiln_ops::embedding::Embedding;
use kiln_ops::rmsnorm::RmsNorm;
use kiln_ops::rope::Rope;
use kiln_ops::{elementwise, swiglu, Error};
use kiln_runtime::Buffer;

const BF16: Tol = Tol {
    rel: 1e-2,
    abs: 1e-2,
};

/// Tolerance for a bf16 output against a gradient of magnitude up to `scale`.
fn bf16_grad(scale: f64) -> Tol {
    Tol {
        rel: 1e-2,
        abs: 1e-2 * scale,
    }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// The element types of the activations, each op is checked in.
const ELEMENT_TYPES: [DType; 3] = [DType::Bf16, DType::F32, DType::F16];

/// f32 outputs: a few roundings of f32 arithmetic (the exponentials and sines a few ulps each).
const F32: Tol = Tol {
    rel: 1e-5,
    abs: 1e-5,
};

/// f16 outputs: 11 mantissa bits, half an ulp is 2^-11 relative, plus the f32 arithmetic.
const F16: Tol = Tol {
    rel: 2e-3,
    abs: 2e-3,
};

/// Tolerance for an output of element type `d` against values of magnitude up to about 1.
fn tol(d: DType) -> Tol {
    grad_tol(d, 1.0)
}

/// Tolerance for an output of element type `d` against a gradient of magnitude up to `scale`
/// (the absolute term covers the cancellations of sums of terms of that size).
fn grad_tol(d: DType, scale: f64) -> Tol {
    let t = match d {
        DType::F32 => F32,
        DType::F16 => F16,
        _ => return bf16_grad(scale),
    };
    Tol {
        rel: t.rel,
        abs: t.abs * scale,
    }
}

/// Rounds to `d`, as a kernel storing `d` does.
fn round_to(d: DType, v: &[f64]) -> Vec<f64> {
    v.iter()
        .map(|&x| match d {
            DType::F32 => x as f32 as f64,
            DType::F16 => half::f16::from_f64(x).to_f64(),
            _ => half::bf16::from_f64(x).to_f64(),
        })
        .collect()
}

fn rmsnorm_case(h: &Harness, d: DType, rows: usize, n: usize, fd: bool) {
    let op = RmsNorm { rows, n, eps: 1e-6 };
    let x = h.rand(d, rows * n, 2.0);
    let w = h.rand(d, n, 1.0);
    let dy = h.rand(d, rows * n, 1.0);
    let (xb, wb, dyb) = (h.buf(d, &x), h.buf(d, &w), h.buf(d, &dy));
    let (mut y, mut rstd) = (h.poisoned(d, rows * n), h.poisoned_f32(rows));
    op.forward(&h.ops, &xb, &wb, &mut y, &mut rstd).unwrap();
    let (y_ref, _) = r::rmsnorm_fwd(&x, &w, n, 1e-6);
    h.assert_close("rmsnorm y", &h.read(&y), &y_ref, tol(d));

    // dw accumulates: it starts from a gradient so far and must end at that plus this one.
    let dw_before = h.rand_f32(n, 1.0);
    let (mut dx, mut dw) = (h.poisoned(d, rows * n), h.f32_buf(&dw_before));
    op.backward(&h.ops, &xb, &wb, &dyb, &rstd, &mut dx, &mut dw)
        .unwrap();
    let (dx_want, dw_want) = if fd {
        let loss_x = |x: &[f64]| dot(&r::rmsnorm_fwd(x, &w, n, 1e-6).0, &dy);
        let loss_w = |w: &[f64]| dot(&r::rmsnorm_fwd(&x, w, n, 1e-6).0, &dy);
        (numeric_grad(&x, loss_x), numeric_grad(&w, loss_w))
    } else {
        r::rmsnorm_bwd(&x, &w, &dy, n, 1e-6)
    };
    h.assert_close(
        "rmsnorm dx",
        &h.read(&dx),
        &dx_want,
        grad_tol(d, max_abs(&dx_want)),
    );
    let dw_added = added(&h.read(&dw), &dw_before);
    h.assert_close(
        "rmsnorm dw",
        &dw_added,
        &dw_want,
        grad_tol(d, max_abs(&dw_want)),
    );
}

#[test]
fn rmsnorm_forward_and_backward() {
    for_each_device(|h| {
        for d in ELEMENT_TYPES {
            rmsnorm_case(h, d, 3, 40, true);
            rmsnorm_case(h, d, 70, 96, false);
        }
        if h.device.is_gpu() {
            rmsnorm_case(h, DType::Bf16, 8192, 896, false);
            rmsnorm_case(h, DType::Bf16, 2048, 4096, false);
        }
    });
}

#[test]
fn add_rmsnorm_forward_and_backward() {
    for_each_device(|h| {
        ELEMENT_TYPES.into_iter().for_each(|d| {
            let (rows, n) = (5usize, 24usize);
            let op = RmsNorm { rows, n, eps: 1e-6 };
            let x = h.rand(d, rows * n, 1.0);
            let res = h.rand(d, rows * n, 2.0);
            let w = h.rand(d, n, 1.0);
            let dy = h.rand(d, rows * n, 1.0);
            let dnext = h.rand(d, rows * n, 1.0);
            let bufs = [&x, &res, &w, &dy, &dnext].map(|v| h.buf(d, v));
            let [xb, rb, wb, dyb, dnb] = &bufs;
            let (mut hb, mut y, mut rstd) = (
                h.poisoned(d, rows * n),
                h.poisoned(d, rows * n),
                h.poisoned_f32(rows),
            );
            op.add_forward(&h.ops, xb, rb, &mut hb, wb, &mut y, &mut rstd)
                .unwrap();
            // The stream is stored in the activations' type and normalised as stored.
            let sum: Vec<f64> = x.iter().zip(&res).map(|(a, b)| a + b).collect();
            let h_ref = round_to(d, &sum);
            h.assert_close("h", &h.read(&hb), &h_ref, tol(d));
            h.assert_close(
                "y",
                &h.read(&y),
                &r::rmsnorm_fwd(&h_ref, &w, n, 1e-6).0,
                tol(d),
            );

            let dw_before = h.rand_f32(n, 1.0);
            let (mut dx, mut dw) = (h.poisoned(d, rows * n), h.f32_buf(&dw_before));
            op.add_backward(&h.ops, &hb, wb, dyb, &rstd, dnb, &mut dx, &mut dw)
                .unwrap();
            // Loss through both outputs: the normalised branch and the residual stream itself.
            let loss = |x: &[f64]| {
                let hv: Vec<f64> = x.iter().zip(&res).map(|(a, b)| a + b).collect();
                dot(&r::rmsnorm_fwd(&hv, &w, n, 1e-6).0, &dy) + dot(&hv, &dnext)
            };
            let dx_fd = numeric_grad(&x, loss);
            h.assert_close("dx", &h.read(&dx), &dx_fd, grad_tol(d, max_abs(&dx_fd)));
            let dw_ref = r::rmsnorm_bwd(&h_ref, &w, &dy, n, 1e-6).1;
            let dw_added = added(&h.read(&dw), &dw_before);
            h.assert_close("dw", &dw_added, &dw_ref, grad_tol(d, max_abs(&dw_ref)));
        })
    });
}

fn swiglu_case(h: &Harness, d: DType, len: usize, fd: bool) {
    let g = h.rand(d, len, 4.0);
    let u = h.rand(d, len, 2.0);
    let dout = h.rand(d, len, 1.0);
    let (gb, ub, db) = (h.buf(d, &g), h.buf(d, &u), h.buf(d, &dout));
    let mut out = h.poisoned(d, len);
    swiglu::forward(&h.ops, &gb, &ub, &mut out).unwrap();
    h.assert_close("swiglu out", &h.read(&out), &r::swiglu_fwd(&g, &u), tol(d));
    let (mut dg, mut du) = (h.poisoned(d, len), h.poisoned(d, len));
    swiglu::backward(&h.ops, &gb, &ub, &db, &mut dg, &mut du).unwrap();
    let (dg_want, du_want) = if fd {
        (
            numeric_grad(&g, |g| dot(&r::swiglu_fwd(g, &u), &dout)),
            numeric_grad(&u, |u| dot(&r::swiglu_fwd(&g, u), &dout)),
        )
    } else {
        r::swiglu_bwd(&g, &u, &dout)
    };
    h.assert_close("swiglu dgate", &h.read(&dg), &dg_want, tol(d));
    h.assert_close("swiglu dup", &h.read(&du), &du_want, tol(d));
}

#[test]
fn swiglu_forward_and_backward() {
    for_each_device(|h| {
        for d in ELEMENT_TYPES {
            swiglu_case(h, d, 67, true);
            swiglu_case(h, d, 3 * 4096 + 5, false);
        }
        if h.device.is_gpu() {
            swiglu_case(h, DType::Bf16, 8192 * 4864, false);
        }
    });
}

/// `x + scale · u bᵀ` over `[rows, cols]`, with `u` `[rows, rank]` and `b` `[cols, rank]`.
fn plus_low_rank(x: &[f64], u: &[f64], b: &[f64], rank: usize, scale: f64) -> Vec<f64> {
    let cols = b.len() / rank;
    (0..x.len())
        .map(|i| {
            let (row, col) = (i / cols, i % cols);
            let term: f64 = (0..rank)
                .map(|k| u[row * rank + k] * b[col * rank + k])
                .sum();
            x[i] + scale * term
        })
        .collect()
}

/// The fused LoRA SwiGLU against the plain one applied to `gate + s·u_g b_gᵀ` and
/// `up + s·u_u b_uᵀ` (f64), and its `dgate` against finite differences in the base `gate`.
fn swiglu_lora_case(h: &Harness, d: DType, tokens: usize, cols: usize, rank: usize, fd: bool) {
    let len = tokens * cols;
    let scale = 0.75;
    let (g, p, dout) = (
        h.rand(d, len, 3.0),
        h.rand(d, len, 2.0),
        h.rand(d, len, 1.0),
    );
    let (ug, uu) = (h.rand(d, tokens * rank, 1.0), h.rand(d, tokens * rank, 1.0));
    let (bg, bu) = (h.rand(d, cols * rank, 0.5), h.rand(d, cols * rank, 0.5));
    let bufs = [&g, &p, &dout, &ug, &uu, &bg, &bu].map(|v| h.buf(d, v));
    let [gb, pb, db, ugb, uub, bgb, bub] = &bufs;
    let terms = swiglu::LoraTerms {
        u_gate: ugb.view(),
        b_gate: bgb.view(),
        u_up: uub.view(),
        b_up: bub.view(),
        rank,
        scale: scale as f32,
    };
    let g_tot = plus_low_rank(&g, &ug, &bg, rank, scale);
    let p_tot = plus_low_rank(&p, &uu, &bu, rank, scale);
    let what = format!("swiglu lora {d} {tokens}x{cols} r{rank}");
    let mut out = h.poisoned(d, len);
    swiglu::forward_lora(&h.ops, tokens, gb, pb, &terms, &mut out).unwrap();
    let want = r::swiglu_fwd(&g_tot, &p_tot);
    h.assert_close(
        &format!("{what} out"),
        &h.read(&out),
        &want,
        grad_tol(d, 4.0),
    );
    let (mut dg, mut dp) = (h.poisoned(d, len), h.poisoned(d, len));
    swiglu::backward_lora(&h.ops, tokens, gb, pb, &terms, None, db, &mut dg, &mut dp).unwrap();
    let (dg_want, dp_want) = r::swiglu_bwd(&g_tot, &p_tot, &dout);
    let tol4 = grad_tol(d, 4.0);
    h.assert_close(&format!("{what} dgate"), &h.read(&dg), &dg_want, tol4);
    h.assert_close(&format!("{what} dup"), &h.read(&dp), &dp_want, tol4);
    // With the down projection's adapter gradient du A ([rank, cols]) added to dout in the
    // kernel: the same as the plain backward of dout + du A.
    let (du, a) = (h.rand(d, tokens * rank, 0.5), h.rand(d, rank * cols, 0.5));
    let (dub, ab) = (h.buf(d, &du), h.buf(d, &a));
    let a_t: Vec<f64> = (0..cols * rank)
        .map(|i| a[(i % rank) * cols + i / rank])
        .collect();
    let d_total = plus_low_rank(&dout, &du, &a_t, rank, 1.0);
    let down = swiglu::DownTerm {
        du: dub.view(),
        a: ab.view(),
    };
    let (mut dg2, mut dp2) = (h.poisoned(d, len), h.poisoned(d, len));
    swiglu::backward_lora(
        &h.ops,
        tokens,
        gb,
        pb,
        &terms,
        Some(down),
        db,
        &mut dg2,
        &mut dp2,
    )
    .unwrap();
    let (dg_want, dp_want) = r::swiglu_bwd(&g_tot, &p_tot, &d_total);
    h.assert_close(
        &format!("{what} dgate (down)"),
        &h.read(&dg2),
        &dg_want,
        tol4,
    );
    h.assert_close(&format!("{what} dup (down)"), &h.read(&dp2), &dp_want, tol4);
    if fd {
        let loss = |g: &[f64]| {
            let g_tot = plus_low_rank(g, &ug, &bg, rank, scale);
            dot(&r::swiglu_fwd(&g_tot, &p_tot), &dout)
        };
        let numeric = numeric_grad(&g, loss);
        h.assert_close(
            &format!("{what} dgate (fd)"),
            &h.read(&dg),
            &numeric,
            grad_tol(d, 4.0),
        );
    }
}

#[test]
fn swiglu_with_lora_terms_fused() {
    for_each_device(|h| {
        for d in ELEMENT_TYPES {
            // Ragged tiles on both axes, and ranks below, at and off a power of two.
            swiglu_lora_case(h, d, 5, 7, 3, true);
            swiglu_lora_case(h, d, 70, 130, 16, false);
            swiglu_lora_case(h, d, 65, 67, 24, false);
        }
        if h.device.is_gpu() {
            swiglu_lora_case(h, DType::Bf16, 1024, 4864, 32, false);
        }
        // Shapes that do not fit are errors naming the argument.
        let (a, b) = (h.poisoned_bf16(12), h.poisoned_bf16(12));
        let (u, w) = (h.poisoned_bf16(8), h.poisoned_bf16(5));
        let terms = swiglu::LoraTerms {
            u_gate: u.view(),
            b_gate: w.view(),
            u_up: u.view(),
            b_up: w.view(),
            rank: 2,
            scale: 1.0,
        };
        let err = swiglu::forward_lora(&h.ops, 4, &a, &b, &terms, &mut h.poisoned_bf16(12));
        assert!(err.unwrap_err().to_string().contains("`b_gate`"));
        let err = swiglu::forward_lora(&h.ops, 5, &a, &b, &terms, &mut h.poisoned_bf16(12));
        assert!(err.is_err());
    });
}

#[test]
fn residual_add() {
    for_each_device(|h| {
        for (d, len) in ELEMENT_TYPES
            .into_iter()
            .flat_map(|d| [1, 2047, 3 * 2048 + 9].map(|len| (d, len)))
        {
            let (a, b) = (h.rand(d, len, 3.0), h.rand(d, len, 1.0));
            let mut out = h.poisoned(d, len);
            elementwise::add(&h.ops, &h.buf(d, &a), &h.buf(d, &b), &mut out).unwrap();
            let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            h.assert_close("add", &h.read(&out), &want, tol(d));
        }
        let short = h.poisoned_bf16(3);
        let err = elementwise::add(&h.ops, &short, &h.poisoned_bf16(4), &mut h.poisoned_bf16(3));
        assert!(err.unwrap_err().to_string().contains("`b`"));
    });
}

fn rope_case(h: &Harness, d: DType, rope: Rope, fd: bool) {
    let Rope {
        tokens,
        q_heads,
        kv_heads,
        head_dim,
        theta,
    } = rope;
    // Two packed sequences: positions restart at 0.
    let positions: Vec<i32> = (0..tokens as i32)
        .map(|t| {
            if t < tokens as i32 / 3 {
                t
            } else {
                t - tokens as i32 / 3
            }
        })
        .collect();
    let pos = h.i32_buf(&positions);
    let q = h.rand(d, tokens * q_heads * head_dim, 2.0);
    let k = h.rand(d, tokens * kv_heads * head_dim, 2.0);
    let (mut qb, mut kb) = (h.buf(d, &q), h.buf(d, &k));
    rope.forward(&h.ops, &mut qb, &mut kb, &pos).unwrap();
    let rotate = |x: &[f64], heads| {
        let mut x = x.to_vec();
        r::rope(&mut x, &positions, heads, head_dim, theta as f64, false);
        x
    };
    h.assert_close("rope q", &h.read(&qb), &rotate(&q, q_heads), tol(d));
    h.assert_close("rope k", &h.read(&kb), &rotate(&k, kv_heads), tol(d));

    // Backward: the gradient of sum(rope(q) * dq) with respect to q.
    let dq = h.rand(d, q.len(), 1.0);
    let dk = h.rand(d, k.len(), 1.0);
    let (mut dqb, mut dkb) = (h.buf(d, &dq), h.buf(d, &dk));
    rope.backward(&h.ops, &mut dqb, &mut dkb, &pos).unwrap();
    let (dq_want, dk_want) = if fd {
        (
            numeric_grad(&q, |q| dot(&rotate(q, q_heads), &dq)),
            numeric_grad(&k, |k| dot(&rotate(k, kv_heads), &dk)),
        )
    } else {
        let inverse = |x: &[f64], heads| {
            let mut x = x.to_vec();
            r::rope(&mut x, &positions, heads, head_dim, theta as f64, true);
            x
        };
        (inverse(&dq, q_heads), inverse(&dk, kv_heads))
    };
    h.assert_close("rope dq", &h.read(&dqb), &dq_want, tol(d));
    h.assert_close("rope dk", &h.read(&dkb), &dk_want, tol(d));
}

#[test]
fn rope_forward_and_backward() {
    for_each_device(|h| {
        let small = Rope {
            tokens: 5,
            q_heads: 3,
            kv_heads: 1,
            head_dim: 8,
            theta: 10000.0,
        };
        for d in ELEMENT_TYPES {
            rope_case(h, d, small, true);
        }
        let qwen = Rope {
            tokens: 37,
            q_heads: 14,
            kv_heads: 2,
            head_dim: 64,
            theta: 1e6,
        };
        for d in ELEMENT_TYPES {
            rope_case(h, d, qwen, false);
        }
        if h.device.is_gpu() {
            rope_case(
                h,
                DType::Bf16,
                Rope {
                    tokens: 8192,
                    ..qwen
                },
                false,
            );
            let big = Rope {
                tokens: 2048,
                q_heads: 32,
                kv_heads: 8,
                head_dim: 128,
                theta: 5e5,
            };
            rope_case(h, DType::Bf16, big, false);
        }
    });
}

#[test]
fn embedding_forward_and_backward_with_repeated_ids() {
    for_each_device(|h| {
        ELEMENT_TYPES.into_iter().for_each(|d| {
            let table = Embedding {
                vocab: 11,
                hidden: 70,
            };
            let ids = [3, 7, 3, 0, 10, 3, 7, 12, -1];
            let w = h.rand(d, table.vocab * table.hidden, 1.0);
            let (idb, wb) = (h.i32_buf(&ids), h.buf(d, &w));
            let mut out = h.poisoned(d, ids.len() * table.hidden);
            table.forward(&h.ops, &idb, &wb, &mut out).unwrap();
            let hidden = table.hidden;
            let row = |id: i32| -> Vec<f64> {
                if (0..table.vocab as i32).contains(&id) {
                    w[id as usize * hidden..(id as usize + 1) * hidden].to_vec()
                } else {
                    vec![0.0; hidden]
                }
            };
            let want: Vec<f64> = ids.iter().flat_map(|&id| row(id)).collect();
            h.assert_close(
                "embedding out",
                &h.read(&out),
                &want,
                Tol { rel: 0.0, abs: 0.0 },
            );

            let dout = h.rand(d, ids.len() * hidden, 1.0);
            let mut dw = h.device.alloc(kiln_compiler::DType::F32, w.len()).unwrap();
            dw.zero().unwrap();
            table
                .backward(&h.ops, &idb, &h.buf(d, &dout), &mut dw)
                .unwrap();
            let mut dw_want = vec![0.0; w.len()];
            for (t, &id) in ids.iter().enumerate() {
                if (0..table.vocab as i32).contains(&id) {
                    for c in 0..hidden {
                        dw_want[id as usize * hidden + c] += dout[t * hidden + c];
                    }
                }
            }
            let f32_sums = Tol {
                rel: 1e-6,
                abs: 1e-6,
            };
            h.assert_close("embedding dweight", &h.read(&dw), &dw_want, f32_sums);
        })
    });
}

/// The hyperparameters of the AdamW tests against the reference.
const CHECKED_ADAMW: AdamW = AdamW {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};

/// One tensor's update state: its `[param, grad, exp_avg, exp_avg_sq]` buffers and bf16 copy.
fn param_state<'a>([p, g, m, v]: &'a mut [Buffer; 4], copy: &'a mut Buffer) -> ParamState<'a> {
    ParamState {
        param: p.view_mut(),
        grad: g.view(),
        exp_avg: m.view_mut(),
        exp_avg_sq: v.view_mut(),
        param_copy: Some(copy.view_mut()),
    }
}

/// Random AdamW state of `n` elements: weights, gradient, first and (non-negative) second moment.
fn adam_tensors(h: &Harness, n: usize) -> [Vec<f64>; 4] {
    let v: Vec<f64> = h.rand_f32(n, 0.01).iter().map(|x| x * x).collect();
    [
        h.rand_f32(n, 1.0),
        h.rand_f32(n, 0.5),
        h.rand_f32(n, 0.1),
        v,
    ]
}

#[test]
fn adamw_with_global_norm_clipping_and_two_groups() {
    for_each_device(|h| {
        let adamw = CHECKED_ADAMW;
        // Two tensors in two groups (LoRA+: B learns 16x faster than A).
        let sizes = [1000usize, 4097];
        let lrs = [1e-3f32, 16e-3];
        let max_norm = 1.0;
        let tensors: Vec<[Vec<f64>; 4]> = sizes.iter().map(|&n| adam_tensors(h, n)).collect();
        let norm = tensors
            .iter()
            .map(|t| t[1].iter().map(|g| g * g).sum::<f64>())
            .sum::<f64>()
            .sqrt();
        assert!(norm > max_norm as f64, "the test must clip");
        let factor = max_norm as f64 / (norm + 1e-6);

        let mut control = StepControl::new(&h.ops, &adamw, &sizes, 4).unwrap();
        let mut bufs: Vec<[_; 4]> = tensors
            .iter()
            .map(|t| t.each_ref().map(|v| h.f32_buf(v)))
            .collect();
        let mut copies: Vec<_> = sizes.iter().map(|&n| h.poisoned_bf16(n)).collect();
        // Two micro-batches' loss totals per step: [sum of losses, counted tokens, z-loss].
        let totals = [h.f32_buf(&[2.5, 3.0, 0.0]), h.f32_buf(&[1.25, 2.0, 0.0])];
        for step in [1u32, 2] {
            control.begin().unwrap();
            for t in &totals {
                control.add_loss(&h.ops, t).unwrap();
            }
            for b in &bufs {
                control.add_grad(&h.ops, &b[1]).unwrap();
            }
            control.finish(&h.ops, Some(max_norm), false).unwrap();
            for ((tensor, copy), &lr) in bufs.iter_mut().zip(&mut copies).zip(&lrs) {
                let mut state = param_state(tensor, copy);
                adamw.update(&h.ops, &mut state, &control, lr).unwrap();
            }
            let block = h.read(control.control());
            let exact = Tol { rel: 0.0, abs: 0.0 };
            let close = Tol {
                rel: 1e-5,
                abs: 0.0,
            };
            h.assert_close("grad norm", &block[c::GRAD_NORM..][..1], &[norm], close);
            h.assert_close("clip factor", &block[c::CLIP..][..1], &[factor], close);
            h.assert_close("applied", &block[c::APPLY..][..1], &[1.0], exact);
            h.assert_close("step loss", &block[c::LOSS_SUM..][..2], &[3.75, 5.0], exact);
            h.assert_close("t", &block[c::UPDATES..][..1], &[step as f64], exact);
            let bias = [
                1.0 - 0.9f64.powi(step as i32),
                (1.0 - 0.95f64.powi(step as i32)).sqrt(),
            ];
            h.assert_close("bias corrections", &block[c::BIAS1..][..2], &bias, close);
        }
        for (i, t) in tensors.iter().enumerate() {
            let (mut p, mut m, mut v) = (t[0].clone(), t[2].clone(), t[3].clone());
            for step in [1, 2] {
                let hp = r::AdamW {
                    lr: lrs[i] as f64,
                    beta1: 0.9f32 as f64,
                    beta2: 0.95f32 as f64,
                    eps: 1e-8f32 as f64,
                    weight_decay: 0.1f32 as f64,
                    step,
                };
                r::adamw(&mut p, &t[1], &mut m, &mut v, factor, &hp);
            }
            let tol = Tol {
                rel: 1e-5,
                abs: 1e-6,
            };
            h.assert_close("param", &h.read(&bufs[i][0]), &p, tol);
            h.assert_close("exp_avg", &h.read(&bufs[i][2]), &m, tol);
            h.assert_close("param_copy", &h.read(&copies[i]), &p, BF16);
        }
    });
}

#[test]
fn adamw_of_many_tensors_in_one_launch_equals_one_launch_per_tensor_bit_for_bit() {
    for_each_device(|h| {
        let adamw = CHECKED_ADAMW;
        // Lengths off the alignment (gaps between parts), three groups in no order, one empty.
        let lens = [1000usize, 4097, 0, 1024, 33, 2500];
        let group = [0u32, 1, 0, 2, 1, 0];
        let rates = [(1e-3f32, 0.1f32), (16e-3, 0.1), (1e-3, 0.0)];
        let device = h.ops.device();
        let values: Vec<[Vec<f64>; 4]> = lens.iter().map(|&n| adam_tensors(h, n)).collect();
        let mut control = StepControl::new(&h.ops, &adamw, &lens, 4).unwrap();
        let totals = h.f32_buf(&[2.5, 3.0, 0.0]);
        // One tensor at a time, each in a buffer of its own.
        let mut single: Vec<[_; 4]> = values
            .iter()
            .map(|t| t.each_ref().map(|v| h.f32_buf(v)))
            .collect();
        let mut single_copies: Vec<_> = lens.iter().map(|&n| h.poisoned_bf16(n)).collect();
        // All at once, in parts of one allocation per kind.
        let align = MultiTensor::ALIGN;
        let mut multi: Vec<Vec<Buffer>> = (0..4)
            .map(|_| device.alloc_parts(DType::F32, &lens, align).unwrap())
            .collect();
        for (k, t) in values.iter().enumerate() {
            for (kind, v) in t.iter().enumerate() {
                multi[kind][k].copy_from(&h.f32_buf(v)).unwrap();
            }
        }
        let mut multi_copies = device.alloc_parts(DType::Bf16, &lens, align).unwrap();
        let layout = MultiTensor::new(&h.ops, &lens, &group, rates.len()).unwrap();
        for _step in 0..2 {
            // The norm over the span equals the norm tensor by tensor, bit for bit.
            let grads: Vec<&Buffer> = multi[1].iter().collect();
            control.begin().unwrap();
            control.add_loss(&h.ops, &totals).unwrap();
            control
                .add_grad(&h.ops, &*Buffer::span(&grads).unwrap())
                .unwrap();
            control.finish(&h.ops, Some(1.0), false).unwrap();
            let spanned = h.read(control.control())[c::CLIP..=c::GRAD_NORM].to_vec();
            control.begin().unwrap();
            control.add_loss(&h.ops, &totals).unwrap();
            for b in &single {
                control.add_grad(&h.ops, &b[1]).unwrap();
            }
            control.finish(&h.ops, Some(1.0), false).unwrap();
            // (Each `finish` counts an update: both paths below see the same t.)
            let tensor_by_tensor = h.read(control.control())[c::CLIP..=c::GRAD_NORM].to_vec();
            assert_eq!(tensor_by_tensor, spanned, "the norms differ");
            for (k, (tensor, copy)) in single.iter_mut().zip(&mut single_copies).enumerate() {
                let (lr, wd) = rates[group[k] as usize];
                let mut state = param_state(tensor, copy);
                let adamw = AdamW {
                    weight_decay: wd,
                    ..adamw
                };
                adamw.update(&h.ops, &mut state, &control, lr).unwrap();
            }
            let [p, g, m, v] = &mut multi[..] else {
                unreachable!()
            };
            let mut p: Vec<&mut Buffer> = p.iter_mut().collect();
            let mut m: Vec<&mut Buffer> = m.iter_mut().collect();
            let mut v: Vec<&mut Buffer> = v.iter_mut().collect();
            let mut copies: Vec<&mut Buffer> = multi_copies.iter_mut().collect();
            let g: Vec<&Buffer> = g.iter().collect();
            let (mut p, mut m, mut v) = (
                Buffer::span_mut(&mut p).unwrap(),
                Buffer::span_mut(&mut m).unwrap(),
                Buffer::span_mut(&mut v).unwrap(),
            );
            let mut copy = Buffer::span_mut(&mut copies).unwrap();
            let g = Buffer::span(&g).unwrap();
            assert_eq!(g.len(), layout.len());
            let mut state = ParamState {
                param: p.view_mut(),
                grad: g.view(),
                exp_avg: m.view_mut(),
                exp_avg_sq: v.view_mut(),
                param_copy: Some(copy.view_mut()),
            };
            adamw
                .update_multi(&h.ops, &layout, &mut state, &control, &rates)
                .unwrap();
        }
        let exact = Tol { rel: 0.0, abs: 0.0 };
        for k in 0..lens.len() {
            for kind in [0, 2, 3] {
                let want = h.read(&single[k][kind]);
                h.assert_close("multi-tensor state", &h.read(&multi[kind][k]), &want, exact);
            }
            let want = h.read(&single_copies[k]);
            h.assert_close("multi-tensor copy", &h.read(&multi_copies[k]), &want, exact);
        }
        // The gaps between the tensors stay zero.
        let all: Vec<&Buffer> = multi[0].iter().collect();
        let span = h.read(&Buffer::span(&all).unwrap());
        assert!(
            span[1000..4096].iter().all(|&x| x == 0.0),
            "a gap was written"
        );
    });
}

#[test]
fn adamw_skips_non_finite_steps_on_the_device_and_counts_only_applied_updates() {
    for_each_device(|h| {
        let adamw = AdamW::default();
        let n = 3000;
        let (p0, g, m0, v0) = (
            h.rand_f32(n, 1.0),
            h.rand_f32(n, 0.5),
            h.rand_f32(n, 0.1),
            h.rand_f32(n, 0.01)
                .iter()
                .map(|x| x * x)
                .collect::<Vec<_>>(),
        );
        let mut poisoned = g.clone();
        poisoned[1234] = f64::NAN;
        let mut control = StepControl::new(&h.ops, &adamw, &[n], 8).unwrap();
        let [mut p, mut m, mut v] = [&p0, &m0, &v0].map(|x| h.f32_buf(x));
        // The tensors as f32 holds them: a skipped step must leave exactly these.
        let [p0, m0, v0] = [&p, &m, &v].map(|b| h.read(b));
        let (good, bad) = (h.f32_buf(&g), h.f32_buf(&poisoned));
        let totals = h.f32_buf(&[4.0, 2.0, 0.0]);
        let lr = 1e-3;
        let mut step =
            |grad: &Buffer, skip: bool, p: &mut Buffer, m: &mut Buffer, v: &mut Buffer| {
                control.begin().unwrap();
                control.add_loss(&h.ops, &totals).unwrap();
                control.add_grad(&h.ops, grad).unwrap();
                control.finish(&h.ops, None, skip).unwrap();
                let mut state = ParamState {
                    param: p.view_mut(),
                    grad: grad.view(),
                    exp_avg: m.view_mut(),
                    exp_avg_sq: v.view_mut(),
                    param_copy: None,
                };
                adamw.update(&h.ops, &mut state, &control, lr).unwrap();
                h.read(control.control())
            };
        let exact = Tol { rel: 0.0, abs: 0.0 };
        // A NaN in the gradient, and a step the caller skips: nothing changes, t stays 0.
        for (grad, skip) in [(&bad, false), (&good, true)] {
            let block = step(grad, skip, &mut p, &mut m, &mut v);
            assert_eq!(block[c::APPLY], 0.0, "skipped (skip = {skip})");
            assert_eq!(block[c::UPDATES], 0.0);
            h.assert_close("param unchanged", &h.read(&p), &p0, exact);
            h.assert_close("exp_avg unchanged", &h.read(&m), &m0, exact);
            h.assert_close("exp_avg_sq unchanged", &h.read(&v), &v0, exact);
        }
        // The first applied step is AdamW's step 1 (its bias corrections), not step 3.
        let block = step(&good, false, &mut p, &mut m, &mut v);
        assert_eq!(block[c::APPLY], 1.0);
        assert_eq!(block[c::UPDATES], 1.0);
        let (mut pw, mut mw, mut vw) = (p0.clone(), m0.clone(), v0.clone());
        let hp = r::AdamW {
            lr: lr as f64,
            beta1: 0.9f32 as f64,
            beta2: 0.999f32 as f64,
            eps: 1e-8f32 as f64,
            weight_decay: 0.0,
            step: 1,
        };
        r::adamw(&mut pw, &g, &mut mw, &mut vw, 1.0, &hp);
        let tol = Tol {
            rel: 1e-5,
            abs: 1e-6,
        };
        h.assert_close("param after step 1", &h.read(&p), &pw, tol);
        h.assert_close("exp_avg_sq after step 1", &h.read(&v), &vw, tol);
        // An infinite loss skips too.
        let inf_totals = h.f32_buf(&[f64::INFINITY, 2.0, 0.0]);
        control.begin().unwrap();
        control.add_loss(&h.ops, &inf_totals).unwrap();
        control.add_grad(&h.ops, &good).unwrap();
        control.finish(&h.ops, None, false).unwrap();
        let block = h.read(control.control());
        assert_eq!(block[c::APPLY], 0.0);
        assert_eq!(block[c::UPDATES], 1.0);
    });
}

#[test]
fn wrong_shapes_are_errors_naming_the_op_and_argument() {
    let h = &crate::harness::cpu();
    let op = RmsNorm {
        rows: 4,
        n: 8,
        eps: 1e-6,
    };
    let x = h.bf16(&h.rand_bf16(32, 1.0));
    let short = h.bf16(&h.rand_bf16(7, 1.0));
    let mut y = h.poisoned_bf16(32);
    let mut rstd = h.poisoned_f32(4);
    let err = op
        .forward(&h.ops, &x, &short, &mut y, &mut rstd)
        .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }));
    assert_eq!(
        err.to_string(),
        "rmsnorm forward: `w` must be 8 x bf16, got 7 x bf16"
    );
    let err = swiglu::forward(&h.ops, &x, &short, &mut y).unwrap_err();
    assert_eq!(
        err.to_string(),
        "swiglu forward: `up` must be 32 x bf16, got 7 x bf16"
    );
    // The first activation sets the element type; the others must share it.
    let x32 = h.f32_buf(&h.rand_f32(32, 1.0));
    let err = swiglu::forward(&h.ops, &x32, &x, &mut y).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }));
    assert_eq!(
        err.to_string(),
        "swiglu forward: `up` must be 32 x f32, got 32 x bf16"
    );
    let err = op.forward(&h.ops, &x, x32.slice(..8).unwrap(), &mut y, &mut rstd);
    assert_eq!(
        err.unwrap_err().to_string(),
        "rmsnorm forward: `w` must be 8 x bf16, got 8 x f32"
    );
    let ids = h.i32_buf(&[1; 32]);
    let err = elementwise::add(&h.ops, &ids, &ids, &mut y).unwrap_err();
    assert_eq!(
        err.to_string(),
        "add: `a` is i32; activations must be bf16, f32 or f16"
    );
}

/// The ops take views: `gate` and `up` as the two halves of one buffer (as one fused GEMM
/// writes them), the output a slice of another, whose other elements stay untouched.
#[test]
fn ops_read_and_write_views_of_one_buffer() {
    for_each_device(|h| {
        let len = 1000;
        let (g, u) = (h.rand_bf16(len, 4.0), h.rand_bf16(len, 2.0));
        let gate_up = h.bf16(&[g.as_slice(), u.as_slice()].concat());
        let mut out = h.poisoned_bf16(2 * len);
        let (gate, up) = (gate_up.slice(..len).unwrap(), gate_up.slice(len..).unwrap());
        swiglu::forward(&h.ops, gate, up, out.slice_mut(len..).unwrap()).unwrap();
        let got = h.read(&out);
        h.assert_close("swiglu out", &got[len..], &r::swiglu_fwd(&g, &u), BF16);
        assert!(
            got[..len].iter().all(|x| x.is_nan()),
            "written outside its view"
        );
    });
}

/// The dropout mask as `dropout.kiln` defines it, recomputed independently.
fn dropout_keeps(i: u64, seed: u32, p: f32) -> bool {
    let mut x = (i ^ u64::from(seed)) & 0xffff_ffff;
    x = ((x ^ (x >> 16)).wrapping_mul(0x7feb_352d)) & 0xffff_ffff;
    x = ((x ^ (x >> 15)).wrapping_mul(0x846c_a68b)) & 0xffff_ffff;
    x ^= x >> 16;
    (x >> 8) as f64 >= (f64::from(p) * f64::from(1u32 << 24)).round()
}

#[test]
fn dropout_draws_the_same_seeded_mask_forward_and_backward() {
    use kiln_ops::dropout::Dropout;
    for_each_device(|h| {
        let n = 50_000 + 7;
        for (p, seed) in [(0.1f32, 7u32), (0.5, 0xdead_beef)] {
            let drop = Dropout { p, seed };
            for dtype in [DType::F32, DType::Bf16] {
                let x = h.rand(dtype, n, 1.0);
                let xb = h.buf(dtype, &x);
                let mut y = h.poisoned(dtype, n);
                drop.forward(&h.ops, &xb, &mut y).unwrap();
                let scale = 1.0 / (1.0 - p as f64);
                let want: Vec<f64> = (0..n)
                    .map(|i| {
                        if dropout_keeps(i as u64, seed, p) {
                            x[i] * scale
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let tol = if dtype == DType::F32 { F32 } else { BF16 };
                h.assert_close("dropout", &h.read(&y), &want, tol);
                let dropped = want.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
                assert!(
                    (dropped - p as f64).abs() < 0.01,
                    "p {p}: dropped {dropped}"
                );

                // The backward adds the same mask's product to what is there.
                let base = h.rand(dtype, n, 1.0);
                let mut out = h.buf(dtype, &base);
                drop.backward_add(&h.ops, &xb, &mut out).unwrap();
                let want: Vec<f64> = base.iter().zip(&want).map(|(b, w)| b + w).collect();
                h.assert_close("dropout backward", &h.read(&out), &want, tol);
            }
        }
        // Another seed draws another mask.
        let a = (0..1000).filter(|&i| dropout_keeps(i, 1, 0.5)).count();
        let same = (0..1000)
            .filter(|&i| dropout_keeps(i, 1, 0.5) == dropout_keeps(i, 2, 0.5))
            .count();
        assert!(a > 400 && same < 600, "{a} {same}");
        let bad = Dropout { p: 1.0, seed: 0 };
        let xb = h.f32_buf(&[1.0]);
        let mut y = h.poisoned_f32(1);
        assert!(bad.forward(&h.ops, &xb, &mut y).is_err());
    });
}
