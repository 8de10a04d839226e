//! Cut cross-entropy against a naive full-logits reference in f64 (ignored tokens, a target in
//! the last, partial vocabulary chunk, z-loss), its backward against finite differences, and on
//! a GPU the full Qwen2.5-0.5B size against the materialised path (one [T, V] GEMM and the
//! row-wise cross-entropy kernels). The small cases run with bf16 and with f32 hidden states and
//! weights (f32 logits all the way).

use crate::gradcheck::numeric_grad;
use crate::harness::{for_each_device, Harness, Tol};
use crate::reference::LinearCrossEntropy;
use kiln_compiler::DType;
use kiln_ops::cross_entropy::CutCrossEntropy;
use kiln_runtime::{Args, Gemm};

/// Loss tolerance: the logits pass through bf16 (as in every bf16 training step), which moves
/// each by up to 2^-9 of its size.
const LOSS: Tol = Tol {
    rel: 3e-3,
    abs: 1e-4,
};

/// With f32 activations the logits stay f32: a few f32 roundings per token.
const LOSS_F32: Tol = Tol {
    rel: 1e-5,
    abs: 1e-5,
};

fn loss_tol(act: DType) -> Tol {
    if act == DType::F32 {
        LOSS_F32
    } else {
        LOSS
    }
}

fn grad_tol(want: &[f64]) -> Tol {
    grad_tol_in(DType::Bf16, want)
}

fn grad_tol_in(act: DType, want: &[f64]) -> Tol {
    let max = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let rel = if act == DType::F32 { 1e-5 } else { 1e-2 };
    Tol {
        rel,
        abs: rel * max,
    }
}

struct Case {
    tokens: usize,
    hidden: usize,
    vocab: usize,
    chunk: usize,
    z_loss: f32,
}

fn labels(h: &Harness, case: &Case) -> Vec<i32> {
    let mut labels = h.rand_labels(case.tokens, case.vocab);
    labels[1] = -100;
    labels[2] = case.vocab as i32 - 1; // in the last, partial chunk
    labels
}

