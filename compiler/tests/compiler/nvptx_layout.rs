//! The blocked layout covers every element exactly once, and the alignment analysis finds the
//! facts vector access relies on.

use kiln_compiler::backend::nvptx::axis::AxisAnalysis;
use kiln_compiler::backend::nvptx::layout::Layout;
use kiln_compiler::backend::nvptx::{Arch, PtxOptions};
use kiln_compiler::ir::Op;
use kiln_compiler::{compile_to_ir, Defines, Source};

#[test]
fn every_element_has_exactly_one_owner() {
    for threads in [32, 64, 128, 256, 1024] {
        for log in 0..14 {
            let numel = 1u32 << log;
            let l = Layout::new(numel, threads);
            let mut owners = vec![0u32; numel as usize];
            for tid in 0..threads {
                for reg in 0..l.regs {
                    let mut i = tid * l.tid_stride() + l.reg_offset(reg);
                    if l.replicated() {
                        i &= numel - 1;
                        if tid >= numel {
                            continue; // a replica, not the owner
                        }
                    }
                    owners[i as usize] += 1;
                }
            }
            assert!(
                owners.iter().all(|&o| o == 1),
                "numel {numel}, threads {threads}"
            );
            // Runs of `vec` registers are contiguous elements.
            if !l.replicated() {
                for reg in 0..l.regs {
                    assert_eq!(l.reg_offset(reg) % l.vec, reg % l.vec);
                }
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
