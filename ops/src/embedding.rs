//! Token embedding: a gather of rows of `weight [vocab, hidden]`, and its backward, a
//! scatter-add into `dweight` that is correct when ids repeat.

use kiln_compiler::DType;
use kiln_runtime::{Arg, Buffer};

use crate::context::{expect, row_block, warps_for, KernelConfig, Ops};
use crate::{Error, Result};

const FILE: &str = "embedding.kiln";

/// The shape of an embedding table.
#[derive(Clone, Copy, Debug)]
pub struct Embedding {
    pub vocab: usize,
    pub hidden: usize,
}

impl Embedding {
    fn config(&self, kernel: &'static str) -> KernelConfig {
        let block = row_block(self.hidden).min(4096);
        KernelConfig::new(FILE, kernel)
            .int("BLOCK", block)
            .warps(warps_for(block))
    }

    fn check(&self, op: &'static str, ids: &Buffer) -> Result<usize> {
        if self.vocab > i32::MAX as usize || self.vocab * self.hidden > i64::MAX as usize {
            return Err(Error::shape(op, format!("vocab {} too large", self.vocab)));
        }
        if ids.dtype() != DType::I32 {
            return Err(Error::shape(
                op,
                format!("`ids` must be i32, got {}", ids.dtype()),
            ));
        }
        Ok(ids.len())
    }

    /// `out[t] = weight[ids[t]]`; an id outside the vocabulary gives a row of zeros.
    pub fn forward(&self, ops: &Ops, ids: &Buffer, weight: &Buffer, out: &Buffer) -> Result<()> {
        const OP: &str = "embedding forward";
        let tokens = self.check(OP, ids)?;
        expect(OP, "weight", weight, DType::Bf16, self.vocab * self.hidden)?;
        expect(OP, "out", out, DType::Bf16, tokens * self.hidden)?;
        let args = [
            Arg::Buffer(ids),
            Arg::Buffer(weight),
            Arg::Buffer(out),
            Arg::I32(self.hidden as i32),
            Arg::I32(self.vocab as i32),
        ];
        ops.launch(&self.config("embedding_fwd"), [tokens, 1, 1], &args)
    }

    /// `dweight[ids[t]] += dout[t]` (f32 `dweight`, accumulated into: zero it first for a
    /// fresh gradient).
    pub fn backward(&self, ops: &Ops, ids: &Buffer, dout: &Buffer, dweight: &Buffer) -> Result<()> {
        const OP: &str = "embedding backward";
        let tokens = self.check(OP, ids)?;
        expect(OP, "dout", dout, DType::Bf16, tokens * self.hidden)?;
        expect(OP, "dweight", dweight, DType::F32, self.vocab * self.hidden)?;
        let args = [
            Arg::Buffer(ids),
            Arg::Buffer(dout),
            Arg::Buffer(dweight),
            Arg::I32(self.hidden as i32),
            Arg::I32(self.vocab as i32),
        ];
        ops.launch(&self.config("embedding_bwd"), [tokens, 1, 1], &args)
    }
}
