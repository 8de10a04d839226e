//! The CUDA path with hand-written PTX (the NVPTX backend is tested in the compiler). On a
//! machine without a GPU these tests print "skipped: no CUDA device".

use kiln_compiler::ir::{Param, ParamKind};
use kiln_compiler::DType;
use kiln_runtime::{Args, CacheKey, Error, Kernel, KernelCache, PtxArtifact};

use crate::cuda_or_skip;

/// `y[i] = x[i] * a + b + k` for `i < n`, one element per thread, 128 threads per block.
/// Mixes 4- and 8-byte scalars to exercise argument packing.
const AXPB_PTX: &str = r#"
.version 7.0
.target sm_80
.address_size 64

.visible .entry axpb(
    .param .u64 x, .param .u64 y, .param .s32 n, .param .f32 a, .param .s64 k, .param .f32 b)
{
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .f32 %f<7>;
    .reg .b64 %rd<9>;

    ld.param.u64 %rd1, [x];
    ld.param.u64 %rd2, [y];
    ld.param.s32 %r1, [n];
    ld.param.f32 %f1, [a];
    ld.param.s64 %rd8, [k];
    ld.param.f32 %f2, [b];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.s32 %p1, %r5, %r1;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd3, %rd1;
    cvta.to.global.u64 %rd4, %rd2;
    mul.wide.s32 %rd5, %r5, 4;
    add.s64 %rd6, %rd3, %rd5;
    add.s64 %rd7, %rd4, %rd5;
    ld.global.f32 %f3, [%rd6];
    fma.rn.f32 %f4, %f3, %f1, %f2;
    cvt.rn.f32.s64 %f5, %rd8;
    add.f32 %f6, %f4, %f5;
    st.global.f32 [%rd7], %f6;
DONE:
    ret;
}
"#;

/// The arguments of `axpb` with `a = 2`, `k = 2^20`, `b = 0.5`.
fn axpb_args<'a>(x: &'a kiln_runtime::Buffer, y: &'a mut kiln_runtime::Buffer, n: i32) -> Args<'a> {
    Args::new()
        .input("x", x)
        .output("y", y)
        .i32("n", n)
        .f32("a", 2.0)
        .i64("k", 1 << 20)
        .f32("b", 0.5)
}

fn axpb() -> PtxArtifact {
    let p = |name: &str, kind| Param {
        name: name.into(),
        kind,
    };
    PtxArtifact {
        kernel: "axpb".into(),
        params: vec![
            p(
                "x",
                ParamKind::Ptr {
                    pointee: DType::F32,
                    mutable: false,
                },
            ),
            p(
                "y",
                ParamKind::Ptr {
                    pointee: DType::F32,
                    mutable: true,
                },
            ),
            p("n", ParamKind::Scalar(DType::I32)),
            p("a", ParamKind::Scalar(DType::F32)),
            p("k", ParamKind::Scalar(DType::I64)),
            p("b", ParamKind::Scalar(DType::F32)),
        ],
        ptx: AXPB_PTX.into(),
        entry: "axpb".into(),
        threads_per_block: 128,
        shared_bytes: 0,
        divisible_by_16: 0,
        bounds_checks: false,
        cubin: vec![],
    }
}

