//! Elementwise helpers of a transformer block: the residual add `out = a + b`.

use kiln_runtime::{Args, BufferView, BufferViewMut};

use crate::context::{activation_type, expect, KernelConfig, Ops};
use crate::Result;

const FILE: &str = "add.kiln";

/// `out = a + b` over `len` elements of one type, bf16, f32 or f16 (f32 arithmetic): a residual
/// connection.
pub fn add<'a>(
    ops: &Ops,
    a: impl Into<BufferView<'a>>,
    b: impl Into<BufferView<'a>>,
    out: impl Into<BufferViewMut<'a>>,
) -> Result<()> {
    const OP: &str = "add";
    let (a, b, out) = (a.into(), b.into(), out.into());
    let len = a.len();
    let dtype = activation_type(OP, "a", &a)?;
    expect(OP, "b", &b, dtype, len)?;
    expect(OP, "out", &out, dtype, len)?;
    let config = KernelConfig::new(FILE, "add")
        .elem(dtype)
        .int("BLOCK", 2048)
        .warps(8);
    let args = Args::new()
        .input("a", a)
        .input("b", b)
        .output("out", out)
        .i64("n", len as i64);
    ops.launch(&config, [config.programs("BLOCK", len), 1, 1], &args)
}
