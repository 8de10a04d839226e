//! Causal flash attention over packed variable-length sequences (`cu_seqlens`), with grouped
//! query heads, forward and backward. No sequence attends across its boundaries; the forward
//! saves the f32 log-sum-exp of every (token, query head) and the backward recomputes the
//! probabilities from it.
//!
//! Layouts: `q`, `o` and their gradients `[tokens, q_heads, head_dim]`; `k`, `v` and theirs
//! `[tokens, kv_heads, head_dim]`; `lse` `[tokens, q_heads]` f32; all activations of one element
//! type, `q`'s: bf16, f16 or f32. On the GPU the 16-bit types multiply on tensor cores; f32 dots
//! run as FMA loops (correct, far slower: for tests and references, not training).

use kiln_compiler::DType;
use kiln_runtime::{Args, Buffer, BufferView, BufferViewMut};

use crate::context::{activation_type, expect, KernelConfig, Operand, Ops};
use crate::{Error, Result};

const FILE: &str = "attention.kiln";

/// Heads and head size; the scores are scaled by `1 / sqrt(head_dim)`.
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The blocks of a pack of sequences, on the device: for each block of
/// [`PackedBlocks::ROWS`] rows, `[first row, sequence start, sequence end]`. Build once per
/// batch, use for every layer.
pub struct PackedBlocks {
    tokens: usize,
    count: usize,
    /// Rows per block: [`PackedBlocks::ROWS`], or fewer for the few new rows of a decode step.
    rows: usize,
    table: Buffer,
}

impl PackedBlocks {
    /// Rows per block: the rows each program owns (query rows in the forward and dq, key rows
    /// in dk/dv). The kernels' tile of owned rows (`BM` or `BN`) is set from it.
    pub const ROWS: usize = 64;

    /// `i32`s per block in the table, `[first row, sequence start, sequence end]`, as the
    /// kernels read it (`blocks + 3 * program_id(0)`).
    const FIELDS: usize = 3;

    /// The blocks of the sequences `cu_seqlens` delimits (`[0, len0, len0 + len1, ...]`, the
    /// last entry being the number of tokens).
    pub fn new(ops: &Ops, cu_seqlens: &[usize]) -> Result<PackedBlocks> {
        const OP: &str = "attention blocks";
        if cu_seqlens.first() != Some(&0) || cu_seqlens.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::shape(
                OP,
                format!("cu_seqlens must start at 0 and never decrease, got {cu_seqlens:?}"),
            ));
        }
        let tokens = *cu_seqlens.last().unwrap_or(&0);
        if tokens > i32::MAX as usize {
            return Err(Error::shape(OP, format!("{tokens} tokens is too many")));
        }
        let mut table = vec![];
        for w in cu_seqlens.windows(2) {
            for row in (w[0]..w[1]).step_by(Self::ROWS) {
                let block: [i32; Self::FIELDS] = [row as i32, w[0] as i32, w[1] as i32];
                table.extend(block);
            }
        }
        PackedBlocks::from_table(ops, tokens, Self::ROWS, table)
    }

    /// The blocks of a decode step with a KV cache: the query rows `past .. past + new` of one
    /// sequence that starts at row 0 and ends at `past + new`, in buffers of `capacity` rows
    /// (`q` and `o` hold the new rows at their positions; `k` and `v` hold every row so far).
    /// Blocks are as small as the step allows, so one new token does not cost a block of 64.
    /// Only [`Attention::forward`] takes them.
    pub fn decode(ops: &Ops, past: usize, new: usize, capacity: usize) -> Result<PackedBlocks> {
        const OP: &str = "attention decode blocks";
        let end = past + new;
        if new == 0 || end > capacity || capacity > i32::MAX as usize {
            return Err(Error::shape(
                OP,
                format!("{past} cached + {new} new rows must fit a cache of {capacity} rows"),
            ));
        }
        // The GPU's tensor-core dots need 16 rows; the CPU computes exactly the rows asked for.
        let min_rows = if ops.device().is_gpu() { 16 } else { 1 };
        let rows = new.next_power_of_two().clamp(min_rows, Self::ROWS);
        let mut table = vec![];
        for row in (past..end).step_by(rows) {
            table.extend([row as i32, 0, end as i32]);
        }
        PackedBlocks::from_table(ops, capacity, rows, table)
    }

    fn from_table(
        ops: &Ops,
        tokens: usize,
        rows: usize,
        mut table: Vec<i32>,
    ) -> Result<PackedBlocks> {
        let count = table.len() / Self::FIELDS;
        if table.is_empty() {
            table.resize(Self::FIELDS, 0);
        }
        Ok(PackedBlocks {
            tokens,
            count,
            rows,
            table: ops.device().upload(&table)?,
        })
    }

    /// Tokens in the pack.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// One kernel's tiles: rows of the operand its loop steps through (key rows for the forward
/// and dq, query rows for dk/dv), warps, loop-pipeline stages. The dimension a kernel's programs
/// own (query rows for the forward and dq, key rows for dk/dv) is always
/// [`PackedBlocks::ROWS`], the rows of one block of the table: [`Attention::config`] sets it.
#[derive(Clone, Copy, Debug)]
struct Tile {
    step: usize,
    warps: u32,
    stages: u32,
}

