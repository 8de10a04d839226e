//! Dropout with a mask that is a pure function of a seed and the element index (a hash, see
//! `dropout.kiln`), so the backward redraws the forward's mask instead of storing it, and a run
//! is reproducible from its seed.

use kiln_runtime::{Args, BufferView, BufferViewMut};

use crate::context::{activation_type, expect, KernelConfig, Ops};
use crate::{Error, Result};

const FILE: &str = "dropout.kiln";

/// Dropout of probability `p` (in `[0, 1)`) with mask seed `seed` (32 bits are used).
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f32,
    pub seed: u32,
}

impl Dropout {
    /// `y = dropout(x)`.
    pub fn forward<'a>(
        &self,
        ops: &Ops,
        x: impl Into<BufferView<'a>>,
        y: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        const OP: &str = "dropout";
        let (x, y) = (x.into(), y.into());
        let config = self.config(OP, "dropout", &x, &y)?;
        let args = self.scalars(Args::new().input("x", x).output("y", y), x.len());
        ops.launch(&config, [config.programs("BLOCK", x.len()), 1, 1], &args)
    }

    /// `out += dropout(x)` with the forward's mask (the backward of dropout, added to `out`).
    pub fn backward_add<'a>(
        &self,
        ops: &Ops,
        x: impl Into<BufferView<'a>>,
        out: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        const OP: &str = "dropout backward";
        let (x, out) = (x.into(), out.into());
        let config = self.config(OP, "dropout_add", &x, &out)?;
        let args = self.scalars(Args::new().input("x", x).in_out("out", out), x.len());
        ops.launch(&config, [config.programs("BLOCK", x.len()), 1, 1], &args)
    }

    fn config(
        &self,
        op: &'static str,
        kernel: &'static str,
        x: &BufferView<'_>,
        out: &BufferViewMut<'_>,
    ) -> Result<KernelConfig> {
        if !(0.0..1.0).contains(&self.p) {
            return Err(Error::shape(op, format!("p = {} is not in [0, 1)", self.p)));
        }
        let dtype = activation_type(op, "x", x)?;
        expect(op, "out", out, dtype, x.len())?;
        Ok(KernelConfig::new(FILE, kernel)
            .elem(dtype)
            .int("BLOCK", 2048)
            .warps(8))
    }

    fn scalars<'a>(&self, args: Args<'a>, len: usize) -> Args<'a> {
        let threshold = (f64::from(self.p) * f64::from(1u32 << 24)).round() as i64;
        args.i64("n", len as i64)
            .i64("seed", i64::from(self.seed))
            .i64("threshold", threshold)
            .f32("scale", 1.0 / (1.0 - self.p))
    }
}
