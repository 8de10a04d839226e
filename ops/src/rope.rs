//! Rotary position embedding on Q and K together, in place, in one launch (Hugging Face
//! split-half layout). Positions are per token, so packed sequences restart at 0; query and
//! key/value head counts may differ (grouped-query attention).

use kiln_compiler::DType;
use kiln_runtime::{Arg, Buffer};

use crate::context::{expect, KernelConfig, Ops};
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
    /// Rotates `q` and `k` in place by each token's position.
    pub fn forward(&self, ops: &Ops, q: &Buffer, k: &Buffer, positions: &Buffer) -> Result<()> {
        self.launch(ops, "rope forward", q, k, positions, false)
    }

    /// The backward: rotates the gradients `dq` and `dk` in place by the opposite angles.
    pub fn backward(&self, ops: &Ops, dq: &Buffer, dk: &Buffer, positions: &Buffer) -> Result<()> {
        self.launch(ops, "rope backward", dq, dk, positions, true)
    }

    fn launch(
        &self,
        ops: &Ops,
        op: &'static str,
        q: &Buffer,
        k: &Buffer,
        positions: &Buffer,
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
        expect(
            op,
            "q",
            q,
            DType::Bf16,
            self.tokens * self.q_heads * self.head_dim,
        )?;
        expect(
            op,
            "k",
            k,
            DType::Bf16,
            self.tokens * self.kv_heads * self.head_dim,
        )?;
        expect(op, "positions", positions, DType::I32, self.tokens)?;
        let half = self.head_dim / 2;
        let q_heads = self.q_heads.next_power_of_two();
        let config = KernelConfig::new(FILE, "rope")
            .int("QHEADS", q_heads)
            .int("KHEADS", self.kv_heads.next_power_of_two())
            .int("HALF", half.next_power_of_two())
            .flag("BACKWARD", backward)
            .warps(4);
        let args = [
            Arg::Buffer(q),
            Arg::Buffer(k),
            Arg::Buffer(positions),
            Arg::I32(self.q_heads as i32),
            Arg::I32(self.kv_heads as i32),
            Arg::I32(half as i32),
            Arg::F32(self.theta),
        ];
        ops.launch(&config, [self.tokens, 1, 1], &args)
    }
}
