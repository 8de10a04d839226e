//! Token embedding: a gather of rows of `weight [vocab, hidden]`, and its backward, a
//! scatter-add into `dweight` that is correct when ids repeat.

use kiln_compiler::DType;
use kiln_runtime::{Args, BufferView, BufferViewMut};

use crate::context::{activation_type, expect, row_block, warps_for, KernelConfig, Ops};
use crate::{Error, Result};

const FILE: &str = "embedding.kiln";

/// The shape of an embedding table.
#[derive(Clone, Copy, Debug)]
pub struct Embedding {
    pub vocab: usize,
    pub hidden: usize,
}

impl Embedding {
    fn config(&self, kernel: &'static str, dtype: DType) -> KernelConfig {
        let block = row_block(self.hidden).min(4096);
        KernelConfig::new(FILE, kernel)
            .elem(dtype)
            .int("BLOCK", block)
            .warps(warps_for(block))
    }

    fn check(&self, op: &'static str, ids: &BufferView<'_>) -> Result<usize> {
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

    /// The arguments both kernels take: the ids and the table's shape.
    fn args<'a>(&self, ids: BufferView<'a>) -> Args<'a> {
        Args::new()
            .input("ids", ids)
            .i32("hidden", self.hidden as i32)
            .i32("vocab", self.vocab as i32)
    }

    /// `out[t] = weight[ids[t]]`; an id outside the vocabulary gives a row of zeros.
    pub fn forward<'a>(
        &self,
        ops: &Ops,
        ids: impl Into<BufferView<'a>>,
        weight: impl Into<BufferView<'a>>,
        out: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        const OP: &str = "embedding forward";
        let (ids, weight, out) = (ids.into(), weight.into(), out.into());
        let tokens = self.check(OP, &ids)?;
        let dtype = activation_type(OP, "weight", &weight)?;
        expect(OP, "weight", &weight, dtype, self.vocab * self.hidden)?;
        expect(OP, "out", &out, dtype, tokens * self.hidden)?;
        let args = self.args(ids).input("weight", weight).output("out", out);
        ops.launch(&self.config("embedding_fwd", dtype), [tokens, 1, 1], &args)
    }

    /// `dweight[ids[t]] += dout[t]` (f32 `dweight`, accumulated into in place: zero it first
    /// for a fresh gradient; passed to the kernel with `in_out`).
    pub fn backward<'a>(
        &self,
        ops: &Ops,
        ids: impl Into<BufferView<'a>>,
        dout: impl Into<BufferView<'a>>,
        dweight: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        const OP: &str = "embedding backward";
        let (ids, dout, dweight) = (ids.into(), dout.into(), dweight.into());
        let tokens = self.check(OP, &ids)?;
        let dtype = activation_type(OP, "dout", &dout)?;
        expect(OP, "dout", &dout, dtype, tokens * self.hidden)?;
        expect(
            OP,
            "dweight",
            &dweight,
            DType::F32,
            self.vocab * self.hidden,
        )?;
        let args = self
            .args(ids)
            .input("dout", dout)
            .in_out("dweight", dweight);
        ops.launch(&self.config("embedding_bwd", dtype), [tokens, 1, 1], &args)
    }
}
