//! `kiln bench ops`: the typed operations of `kiln_ops`, as the model calls them, at the shapes
//! the peer script (`kernels_peer.py`) measures, side by side with the peers' times when their
//! JSON lines are given with `--peer FILE`.
//!
//! Timing follows the peer script: the same inputs every run (L2-warm where they fit), a pair
//! of CUDA events around each call, synchronised in between; the median is reported.

use super::gpu::{err, median_ms, rand_bf16, rand_f32};
use kiln::compiler::DType;
use kiln::ops::adamw::{AdamW, ParamState, StepControl};
use kiln::ops::rmsnorm::RmsNorm;
use kiln::ops::rope::Rope;
use kiln::ops::{swiglu, Ops};
use kiln::runtime::{Buffer, Device};

/// One measured operation.
struct Row {
    /// The peer script's name for the op (`rmsnorm_fwd`), and the shape it reports.
    op: &'static str,
    shape: Vec<usize>,
    ms: f64,
    bytes: usize,
}

/// A peer's measurement, from one JSON line of `kernels_peer.py`.
struct PeerRow {
    op: String,
    peer: String,
    shape: Vec<usize>,
    ms: f64,
}

/// Runs the suite on CUDA device 0; `peer_file` holds the peer script's output.
pub fn run(runs: usize, peer_file: Option<&std::path::Path>) -> Result<String, String> {
    let dev = Device::cuda(0).map_err(err)?;
    let ops = Ops::new(dev.clone());
    let mut rows = vec![];
    for (r, n) in [(8192, 896), (16384, 4096)] {
        rows.extend(rmsnorm(&ops, runs, r, n)?);
    }
    rows.extend(swiglu(&ops, runs, 8192, 4864)?);
    rows.extend(rope(&ops, runs)?);
    rows.push(adamw(&ops, runs, 494_032_768)?);
    let (ce_row, ce_note) = cross_entropy(&ops, runs.min(20), 8192, 896, 151_936)?;
    rows.push(ce_row);
    rows.extend(attention(&ops, runs.min(20), &[1024; 8])?);
    let packed = packed_lengths(8192, 1024);
    let packed_rows = attention(&ops, runs.min(20), &packed)?;

    let peers = match peer_file {
        Some(path) => read_peers(path)?,
        None => vec![],
    };
    let mut out = format!(
        "{} ({dev}); typed ops, medians of {runs} runs, CUDA events, same inputs every run (as the peers)\n",
        dev.name()
    );
    out += "| op | shape | Kiln ms | GB/s | peer | peer ms | peer / Kiln |\n|---|---|---|---|---|---|---|\n";
    for row in &rows {
        let gbps = row.bytes as f64 / (row.ms / 1e3) / 1e9;
        let matching: Vec<&PeerRow> = peers
            .iter()
            .filter(|p| p.op == row.op && (p.shape.is_empty() || p.shape == row.shape))
            .collect();
        let shape = row
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" x ");
        if matching.is_empty() {
            out += &format!(
                "| {} | {shape} | {:.4} | {gbps:.0} | — | — | — |\n",
                row.op, row.ms
            );
        }
        for p in matching {
            out += &format!(
                "| {} | {shape} | {:.4} | {gbps:.0} | {} | {:.4} | {:.2}x |\n",
                row.op,
                row.ms,
                p.peer,
                p.ms,
                p.ms / row.ms
            );
        }
    }
    out += &ce_note;
    for row in packed_rows {
        out += &format!(
            "{} on a pack of {} sequences of random lengths (8,192 tokens, 14/2 heads, dim 64): {:.4} ms\n",
            row.op,
            packed.len(),
            row.ms
        );
    }
    Ok(out)
}

/// Lengths from 1 to `max` (roughly log-uniform) that add up to `tokens`.
fn packed_lengths(tokens: usize, max: usize) -> Vec<usize> {
    let (mut left, mut x, mut out) = (tokens, 0x2545_f491_4f6c_dd1du64, vec![]);
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (max as f64).powf((x % 1000) as f64 / 1000.0) as usize;
        let len = len.clamp(1, left);
        out.push(len);
        left -= len;
    }
    out
}

