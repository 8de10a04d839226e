//! SwiGLU of the MLP: `out = silu(gate) * up`, elementwise over bf16, f32 or f16 (`gate`'s element
//! type, which the other arguments share).
//!
//! Layout: `gate` and `up` are separate `[tokens, intermediate]` buffers (two GEMM outputs, or
//! two halves of one allocation); the backward writes `dgate` and `dup` the same way, ready
//! for the two weight-gradient GEMMs. With LoRA on both projections, [`forward_lora`] and
//! [`backward_lora`] add the adapters' low-rank terms inside the kernel, so the adapters' outputs
//! never make a round trip through memory.

use kiln_compiler::DType;
use kiln_runtime::{Args, BufferView, BufferViewMut};

use crate::context::{activation_type, expect, KernelConfig, Ops};
use crate::Result;

const FILE: &str = "swiglu.kiln";

/// Elements per program and warps per program, the fastest measured on the H200
/// (`bench/RESULTS.md`): 8 elements per thread forward, 4 backward.
const FWD_BLOCK: usize = 2048;
const BWD_BLOCK: usize = 1024;
const WARPS: u32 = 8;

/// `out = silu(gate) * up` over `len` elements.
pub fn forward<'a>(
    ops: &Ops,
    gate: impl Into<BufferView<'a>>,
    up: impl Into<BufferView<'a>>,
    out: impl Into<BufferViewMut<'a>>,
) -> Result<()> {
    const OP: &str = "swiglu forward";
    let (gate, up, out) = (gate.into(), up.into(), out.into());
    let len = gate.len();
    let dtype = activation_type(OP, "gate", &gate)?;
    expect(OP, "up", &up, dtype, len)?;
    expect(OP, "out", &out, dtype, len)?;
    let config = KernelConfig::new(FILE, "swiglu_fwd")
        .elem(dtype)
        .int("BLOCK", FWD_BLOCK)
        .warps(WARPS);
    let args = Args::new()
        .input("gate", gate)
        .input("up", up)
        .output("out", out)
        .i64("n", len as i64);
    ops.launch(&config, [config.programs("BLOCK", len), 1, 1], &args)
}

/// `dgate` and `dup` from `gate`, `up` and `dout`.
pub fn backward<'a>(
    ops: &Ops,
    gate: impl Into<BufferView<'a>>,
    up: impl Into<BufferView<'a>>,
    dout: impl Into<BufferView<'a>>,
    dgate: impl Into<BufferViewMut<'a>>,
    dup: impl Into<BufferViewMut<'a>>,
) -> Result<()> {
    const OP: &str = "swiglu backward";
    let (gate, up, dout) = (gate.into(), up.into(), dout.into());
    let (dgate, dup) = (dgate.into(), dup.into());
    let len = gate.len();
    let dtype = activation_type(OP, "gate", &gate)?;
    expect(OP, "up", &up, dtype, len)?;
    expect(OP, "dout", &dout, dtype, len)?;
    expect(OP, "dgate", &dgate, dtype, len)?;
    expect(OP, "dup", &dup, dtype, len)?;
    let config = KernelConfig::new(FILE, "swiglu_bwd")
        .elem(dtype)
        .int("BLOCK", BWD_BLOCK)
        .warps(WARPS);
    let args = Args::new()
        .input("gate", gate)
        .input("up", up)
        .input("dout", dout)
        .output("dgate", dgate)
        .output("dup", dup)
        .i64("n", len as i64);
    ops.launch(&config, [config.programs("BLOCK", len), 1, 1], &args)
}

/// The low-rank terms of LoRA-adapted gate and up projections, for [`forward_lora`] and
/// [`backward_lora`]: `scale · u Bᵀ` of each, with `u = dropout(x) Aᵀ` (`[tokens, rank]`) and
/// `B` (`[intermediate, rank]`), both of the activations' element type.
#[derive(Clone, Copy)]
pub struct LoraTerms<'a> {
    pub u_gate: BufferView<'a>,
    pub b_gate: BufferView<'a>,
    pub u_up: BufferView<'a>,
    pub b_up: BufferView<'a>,
    pub rank: usize,
    pub scale: f32,
}