#[test]
fn hand_written_ptx_runs_with_checked_packed_arguments() {
    let Some(gpu) = cuda_or_skip("hand_written_ptx_runs_with_checked_packed_arguments") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::with_dir(dir.path());
    let artifact = cache
        .ptx_artifact(&CacheKey::from_text("axpb"), || Ok(axpb()))
        .unwrap();
    let kernel = Kernel::from_ptx(&gpu, &artifact).unwrap();

    let n = 1000usize;
    let x: Vec<f32> = (0..1024).map(|i| i as f32).collect();
    let xb = gpu.upload(&x).unwrap();
    let mut yb = gpu.alloc(DType::F32, 1024).unwrap();
    yb.poison().unwrap();
    let start = gpu.record_event().unwrap();
    kernel
        .launch([8, 1, 1], &axpb_args(&xb, &mut yb, n as i32))
        .unwrap();
    let end = gpu.record_event().unwrap();
    let y = yb.download::<f32>().unwrap();
    for i in 0..n {
        assert_eq!(y[i], x[i] * 2.0 + 0.5 + (1 << 20) as f32, "element {i}");
    }
    assert!(y[n..].iter().all(|v| v.is_nan()), "the kernel wrote past n");
    let ms = start.elapsed_ms(&end).unwrap();
    assert!((0.0..1000.0).contains(&ms), "{ms}");

    // A warm cache reads the artefact back from disk and it still runs.
    let warm = KernelCache::with_dir(dir.path());
    let again = warm
        .ptx_artifact(&CacheKey::from_text("axpb"), || {
            unreachable!("must be a disk hit")
        })
        .unwrap();
    assert_eq!(warm.stats().disk_hits, 1);
    let args = axpb_args(&xb, &mut yb, n as i32);
    Kernel::from_ptx(&gpu, &again)
        .unwrap()
        .launch([8, 1, 1], &args)
        .unwrap();
    gpu.synchronize().unwrap();

    // An empty grid runs nothing, but its arguments are still checked.
    kernel.launch([0, 1, 1], &args).unwrap();
    assert!(kernel
        .launch([0, 1, 1], &Args::new().input("x", &xb))
        .is_err());

    // Mismatched arguments are refused before anything is queued.
    let err = kernel
        .launch([8, 1, 1], &Args::new().input("x", &xb).f32("b", 0.5))
        .unwrap_err();
    assert!(err.to_string().contains("kernel `axpb`"), "{err}");
    let grid_err = kernel.launch([1, 70000, 1], &args).unwrap_err();
    assert!(matches!(grid_err, Error::Launch { .. }), "{grid_err:?}");
}

#[test]
fn bad_ptx_is_an_error_naming_the_kernel() {
    let Some(gpu) = cuda_or_skip("bad_ptx_is_an_error_naming_the_kernel") else {
        return;
    };
    let mut missing_entry = axpb();
    missing_entry.entry = "nope".into();
    let err = Kernel::from_ptx(&gpu, &missing_entry).expect_err("no such entry");
    assert!(err.to_string().contains("kernel `axpb`"), "{err}");

    let mut garbage = axpb();
    garbage.ptx = "this is not PTX".into();
    let err = Kernel::from_ptx(&gpu, &garbage).expect_err("not PTX");
    assert!(matches!(err, Error::Cuda { .. }), "{err:?}");
    assert!(err.to_string().contains("kernel `axpb`"), "{err}");
}

#[test]
fn freed_device_blocks_are_reused_and_stream_order_keeps_their_old_readers_right() {
    let Some(device) = cuda_or_skip(
        "freed_device_blocks_are_reused_and_stream_order_keeps_their_old_readers_right",
    ) else {
        return;
    };
    let n = 1 << 20;
    // A product reads `a`; `a` is dropped at once and its memory reused, and overwritten, for
    // the next buffer of its size before the GPU has necessarily run the product (by the
    // driver's stream-ordered pool, or by the block cache with KILN_CUDA_BLOCK_CACHE=1).
    let a_values: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let a = device.upload(&a_values).unwrap();
    let address = a.address();
    let b = device.upload(&vec![1.0f32; n]).unwrap();
    let mut c = device.alloc(DType::F32, 1).unwrap();
    let gemm = kiln_runtime::Gemm::new(1, 1, n).transpose_b();
    device.gemm(&gemm, &a, &b, &mut c, None).unwrap();
    drop(a);
    let mut reused = device.alloc_uninit(DType::F32, n).unwrap();
    if std::env::var("KILN_CUDA_BLOCK_CACHE").as_deref() == Ok("1") {
        assert_eq!(
            reused.address(),
            address,
            "the freed block is handed out again"
        );
    }
    reused.fill(-5.0f32).unwrap();
    let want: f64 = a_values.iter().map(|&x| x as f64).sum();
    let got = c.download::<f32>().unwrap()[0] as f64;
    assert!(
        (got - want).abs() <= 1e-3 * want,
        "{got} vs {want}: the reader saw the reuse"
    );
    assert!(reused.download::<f32>().unwrap().iter().all(|&x| x == -5.0));
}