/// Causal attention forward, and forward + backward, over sequences of `lengths` packed
/// together: 14 query heads, 2 key/value heads, head dim 64.
fn attention(ops: &Ops, runs: usize, lengths: &[usize]) -> Result<Vec<Row>, String> {
    use kiln::ops::attention::{Attention, PackedBlocks};
    let dev = ops.device();
    let attn = Attention {
        q_heads: 14,
        kv_heads: 2,
        head_dim: 64,
    };
    let mut cu = vec![0];
    for l in lengths {
        cu.push(cu.last().unwrap() + l);
    }
    let t = *cu.last().unwrap();
    let e = |e: kiln::ops::Error| e.to_string();
    let blocks = PackedBlocks::new(ops, &cu).map_err(e)?;
    let (q_len, kv_len) = (t * 14 * 64, t * 2 * 64);
    let q = rand_bf16(dev, q_len, 15, 1.0)?;
    let k = rand_bf16(dev, kv_len, 16, 1.0)?;
    let v = rand_bf16(dev, kv_len, 17, 1.0)?;
    let d_o = rand_bf16(dev, q_len, 18, 1.0)?;
    let mut o = alloc(dev, DType::Bf16, q_len)?;
    let mut lse = alloc(dev, DType::F32, t * 14)?;
    let (mut dq, mut dk, mut dv) = (
        alloc(dev, DType::Bf16, q_len)?,
        alloc(dev, DType::Bf16, kv_len)?,
        alloc(dev, DType::Bf16, kv_len)?,
    );
    let fwd = median_ms(dev, runs, |_| {
        attn.forward(ops, &blocks, &q, &k, &v, &mut o, &mut lse)
            .map_err(e)
    })?;
    let fwd_bwd = median_ms(dev, runs, |_| {
        attn.forward(ops, &blocks, &q, &k, &v, &mut o, &mut lse)
            .map_err(e)?;
        let grads = (&mut dq, &mut dk, &mut dv);
        attn.backward(ops, &blocks, (&q, &k, &v), &o, &lse, &d_o, grads)
            .map_err(e)
    })?;
    let shape = if lengths.iter().all(|&l| l == lengths[0]) {
        vec![lengths.len(), 14, 2, lengths[0], 64]
    } else {
        vec![]
    };
    Ok(vec![
        Row {
            op: "attn_fwd",
            shape: shape.clone(),
            ms: fwd,
            bytes: 0,
        },
        Row {
            op: "attn_fwd_bwd",
            shape,
            ms: fwd_bwd,
            bytes: 0,
        },
    ])
}

/// Cut cross-entropy forward and backward with the lm_head GEMMs, as one training step runs it
/// (dhidden bf16, dW f32): time, TFLOP/s of the four GEMMs' work, and memory beyond inputs and
/// outputs.
fn cross_entropy(
    ops: &Ops,
    runs: usize,
    tokens: usize,
    hidden: usize,
    vocab: usize,
) -> Result<(Row, String), String> {
    use kiln::ops::cross_entropy::CutCrossEntropy;
    let dev = ops.device();
    let h = rand_bf16(dev, tokens * hidden, 13, 1.0)?;
    let w = rand_bf16(dev, vocab * hidden, 14, 0.05)?;
    let labels: Vec<i32> = (0..tokens)
        .map(|t| ((t as u64 * 2_654_435_761) % vocab as u64) as i32)
        .collect();
    let labels = dev.upload(&labels).map_err(err)?;
    let mut dh = alloc(dev, DType::Bf16, tokens * hidden)?;
    let mut dw = alloc(dev, DType::F32, vocab * hidden)?;
    let op = CutCrossEntropy::new(tokens, hidden, vocab);
    let e = |e: kiln::ops::Error| e.to_string();
    let mut loss = 0.0;
    let ms = median_ms(dev, runs, |_| {
        let state = op.forward(ops, &h, &w, &labels).map_err(e)?;
        op.backward(
            ops,
            &h,
            &w,
            &labels,
            &state,
            1.0,
            &mut dh,
            Some((&mut dw).into()),
            false,
        )
        .map_err(e)
    })?;
    if let Ok(state) = op.forward(ops, &h, &w, &labels) {
        loss = state.loss().map_err(e)?;
    }
    let flops = 4.0 * 2.0 * (tokens * hidden * vocab) as f64;
    let note = format!(
        "\ncut cross-entropy T {tokens}, H {hidden}, V {vocab} (chunk {}): {ms:.2} ms fwd+bwd incl. 4 GEMMs \
         = {:.0} TFLOP/s; workspace {:.0} MiB (+ 32 MiB cuBLASLt workspace per device); loss {loss:.4}\n",
        op.chunk,
        flops / (ms / 1e3) / 1e12,
        op.workspace_bytes(true) as f64 / (1 << 20) as f64,
    );
    Ok((
        Row {
            op: "ce_fwd_bwd",
            shape: vec![tokens, hidden, vocab],
            ms,
            bytes: 0,
        },
        note,
    ))
}

