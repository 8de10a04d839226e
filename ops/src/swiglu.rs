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

/// Elements per program and warps per program, the fastest measured on the H200
/// (`bench/RESULTS.md`): 8 elements per thread forward, 4 backward.
const FWD_BLOCK: usize = 2048;
const BWD_BLOCK: usize = 1024;
const WARPS: u32 = 8;

/// `out = silu(gate) * up` over `len` elements.
pub fn forward(ops: &Ops, gate: &Buffer, up: &Buffer, out: &Buffer) -> Result<()> {
    const OP: &str = "swiglu forward";
    let len = gate.len();
    for (what, b) in [("gate", gate), ("up", up), ("out", out)] {
        expect(OP, what, b, DType::Bf16, len)?;
    }
    let config = KernelConfig::new(FILE, "swiglu_fwd")
        .int("BLOCK", FWD_BLOCK)
        .warps(WARPS);
    let args = [
        Arg::Buffer(gate),
        Arg::Buffer(up),
        Arg::Buffer(out),
        Arg::I64(len as i64),
    ];
    ops.launch(&config, [len.div_ceil(FWD_BLOCK), 1, 1], &args)
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
        .int("BLOCK", BWD_BLOCK)
        .warps(WARPS);
    let args = [
        Arg::Buffer(gate),
        Arg::Buffer(up),
        Arg::Buffer(dout),
        Arg::Buffer(dgate),
        Arg::Buffer(dup),
        Arg::I64(len as i64),
    ];
    ops.launch(&config, [len.div_ceil(BWD_BLOCK), 1, 1], &args)
}
