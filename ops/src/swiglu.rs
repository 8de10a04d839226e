//! SwiGLU of the MLP: `out = silu(gate) * up`, elementwise over bf16.
//!
//! Layout: `gate` and `up` are separate `[tokens, intermediate]` buffers (two GEMM outputs, or
//! two halves of one allocation); the backward writes `dgate` and `dup` the same way, ready
//! for the two weight-gradient GEMMs.

use kiln_compiler::DType;
use kiln_runtime::{Arg, Buffer};

use crate::context::{expect, KernelConfig, Ops};
use crate::Result;

const FILE: &str = "swiglu.kiln";

/// Elements per program, and warps: 16 elements per thread (two 16-byte vectors of bf16).
const BLOCK: usize = 2048;
const WARPS: u32 = 4;

/// `out = silu(gate) * up` over `len` elements.
pub fn forward(ops: &Ops, gate: &Buffer, up: &Buffer, out: &Buffer) -> Result<()> {
    const OP: &str = "swiglu forward";
    let len = gate.len();
    for (what, b) in [("gate", gate), ("up", up), ("out", out)] {
        expect(OP, what, b, DType::Bf16, len)?;
    }
    let config = KernelConfig::new(FILE, "swiglu_fwd")
        .int("BLOCK", BLOCK)
        .warps(WARPS);
    let args = [
        Arg::Buffer(gate),
        Arg::Buffer(up),
        Arg::Buffer(out),
        Arg::I64(len as i64),
    ];
    ops.launch(&config, [len.div_ceil(BLOCK), 1, 1], &args)
}

/// `dgate` and `dup` from `gate`, `up` and `dout`.
pub fn backward(
    ops: &Ops,
    gate: &Buffer,
    up: &Buffer,
    dout: &Buffer,
    dgate: &Buffer,
    dup: &Buffer,
) -> Result<()> {
    const OP: &str = "swiglu backward";
    let len = gate.len();
    for (what, b) in [
        ("gate", gate),
        ("up", up),
        ("dout", dout),
        ("dgate", dgate),
        ("dup", dup),
    ] {
        expect(OP, what, b, DType::Bf16, len)?;
    }
    let config = KernelConfig::new(FILE, "swiglu_bwd")
        .int("BLOCK", BLOCK)
        .warps(WARPS);
    let args = [
        Arg::Buffer(gate),
        Arg::Buffer(up),
        Arg::Buffer(dout),
        Arg::Buffer(dgate),
        Arg::Buffer(dup),
        Arg::I64(len as i64),
    ];
    ops.launch(&config, [len.div_ceil(BLOCK), 1, 1], &args)
}