/// Tile of the fused kernels: BM x BN elements on `warps` warps; `KILN_SWIGLU_LORA_TILE=BM,BN,W`
/// overrides it (powers of two; for measuring, read once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LoraTile {
    bm: usize,
    bn: usize,
    warps: u32,
}

/// On the H200 (LoRA r32 of Qwen2.5-0.5B at 8 x 1024 tokens, whole training steps): 64 x 64
/// 116k tokens/s, 32 x 64 120k, 32 x 32 121.5k, 16 x 64 121k, 8-warp tiles 78k-114k. Smaller
/// tiles keep the three tile products' registers from spilling (`bench/RESULTS.md`).
const LORA_TILE: LoraTile = LoraTile {
    bm: 32,
    bn: 32,
    warps: 4,
};

fn lora_tile() -> LoraTile {
    static TILE: std::sync::OnceLock<LoraTile> = std::sync::OnceLock::new();
    *TILE.get_or_init(|| {
        let Ok(text) = std::env::var("KILN_SWIGLU_LORA_TILE") else {
            return LORA_TILE;
        };
        let v: Vec<usize> = text
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        match v[..] {
            [bm, bn, w]
                if [bm, bn, w].iter().all(|x| x.is_power_of_two())
                    && (16..=256).contains(&bm)
                    && (16..=256).contains(&bn)
                    && (1..=16).contains(&w) =>
            {
                LoraTile {
                    bm,
                    bn,
                    warps: w as u32,
                }
            }
            _ => {
                eprintln!(
                    "warning: KILN_SWIGLU_LORA_TILE=`{text}` is not BM,BN,WARPS (powers of two); \
                     using {LORA_TILE:?}"
                );
                LORA_TILE
            }
        }
    })
}

impl LoraTerms<'_> {
    /// Checks the terms against `[tokens, cols]` activations of `dtype`.
    fn check(&self, op: &'static str, dtype: DType, tokens: usize, cols: usize) -> Result<()> {
        if self.rank == 0 {
            return Err(crate::Error::shape(op, "the LoRA rank must be positive"));
        }
        expect(op, "u_gate", &self.u_gate, dtype, tokens * self.rank)?;
        expect(op, "u_up", &self.u_up, dtype, tokens * self.rank)?;
        expect(op, "b_gate", &self.b_gate, dtype, cols * self.rank)?;
        expect(op, "b_up", &self.b_up, dtype, cols * self.rank)?;
        Ok(())
    }

    fn config(&self, kernel: &'static str, dtype: DType) -> KernelConfig {
        let tile = lora_tile();
        KernelConfig::new(FILE, kernel)
            .elem(dtype)
            .int("BM", tile.bm)
            .int("BN", tile.bn)
            .int("R", self.rank.next_power_of_two().max(16))
            .warps(tile.warps)
    }

    fn args<'b>(&self, args: Args<'b>, tokens: usize, cols: usize) -> Args<'b>
    where
        Self: 'b,
    {
        args.input("u_gate", self.u_gate)
            .input("b_gate", self.b_gate)
            .input("u_up", self.u_up)
            .input("b_up", self.b_up)
            .i32("n_rows", tokens as i32)
            .i32("n_cols", cols as i32)
            .i32("rank", self.rank as i32)
            .f32("scale", self.scale)
    }
}