/// Which rows a kernel's programs own, one block of [`PackedBlocks`] each.
#[derive(Clone, Copy, Debug)]
enum Owned {
    /// Query rows (`BM`): the forward and dq.
    Queries,
    /// Key rows (`BN`): dk/dv.
    Keys,
}

impl Tile {
    /// The (forward, dq, dk/dv) tiles for a head dimension. Tiles that reduce scores along
    /// rows keep whole rows per warp (16 rows each). On sm_90a the 64-row tiles on 4 warps are
    /// one warpgroup, so every product runs on `wgmma`; dk/dv on 4 warps (a few bytes of
    /// spill) took fwd+bwd from 0.642 to 0.444 ms at 8 x 1024, dim 64, because on 8 warps the
    /// second warpgroup only repeats the first's 64 rows. A 128-column forward or dq tile gave
    /// nothing measurable (`bench/RESULTS.md`).
    fn for_head_dim(head_dim: usize) -> [Tile; 3] {
        // Key/value (or query/dO) tiles are copied one iteration ahead: on the H200 two stages
        // took fwd+bwd from 0.692 to 0.627 ms at 8 x 1024, dim 64; three gave no more.
        let tile = |step, warps| Tile {
            step,
            warps,
            stages: 2,
        };
        if head_dim <= 64 {
            [tile(64, 4), tile(64, 4), tile(64, 4)]
        } else {
            [tile(64, 4), tile(64, 8), tile(32, 8)]
        }
    }
}

impl Attention {
    fn check(&self, op: &'static str) -> Result<()> {
        let (hq, hkv, d) = (self.q_heads, self.kv_heads, self.head_dim);
        if hkv == 0 || hq % hkv != 0 || !d.is_power_of_two() || !(16..=256).contains(&d) {
            return Err(Error::shape(
                op,
                format!(
                    "{hq} query heads must be a multiple of {hkv} key/value heads, and head_dim \
                     {d} a power of two from 16 to 256"
                ),
            ));
        }
        Ok(())
    }

    /// Checks the activations' shapes and returns their element type: that of the first of
    /// `q_like`, which all must share.
    fn shapes(
        &self,
        op: &'static str,
        t: usize,
        q_like: &[(&str, &dyn Operand)],
        kv_like: &[(&str, &dyn Operand)],
    ) -> Result<DType> {
        let (first, b) = q_like[0];
        let dtype = activation_type(op, first, b)?;
        for &(what, b) in q_like {
            expect(op, what, b, dtype, t * self.q_heads * self.head_dim)?;
        }
        for &(what, b) in kv_like {
            expect(op, what, b, dtype, t * self.kv_heads * self.head_dim)?;
        }
        Ok(dtype)
    }

    /// The configuration of `kernel`, whose programs own the `owned` rows of one block of
    /// [`PackedBlocks`] each.
    fn config(
        &self,
        kernel: &'static str,
        (owned, tile, rows): (Owned, Tile, usize),
        dtype: DType,
    ) -> KernelConfig {
        let (bm, bn) = match owned {
            Owned::Queries => (rows, tile.step),
            Owned::Keys => (tile.step, rows),
        };
        KernelConfig::new(FILE, kernel)
            .elem(dtype)
            .int("BM", bm)
            .int("BN", bn)
            .int("D", self.head_dim)
            .warps(tile.warps)
            .stages(tile.stages)
    }

