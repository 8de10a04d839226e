//! Tensor-core fragments: the layout of a `dot` accumulator over the warps, and how `dot`
//! operands are staged in shared memory and read back with `ldmatrix`.
//!
//! The instruction is `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}`: each warp multiplies
//! a 16x16 piece of `a` by a 16x8 piece of `b` into a 16x8 f32 *atom* of the accumulator. With
//! `g = lane / 4` and `t = lane % 4` (PTX ISA, "Matrix Fragments for mma.m16n8k16"):
//! - accumulator: four f32 registers; `c0, c1` at row `g`, columns `2t, 2t + 1`; `c2, c3` at
//!   row `g + 8`, the same columns;
//! - `a`: four 32-bit registers of two elements each, the low half first; register `j` holds
//!   row `g + 8 * (j % 2)`, columns `2t + 8 * (j / 2)` and the next;
//! - `b`: two registers; register `j` holds column `g`, rows (`k`) `2t + 8 * j` and the next.
//!
//! Both operands thus give each lane pairs of elements adjacent along `k`, at one "outer"
//! index (`m` for `a`, `n` for `b`) per 8x8 block. `ldmatrix.m8n8.x4` produces exactly that from
//! shared memory for four 8x8 blocks: lanes `8q .. 8q + 7` pass the addresses of the eight
//! 16-byte rows of block `q`, and register `q` of lane `l` receives row `l / 4`, elements
//! `2 (l % 4)` and the next of block `q`. So a block stored with `k` contiguous (`[outer][k]`)
//! is read plainly, and a block stored with the outer index contiguous (`[k][outer]`) is read
//! with `.trans`, which hands out the transposed block. A `dot` operand written as `trans(x)`
//! therefore costs nothing: `x` is staged as it is and read with the other variant.
//!
//! Shared tiles are row-major with their 16-byte chunks permuted by an XOR swizzle
//! ([`SharedTile::offset`]) so that the eight rows `ldmatrix` reads at a time, and the rows
//! the threads of a blocked layout write, fall in distinct banks.
//!
//! The accumulator layout ([`MmaLayout`]) tiles `[M, N]` over `warps_m x warps_n` warps, each
//! owning a contiguous `[M / warps_m, N / warps_n]` block made of 16x8 atoms. With one atom row
//! per warp and the warps only along `M` ([`MmaLayout::rows_first`]) it is also the accumulator
//! of `wgmma` run by whole warpgroups (see `wgmma`).

use super::layout::TidTerm;

/// The accumulator fragments of a `[m, n]` f32 tile computed by tensor cores.
///
/// Register `((i * atoms_n) + j) * 4 + c` of a thread holds element `c` of atom `(i, j)` of its
/// warp's block; warps `>= warps_m * warps_n` (when the tile is too small for all warps) hold
/// copies of warp `w % (warps_m * warps_n)`'s registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmaLayout {
    pub m: u32,
    pub n: u32,
    pub warps_m: u32,
    pub warps_n: u32,
    pub threads: u32,
}

/// Rows of an accumulator atom and of an `a` fragment.
pub const ATOM_M: u32 = 16;
/// Columns of an accumulator atom and of a `b` fragment.
pub const ATOM_N: u32 = 8;
/// The reduction depth of one `mma`.
pub const ATOM_K: u32 = 16;

impl MmaLayout {
    /// Registers `2i, 2i + 1` hold adjacent columns.
    pub const VEC: u32 = 2;

    /// The layout of a `[m, n]` accumulator over `threads` threads, or None if `m` is not a
    /// multiple of 16 or `n` of 8. As many warps as the tile has room for take part (the most
    /// that divide it into whole atoms); among the splits, the one whose per-warp block has the
    /// smallest `rows + columns` (the least operand traffic), then the one with more warps
    /// along `m`.
    pub fn new(m: u32, n: u32, threads: u32) -> Option<MmaLayout> {
        if m % ATOM_M != 0 || n % ATOM_N != 0 || threads % 32 != 0 {
            return None;
        }
        let mut warps = threads / 32;
        while warps >= 1 {
            let best = (0..=warps.trailing_zeros())
                .map(|s| (warps >> s, 1 << s))
                .filter(|&(wm, wn)| m % (ATOM_M * wm) == 0 && n % (ATOM_N * wn) == 0)
                .min_by_key(|&(wm, wn)| (m / wm + n / wn, wn));
            if let Some((warps_m, warps_n)) = best {
                return Some(MmaLayout {
                    m,
                    n,
                    warps_m,
                    warps_n,
                    threads,
                });
            }
            warps /= 2;
        }
        None
    }