/// One case with hidden states and weights of type `act` (bf16 or f32).
fn run_case(h: &Harness, act: DType, case: &Case, fd: bool) {
    let (t, hd, v) = (case.tokens, case.hidden, case.vocab);
    let hidden = h.rand(act, t * hd, 1.0);
    let w = h.rand(act, v * hd, 0.5);
    let labels = labels(h, case);
    let reference = LinearCrossEntropy {
        labels: &labels,
        hidden_dim: hd,
        ignore: -100,
        z_loss: case.z_loss as f64,
    };
    let op = CutCrossEntropy {
        chunk: case.chunk,
        z_loss: case.z_loss,
        ..CutCrossEntropy::new(t, hd, v)
    };
    let (hb, wb, lb) = (h.buf(act, &hidden), h.buf(act, &w), h.i32_buf(&labels));
    let state = op.forward(&h.ops, &hb, &wb, &lb).unwrap();
    let loss = state.loss().unwrap() as f64;
    let want = reference.loss(&hidden, &w);
    h.assert_close(&format!("{act} loss"), &[loss], &[want], loss_tol(act));
    assert_eq!(state.counted_tokens().unwrap(), t - 1);
    let per_token = reference.losses(&hidden, &w);
    let got = h.read(&state.losses);
    h.assert_close("per-token losses", &got, &per_token, loss_tol(act));

    let dloss = 0.5;
    let (dh_want, dw_want) = if fd {
        (
            numeric_grad(&hidden, |x| dloss * reference.loss(x, &w)),
            numeric_grad(&w, |x| dloss * reference.loss(&hidden, x)),
        )
    } else {
        reference.gradients(&hidden, &w, dloss)
    };
    let dl = dloss as f32;
    // dhidden in f32, or bf16 through an f32 accumulator.
    let dhidden_types: &[DType] = if act == DType::F32 {
        &[DType::F32]
    } else {
        &[DType::F32, DType::Bf16]
    };
    let grad_tol = |want: &[f64]| grad_tol_in(act, want);
    for &dtype in dhidden_types {
        let mut dh = h.device.alloc(dtype, t * hd).unwrap();
        let mut dw = h.poisoned_f32(v * hd);
        op.backward(
            &h.ops,
            &hb,
            &wb,
            &lb,
            &state,
            dl,
            &mut dh,
            Some((&mut dw).into()),
            false,
        )
        .unwrap();
        h.assert_close("dhidden", &h.read(&dh), &dh_want, grad_tol(&dh_want));
        h.assert_close("dweight", &h.read(&dw), &dw_want, grad_tol(&dw_want));
        // Accumulating adds a second copy of the gradient.
        op.backward(
            &h.ops,
            &hb,
            &wb,
            &lb,
            &state,
            dl,
            &mut dh,
            Some((&mut dw).into()),
            true,
        )
        .unwrap();
        let twice: Vec<f64> = dw_want.iter().map(|x| 2.0 * x).collect();
        h.assert_close(
            "dweight accumulated",
            &h.read(&dw),
            &twice,
            grad_tol(&twice),
        );

        // The fused pass, over several blocks of tokens (the last one partial), gives the
        // same loss and gradients; `token_grad` is `dloss / count` for the mean's gradient.
        assert!(
            op.token_block() < t,
            "the case must span several token blocks"
        );
        let mut dh = h.device.alloc(dtype, t * hd).unwrap();
        let mut dw = h.poisoned_f32(v * hd);
        let token_grad = dl / (t - 1) as f32;
        let fused = op
            .forward_backward(
                &h.ops,
                &hb,
                &wb,
                &lb,
                token_grad,
                &mut dh,
                Some((&mut dw).into()),
                false,
            )
            .unwrap();
        let loss = fused.loss().unwrap() as f64;
        h.assert_close("fused loss", &[loss], &[want], loss_tol(act));
        assert_eq!(fused.counted_tokens().unwrap(), t - 1);
        let got = h.read(&fused.losses);
        h.assert_close("fused per-token losses", &got, &per_token, loss_tol(act));
        h.assert_close("fused dhidden", &h.read(&dh), &dh_want, grad_tol(&dh_want));
        h.assert_close("fused dweight", &h.read(&dw), &dw_want, grad_tol(&dw_want));
        op.forward_backward(
            &h.ops,
            &hb,
            &wb,
            &lb,
            token_grad,
            &mut dh,
            Some((&mut dw).into()),
            true,
        )
        .unwrap();
        h.assert_close(
            "fused dweight accumulated",
            &h.read(&dw),
            &twice,
            grad_tol(&twice),
        );
        let mut dh_only = h.device.alloc(dtype, t * hd).unwrap();
        op.forward_backward(&h.ops, &hb, &wb, &lb, token_grad, &mut dh_only, None, false)
            .unwrap();
        h.assert_close(
            "fused dhidden without dweight",
            &h.read(&dh_only),
            &dh_want,
            grad_tol(&dh_want),
        );
    }
}

#[test]
fn cut_cross_entropy_matches_the_full_logits_reference() {
    for_each_device(|h| {
        for z_loss in [0.0, 0.05] {
            let case = Case {
                tokens: 37,
                hidden: 24,
                vocab: 1000,
                chunk: 256,
                z_loss,
            };
            run_case(h, DType::Bf16, &case, false);
            run_case(h, DType::F32, &case, false);
        }
    });
}

#[test]
fn cut_cross_entropy_backward_matches_finite_differences() {
    for_each_device(|h| {
        let case = Case {
            tokens: 4,
            hidden: 6,
            vocab: 50,
            chunk: 16,
            z_loss: 0.1,
        };
        run_case(h, DType::Bf16, &case, true);
        run_case(h, DType::F32, &case, true);
    });
}

#[test]
fn cut_cross_entropy_keeps_its_workspace_small_at_qwen_size() {
    let op = CutCrossEntropy::new(8192, 896, 151_936);
    let full_logits = 8192 * 151_936 * 2;
    assert!(
        op.workspace_bytes(true) <= 300 << 20,
        "{}",
        op.workspace_bytes(true)
    );
    assert!(op.workspace_bytes(true) * 10 < full_logits);
}