    /// The arguments of the forward and both backward kernels but their tensors: the block
    /// table and the scalars.
    fn args<'a>(&self, blocks: &'a PackedBlocks) -> Args<'a> {
        Args::new()
            .input("blocks", &blocks.table)
            .i32("q_heads", self.q_heads as i32)
            .i32("kv_heads", self.kv_heads as i32)
            .f32("scale", 1.0 / (self.head_dim as f32).sqrt())
    }

    /// `o = softmax(q kᵀ / sqrt(d), causal, within each sequence) v` and `lse` (f32).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<'a>(
        &self,
        ops: &Ops,
        blocks: &PackedBlocks,
        q: impl Into<BufferView<'a>>,
        k: impl Into<BufferView<'a>>,
        v: impl Into<BufferView<'a>>,
        o: impl Into<BufferViewMut<'a>>,
        lse: impl Into<BufferViewMut<'a>>,
    ) -> Result<()> {
        const OP: &str = "attention forward";
        let (q, k, v) = (q.into(), k.into(), v.into());
        let (o, lse) = (o.into(), lse.into());
        self.check(OP)?;
        let t = blocks.tokens;
        let dtype = self.shapes(OP, t, &[("q", &q), ("o", &o)], &[("k", &k), ("v", &v)])?;
        expect(OP, "lse", &lse, DType::F32, t * self.q_heads)?;
        let [forward, ..] = Tile::for_head_dim(self.head_dim);
        let args = self
            .args(blocks)
            .input("q", q)
            .input("k", k)
            .input("v", v)
            .output("o", o)
            .output("lse", lse);
        let tiling = (Owned::Queries, forward, blocks.rows);
        let config = self.config("attn_fwd", tiling, dtype);
        ops.launch(&config, [blocks.count, self.q_heads, 1], &args)
    }

    /// `dq`, `dk`, `dv` from the forward's inputs, its output `o`, `lse`, and `d_o`. `dk` and
    /// `dv` are summed over the query heads that share each key/value head.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<'a>(
        &self,
        ops: &Ops,
        blocks: &PackedBlocks,
        (q, k, v): (
            impl Into<BufferView<'a>>,
            impl Into<BufferView<'a>>,
            impl Into<BufferView<'a>>,
        ),
        o: impl Into<BufferView<'a>>,
        lse: impl Into<BufferView<'a>>,
        d_o: impl Into<BufferView<'a>>,
        (dq, dk, dv): (
            impl Into<BufferViewMut<'a>>,
            impl Into<BufferViewMut<'a>>,
            impl Into<BufferViewMut<'a>>,
        ),
    ) -> Result<()> {
        const OP: &str = "attention backward";
        if blocks.rows != PackedBlocks::ROWS {
            return Err(Error::shape(OP, "decode blocks are for the forward only"));
        }
        let (q, k, v) = (q.into(), k.into(), v.into());
        let (o, lse, d_o) = (o.into(), lse.into(), d_o.into());
        let (dq, dk, dv) = (dq.into(), dk.into(), dv.into());
        self.check(OP)?;
        let t = blocks.tokens;
        let q_like: [(&str, &dyn Operand); 4] = [("q", &q), ("o", &o), ("d_o", &d_o), ("dq", &dq)];
        let dtype = self.shapes(
            OP,
            t,
            &q_like,
            &[("k", &k), ("v", &v), ("dk", &dk), ("dv", &dv)],
        )?;
        expect(OP, "lse", &lse, DType::F32, t * self.q_heads)?;

        let mut delta = ops.scratch_uninit(DType::F32, t * self.q_heads)?;
        let config = KernelConfig::new(FILE, "attn_bwd_delta")
            .elem(dtype)
            .int("BM", 64)
            .int("D", self.head_dim)
            .warps(4);
        let args = Args::new()
            .input("o", o)
            .input("d_o", d_o)
            .output("delta", &mut delta)
            .i32("tokens", t as i32)
            .i32("q_heads", self.q_heads as i32);
        ops.launch(&config, [config.programs("BM", t), self.q_heads, 1], &args)?;

        // dk/dv programs own blocks of key rows, dq programs blocks of query rows.
        let inputs = || {
            self.args(blocks)
                .input("q", q)
                .input("k", k)
                .input("v", v)
                .input("d_o", d_o)
                .input("lse", lse)
                .input("delta", &delta)
        };
        let [_, dq_tile, dkdv_tile] = Tile::for_head_dim(self.head_dim);
        let tiling = (Owned::Keys, dkdv_tile, PackedBlocks::ROWS);
        if self.q_heads == self.kv_heads {
            // One program per key block and key/value head, looping over its query heads.
            let args = inputs().output("dk", dk).output("dv", dv);
            let config = self.config("attn_bwd_dkdv", tiling, dtype);
            ops.launch(&config, [blocks.count, self.kv_heads, 1], &args)?;
        } else {
            // Grouped heads: a program per query head, each writing its share, then one sum per
            // group. At 14/2 heads that is 7x the programs; the causal mask makes the first
            // key blocks of a sequence the longest, and with a program per key/value head
            // they alone decided the kernel's time (0.26 ms a layer on the H200 at 8 x 1024).
            let part_len = t * self.q_heads * self.head_dim;
            let mut dk_part = ops.scratch_uninit(DType::F32, part_len)?;
            let mut dv_part = ops.scratch_uninit(DType::F32, part_len)?;
            let args = inputs()
                .output("dk_part", &mut dk_part)
                .output("dv_part", &mut dv_part);
            let config = self.config("attn_bwd_dkdv_head", tiling, dtype);
            ops.launch(&config, [blocks.count, self.q_heads, 1], &args)?;
            let config = KernelConfig::new(FILE, "attn_bwd_kv_sum")
                .elem(dtype)
                .int("BM", 64)
                .int("D", self.head_dim)
                .warps(4);
            let args = Args::new()
                .input("dk_part", &dk_part)
                .input("dv_part", &dv_part)
                .output("dk", dk)
                .output("dv", dv)
                .i32("tokens", t as i32)
                .i32("q_heads", self.q_heads as i32)
                .i32("kv_heads", self.kv_heads as i32);
            ops.launch(&config, [config.programs("BM", t), self.kv_heads, 1], &args)?;
        }

        let args = inputs().output("dq", dq);
        let tiling = (Owned::Queries, dq_tile, PackedBlocks::ROWS);
        let config = self.config("attn_bwd_dq", tiling, dtype);
        ops.launch(&config, [blocks.count, self.q_heads, 1], &args)
    }
}