    /// The layout of a `[m, n]` accumulator whose warps split only `m` (so that each warp holds
    /// whole rows: row reductions stay in the warp and the tile can feed another mma as its `a`
    /// operand from registers). As many warps as `m` has room for take part; the others hold
    /// copies. None if `m` is not a multiple of 16 or `n` of 8.
    pub fn rows_first(m: u32, n: u32, threads: u32) -> Option<MmaLayout> {
        if m % ATOM_M != 0 || n % ATOM_N != 0 || threads % 32 != 0 {
            return None;
        }
        let mut warps_m = threads / 32;
        while m % (ATOM_M * warps_m) != 0 {
            warps_m /= 2;
        }
        Some(MmaLayout {
            m,
            n,
            warps_m,
            warps_n: 1,
            threads,
        })
    }

    /// Rows of one warp's block.
    pub fn warp_rows(&self) -> u32 {
        self.m / self.warps_m
    }

    /// Columns of one warp's block.
    pub fn warp_cols(&self) -> u32 {
        self.n / self.warps_n
    }

    /// Atoms along `m` in one warp's block.
    pub fn atoms_m(&self) -> u32 {
        self.warp_rows() / ATOM_M
    }

    /// Atoms along `n` in one warp's block.
    pub fn atoms_n(&self) -> u32 {
        self.warp_cols() / ATOM_N
    }

    pub fn regs(&self) -> u32 {
        self.atoms_m() * self.atoms_n() * 4
    }

    /// Threads that own their registers (the others hold copies).
    pub fn owners(&self) -> u32 {
        32 * self.warps_m * self.warps_n
    }

    /// The first register of atom `(i, j)`.
    pub fn atom_reg(&self, i: u32, j: u32) -> u32 {
        (i * self.atoms_n() + j) * 4
    }

    /// The first row of the thread's warp block, as a term of the thread id.
    pub fn warp_row_term(&self) -> TidTerm {
        TidTerm {
            shift: 5 + self.warps_n.trailing_zeros(),
            mask: self.warps_m - 1,
            mul: self.warp_rows(),
        }
    }

    /// The first column of the thread's warp block, as a term of the thread id.
    pub fn warp_col_term(&self) -> TidTerm {
        TidTerm {
            shift: 5,
            mask: self.warps_n - 1,
            mul: self.warp_cols(),
        }
    }

    /// Lane terms (`g` picks the row, `t` the column pair), then the warp's block.
    pub fn tid_terms(&self) -> Vec<TidTerm> {
        let row = self.warp_row_term();
        vec![
            TidTerm {
                shift: 2,
                mask: 7,
                mul: self.n,
            },
            TidTerm {
                shift: 0,
                mask: 3,
                mul: 2,
            },
            self.warp_col_term(),
            TidTerm {
                mul: row.mul * self.n,
                ..row
            },
        ]
    }

    pub fn reg_offset(&self, reg: u32) -> u32 {
        let (atom, c) = (reg / 4, reg % 4);
        let (i, j) = (atom / self.atoms_n(), atom % self.atoms_n());
        (i * ATOM_M + c / 2 * 8) * self.n + j * ATOM_N + c % 2
    }
}

/// The rows of an MMA accumulator layout whose warps split only `m` (`warps_n == 1`): the
/// layout of a row vector (`[m]` or `[m, 1]`) that a row reduction of such a tile produces, or
/// that is broadcast back into it (`x[:, None]`). Each thread holds the rows its accumulator
/// registers cover: register `2i + h` holds row `warp_row + 16i + 8h + g` (`g = lane / 4`).
/// The four lanes of a group (`t = lane % 4`) hold copies; lane `t = 0` of warps
/// `< warps_m` owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmaRows {
    pub m: u32,
    pub warps_m: u32,
    pub threads: u32,
}

impl MmaRows {
    /// The rows of `l`, if its warps split only `m`.
    pub fn of(l: &MmaLayout) -> Option<MmaRows> {
        (l.warps_n == 1).then_some(MmaRows {
            m: l.m,
            warps_m: l.warps_m,
            threads: l.threads,
        })
    }

    pub fn regs(&self) -> u32 {
        self.m / self.warps_m / ATOM_M * 2
    }

    pub fn tid_terms(&self) -> Vec<TidTerm> {
        vec![
            TidTerm {
                shift: 2,
                mask: 7,
                mul: 1,
            },
            TidTerm {
                shift: 5,
                mask: self.warps_m - 1,
                mul: self.m / self.warps_m,
            },
        ]
    }

    pub fn reg_offset(&self, reg: u32) -> u32 {
        reg / 2 * ATOM_M + reg % 2 * 8
    }

    /// Whether thread `tid` owns its registers.
    pub fn owns(&self, tid: u32) -> bool {
        tid % 4 == 0 && tid / 32 < self.warps_m
    }
}

/// How an operand tile sits in shared memory, relative to the mma's view of it as
/// `[outer][k]` (`outer` is `m` for `a`, `n` for `b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Major {
    /// Stored `[outer][k]`: read with plain `ldmatrix`.
    K,
    /// Stored `[k][outer]`: read with `ldmatrix.trans`.
    Outer,
}

/// Which operand of the mma.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    A,
    B,
}

