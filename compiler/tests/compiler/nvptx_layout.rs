//! The blocked layout covers every element exactly once, and the alignment analysis finds the
//! facts vector access relies on.

use kiln_compiler::backend::nvptx::axis::AxisAnalysis;
use kiln_compiler::backend::nvptx::layout::{dim_shifts, Blocked, Layout};
use kiln_compiler::backend::nvptx::reduce::axis_within_warps;
use kiln_compiler::backend::nvptx::{Arch, PtxOptions};
use kiln_compiler::ir::Op;
use kiln_compiler::{compile_to_ir, Defines, Source};
use std::collections::BTreeSet;

#[test]
fn every_element_has_exactly_one_owner() {
    for threads in [32, 64, 128, 256, 1024] {
        for log in 0..14 {
            let numel = 1u32 << log;
            let b = Blocked::new(numel, threads);
            let l = Layout::Blocked(b);
            let mut owners = vec![0u32; numel as usize];
            for tid in 0..l.owners() {
                for reg in 0..l.regs() {
                    owners[l.element(tid, reg) as usize] += 1;
                }
            }
            assert!(
                owners.iter().all(|&o| o == 1),
                "numel {numel}, threads {threads}"
            );
            // Runs of `vec` registers are contiguous elements.
            if !b.replicated() {
                for reg in 0..l.regs() {
                    assert_eq!(l.reg_offset(reg) % l.vec(), reg % l.vec());
                }
            }
            // Replicas hold their owner's elements.
            for tid in l.owners()..threads {
                assert_eq!(l.element(tid, 0), l.element(tid % l.owners(), 0));
            }
        }
    }
}

#[test]
fn alignment_facts_of_a_masked_row() {
    let src = Source::new(
        "t.kiln",
        "kernel t<B: i32 = 1024>(x: *f32, y: *mut f32, n: i32) {
            let cols = range(B);
            let m = cols < n;
            store(y + program_id(0) * n + cols, load(x + program_id(0) * n + cols, mask: m), mask: m);
        }",
    );
    let k = &compile_to_ir(&src, &Defines::new()).unwrap()[0];
    let facts = |mask: u64| {
        let opts = PtxOptions {
            arch: Arch::Sm90,
            num_warps: 4,
            divisible_by_16: mask,
            num_stages: 1,
            bounds_checks: false,
        };
        let a = AxisAnalysis::run(k, &opts);
        let load = k
            .body
            .insts
            .iter()
            .find_map(|i| match &i.op {
                Op::Load { ptr, mask, .. } => Some((a.get(*ptr), a.get(mask.unwrap()))),
                _ => None,
            })
            .unwrap();
        load
    };
    let (ptr, mask) = facts(0b111);
    assert_eq!(ptr.contig, 1024);
    assert_eq!(ptr.div, 16, "the 16-byte aligned base bounds it");
    assert_eq!(mask.constancy, 16);
    let (ptr, mask) = facts(0);
    assert_eq!(ptr.contig, 1024);
    assert_eq!(ptr.div, 4);
    assert_eq!(mask.constancy, 1);
}

/// Simulates the in-warp axis reduction's grouping: registers of a thread whose flat indices
/// differ only in the axis' bits fold together, then lanes that differ only in those bits. Each
/// fold must cover exactly the elements of one output.
#[test]
fn in_warp_axis_reduction_covers_each_output_once() {
    let shapes: &[&[u32]] = &[
        &[32, 128],
        &[16, 64],
        &[64, 64],
        &[4, 8, 32],
        &[128, 8],
        &[2, 1024],
    ];
    let mut checked = 0;
    for threads in [32, 128, 256] {
        for shape in shapes {
            let numel: u32 = shape.iter().product();
            let l = Blocked::new(numel, threads);
            for axis in 0..shape.len() as u32 {
                if !axis_within_warps(&l, shape, axis) {
                    continue;
                }
                checked += 1;
                let s = dim_shifts(shape)[axis as usize];
                let axis_mask = (shape[axis as usize] - 1) << s;
                let flat = |tid: u32, reg: u32| Layout::Blocked(l).element(tid, reg);
                let vbits = l.vec.trailing_zeros();
                let lane_axis: u32 = (0..5)
                    .filter(|b| axis_mask >> (vbits + b) & 1 == 1)
                    .map(|b| 1 << b)
                    .sum();
                for tid in 0..threads {
                    // Registers grouped by their flat index without the axis bits.
                    let mut groups: Vec<(u32, BTreeSet<u32>)> = vec![];
                    for reg in 0..l.regs {
                        let f = flat(tid, reg);
                        let key = f & !axis_mask;
                        match groups.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, g)) => {
                                g.insert(f);
                            }
                            None => groups.push((key, BTreeSet::from([f]))),
                        }
                    }
                    for (key, _) in &groups {
                        // Union over the lanes the butterflies reach: all subsets of lane_axis.
                        let mut seen = BTreeSet::new();
                        let mut sub = lane_axis;
                        loop {
                            let partner = tid ^ sub;
                            for reg in 0..l.regs {
                                let f = flat(partner, reg);
                                if f & !axis_mask == *key {
                                    assert!(seen.insert(f), "element {f} folded twice");
                                }
                            }
                            if sub == 0 {
                                break;
                            }
                            sub = (sub - 1) & lane_axis;
                        }
                        let want: BTreeSet<u32> =
                            (0..numel).filter(|f| f & !axis_mask == *key).collect();
                        assert_eq!(seen, want, "shape {shape:?} axis {axis} threads {threads}");
                    }
                }
            }
        }
    }
    assert!(
        checked > 5,
        "too few cases take the in-warp path: {checked}"
    );
}
