//! Flash attention over packed sequences: against an f64 reference (random lengths, length-1
//! sequences, lengths that are not multiples of the block), backward against finite
//! differences, and no leakage between the sequences of a pack; the packed batch also in f16 and
//! f32 (on the GPU f32 dots are FMA loops, f16 ones tensor-core ones).

use crate::gradcheck::{dot, numeric_grad};
use crate::harness::{for_each_device, Harness, Tol};
use crate::reference::PackedAttention;
use kiln_compiler::DType;
use kiln_ops::attention::{Attention, PackedBlocks};
use kiln_runtime::Buffer;

struct Inputs {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    d_o: Vec<f64>,
}

/// Everything the kernels produce, read back as f64.
#[derive(PartialEq)]
struct Outputs {
    o: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

fn inputs(h: &Harness, attn: &Attention, tokens: usize) -> Inputs {
    inputs_of(h, DType::Bf16, attn, tokens)
}

/// Random inputs already rounded to `d`.
fn inputs_of(h: &Harness, d: DType, attn: &Attention, tokens: usize) -> Inputs {
    let (q_len, kv_len) = (
        tokens * attn.q_heads * attn.head_dim,
        tokens * attn.kv_heads * attn.head_dim,
    );
    Inputs {
        q: h.rand(d, q_len, 2.0),
        k: h.rand(d, kv_len, 2.0),
        v: h.rand(d, kv_len, 1.0),
        d_o: h.rand(d, q_len, 1.0),
    }
}

fn run(h: &Harness, attn: &Attention, cu_seqlens: &[usize], x: &Inputs) -> Outputs {
    run_in(h, DType::Bf16, attn, cu_seqlens, x)
}

/// Forward and backward with activations of element type `d`.
fn run_in(h: &Harness, d: DType, attn: &Attention, cu_seqlens: &[usize], x: &Inputs) -> Outputs {
    let blocks = PackedBlocks::new(&h.ops, cu_seqlens).unwrap();
    let t = blocks.tokens();
    let [q, k, v, d_o] = [&x.q, &x.k, &x.v, &x.d_o].map(|data| h.buf(d, data));
    let poisoned = |like: &Buffer| h.poisoned(d, like.len());
    let (mut o, mut lse) = (poisoned(&q), h.poisoned_f32(t * attn.q_heads));
    attn.forward(&h.ops, &blocks, &q, &k, &v, &mut o, &mut lse)
        .unwrap();
    let (mut dq, mut dk, mut dv) = (poisoned(&q), poisoned(&k), poisoned(&v));
    attn.backward(
        &h.ops,
        &blocks,
        (&q, &k, &v),
        &o,
        &lse,
        &d_o,
        (&mut dq, &mut dk, &mut dv),
    )
    .unwrap();
    Outputs {
        o: h.read(&o),
        lse: h.read(&lse),
        dq: h.read(&dq),
        dk: h.read(&dk),
        dv: h.read(&dv),
    }
}

fn tol(want: &[f64]) -> Tol {
    tol_in(DType::Bf16, want)
}

/// The probabilities pass through `d` on their way into the second dot; f32 stays f32 all along.
fn tol_in(d: DType, want: &[f64]) -> Tol {
    let max = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let rel = match d {
        DType::F32 => 1e-5,
        DType::F16 => 4e-3,
        _ => 2e-2,
    };
    Tol {
        rel,
        abs: rel * max,
    }
}

fn check_against_reference(h: &Harness, attn: Attention, lengths: &[usize]) {
    check_in(h, DType::Bf16, attn, lengths)
}

fn check_in(h: &Harness, d: DType, attn: Attention, lengths: &[usize]) {
    let mut cu = vec![0];
    for l in lengths {
        cu.push(cu.last().unwrap() + l);
    }
    let x = inputs_of(h, d, &attn, *cu.last().unwrap());
    let got = run_in(h, d, &attn, &cu, &x);
    let reference = PackedAttention {
        cu_seqlens: &cu,
        q_heads: attn.q_heads,
        kv_heads: attn.kv_heads,
        head_dim: attn.head_dim,
    };
    let o = reference.forward(&x.q, &x.k, &x.v);
    h.assert_close(&format!("{d} o"), &got.o, &o, tol_in(d, &o));
    let (dq, dk, dv) = reference.backward(&x.q, &x.k, &x.v, &x.d_o);
    h.assert_close(&format!("{d} dq"), &got.dq, &dq, tol_in(d, &dq));
    h.assert_close(&format!("{d} dk"), &got.dk, &dk, tol_in(d, &dk));
    h.assert_close(&format!("{d} dv"), &got.dv, &dv, tol_in(d, &dv));
}

#[test]
fn attention_in_f32_and_f16() {
    for_each_device(|h| {
        let attn = Attention {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 16,
        };
        let lengths = [1, 70, 17, 3, 130];
        check_in(h, DType::F16, attn, &lengths);
        check_in(h, DType::F32, attn, &lengths);
    });
}

#[test]
fn attention_matches_the_reference_on_a_packed_batch() {
    for_each_device(|h| {
        let attn = Attention {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 16,
        };
        check_against_reference(h, attn, &[1, 70, 17, 64, 3, 130]);
        // Without grouping, dk/dv take the kernel that owns whole key/value heads.
        let ungrouped = Attention {
            q_heads: 2,
            kv_heads: 2,
            head_dim: 16,
        };
        check_against_reference(h, ungrouped, &[1, 70, 17, 130]);
        if h.device.is_gpu() {
            for head_dim in [64, 128] {
                let qwen = Attention {
                    q_heads: 14,
                    kv_heads: 2,
                    head_dim,
                };
                check_against_reference(h, qwen, &[300, 1, 257, 64, 130, 1024]);
            }
        }
    });
}

#[test]
fn attention_backward_matches_finite_differences() {
    for_each_device(|h| {
        let attn = Attention {
            q_heads: 2,
            kv_heads: 1,
            head_dim: 16,
        };
        let cu = [0, 1, 4, 9];
        let x = inputs(h, &attn, 9);
        let got = run(h, &attn, &cu, &x);
        let reference = PackedAttention {
            cu_seqlens: &cu,
            q_heads: 2,
            kv_heads: 1,
            head_dim: 16,
        };
        let loss_q = |q: &[f64]| dot(&reference.forward(q, &x.k, &x.v), &x.d_o);
        let loss_k = |k: &[f64]| dot(&reference.forward(&x.q, k, &x.v), &x.d_o);
        let loss_v = |v: &[f64]| dot(&reference.forward(&x.q, &x.k, v), &x.d_o);
        let dq = numeric_grad(&x.q, loss_q);
        h.assert_close("dq", &got.dq, &dq, tol(&dq));
        let dk = numeric_grad(&x.k, loss_k);
        h.assert_close("dk", &got.dk, &dk, tol(&dk));
        let dv = numeric_grad(&x.v, loss_v);
        h.assert_close("dv", &got.dv, &dv, tol(&dv));
    });
}

/// Perturbing every input of one sequence leaves the outputs and gradients of the others
/// bit for bit unchanged.
#[test]
fn no_sequence_sees_another() {
    for_each_device(|h| {
        let attn = Attention {
            q_heads: 4,
            kv_heads: 1,
            head_dim: 16,
        };
        let cu = [0usize, 40, 41, 100, 165];
        let x = inputs(h, &attn, 165);
        let before = run(h, &attn, &cu, &x);
        for seq in 0..cu.len() - 1 {
            let (lo, hi) = (cu[seq], cu[seq + 1]);
            let perturb = |data: &[f64], heads: usize| -> Vec<f64> {
                let per_token = heads * attn.head_dim;
                let mut out = data.to_vec();
                for (i, v) in out[lo * per_token..hi * per_token].iter_mut().enumerate() {
                    *v = half::bf16::from_f64(-*v * 0.5 + (i % 7) as f64 * 0.25).to_f64();
                }
                out
            };
            let changed = Inputs {
                q: perturb(&x.q, attn.q_heads),
                k: perturb(&x.k, attn.kv_heads),
                v: perturb(&x.v, attn.kv_heads),
                d_o: perturb(&x.d_o, attn.q_heads),
            };
            let after = run(h, &attn, &cu, &changed);
            let others = |data: &[f64], per_token: usize| -> Vec<f64> {
                let mut kept = data[..lo * per_token].to_vec();
                kept.extend_from_slice(&data[hi * per_token..]);
                kept
            };
            let (qw, kw) = (attn.q_heads * attn.head_dim, attn.kv_heads * attn.head_dim);
            for (what, a, b, w) in [
                ("o", &before.o, &after.o, qw),
                ("lse", &before.lse, &after.lse, attn.q_heads),
                ("dq", &before.dq, &after.dq, qw),
                ("dk", &before.dk, &after.dk, kw),
                ("dv", &before.dv, &after.dv, kw),
            ] {
                let (a, b) = (others(a, w), others(b, w));
                let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{what} of other sequences changed when sequence {seq} did"
                );
            }
            // ... while the perturbed sequence's own outputs did change.
            assert!(before.o[lo * qw..hi * qw] != after.o[lo * qw..hi * qw]);
        }
    });
}

