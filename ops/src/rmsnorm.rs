//! RMSNorm over the last dimension of `[rows, n]` bf16 activations, and the fused residual
//! add and RMSNorm of a pre-norm transformer block. Forward saves `rstd` (f32, one per row);
//! the backward turns the per-program partial sums of `dw` into `dw` on the device.

use kiln_compiler::DType;
use kiln_runtime::{Arg, Buffer};

use crate::context::{expect, row_block, warps_for, KernelConfig, Ops};
use crate::{Error, Result};

const FILE: &str = "rmsnorm.kiln";

/// The shape of a normalisation: `rows` vectors of `n` elements, and epsilon.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    pub rows: usize,
    pub n: usize,
    pub eps: f32,
}

/// Rows each backward program walks: enough programs to fill the GPU several times over (512
/// for short rows, 256 for long ones), few enough that the partial `dw` rows stay small next
/// to the activations. Measured on the H200: `bench/RESULTS.md`.
fn rows_per_program(rows: usize, n: usize) -> usize {
    let programs = if n <= 1024 { 512 } else { 256 };
    (rows / programs).next_power_of_two().clamp(1, 64)
}

impl RmsNorm {
    fn check(&self, op: &'static str) -> Result<()> {
        if self.n == 0 || self.n > 1 << 16 || self.rows > i32::MAX as usize {
            return Err(Error::shape(
                op,
                format!(
                    "rows x n = {} x {}: n must be in 1..=65536",
                    self.rows, self.n
                ),
            ));
        }
        Ok(())
    }

    fn activation(&self, op: &'static str, what: &str, b: &Buffer) -> Result<()> {
        expect(op, what, b, DType::Bf16, self.rows * self.n)
    }

    fn fwd_config(&self, kernel: &'static str) -> KernelConfig {
        let block = row_block(self.n);
        KernelConfig::new(FILE, kernel)
            .int("BLOCK", block)
            .warps(warps_for(block))
    }

    /// `y = x / rms(x) * w`; `rstd[row] = 1 / rms(x[row])`.
    pub fn forward(
        &self,
        ops: &Ops,
        x: &Buffer,
        w: &Buffer,
        y: &Buffer,
        rstd: &Buffer,
    ) -> Result<()> {
        self.forward_impl(ops, "rmsnorm forward", x, None, w, y, rstd)
    }

    /// The pre-norm of a block: `h = x + residual` (the new residual stream) and
    /// `y = rmsnorm(h) * w`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_forward(
        &self,
        ops: &Ops,
        x: &Buffer,
        residual: &Buffer,
        h: &Buffer,
        w: &Buffer,
        y: &Buffer,
        rstd: &Buffer,
    ) -> Result<()> {
        let op = "add + rmsnorm forward";
        self.forward_impl(ops, op, x, Some((residual, h)), w, y, rstd)
    }

    /// Both forwards: with `residual_and_h`, the input is `x + residual`, stored into `h`.
    #[allow(clippy::too_many_arguments)]
    fn forward_impl(
        &self,
        ops: &Ops,
        op: &'static str,
        x: &Buffer,
        residual_and_h: Option<(&Buffer, &Buffer)>,
        w: &Buffer,
        y: &Buffer,
        rstd: &Buffer,
    ) -> Result<()> {
        self.check(op)?;
        let mut activations = vec![("x", x), ("y", y)];
        if let Some((residual, h)) = residual_and_h {
            activations.extend([("residual", residual), ("h", h)]);
        }
        for (what, b) in activations {
            self.activation(op, what, b)?;
        }
        expect(op, "w", w, DType::Bf16, self.n)?;
        expect(op, "rstd", rstd, DType::F32, self.rows)?;
        let mut args = vec![Arg::Buffer(x)];
        if let Some((residual, h)) = residual_and_h {
            args.extend([Arg::Buffer(residual), Arg::Buffer(h)]);
        }
        args.extend([
            Arg::Buffer(w),
            Arg::Buffer(y),
            Arg::Buffer(rstd),
            Arg::I32(self.n as i32),
            Arg::F32(self.eps),
        ]);
        let kernel = match residual_and_h {
            Some(_) => "add_rmsnorm_fwd",
            None => "rmsnorm_fwd",
        };
        ops.launch(&self.fwd_config(kernel), [self.rows, 1, 1], &args)
    }

    /// `dx` and `dw` from `x`, `w`, `dy` and the saved `rstd`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        ops: &Ops,
        x: &Buffer,
        w: &Buffer,
        dy: &Buffer,
        rstd: &Buffer,
        dx: &Buffer,
        dw: &Buffer,
    ) -> Result<()> {
        self.backward_impl(ops, "rmsnorm backward", x, None, w, dy, rstd, dx, dw)
    }

    /// Backward of [`RmsNorm::add_forward`]: `h` is the saved residual stream, `dh_next` the
    /// gradient reaching `h` through the residual path. `dx` is the gradient of both `x` and
    /// `residual`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_backward(
        &self,
        ops: &Ops,
        h: &Buffer,
        w: &Buffer,
        dy: &Buffer,
        rstd: &Buffer,
        dh_next: &Buffer,
        dx: &Buffer,
        dw: &Buffer,
    ) -> Result<()> {
        let op = "add + rmsnorm backward";
        self.backward_impl(ops, op, h, Some(dh_next), w, dy, rstd, dx, dw)
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_impl(
        &self,
        ops: &Ops,
        op: &'static str,
        x: &Buffer,
        dh_next: Option<&Buffer>,
        w: &Buffer,
        dy: &Buffer,
        rstd: &Buffer,
        dx: &Buffer,
        dw: &Buffer,
    ) -> Result<()> {
        self.check(op)?;
        for (what, b) in [("x", x), ("dy", dy), ("dx", dx)]
            .into_iter()
            .chain(dh_next.map(|d| ("dh_next", d)))
        {
            self.activation(op, what, b)?;
        }
        expect(op, "w", w, DType::Bf16, self.n)?;
        expect(op, "dw", dw, DType::Bf16, self.n)?;
        expect(op, "rstd", rstd, DType::F32, self.rows)?;
        let rows_per_program = rows_per_program(self.rows, self.n);
        let programs = self.rows.div_ceil(rows_per_program);
        let partial = ops.scratch(DType::F32, programs * self.n)?;
        let block = row_block(self.n);
        let kernel = if dh_next.is_some() {
            "add_rmsnorm_bwd"
        } else {
            "rmsnorm_bwd"
        };
        let config = KernelConfig::new(FILE, kernel)
            .int("BLOCK", block)
            .int("ROWS", rows_per_program)
            .warps(if block <= 1024 { 4 } else { 8 });
        let mut args = vec![
            Arg::Buffer(x),
            Arg::Buffer(w),
            Arg::Buffer(dy),
            Arg::Buffer(rstd),
        ];
        args.extend(dh_next.map(Arg::Buffer));
        args.extend([
            Arg::Buffer(dx),
            Arg::Buffer(&partial),
            Arg::I32(self.rows as i32),
            Arg::I32(self.n as i32),
        ]);
        ops.launch(&config, [programs, 1, 1], &args)?;
        const REDUCE_BLOCK: usize = 64;
        let reduce = KernelConfig::new(FILE, "rmsnorm_dw_reduce").int("BLOCK", REDUCE_BLOCK);
        let args = [
            Arg::Buffer(&partial),
            Arg::Buffer(dw),
            Arg::I32(programs as i32),
            Arg::I32(self.n as i32),
        ];
        ops.launch(&reduce, [self.n.div_ceil(REDUCE_BLOCK), 1, 1], &args)
    }
}