/// On a GPU, the full size (T 8192, H 896, V 151,936) against the materialised path.
#[test]
fn cut_cross_entropy_at_full_size_matches_materialised_logits() {
    for_each_device(|h| {
        if !h.device.is_gpu() {
            return;
        }
        let (t, hd, v) = (8192usize, 896usize, 151_936usize);
        let hidden = h.rand_bf16(t * hd, 1.0);
        let w = h.rand_bf16(v * hd, 0.1);
        let labels = labels(
            h,
            &Case {
                tokens: t,
                hidden: hd,
                vocab: v,
                chunk: 0,
                z_loss: 0.0,
            },
        );
        let (hb, wb, lb) = (h.bf16(&hidden), h.bf16(&w), h.i32_buf(&labels));
        let dev = &h.device;

        // The materialised path: all logits, the row-wise kernels, then the two GEMMs.
        let mut logits = dev.alloc(DType::Bf16, t * v).unwrap();
        dev.gemm(
            &Gemm::new(t, v, hd).transpose_b(),
            &hb,
            &wb,
            &mut logits,
            None,
        )
        .unwrap();
        let (mut row_loss, mut lse) = (h.poisoned_f32(t), h.poisoned_f32(t));
        let ce = [("BLOCK", 4096)];
        h.launch(
            "cross_entropy.kiln",
            "cross_entropy_fwd",
            &ce,
            [t as u32, 1, 1],
            &Args::new()
                .input("logits", &logits)
                .input("labels", &lb)
                .output("loss", &mut row_loss)
                .output("lse", &mut lse)
                .i32("vocab", v as i32)
                .i32("ignore_index", -100),
        );
        let counted = (t - 1) as f64;
        let want_loss = h.read(&row_loss).iter().sum::<f64>() / counted;
        let dloss_rows = h.f32_buf(&vec![1.0 / counted; t]);
        let mut dlogits = dev.alloc(DType::Bf16, t * v).unwrap();
        h.launch(
            "cross_entropy.kiln",
            "cross_entropy_bwd",
            &ce,
            [t as u32, 1, 1],
            &Args::new()
                .input("logits", &logits)
                .input("labels", &lb)
                .input("lse", &lse)
                .input("dloss", &dloss_rows)
                .output("dlogits", &mut dlogits)
                .i32("vocab", v as i32)
                .i32("ignore_index", -100),
        );
        drop(logits);
        let (mut dh_ref, mut dw_ref) = (
            dev.alloc(DType::F32, t * hd).unwrap(),
            dev.alloc(DType::F32, v * hd).unwrap(),
        );
        dev.gemm(&Gemm::new(t, hd, v), &dlogits, &wb, &mut dh_ref, None)
            .unwrap();
        dev.gemm(
            &Gemm::new(v, hd, t).transpose_a(),
            &dlogits,
            &hb,
            &mut dw_ref,
            None,
        )
        .unwrap();
        drop(dlogits);

        let op = CutCrossEntropy::new(t, hd, v);
        let state = op.forward(&h.ops, &hb, &wb, &lb).unwrap();
        let loss = state.loss().unwrap() as f64;
        h.assert_close(
            "loss",
            &[loss],
            &[want_loss],
            Tol {
                rel: 1e-4,
                abs: 0.0,
            },
        );
        let (mut dh, mut dw) = (h.poisoned_f32(t * hd), h.poisoned_f32(v * hd));
        op.backward(
            &h.ops,
            &hb,
            &wb,
            &lb,
            &state,
            1.0,
            &mut dh,
            Some((&mut dw).into()),
            false,
        )
        .unwrap();
        let dh_want = h.read(&dh_ref);
        h.assert_close("dhidden", &h.read(&dh), &dh_want, grad_tol(&dh_want));
        let dw_want = h.read(&dw_ref);
        h.assert_close("dweight", &h.read(&dw), &dw_want, grad_tol(&dw_want));
    });
}