fn rmsnorm(ops: &Ops, runs: usize, rows: usize, n: usize) -> Result<Vec<Row>, String> {
    let dev = ops.device();
    let op = RmsNorm { rows, n, eps: 1e-6 };
    let x = rand_bf16(dev, rows * n, 1, 2.0)?;
    let w = rand_bf16(dev, n, 2, 1.0)?;
    let dy = rand_bf16(dev, rows * n, 3, 1.0)?;
    let mut y = alloc(dev, DType::Bf16, rows * n)?;
    let mut rstd = alloc(dev, DType::F32, rows)?;
    let mut dx = alloc(dev, DType::Bf16, rows * n)?;
    let mut dw = alloc(dev, DType::F32, n)?;
    let e = |e: kiln::ops::Error| e.to_string();
    let fwd = median_ms(dev, runs, |_| {
        op.forward(ops, &x, &w, &mut y, &mut rstd).map_err(e)
    })?;
    let bwd = median_ms(dev, runs, |_| {
        op.backward(ops, &x, &w, &dy, &rstd, &mut dx, &mut dw)
            .map_err(e)
    })?;
    // Bytes as the peer script counts them.
    Ok(vec![
        Row {
            op: "rmsnorm_fwd",
            shape: vec![rows, n],
            ms: fwd,
            bytes: 2 * rows * n * 2 + n * 2,
        },
        Row {
            op: "rmsnorm_bwd",
            shape: vec![rows, n],
            ms: bwd,
            bytes: 3 * rows * n * 2 + n * 2,
        },
    ])
}

fn swiglu(ops: &Ops, runs: usize, rows: usize, n: usize) -> Result<Vec<Row>, String> {
    let dev = ops.device();
    let len = rows * n;
    let gate = rand_bf16(dev, len, 4, 3.0)?;
    let up = rand_bf16(dev, len, 5, 3.0)?;
    let dout = rand_bf16(dev, len, 6, 1.0)?;
    let mut out = alloc(dev, DType::Bf16, len)?;
    let mut dgate = alloc(dev, DType::Bf16, len)?;
    let mut dup = alloc(dev, DType::Bf16, len)?;
    let e = |e: kiln::ops::Error| e.to_string();
    let fwd = median_ms(dev, runs, |_| {
        swiglu::forward(ops, &gate, &up, &mut out).map_err(e)
    })?;
    let bwd = median_ms(dev, runs, |_| {
        swiglu::backward(ops, &gate, &up, &dout, &mut dgate, &mut dup).map_err(e)
    })?;
    Ok(vec![
        Row {
            op: "swiglu_fwd",
            shape: vec![rows, n],
            ms: fwd,
            bytes: 3 * len * 2,
        },
        Row {
            op: "swiglu_bwd",
            shape: vec![rows, n],
            ms: bwd,
            bytes: 5 * len * 2,
        },
    ])
}

fn rope(ops: &Ops, runs: usize) -> Result<Vec<Row>, String> {
    let dev = ops.device();
    let (batch, seq, q_heads, kv_heads, head_dim) = (8, 1024, 14, 2, 64);
    let rope = Rope {
        tokens: batch * seq,
        q_heads,
        kv_heads,
        head_dim,
        theta: 1e6,
    };
    let mut q = rand_bf16(dev, rope.tokens * q_heads * head_dim, 7, 1.0)?;
    let mut k = rand_bf16(dev, rope.tokens * kv_heads * head_dim, 8, 1.0)?;
    let positions: Vec<i32> = (0..rope.tokens).map(|t| (t % seq) as i32).collect();
    let pos = dev.upload(&positions).map_err(err)?;
    let e = |e: kiln::ops::Error| e.to_string();
    let fwd = median_ms(dev, runs, |_| {
        rope.forward(ops, &mut q, &mut k, &pos).map_err(e)
    })?;
    let bwd = median_ms(dev, runs, |_| {
        rope.backward(ops, &mut q, &mut k, &pos).map_err(e)
    })?;
    let bytes = 2 * (q.len() + k.len()) * 2;
    let shape = vec![batch, q_heads, kv_heads, seq, head_dim];
    Ok(vec![
        Row {
            op: "rope_fwd",
            shape: shape.clone(),
            ms: fwd,
            bytes,
        },
        Row {
            op: "rope_bwd",
            shape,
            ms: bwd,
            bytes,
        },
    ])
}

