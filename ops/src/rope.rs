//! Rotary position embedding on Q and K together, in place, in one launch (Hugging Face
//! split-half layout). Positions are per token, so packed sequences restart at 0; query and
//! key/value head counts may differ (grouped-query attention).

use kiln_compiler::DType;
use kiln_runtime::{Args, BufferView, BufferViewMut};

use crate::context::{activation_type, expect, KernelConfig, Ops};
use crate::{Error, Result};

const FILE: &str = "rope.kiln";

/// The shape of Q `[tokens, q_heads, head_dim]` and K `[tokens, kv_heads, head_dim]`, and the
/// base of the rotation frequencies (`rope_theta`).
#[derive(Clone, Copy, Debug)]
pub struct Rope {
    pub tokens: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub theta: f32,
}

impl Rope {
    /// Rotates `q` and `k` in place by each token's position: both are read and overwritten
    /// (passed to the kernel with `in_out`).
    pub fn forward<'a>(
        &self,
        ops: &Ops,
        q: impl Into<BufferViewMut<'a>>,
        k: impl Into<BufferViewMut<'a>>,
        positions: impl Into<BufferView<'a>>,
    ) -> Result<()> {
        let op = "rope forward";
        self.launch(ops, op, q.into(), k.into(), positions.into(), false)
    }

    /// The backward: rotates the gradients `dq` and `dk` in place (read and overwritten, as in
    /// the forward) by the opposite angles.
    pub fn backward<'a>(
        &self,
        ops: &Ops,
        dq: impl Into<BufferViewMut<'a>>,
        dk: impl Into<BufferViewMut<'a>>,
        positions: impl Into<BufferView<'a>>,
    ) -> Result<()> {
        let op = "rope backward";
        self.launch(ops, op, dq.into(), dk.into(), positions.into(), true)
    }

    fn launch(
        &self,
        ops: &Ops,
        op: &'static str,
        q: BufferViewMut<'_>,
        k: BufferViewMut<'_>,
        positions: BufferView<'_>,
        backward: bool,
    ) -> Result<()> {
        if self.head_dim % 2 != 0 || self.head_dim == 0 || self.q_heads == 0 || self.kv_heads == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "head_dim {} must be even and non-zero, head counts ({}, {}) non-zero",
                    self.head_dim, self.q_heads, self.kv_heads
                ),
            ));
        }
        let (q_len, k_len) = (
            self.tokens * self.q_heads * self.head_dim,
            self.tokens * self.kv_heads * self.head_dim,
        );
        let dtype = activation_type(op, "q", &q)?;
        expect(op, "q", &q, dtype, q_len)?;
        expect(op, "k", &k, dtype, k_len)?;
        expect(op, "positions", &positions, DType::I32, self.tokens)?;
        let half = self.head_dim / 2;
        let config = KernelConfig::new(FILE, "rope")
            .elem(dtype)
            .int("QHEADS", self.q_heads.next_power_of_two())
            .int("KHEADS", self.kv_heads.next_power_of_two())
            .int("HALF", half.next_power_of_two())
            .flag("BACKWARD", backward)
            .warps(4);
        let args = Args::new()
            .in_out("q", q)
            .in_out("k", k)
            .input("positions", positions)
            .i32("n_q_heads", self.q_heads as i32)
            .i32("n_kv_heads", self.kv_heads as i32)
            .i32("half_dim", half as i32)
            .f32("theta", self.theta);
        ops.launch(&config, [self.tokens, 1, 1], &args)
    }
}
