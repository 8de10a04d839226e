//! RMSNorm over the last dimension of `[rows, n]` activations (bf16, f32 or f16: `x`'s element
//! type, which the other activations and `w` share), and the fused residual add and RMSNorm of a
//! pre-norm transformer block. Forward saves `rstd` (f32, one per row);
//! the backward adds the per-program partial sums of `dw` to the f32 gradient `dw` on the device.

use kiln_compiler::DType;
use kiln_runtime::{Args, BufferView, BufferViewMut};

use crate::context::{activation_type, expect, row_block, warps_for, KernelConfig, Operand, Ops};
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

/// Warps for a backward program over rows of `block` elements (measured on the H200).
fn bwd_warps(block: usize) -> u32 {
    if block <= 1024 {
        4
    } else {
        8
    }
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

    fn activation(
        &self,
        op: &'static str,
        what: &str,
        b: &dyn Operand,
        dtype: DType,
    ) -> Result<()> {
        expect(op, what, b, dtype, self.rows * self.n)
    }

    /// A kernel that handles each row whole: `BLOCK` covers a row of `n` (the kernels mask the
    /// columns past `n` and never loop), with `warps(BLOCK)` warps.
    fn row_config(
        &self,
        kernel: &'static str,
        warps: fn(usize) -> u32,
        dtype: DType,
    ) -> KernelConfig {
        let block = row_block(self.n);
        KernelConfig::new(FILE, kernel)
            .elem(dtype)
            .int("BLOCK", block)
            .warps(warps(block))
    }

    /// `y = x / rms(x) * w`; `rstd[row] = 1 / rms(x[row])`.
    pub fn forward<'a>(
        &self,
        ops: &Ops,
        x: impl Into<BufferView<'a>>,
        w: impl Into<BufferView<'a>>,
        y: impl Into<BufferViewMut<'a>>,
        rstd: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        let op = "rmsnorm forward";
        self.forward_impl(ops, op, x.into(), None, w.into(), y.into(), rstd.into())
    }

    /// The pre-norm of a block: `h = x + residual` (the new residual stream) and
    /// `y = rmsnorm(h) * w`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_forward<'a>(
        &self,
        ops: &Ops,
        x: impl Into<BufferView<'a>>,
        residual: impl Into<BufferView<'a>>,
        h: impl Into<BufferViewMut<'a>>,
        w: impl Into<BufferView<'a>>,
        y: impl Into<BufferViewMut<'a>>,
        rstd: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        let op = "add + rmsnorm forward";
        let residual_and_h = Some((residual.into(), h.into()));
        self.forward_impl(
            ops,
            op,
            x.into(),
            residual_and_h,
            w.into(),
            y.into(),
            rstd.into(),
        )
    }

    /// Both forwards: with `residual_and_h`, the input is `x + residual`, stored into `h`.
    #[allow(clippy::too_many_arguments)]
    fn forward_impl(
        &self,
        ops: &Ops,
        op: &'static str,
        x: BufferView<'_>,
        residual_and_h: Option<(BufferView<'_>, BufferViewMut<'_>)>,
        w: BufferView<'_>,
        y: BufferViewMut<'_>,
        rstd: BufferViewMut<'_>,
    ) -> Result<()> {
        self.check(op)?;
        let dtype = activation_type(op, "x", &x)?;
        self.activation(op, "x", &x, dtype)?;
        self.activation(op, "y", &y, dtype)?;
        if let Some((residual, h)) = &residual_and_h {
            self.activation(op, "residual", residual, dtype)?;
            self.activation(op, "h", h, dtype)?;
        }
        expect(op, "w", &w, dtype, self.n)?;
        expect(op, "rstd", &rstd, DType::F32, self.rows)?;
        let kernel = match residual_and_h {
            Some(_) => "add_rmsnorm_fwd",
            None => "rmsnorm_fwd",
        };
        let mut args = Args::new()
            .input("x", x)
            .input("w", w)
            .output("y", y)
            .output("rstd", rstd)
            .i32("n", self.n as i32)
            .f32("eps", self.eps);
        if let Some((residual, h)) = residual_and_h {
            args = args.input("residual", residual).output("h", h);
        }
        let config = self.row_config(kernel, warps_for, dtype);
        ops.launch(&config, [self.rows, 1, 1], &args)
    }

    /// `dx` (overwritten) and `dw` (f32, added to: parameter gradients accumulate) from `x`,
    /// `w`, `dy` and the saved `rstd`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<'a>(
        &self,
        ops: &Ops,
        x: impl Into<BufferView<'a>>,
        w: impl Into<BufferView<'a>>,
        dy: impl Into<BufferView<'a>>,
        rstd: impl Into<BufferView<'a>>,
        dx: impl Into<BufferViewMut<'a>>,
        dw: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        let grads = (dx.into(), dw.into());
        let saved = (w.into(), dy.into(), rstd.into());
        self.backward_impl(ops, "rmsnorm backward", x.into(), None, saved, grads)
    }

    /// Backward of [`RmsNorm::add_forward`]: `h` is the saved residual stream, `dh_next` the
    /// gradient reaching `h` through the residual path. `dx` is the gradient of both `x` and
    /// `residual`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_backward<'a>(
        &self,
        ops: &Ops,
        h: impl Into<BufferView<'a>>,
        w: impl Into<BufferView<'a>>,
        dy: impl Into<BufferView<'a>>,
        rstd: impl Into<BufferView<'a>>,
        dh_next: impl Into<BufferView<'a>>,
        dx: impl Into<BufferViewMut<'a>>,
        dw: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        let op = "add + rmsnorm backward";
        let grads = (dx.into(), dw.into());
        let saved = (w.into(), dy.into(), rstd.into());
        self.backward_impl(ops, op, h.into(), Some(dh_next.into()), saved, grads)
    }

    /// Both backwards; `x` is `h` for the fused one (with `dh_next`).
    fn backward_impl(
        &self,
        ops: &Ops,
        op: &'static str,
        x: BufferView<'_>,
        dh_next: Option<BufferView<'_>>,
        (w, dy, rstd): (BufferView<'_>, BufferView<'_>, BufferView<'_>),
        (dx, dw): (BufferViewMut<'_>, BufferViewMut<'_>),
    ) -> Result<()> {
        self.check(op)?;
        let dtype = activation_type(op, "x", &x)?;
        self.activation(op, "x", &x, dtype)?;
        self.activation(op, "dy", &dy, dtype)?;
        self.activation(op, "dx", &dx, dtype)?;
        if let Some(dh_next) = &dh_next {
            self.activation(op, "dh_next", dh_next, dtype)?;
        }
        expect(op, "w", &w, dtype, self.n)?;
        expect(op, "dw", &dw, DType::F32, self.n)?;
        expect(op, "rstd", &rstd, DType::F32, self.rows)?;
        let (kernel, x_name) = match dh_next {
            Some(_) => ("add_rmsnorm_bwd", "h"),
            None => ("rmsnorm_bwd", "x"),
        };
        let config = self
            .row_config(kernel, bwd_warps, dtype)
            .int("ROWS", rows_per_program(self.rows, self.n));
        // One partial row of dw per program.
        let programs = config.programs("ROWS", self.rows);
        let mut partial = ops.scratch_uninit(DType::F32, programs * self.n)?;
        let mut args = Args::new()
            .input(x_name, x)
            .input("w", w)
            .input("dy", dy)
            .input("rstd", rstd)
            .output("dx", dx)
            .output("dw_partial", &mut partial)
            .i32("n_rows", self.rows as i32)
            .i32("n", self.n as i32);
        if let Some(dh_next) = dh_next {
            args = args.input("dh_next", dh_next);
        }
        ops.launch(&config, [programs, 1, 1], &args)?;
        let reduce = KernelConfig::new(FILE, "rmsnorm_dw_reduce").int("BLOCK", 64);
        let args = Args::new()
            .input("dw_partial", &partial)
            .in_out("dw", dw)
            .i32("n_partial", programs as i32)
            .i32("n", self.n as i32);
        ops.launch(&reduce, [reduce.programs("BLOCK", self.n), 1, 1], &args)
    }
}