#[test]
fn bad_packs_and_head_counts_are_errors() {
    let h = crate::harness::cpu();
    for cu in [&[1usize, 5][..], &[0, 5, 3]] {
        let err = PackedBlocks::new(&h.ops, cu).err().unwrap();
        assert!(err.to_string().contains("cu_seqlens"), "{err}");
    }
    let blocks = PackedBlocks::new(&h.ops, &[0, 4]).unwrap();
    let attn = Attention {
        q_heads: 3,
        kv_heads: 2,
        head_dim: 16,
    };
    let b = h.device.alloc(DType::Bf16, 4 * 3 * 16).unwrap();
    let mut o = h.device.alloc(DType::Bf16, 4 * 3 * 16).unwrap();
    let mut lse = h.device.alloc(DType::F32, 12).unwrap();
    let err = attn
        .forward(&h.ops, &blocks, &b, &b, &b, &mut o, &mut lse)
        .unwrap_err();
    assert!(err.to_string().contains("multiple"), "{err}");
}

/// A decode step with a KV cache (`PackedBlocks::decode`: new query rows at their positions,
/// every key so far) gives the rows the full causal forward gives, whether one row is new or
/// several; rows outside the step are not written.
#[test]
fn decode_steps_match_the_full_forward() {
    for_each_device(|h: &Harness| {
        let attn = Attention {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 32,
        };
        let (tokens, capacity) = (150usize, 160usize);
        let x = inputs(h, &attn, capacity);
        let [q, k, v] = [&x.q, &x.k, &x.v].map(|data| h.bf16(data));
        let q_row = attn.q_heads * attn.head_dim;
        let full = PackedBlocks::new(&h.ops, &[0, capacity]).unwrap();
        let mut o_full = h.poisoned_bf16(q.len());
        let mut lse_full = h.poisoned_f32(capacity * attn.q_heads);
        attn.forward(&h.ops, &full, &q, &k, &v, &mut o_full, &mut lse_full)
            .unwrap();
        let o_full = h.read(&o_full);
        // The last two steps start past the first key block, and not on a block boundary.
        for (past, new) in [(0, 5), (5, 1), (6, 17), (23, 14), (70, 9), (127, 23)] {
            assert!(past + new <= tokens);
            let blocks = PackedBlocks::decode(&h.ops, past, new, capacity).unwrap();
            let mut o = h.bf16(&vec![7.0; q.len()]);
            let mut lse = h.poisoned_f32(capacity * attn.q_heads);
            attn.forward(&h.ops, &blocks, &q, &k, &v, &mut o, &mut lse)
                .unwrap();
            let o = h.read(&o);
            let rows = past * q_row..(past + new) * q_row;
            let what = format!("decode rows {past}..{}", past + new);
            h.assert_close(
                &what,
                &o[rows.clone()],
                &o_full[rows.clone()],
                tol(&o_full[rows.clone()]),
            );
            assert!(o[..rows.start]
                .iter()
                .chain(&o[rows.end..])
                .all(|&x| x == 7.0));
        }
        assert!(PackedBlocks::decode(&h.ops, 150, 11, capacity).is_err());
        assert!(PackedBlocks::decode(&h.ops, 3, 0, capacity).is_err());
    });
}
