//! A linear layer `y = x Wᵀ (+ b)` with `W` `[outputs, inputs]` as Hugging Face stores it: the
//! forward and its backward, side by side, as three GEMMs.

use kiln_ops::Ops;
use kiln_runtime::{BufferView, BufferViewMut, Gemm};

use crate::Result;

/// The shape of a linear layer over `tokens` rows.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub tokens: usize,
    pub inputs: usize,
    pub outputs: usize,
}

/// Where a backward puts `dx`: overwritten, or added to what is there (the q, k and v
/// projections share one input, so their input gradients sum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Overwrite,
    Accumulate,
}

impl Write {
    fn beta(self) -> f32 {
        match self {
            Write::Overwrite => 0.0,
            Write::Accumulate => 1.0,
        }
    }
}

impl Linear {
    /// `y[T, O] = x[T, I] · W[O, I]ᵀ (+ bias[O])`.
    pub fn forward<'a>(
        &self,
        ops: &Ops,
        x: impl Into<BufferView<'a>>,
        w: impl Into<BufferView<'a>>,
        bias: Option<BufferView<'a>>,
        y: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        let gemm = Gemm::new(self.tokens, self.outputs, self.inputs).transpose_b();
        Ok(ops.device().gemm(&gemm, x, w, y, bias)?)
    }

    /// `dx[T, I] (+)= dy[T, O] · W[O, I]`.
    pub fn backward_input<'a>(
        &self,
        ops: &Ops,
        dy: impl Into<BufferView<'a>>,
        w: impl Into<BufferView<'a>>,
        dx: impl Into<BufferViewMut<'a>>,
        write: Write,
    ) -> Result<()> {
        let gemm = Gemm::new(self.tokens, self.inputs, self.outputs).with_beta(write.beta());
        Ok(ops.device().gemm(&gemm, dy, w, dx, None)?)
    }

    /// `dW[O, I] += dy[T, O]ᵀ · x[T, I]` into the f32 gradient, and `dbias[O] += Σ_t dy[t]` as
    /// the product `ones[1, T] · dy[T, O]` (a GEMM, so it is as fast and as exact as the
    /// weight's).
    pub fn backward_params<'a>(
        &self,
        ops: &Ops,
        x: impl Into<BufferView<'a>>,
        dy: impl Into<BufferView<'a>>,
        dw: impl Into<BufferViewMut<'a>>,
        dbias: Option<(BufferView<'a>, BufferViewMut<'a>)>,
    ) -> Result<()> {
        let dy = dy.into();
        let gemm = Gemm::new(self.outputs, self.inputs, self.tokens)
            .transpose_a()
            .with_beta(1.0);
        ops.device().gemm(&gemm, dy, x, dw, None)?;
        if let Some((ones, dbias)) = dbias {
            let gemm = Gemm::new(1, self.outputs, self.tokens).with_beta(1.0);
            ops.device().gemm(&gemm, ones, dy, dbias, None)?;
        }
        Ok(())
    }
}