/// `out = silu(gate + s·u_g B_gᵀ) * (up + s·u_u B_uᵀ)` over `[tokens, cols]` (`cols` =
/// `gate.len() / tokens`), where `gate` and `up` are the base projections' outputs.
pub fn forward_lora<'a>(
    ops: &Ops,
    tokens: usize,
    gate: impl Into<BufferView<'a>>,
    up: impl Into<BufferView<'a>>,
    lora: &LoraTerms<'_>,
    out: impl Into<BufferViewMut<'a>>,
) -> Result<()> {
    const OP: &str = "swiglu forward (LoRA)";
    let (gate, up, out) = (gate.into(), up.into(), out.into());
    let dtype = activation_type(OP, "gate", &gate)?;
    let cols = lora_cols(OP, tokens, gate.len())?;
    expect(OP, "up", &up, dtype, tokens * cols)?;
    expect(OP, "out", &out, dtype, tokens * cols)?;
    lora.check(OP, dtype, tokens, cols)?;
    let config = lora.config("swiglu_lora_fwd", dtype);
    let args = lora.args(
        Args::new().input("gate", gate).input("up", up),
        tokens,
        cols,
    );
    let args = args.output("out", out);
    ops.launch(&config, lora_grid(&config, tokens, cols), &args)
}

/// The down projection's adapter input gradient for [`backward_lora`]: `d(act) += du A`, with
/// `du` `[tokens, rank]` (already scaled) and `A` `[rank, intermediate]`, of the LoRA terms' rank.
#[derive(Clone, Copy)]
pub struct DownTerm<'a> {
    pub du: BufferView<'a>,
    pub a: BufferView<'a>,
}

/// The backward of [`forward_lora`]: the gradients of both sums (`dgate`, `dup`), which are
/// those of the base projections' outputs and of the adapters' alike. With `down`, `dout` is
/// the down projection base's part of `d(act)` and its adapter's part is added in the kernel.
#[allow(clippy::too_many_arguments)]
pub fn backward_lora<'a>(
    ops: &Ops,
    tokens: usize,
    gate: impl Into<BufferView<'a>>,
    up: impl Into<BufferView<'a>>,
    lora: &LoraTerms<'_>,
    down: Option<DownTerm<'a>>,
    dout: impl Into<BufferView<'a>>,
    dgate: impl Into<BufferViewMut<'a>>,
    dup: impl Into<BufferViewMut<'a>>,
) -> Result<()> {
    const OP: &str = "swiglu backward (LoRA)";
    let (gate, up, dout) = (gate.into(), up.into(), dout.into());
    let (dgate, dup) = (dgate.into(), dup.into());
    let dtype = activation_type(OP, "gate", &gate)?;
    let cols = lora_cols(OP, tokens, gate.len())?;
    for (what, b) in [("up", &up), ("dout", &dout)] {
        expect(OP, what, b, dtype, tokens * cols)?;
    }
    expect(OP, "dgate", &dgate, dtype, tokens * cols)?;
    expect(OP, "dup", &dup, dtype, tokens * cols)?;
    lora.check(OP, dtype, tokens, cols)?;
    let kernel = match down {
        Some(_) => "swiglu_lora_bwd_down",
        None => "swiglu_lora_bwd",
    };
    let config = lora.config(kernel, dtype);
    let mut args = Args::new()
        .input("gate", gate)
        .input("up", up)
        .input("dout", dout);
    if let Some(DownTerm { du, a }) = down {
        expect(OP, "du_down", &du, dtype, tokens * lora.rank)?;
        expect(OP, "a_down", &a, dtype, lora.rank * cols)?;
        args = args.input("du_down", du).input("a_down", a);
    }
    let args = lora
        .args(args, tokens, cols)
        .output("dgate", dgate)
        .output("dup", dup);
    ops.launch(&config, lora_grid(&config, tokens, cols), &args)
}

/// The columns of `[tokens, cols]` activations of `len` elements.
fn lora_cols(op: &'static str, tokens: usize, len: usize) -> Result<usize> {
    if tokens == 0 || len % tokens != 0 || len / tokens > i32::MAX as usize {
        return Err(crate::Error::shape(
            op,
            format!("{len} elements are not [{tokens}, columns] activations"),
        ));
    }
    Ok(len / tokens)
}

fn lora_grid(config: &KernelConfig, tokens: usize, cols: usize) -> [usize; 3] {
    [
        config.programs("BM", tokens),
        config.programs("BN", cols),
        1,
    ]
}
