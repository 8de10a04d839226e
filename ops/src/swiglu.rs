//! SwiGLU of the MLP: `out = silu(gate) * up`, elementwise over bf16, f32 or f16 (`gate`'s element
//! type, which the other arguments share).
//!
//! Layout: `gate` and `up` are separate `[tokens, intermediate]` buffers (two GEMM outputs, or
//! two halves of one allocation); the backward writes `dgate` and `dup` the same way, ready
//! for the two weight-gradient GEMMs.

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
