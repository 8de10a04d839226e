//! Causal flash attention over packed variable-length sequences (`cu_seqlens`), with grouped
//! query heads, forward and backward. No sequence attends across its boundaries; the forward
//! saves the f32 log-sum-exp of every (token, query head) and the backward recomputes the
//! probabilities from it.
//!
//! Layouts: `q`, `o` and their gradients `[tokens, q_heads, head_dim]`; `k`, `v` and theirs
//! `[tokens, kv_heads, head_dim]`; `lse` `[tokens, q_heads]` f32; all activations bf16.

use kiln_compiler::DType;
use kiln_runtime::{Arg, Buffer};

use crate::context::{expect, KernelConfig, Ops};
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
    table: Buffer,
}

impl PackedBlocks {
    /// Rows per block: the rows each program owns (query rows in the forward and dq, key rows
    /// in dk/dv).
    pub const ROWS: usize = 64;

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
                table.extend([row as i32, w[0] as i32, w[1] as i32]);
            }
        }
        let count = table.len() / 3;
        if table.is_empty() {
            table.extend([0, 0, 0]);
        }
        Ok(PackedBlocks {
            tokens,
            count,
            table: ops.device().upload(&table)?,
        })
    }

    /// Tokens in the pack.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// One kernel's tiles: query rows, key rows, warps, loop-pipeline stages. The dimension a
/// kernel's programs own (query rows for the forward and dq, key rows for dk/dv) is
/// [`PackedBlocks::ROWS`].
#[derive(Clone, Copy, Debug)]
struct Tile {
    bm: usize,
    bn: usize,
    warps: u32,
    stages: u32,
}

impl Tile {
    /// The (forward, dq, dk/dv) tiles for a head dimension. Tiles that reduce scores along
    /// rows keep whole rows per warp (16 rows each). On sm_90a the 64-row tiles on 4 warps are
    /// one warpgroup, so every product runs on `wgmma`; dk/dv on 4 warps (a few bytes of
    /// spill) took fwd+bwd from 0.642 to 0.444 ms at 8 x 1024, dim 64, because on 8 warps the
    /// second warpgroup only repeats the first's 64 rows. A 128-column forward or dq tile gave
    /// nothing measurable (`bench/RESULTS.md`).
    fn for_head_dim(head_dim: usize) -> [Tile; 3] {
        const R: usize = PackedBlocks::ROWS;
        // Key/value (or query/dO) tiles are copied one iteration ahead: on the H200 two stages
        // took fwd+bwd from 0.692 to 0.627 ms at 8 x 1024, dim 64; three gave no more.
        let tile = |bm, bn, warps| Tile {
            bm,
            bn,
            warps,
            stages: 2,
        };
        if head_dim <= 64 {
            [tile(R, 64, 4), tile(R, 64, 4), tile(64, R, 4)]
        } else {
            [tile(R, 64, 4), tile(R, 64, 8), tile(32, R, 8)]
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

    fn shapes(
        &self,
        op: &'static str,
        t: usize,
        q_like: &[(&str, &Buffer)],
        kv_like: &[(&str, &Buffer)],
    ) -> Result<()> {
        for (what, b) in q_like {
            expect(op, what, b, DType::Bf16, t * self.q_heads * self.head_dim)?;
        }
        for (what, b) in kv_like {
            expect(op, what, b, DType::Bf16, t * self.kv_heads * self.head_dim)?;
        }
        Ok(())
    }

    fn config(&self, kernel: &'static str, tile: Tile) -> KernelConfig {
        KernelConfig::new(FILE, kernel)
            .int("BM", tile.bm)
            .int("BN", tile.bn)
            .int("D", self.head_dim)
            .warps(tile.warps)
            .stages(tile.stages)
    }

    fn scalars(&self) -> [Arg<'static>; 3] {
        [
            Arg::I32(self.q_heads as i32),
            Arg::I32(self.kv_heads as i32),
            Arg::F32(1.0 / (self.head_dim as f32).sqrt()),
        ]
    }

    /// `o = softmax(q kᵀ / sqrt(d), causal, within each sequence) v` and `lse` (f32).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        ops: &Ops,
        blocks: &PackedBlocks,
        q: &Buffer,
        k: &Buffer,
        v: &Buffer,
        o: &Buffer,
        lse: &Buffer,
    ) -> Result<()> {
        const OP: &str = "attention forward";
        self.check(OP)?;
        let t = blocks.tokens;
        self.shapes(OP, t, &[("q", q), ("o", o)], &[("k", k), ("v", v)])?;
        expect(OP, "lse", lse, DType::F32, t * self.q_heads)?;
        let [forward, ..] = Tile::for_head_dim(self.head_dim);
        let mut args = vec![
            Arg::Buffer(q),
            Arg::Buffer(k),
            Arg::Buffer(v),
            Arg::Buffer(o),
            Arg::Buffer(lse),
            Arg::Buffer(&blocks.table),
        ];
        args.extend(self.scalars());
        let config = self.config("attn_fwd", forward);
        ops.launch(&config, [blocks.count, self.q_heads, 1], &args)
    }

    /// `dq`, `dk`, `dv` from the forward's inputs, its output `o`, `lse`, and `d_o`. `dk` and
    /// `dv` are summed over the query heads that share each key/value head.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        ops: &Ops,
        blocks: &PackedBlocks,
        (q, k, v): (&Buffer, &Buffer, &Buffer),
        o: &Buffer,
        lse: &Buffer,
        d_o: &Buffer,
        (dq, dk, dv): (&Buffer, &Buffer, &Buffer),
    ) -> Result<()> {
        const OP: &str = "attention backward";
        self.check(OP)?;
        let t = blocks.tokens;
        let q_like = [("q", q), ("o", o), ("d_o", d_o), ("dq", dq)];
        self.shapes(
            OP,
            t,
            &q_like,
            &[("k", k), ("v", v), ("dk", dk), ("dv", dv)],
        )?;
        expect(OP, "lse", lse, DType::F32, t * self.q_heads)?;

        const DELTA_ROWS: usize = 64;
        let delta = ops.scratch(DType::F32, t * self.q_heads)?;
        let config = KernelConfig::new(FILE, "attn_bwd_delta")
            .int("BM", DELTA_ROWS)
            .int("D", self.head_dim)
            .warps(4);
        let args = [
            Arg::Buffer(o),
            Arg::Buffer(d_o),
            Arg::Buffer(&delta),
            Arg::I32(t as i32),
            Arg::I32(self.q_heads as i32),
        ];
        ops.launch(&config, [t.div_ceil(DELTA_ROWS), self.q_heads, 1], &args)?;

        // dk/dv programs own blocks of key rows, dq programs blocks of query rows.
        let inputs = [q, k, v, d_o, lse, &delta].map(Arg::Buffer);
        let [_, dq_tile, dkdv_tile] = Tile::for_head_dim(self.head_dim);
        let mut args = inputs.to_vec();
        args.extend([Arg::Buffer(dk), Arg::Buffer(dv), Arg::Buffer(&blocks.table)]);
        args.extend(self.scalars());
        let config = self.config("attn_bwd_dkdv", dkdv_tile);
        ops.launch(&config, [blocks.count, self.kv_heads, 1], &args)?;

        let mut args = inputs.to_vec();
        args.extend([Arg::Buffer(dq), Arg::Buffer(&blocks.table)]);
        args.extend(self.scalars());
        let config = self.config("attn_bwd_dq", dq_tile);
        ops.launch(&config, [blocks.count, self.q_heads, 1], &args)
    }
}
