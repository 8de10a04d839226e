//! Tensor-core fragments, simulated in plain Rust against the PTX ISA: the accumulator layout
//! puts every element where `mma.m16n8k16` leaves it, and `ldmatrix` from the swizzled shared
//! tiles hands each lane exactly the `a` and `b` elements `mma` expects, without bank conflicts.

use kiln_compiler::backend::nvptx::assign::Assignment;
use kiln_compiler::backend::nvptx::layout::{Blocked, Layout};
use kiln_compiler::backend::nvptx::mma::{
    ldmatrix_row, Major, MmaLayout, MmaRows, Operand, SharedTile, ATOM_K, ATOM_M, ATOM_N,
};
use kiln_compiler::ir::{Kernel, Op, Value};
use kiln_compiler::{compile_to_ir, ConstValue, DType, Defines, Source};
use std::collections::HashSet;

// The fragment tables of the PTX ISA ("Matrix Fragments for mma.m16n8k16 with floating point
// type", .bf16 / .f16 inputs, .f32 accumulator), with g = lane >> 2 and t = lane % 4.

/// `(row, col)` of element `i` (0..8, two per register, low half first) of `a` in `lane`.
fn isa_a(lane: u32, i: u32) -> (u32, u32) {
    let (g, t) = (lane >> 2, lane % 4);
    let row = if i < 2 || (4..6).contains(&i) {
        g
    } else {
        g + 8
    };
    let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
    (row, col)
}

/// `(row, col)` = `(k, n)` of element `i` (0..4) of `b` in `lane`.
fn isa_b(lane: u32, i: u32) -> (u32, u32) {
    let (g, t) = (lane >> 2, lane % 4);
    (t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 }, g)
}

/// `(row, col)` of accumulator element `i` (0..4) in `lane`.
fn isa_c(lane: u32, i: u32) -> (u32, u32) {
    let (g, t) = (lane >> 2, lane % 4);
    (g + if i >= 2 { 8 } else { 0 }, t * 2 + (i & 1))
}

/// `ldmatrix.sync.aligned.m8n8.x{count}[.trans].b16` as the ISA describes it: the rows of block
/// `q` start at the element offsets lanes `8q .. 8q + 7` give; register `q` of lane `l` gets
/// row `l / 4`, elements `2 (l % 4)` and the next, of block `q` (with `.trans`: column `l / 4`,
/// rows `2 (l % 4)` and the next). Returns, per lane and register, the two offsets read.
fn ldmatrix(addr: &[u32; 32], count: u32, trans: bool) -> Vec<Vec<[u32; 2]>> {
    (0..32)
        .map(|l| {
            (0..count)
                .map(|q| {
                    let at = |row: u32, col: u32| addr[(8 * q + row) as usize] + col;
                    if trans {
                        [at(2 * (l % 4), l / 4), at(2 * (l % 4) + 1, l / 4)]
                    } else {
                        [at(l / 4, 2 * (l % 4)), at(l / 4, 2 * (l % 4) + 1)]
                    }
                })
                .collect()
        })
        .collect()
}

const THREADS: [u32; 4] = [32, 128, 256, 512];

