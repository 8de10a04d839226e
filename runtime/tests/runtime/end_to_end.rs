//! Source to result through the real backends: Cranelift on the CPU, NVPTX on a GPU.

use kiln_compiler::{DType, Source};
use kiln_runtime::{Args, Device, Error, KernelCache, KernelSpec};

use crate::cuda_or_skip;

const SCALE: &str = "
kernel scale<BLOCK: i32 = 256>(x: *f32, y: *mut f32, n: i32, a: f32) {
    let offs = program_id(0) * BLOCK + range(BLOCK);
    let m = offs < n;
    store(y + offs, load(x + offs, mask: m, other: 0.0) * a, mask: m);
}
";

/// Scales 1000 elements by 3 on `device` twice through `cache`, checks the results and that
/// the second launch compiled nothing, and that bad arguments are refused.
fn scale_twice(device: &Device, cache: &KernelCache) {
    let src = Source::new("scale.kiln", SCALE);
    let spec = KernelSpec::new(&src, "scale");
    let n = 1000;
    let x: Vec<f32> = (0..1024).map(|i| i as f32 - 500.0).collect();
    let xb = device.upload(&x).unwrap();
    let mut yb = device.alloc(DType::F32, 1024).unwrap();
    for _ in 0..2 {
        yb.poison().unwrap();
        let args = Args::new()
            .input("x", &xb)
            .output("y", &mut yb)
            .i32("n", n)
            .f32("a", 3.0);
        cache.launch(device, &spec, [4, 1, 1], &args).unwrap();
        drop(args);
        let y = yb.download::<f32>().unwrap();
        let n = n as usize;
        assert!(
            y[..n].iter().zip(&x).all(|(y, x)| *y == x * 3.0),
            "wrong results on {device}"
        );
        assert!(
            y[n..].iter().all(|v| v.is_nan()),
            "masked elements written on {device}"
        );
    }
    assert_eq!(cache.stats().misses, 1);
    let err = cache
        .launch(
            device,
            &spec,
            [4, 1, 1],
            &Args::new()
                .input("x", &xb)
                .output("y", &mut yb)
                .f32("n", 1.0)
                .f32("a", 3.0),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Launch { .. }), "{err:?}");
    assert!(err.to_string().contains("kernel `scale`"), "{err}");
}

#[test]
fn end_to_end_cpu() {
    scale_twice(&Device::cpu(), &KernelCache::in_memory());
}

/// One kernel source, generic over its element type, launched as f32 and as bf16: two
/// specialisations, two cache entries, each reading and writing its own element type.
#[test]
fn a_type_parameter_is_defined_per_launch() {
    const AXPY: &str = "
kernel axpy<T: type = bf16, BLOCK: i32 = 64>(x: *T, y: *mut T, n: i32, a: f32) {
    let offs = program_id(0) * BLOCK + range(BLOCK);
    let m = offs < n;
    let acc = load(x + offs, mask: m, other: 0.0) as f32 * a + load(y + offs, mask: m, other: 0.0) as f32;
    store(y + offs, acc as T, mask: m);
}
";
    let device = Device::cpu();
    let cache = KernelCache::in_memory();
    let src = Source::new("axpy.kiln", AXPY);
    let n = 100usize;
    let x: Vec<f32> = (0..n).map(|i| (i as f32 - 40.0) * 0.37).collect();
    let y: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
    let want: Vec<f64> = x
        .iter()
        .zip(&y)
        .map(|(x, y)| f64::from(*x) * 1.5 + f64::from(*y))
        .collect();

    let spec = KernelSpec::new(&src, "axpy").define("T", DType::F32);
    let xb = device.upload(&x).unwrap();
    let mut yb = device.upload(&y).unwrap();
    let args = Args::new()
        .input("x", &xb)
        .output("y", &mut yb)
        .i32("n", n as i32)
        .f32("a", 1.5);
    cache.launch(&device, &spec, [2, 1, 1], &args).unwrap();
    drop(args);
    let got = yb.download::<f32>().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (f64::from(*g) - w).abs() <= 1e-6 * w.abs(),
            "f32: {g} vs {w}"
        );
    }

    // The default (bf16) refuses f32 buffers, and runs on bf16 ones.
    let spec = KernelSpec::new(&src, "axpy");
    let args = Args::new()
        .input("x", &xb)
        .output("y", &mut yb)
        .i32("n", n as i32)
        .f32("a", 1.5);
    assert!(cache.launch(&device, &spec, [2, 1, 1], &args).is_err());
    drop(args);
    let to_bf16 = |v: &[f32]| {
        v.iter()
            .map(|v| half::bf16::from_f32(*v))
            .collect::<Vec<_>>()
    };
    let (xh, yh) = (to_bf16(&x), to_bf16(&y));
    let xb = device.upload(&xh).unwrap();
    let mut yb = device.upload(&yh).unwrap();
    let args = Args::new()
        .input("x", &xb)
        .output("y", &mut yb)
        .i32("n", n as i32)
        .f32("a", 1.5);
    cache.launch(&device, &spec, [2, 1, 1], &args).unwrap();
    drop(args);
    let got = yb.download::<half::bf16>().unwrap();
    for i in 0..n {
        let w = xh[i].to_f64() * 1.5 + yh[i].to_f64();
        let g = got[i].to_f64();
        assert!((g - w).abs() <= 4e-3 * w.abs(), "bf16: {g} vs {w}");
    }
    assert_eq!(cache.stats().misses, 2);
}

#[test]
fn end_to_end_gpu_and_warm_start_from_disk() {
    let Some(gpu) = cuda_or_skip("end_to_end_gpu_and_warm_start_from_disk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    scale_twice(&gpu, &KernelCache::with_dir(dir.path()));
    let warm = KernelCache::with_dir(dir.path());
    warm_start(&gpu, &warm);
}

/// One launch like [`scale_twice`]'s (same specialisation), expecting the PTX on disk already.
fn warm_start(device: &Device, cache: &KernelCache) {
    let src = Source::new("scale.kiln", SCALE);
    let x = device.upload(&[1.0f32; 1024]).unwrap();
    let mut y = device.alloc(DType::F32, 1024).unwrap();
    let args = Args::new()
        .input("x", &x)
        .output("y", &mut y)
        .i32("n", 1000)
        .f32("a", 3.0);
    cache
        .launch(device, &KernelSpec::new(&src, "scale"), [4, 1, 1], &args)
        .unwrap();
    drop(args);
    let out = y.download::<f32>().unwrap();
    assert!(out[..1000].iter().all(|&v| v == 3.0) && out[1000..].iter().all(|&v| v == 0.0));
    let stats = cache.stats();
    assert_eq!((stats.disk_hits, stats.misses), (1, 0), "{stats:?}");
}

#[test]
fn the_end_to_end_source_checks() {
    let src = Source::new("scale.kiln", SCALE);
    let kernels = kiln_compiler::compile_to_ir(&src, &Default::default()).unwrap();
    let params: Vec<_> = kernels[0].params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(params, ["x", "y", "n", "a"]);
}