impl Operand {
    /// For `ldmatrix.x4` block `q`: which 8-row half along `outer` and which along `k`. `a`'s
    /// four registers go `(outer, k)` = (0,0), (1,0), (0,1), (1,1); a `b` load covers two atoms,
    /// whose register pairs go (0,0), (0,1) then (1,0), (1,1).
    pub fn block_halves(self, q: u32) -> (u32, u32) {
        match self {
            Operand::A => (q & 1, q >> 1),
            Operand::B => (q >> 1, q & 1),
        }
    }
}

/// A 2-D tile of 16-bit elements in shared memory: `rows x cols` starting at byte `base`, stored
/// as panels of [`SharedTile::PANEL`] columns side by side (a narrower tile is one panel), each
/// panel row-major with its rows' 16-byte chunks XOR-swizzled. Rows of at most 128 bytes with
/// this swizzle are the canonical 128-, 64- and 32-byte swizzled layouts `wgmma` reads through
/// matrix descriptors (given a base aligned to [`SharedTile::ALIGN`]); `ldmatrix` reads them
/// without bank conflicts too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedTile {
    pub rows: u32,
    pub cols: u32,
    pub base: u32,
}

impl SharedTile {
    /// Elements per 16-byte chunk.
    pub const CHUNK: u32 = 8;
    /// The swizzle repeats every 8 rows: rows `r` and `r + 8` have the same phase.
    pub const PHASE_ROWS: u32 = 8;
    /// Columns per panel: 128 bytes.
    pub const PANEL: u32 = 64;
    /// Byte alignment of a tile's base: the swizzle `wgmma` applies is one of address bits, so
    /// the tile must start where the pattern does.
    pub const ALIGN: u32 = 1024;

    pub fn bytes(&self) -> u32 {
        self.rows * self.cols * 2
    }

    /// Columns of one panel.
    pub fn panel_cols(&self) -> u32 {
        self.cols.min(Self::PANEL)
    }

    /// Elements from the start of one panel to the next.
    pub fn panel_pitch(&self) -> u32 {
        self.rows * self.panel_cols()
    }

    /// The swizzle: chunk `c` of a panel row `r` is stored at chunk `c ^ phase(r)` of that row,
    /// with `phase(r) = (r >> phase_shift) & phase_mask`. A 128-byte line of banks holds
    /// `8 / chunks_per_row` rows; consecutive lines get distinct phases, so any eight
    /// consecutive rows' copies of one chunk land in eight distinct 16-byte bank groups.
    pub fn phase_shift(&self) -> u32 {
        let chunks = self.panel_cols() / Self::CHUNK;
        (8 / chunks.min(8)).trailing_zeros()
    }

    /// See [`SharedTile::phase_shift`].
    pub fn phase_mask(&self) -> u32 {
        (self.panel_cols() / Self::CHUNK).min(8) - 1
    }

    /// The element offset (from `base`) of `(row, col)`.
    pub fn offset(&self, row: u32, col: u32) -> u32 {
        let p = self.panel_cols();
        let phase = row >> self.phase_shift() & self.phase_mask();
        col / p * self.panel_pitch() + row * p + ((col % p) ^ (phase * Self::CHUNK))
    }
}

/// Where lane `lane`'s `ldmatrix` address points, as the stored tile's `(row, col)`: see
/// [`ldmatrix_lane_terms`].
pub fn ldmatrix_row(op: Operand, major: Major, lane: u32, outer0: u32, k0: u32) -> (u32, u32) {
    let (rows, cols) = ldmatrix_lane_terms(op, major);
    let (row0, col0) = match major {
        Major::K => (outer0, k0),
        Major::Outer => (k0, outer0),
    };
    let sum = |terms: &[TidTerm]| terms.iter().map(|t| t.eval(lane)).sum::<u32>();
    (row0 + sum(&rows), col0 + sum(&cols))
}

/// The lane-dependent part of the tile element whose address a lane passes to `ldmatrix.x4` to
/// load the 16 (`outer`) x 16 (`k`) block of an operand whose corner is at `(outer0, k0)`, as
/// terms over the lane id for the stored row and column (added to the corner's stored row and
/// column). Lanes `8q + r` point at row `r` of 8x8 block `q`, whose halves along `outer` and
/// `k` are [`Operand::block_halves`]. For `.x2` (one `b` atom), pass `lane % 16`.
pub fn ldmatrix_lane_terms(op: Operand, major: Major) -> (Vec<TidTerm>, Vec<TidTerm>) {
    let term = |shift, mask, mul| TidTerm { shift, mask, mul };
    // Lane bits 3 and 4 (the bits of `q`) step half a block along `outer` or `k`.
    let (outer_bit, k_bit) = match (op.block_halves(1), op.block_halves(2)) {
        ((1, 0), (0, 1)) => (3, 4),
        _ => (4, 3),
    };
    let r = term(0, 7, 1);
    match major {
        Major::K => (vec![r, term(outer_bit, 1, 8)], vec![term(k_bit, 1, 8)]),
        Major::Outer => (vec![r, term(k_bit, 1, 8)], vec![term(outer_bit, 1, 8)]),
    }
}