fn adamw(ops: &Ops, runs: usize, n: usize) -> Result<Row, String> {
    let dev = ops.device();
    let mut param = rand_f32(dev, n, 9, 1.0, false)?;
    let grad = rand_f32(dev, n, 10, 1e-2, false)?;
    let mut exp_avg = rand_f32(dev, n, 11, 1e-3, false)?;
    let mut exp_avg_sq = rand_f32(dev, n, 12, 1e-5, true)?;
    let mut param_bf16 = alloc(dev, DType::Bf16, n)?;
    let mut state = ParamState {
        param: param.view_mut(),
        grad: grad.view(),
        exp_avg: exp_avg.view_mut(),
        exp_avg_sq: exp_avg_sq.view_mut(),
        param_copy: Some(param_bf16.view_mut()),
    };
    let adamw = AdamW {
        weight_decay: 0.01,
        ..AdamW::default()
    };
    // One finished step control (applied, t = 1) that every timed update reads.
    let mut control = StepControl::new(ops, &adamw, &[n], 1).map_err(|e| e.to_string())?;
    control.add_grad(ops, &grad).map_err(|e| e.to_string())?;
    control
        .finish(ops, None, false)
        .map_err(|e| e.to_string())?;
    let ms = median_ms(dev, runs, |_| {
        adamw
            .update(ops, &mut state, &control, 1e-5)
            .map_err(|e| e.to_string())
    })?;
    Ok(Row {
        op: "adamw_f32",
        shape: vec![],
        ms,
        // The peer counts f32 param, grad, m, v read and param, m, v written; Kiln also writes
        // the bf16 copy of the weights, which is not counted here.
        bytes: n * 4 * 7,
    })
}

fn alloc(dev: &Device, dtype: DType, len: usize) -> Result<Buffer, String> {
    dev.alloc(dtype, len).map_err(err)
}

/// The peer script's JSON lines: `{"op": .., "peer": .., "ms": .., "shape": [..]}`.
fn read_peers(path: &std::path::Path) -> Result<Vec<PeerRow>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read peer results {}: {e}", path.display()))?;
    Ok(text.lines().filter_map(parse_peer_line).collect())
}

/// Pulls the few fields needed out of one flat JSON object (no nesting beyond `shape`).
fn parse_peer_line(line: &str) -> Option<PeerRow> {
    let field = |name: &str| -> Option<&str> {
        let start = line.find(&format!("\"{name}\": "))? + name.len() + 4;
        let rest = &line[start..];
        let end = if rest.starts_with('[') {
            rest.find(']')? + 1
        } else {
            rest.find([',', '}'])?
        };
        Some(rest[..end].trim())
    };
    let unquote = |s: &str| s.trim_matches('"').to_string();
    let shape = match field("shape") {
        Some(s) => s
            .trim_matches(['[', ']'])
            .split(',')
            .filter_map(|d| d.trim().parse().ok())
            .collect(),
        None => vec![],
    };
    Some(PeerRow {
        op: unquote(field("op")?),
        peer: unquote(field("peer")?),
        ms: field("ms")?.parse().ok()?,
        shape,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_peer_line;

    #[test]
    fn peer_lines_parse() {
        let p = parse_peer_line(
            r#"{"op": "rmsnorm_fwd", "peer": "liger", "ms": 0.0981, "shape": [8192, 896], "gb_per_s": 299.4}"#,
        )
        .unwrap();
        assert_eq!((p.op.as_str(), p.peer.as_str()), ("rmsnorm_fwd", "liger"));
        assert_eq!((p.ms, p.shape), (0.0981, vec![8192, 896]));
        let a = parse_peer_line(
            r#"{"op": "adamw_f32", "peer": "torch_fused", "ms": 4.2431, "numel": 494032768}"#,
        )
        .unwrap();
        assert!(a.shape.is_empty() && a.ms == 4.2431);
        assert!(parse_peer_line(r#"{"op": "ce", "error": "x"}"#).is_none());
    }
}