#[test]
fn accumulator_layout_matches_the_isa() {
    let mut checked = 0;
    for threads in THREADS {
        for m in [16, 32, 64, 128, 256] {
            for n in [8, 16, 32, 64, 128, 256] {
                let Some(l) = MmaLayout::new(m, n, threads) else {
                    continue;
                };
                let layout = Layout::Mma(l);
                assert_eq!(l.warps_m * l.warp_rows(), m);
                assert_eq!(l.warps_n * l.warp_cols(), n);
                let mut owners = vec![0u32; (m * n) as usize];
                for tid in 0..threads {
                    let (warp, lane) = (tid / 32 % (l.warps_m * l.warps_n), tid % 32);
                    let (wm, wn) = (warp / l.warps_n, warp % l.warps_n);
                    for reg in 0..layout.regs() {
                        let atom = reg / 4;
                        let (i, j) = (atom / l.atoms_n(), atom % l.atoms_n());
                        assert_eq!(l.atom_reg(i, j), reg - reg % 4);
                        let (r, c) = isa_c(lane, reg % 4);
                        let row = wm * l.warp_rows() + i * ATOM_M + r;
                        let col = wn * l.warp_cols() + j * ATOM_N + c;
                        let e = layout.element(tid, reg);
                        assert_eq!((e / n, e % n), (row, col), "{l:?} tid {tid} reg {reg}");
                        if tid < layout.owners() {
                            owners[e as usize] += 1;
                        }
                    }
                    // Pairs of registers are adjacent columns, the first even.
                    for reg in (0..layout.regs()).step_by(2) {
                        assert_eq!(layout.element(tid, reg) % 2, 0);
                        assert_eq!(layout.element(tid, reg + 1), layout.element(tid, reg) + 1);
                    }
                }
                assert!(owners.iter().all(|&o| o == 1), "{l:?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 80, "{checked}");
}

#[test]
fn warps_split_the_accumulator_sensibly() {
    let l = MmaLayout::new(128, 128, 128).unwrap();
    assert_eq!((l.warps_m, l.warps_n, l.regs()), (2, 2, 128));
    let l = MmaLayout::new(128, 128, 256).unwrap();
    assert_eq!((l.warp_rows(), l.warp_cols(), l.regs()), (32, 64, 64));
    let l = MmaLayout::new(128, 256, 256).unwrap();
    assert_eq!((l.warps_m, l.warps_n, l.regs()), (2, 4, 128));
    // Too small for every warp: one warp's worth, copied.
    let l = MmaLayout::new(16, 8, 128).unwrap();
    assert_eq!((l.warps_m, l.warps_n, l.owners()), (1, 1, 32));
    let l = MmaLayout::new(16, 32, 128).unwrap();
    assert_eq!((l.warps_m, l.warps_n, l.owners()), (1, 4, 128));
    assert_eq!(MmaLayout::new(8, 8, 128), None);
    assert_eq!(MmaLayout::new(16, 4, 128), None);
}

/// The shared tile of an `outer x k` operand region stored with `major`.
fn tile(major: Major, outer: u32, k: u32) -> SharedTile {
    let (rows, cols) = match major {
        Major::K => (outer, k),
        Major::Outer => (k, outer),
    };
    SharedTile {
        rows,
        cols,
        base: 0,
    }
}

/// The `(outer, k)` coordinate stored at each element offset of the tile.
fn contents(t: &SharedTile, major: Major) -> Vec<(u32, u32)> {
    let mut mem = vec![(u32::MAX, u32::MAX); (t.rows * t.cols) as usize];
    for row in 0..t.rows {
        for col in 0..t.cols {
            let at = t.offset(row, col) as usize;
            assert_eq!(mem[at].0, u32::MAX, "two elements at offset {at}");
            mem[at] = match major {
                Major::K => (row, col),
                Major::Outer => (col, row),
            };
        }
    }
    mem
}

/// 16-byte bank groups of eight element offsets are distinct (one conflict-free access).
fn conflict_free(offsets: &[u32]) -> bool {
    let groups: HashSet<u32> = offsets.iter().map(|o| o * 2 / 16 % 8).collect();
    groups.len() == offsets.len()
}

#[test]
fn ldmatrix_yields_the_isa_operand_fragments() {
    let mut checked = 0;
    for major in [Major::K, Major::Outer] {
        for outer in [16, 32, 64, 128, 256] {
            for k in [16, 32, 64, 128] {
                let t = tile(major, outer, k);
                let mem = contents(&t, major);
                for outer0 in (0..outer).step_by(16) {
                    for k0 in (0..k).step_by(ATOM_K as usize) {
                        for op in [Operand::A, Operand::B] {
                            let addr: [u32; 32] = std::array::from_fn(|lane| {
                                let (r, c) = ldmatrix_row(op, major, lane as u32, outer0, k0);
                                // The code generator takes the swizzle phase from the lane.
                                assert_eq!(r % SharedTile::PHASE_ROWS, lane as u32 % 8);
                                let at = t.offset(r, c);
                                assert_eq!(at % SharedTile::CHUNK, 0, "16-byte aligned rows");
                                at
                            });
                            for q in 0..4 {
                                assert!(conflict_free(&addr[8 * q..8 * q + 8]), "{major:?} {t:?}");
                            }
                            let regs = ldmatrix(&addr, 4, major == Major::Outer);
                            for lane in 0..32u32 {
                                for (q, pair) in regs[lane as usize].iter().enumerate() {
                                    for (h, &at) in pair.iter().enumerate() {
                                        let got = mem[at as usize];
                                        let i = 2 * (q as u32 % 2) + h as u32;
                                        let want = match op {
                                            Operand::A => {
                                                let (r, c) = isa_a(lane, 2 * q as u32 + h as u32);
                                                (outer0 + r, k0 + c)
                                            }
                                            // Registers 0, 1: the first atom; 2, 3: the second.
                                            Operand::B => {
                                                let (kk, nn) = isa_b(lane, i);
                                                (outer0 + 8 * (q as u32 / 2) + nn, k0 + kk)
                                            }
                                        };
                                        assert_eq!(got, want, "{op:?} {major:?} lane {lane}");
                                    }
                                }
                            }
                            checked += 1;
                        }
                        // `.x2` for one atom of `b`: lanes pass their address modulo 16.
                        let addr: [u32; 32] = std::array::from_fn(|lane| {
                            let (r, c) =
                                ldmatrix_row(Operand::B, major, lane as u32 % 16, outer0, k0);
                            t.offset(r, c)
                        });
                        let regs = ldmatrix(&addr, 2, major == Major::Outer);
                        for lane in 0..32u32 {
                            for (q, pair) in regs[lane as usize].iter().enumerate() {
                                for (h, &at) in pair.iter().enumerate() {
                                    let (kk, nn) = isa_b(lane, 2 * q as u32 + h as u32);
                                    assert_eq!(mem[at as usize], (outer0 + nn, k0 + kk));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 500, "{checked}");
}

#[test]
fn the_swizzle_repeats_every_eight_rows() {
    for (rows, cols) in [(32, 8), (32, 16), (32, 32), (32, 64), (32, 128), (32, 256)] {
        let t = SharedTile {
            rows,
            cols,
            base: 0,
        };
        for row in 0..rows - SharedTile::PHASE_ROWS {
            for col in 0..cols {
                let below = t.offset(row + SharedTile::PHASE_ROWS, col);
                let pitch = SharedTile::PHASE_ROWS * t.panel_cols();
                assert_eq!(below, t.offset(row, col) + pitch);
            }
        }
    }
}

/// A shared tile is the canonical swizzled layout `wgmma` reads through a matrix descriptor
/// (PTX ISA, "Shared Memory Matrix Layout"): panels of at most 64 columns `leading` bytes
/// apart, rows of a panel one after another, and the 16-byte chunks of each row permuted by the
/// 128-, 64- or 32-byte swizzle, a function of the address bits alone: bits 4.. take the XOR
/// of bits 7.. (three, two or one of them).
#[test]
fn shared_tiles_are_the_canonical_wgmma_layouts() {
    for (rows, cols) in [
        (64, 64),
        (64, 32),
        (64, 16),
        (128, 64),
        (32, 128),
        (64, 256),
        (16, 128),
    ] {
        let t = SharedTile {
            rows,
            cols,
            base: 0,
        };
        let p = t.panel_cols();
        let row_bytes = 2 * p;
        let bits = (row_bytes / 16).trailing_zeros();
        let swizzle = |a: u32| a ^ ((a >> 7) & ((1 << bits) - 1)) << 4;
        let leading = 2 * t.panel_pitch();
        for r in 0..rows {
            for c in 0..cols {
                let plain = c / p * leading + r * row_bytes + c % p * 2;
                assert_eq!(
                    2 * t.offset(r, c),
                    swizzle(plain),
                    "{rows}x{cols} ({r}, {c})"
                );
            }
        }
    }
}

/// Staging writes from the blocked layout: each thread's runs of (up to) eight elements stay
/// contiguous in shared memory, and the eight threads of each phase of a 16-byte store hit
/// distinct bank groups.
#[test]
fn staging_stores_are_contiguous_and_conflict_free() {
    for threads in [128, 256] {
        for (rows, cols) in [
            (128, 32),
            (32, 128),
            (64, 64),
            (128, 16),
            (16, 128),
            (256, 64),
        ] {
            let t = SharedTile {
                rows,
                cols,
                base: 0,
            };
            let l = Blocked::new(rows * cols, threads);
            let layout = Layout::Blocked(l);
            let w = l.vec.min(SharedTile::CHUNK).min(cols);
            for reg in (0..l.regs).step_by(w as usize) {
                let start = |tid: u32| {
                    let e = layout.element(tid, reg);
                    t.offset(e / cols, e % cols)
                };
                for tid in 0..threads {
                    let at = start(tid);
                    assert_eq!(at % w, 0);
                    for j in 0..w {
                        let e = layout.element(tid, reg + j);
                        assert_eq!(t.offset(e / cols, e % cols), at + j);
                    }
                }
                if w == SharedTile::CHUNK {
                    for phase in (0..threads).step_by(8) {
                        let offsets: Vec<u32> = (phase..phase + 8).map(start).collect();
                        assert!(conflict_free(&offsets), "{rows}x{cols} reg {reg}");
                    }
                }
            }
        }
    }
}

/// Kernel `name` of the dot test kernels, specialised with `defines`.
fn dot_kernel(name: &str, defines: &[(&str, ConstValue)]) -> Kernel {
    let defines: Defines = defines.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    compile_to_ir(&Source::new("dot.kiln", DOT), &defines)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .find(|k| k.name == name)
        .unwrap()
}

/// Every instruction's results, nested ones included, with the op.
fn results(k: &Kernel) -> Vec<(Value, Op)> {
    fn walk(b: &kiln_compiler::ir::Block, out: &mut Vec<(Value, Op)>) {
        for i in &b.insts {
            for &r in &i.results {
                out.push((r, i.op.clone()));
            }
            for nested in i.op.blocks() {
                walk(nested, out);
            }
        }
    }
    let mut out = vec![];
    walk(&k.body, &mut out);
    out
}

const DOT: &str = include_str!("nvptx_kernels/dot.kiln");

#[test]
fn the_accumulator_stays_in_fragments_through_the_loop_and_the_epilogue() {
    let k = dot_kernel("dot_loop", &[]);
    let a = Assignment::run(&k, &kiln_compiler::ir::DefUse::new(&k.body), 128, false);
    let is_mma = |v: Value| matches!(a.layout(&k, v), Layout::Mma(_));
    for (v, op) in results(&k) {
        let dtype = k.ty(v).dtype();
        match op {
            Op::Dot { .. } => assert!(is_mma(v), "{op:?}"),
            // The scaling and the cast to bf16.
            Op::Binary(..) if dtype == Some(DType::F32) => assert!(is_mma(v), "{op:?}"),
            Op::Cast(_) if dtype == Some(DType::Bf16) => assert!(is_mma(v), "{op:?}"),
            Op::For { .. } => assert!(is_mma(v), "the loop's result"),
            // The operands stay blocked: they go to shared memory in 16-byte vectors.
            Op::Load { .. } => assert!(!is_mma(v), "{op:?}"),
            _ => {}
        }
    }
    let Some(Op::For { body, .. }) = results(&k)
        .into_iter()
        .find(|(_, op)| matches!(op, Op::For { .. }))
        .map(|(_, op)| op)
    else {
        panic!("no loop")
    };
    assert!(is_mma(body.args[1]), "the carried accumulator");
}

#[test]
fn a_transposed_operand_is_never_materialised() {
    for (ta, tb) in [(true, false), (false, true), (true, true)] {
        let k = dot_kernel(
            "dot_tile",
            &[
                ("TA", ConstValue::Bool(ta)),
                ("TB", ConstValue::Bool(tb)),
                ("M", ConstValue::Int(32)),
                ("N", ConstValue::Int(32)),
                ("K", ConstValue::Int(32)),
            ],
        );
        let a = Assignment::run(&k, &kiln_compiler::ir::DefUse::new(&k.body), 128, false);
        let trans: Vec<Value> = results(&k)
            .into_iter()
            .filter(|(_, op)| matches!(op, Op::Trans(_)))
            .map(|(v, _)| v)
            .collect();
        assert_eq!(trans.len(), ta as usize + tb as usize);
        assert!(trans.iter().all(|&t| a.is_free_trans(t)));
    }
}

/// The repacking `dot` does when its `a` is an accumulator whose warps hold whole rows: `a`
/// element `e` of 16-deep step `s` and atom row `i` is accumulator register
/// `atom_reg(i, 2s + e / 4) + 2 (e / 2 % 2) + e % 2`; it must be the element the ISA puts there.
#[test]
fn accumulators_repack_as_a_fragments() {
    for (m, n, threads) in [(64, 64, 128), (64, 128, 128), (128, 64, 256), (64, 32, 256)] {
        let l = MmaLayout::rows_first(m, n, threads).unwrap();
        assert_eq!(l.warps_n, 1);
        let lay = Layout::Mma(l);
        for tid in 0..threads {
            let lane = tid % 32;
            for i in 0..l.atoms_m() {
                for s in 0..n / ATOM_K {
                    for e in 0..8 {
                        let reg = l.atom_reg(i, 2 * s + e / 4) + 2 * (e / 2 % 2) + e % 2;
                        let flat = lay.element(tid, reg);
                        let (r, c) = isa_a(lane, e);
                        let row0 = (tid / 32 % l.warps_m) * l.warp_rows() + i * ATOM_M;
                        assert_eq!((flat / n, flat % n), (row0 + r, s * ATOM_K + c));
                    }
                }
            }
        }
    }
}

/// A row vector in the rows layout holds, in register `2i + h`, the row of accumulator registers
/// `atom_reg(i, _) + 2h ..`, and every row has exactly one owner.
#[test]
fn row_vectors_follow_the_accumulator_rows() {
    for (m, n, threads) in [(64, 64, 128), (128, 64, 256), (64, 64, 256), (16, 8, 128)] {
        let l = MmaLayout::rows_first(m, n, threads).unwrap();
        let r = MmaRows::of(&l).unwrap();
        let (lm, lr) = (Layout::Mma(l), Layout::Rows(r));
        let mut owned = vec![0; m as usize];
        for tid in 0..threads {
            for reg in 0..l.regs() {
                let (atom, c) = (reg / 4, reg % 4);
                let row_reg = atom / l.atoms_n() * 2 + c / 2;
                assert_eq!(lr.element(tid, row_reg), lm.element(tid, reg) / n);
            }
            if lr.owns(tid) {
                for reg in 0..r.regs() {
                    owned[lr.element(tid, reg) as usize] += 1;
                }
            }
        }
        assert!(owned.iter().all(|&o| o == 1), "{owned:?}");
    }
}
