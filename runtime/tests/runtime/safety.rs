//! Memory safety of launches from safe code: out-of-bounds accesses are errors, tiles of any
//! accepted size run, and arenas lend inputs and outputs of one launch at once.

use kiln_compiler::{DType, Source};
use kiln_runtime::{Args, BoundsChecks, Buffer, Device, Error, KernelCache, KernelSpec};

use crate::devices;

/// The README's kernel.
const SCALE: &str = "
kernel scale<BLOCK: i32 = 256>(x: *f32, y: *mut f32, n: i32, alpha: f32) {
    let offs = program_id(0) * BLOCK + range(BLOCK);
    let m = offs < n;
    let v = load(x + offs, mask: m, other: 0.0);
    store(y + offs, v * alpha, mask: m);
}
";

/// The same without masks: every program reads and writes a whole block.
const SCALE_UNMASKED: &str = "
kernel scale(x: *f32, y: *mut f32, alpha: f32) {
    let offs = program_id(0) * 256 + range(256);
    store(y + offs, load(x + offs) * alpha);
}
";

/// A cache for `device` whose GPU kernels are compiled with bounds checks.
fn checked_cache() -> KernelCache {
    KernelCache::in_memory().with_gpu_bounds_checks(true)
}

/// The fields of an out-of-bounds error: program, access, parameter, offset, length.
fn out_of_bounds(result: kiln_runtime::Result<()>) -> ([u32; 3], &'static str, String, i64, u64) {
    match result {
        Err(Error::OutOfBounds {
            kernel,
            program,
            access,
            param,
            offset,
            len,
        }) => {
            assert_eq!(kernel, "scale");
            (program, access, param, offset, len)
        }
        other => panic!("expected an out-of-bounds error, got {other:?}"),
    }
}

#[test]
fn an_output_too_small_for_the_masks_is_an_error() {
    for device in devices("an_output_too_small_for_the_masks_is_an_error") {
        let src = Source::new("scale.kiln", SCALE);
        let x = device.upload(&vec![1.0f32; 1000]).unwrap();
        let mut y = device.upload(&[0.0f32; 10]).unwrap();
        let args = Args::new()
            .input("x", &x)
            .output("y", &mut y)
            .i32("n", 1000)
            .f32("alpha", 3.0);
        let result =
            checked_cache().launch(&device, &KernelSpec::new(&src, "scale"), [4, 1, 1], &args);
        let (program, access, param, offset, len) = out_of_bounds(result);
        assert_eq!((access, param.as_str(), len), ("a store", "y", 10));
        if device.is_gpu() {
            // Every program faults; which one records it first is up to the GPU.
            assert!(program[0] < 4 && program[1..] == [0, 0], "{program:?}");
            let block = i64::from(program[0]) * 256;
            assert!(
                (block.max(10)..block + 256).contains(&offset),
                "{program:?} {offset}"
            );
        } else {
            // The lowest faulting program, at the first element past the end.
            assert_eq!((program, offset), ([0, 0, 0], 10));
        }
        let message = Error::OutOfBounds {
            kernel: "scale".into(),
            program,
            access,
            param,
            offset,
            len,
        }
        .to_string();
        assert_eq!(
            message,
            format!(
                "kernel `scale`, program {program:?}: a store through `y` at element {offset} is \
                 outside its buffer of 10 elements"
            )
        );
        // The programs went on: whole vectors inside the buffer were written (a vector that
        // straddles its end is skipped whole).
        drop(args);
        assert_eq!(y.download::<f32>().unwrap()[..8], [3.0; 8]);
    }
}

#[test]
fn unmasked_accesses_past_the_end_are_errors() {
    for device in devices("unmasked_accesses_past_the_end_are_errors") {
        let src = Source::new("scale.kiln", SCALE_UNMASKED);
        let spec = KernelSpec::new(&src, "scale");
        let x = device.upload(&vec![1.0f32; 1000]).unwrap();
        let mut y = device.upload(&vec![0.0f32; 1000]).unwrap();
        for grid in [4, 4000] {
            let args = Args::new()
                .input("x", &x)
                .output("y", &mut y)
                .f32("alpha", 3.0);
            let result = checked_cache().launch(&device, &spec, [grid, 1, 1], &args);
            let (program, access, param, offset, len) = out_of_bounds(result);
            assert_eq!(param, "x", "the load comes first");
            assert_eq!((access, len), ("a load", 1000));
            // On the CPU the lowest faulting program is reported; on a GPU the first to fault.
            if device.is_gpu() {
                assert!(program[0] >= 3 && offset >= 1000, "{program:?} {offset}");
            } else {
                assert_eq!((program, offset), ([3, 0, 0], 1000));
            }
        }
    }
}

#[test]
fn accesses_before_a_view_are_errors() {
    for device in devices("accesses_before_a_view_are_errors") {
        let src = Source::new(
            "shift.kiln",
            "kernel scale(x: *f32, y: *mut f32) {
                let offs = range(16);
                store(y + offs, load(x + (offs - 1)));
            }",
        );
        // The view starts one element into its buffer: element -1 exists, but not for the kernel.
        let whole = device.upload(&[1.0f32; 17]).unwrap();
        let mut y = device.alloc(DType::F32, 16).unwrap();
        let args = Args::new()
            .input("x", whole.slice(1..).unwrap())
            .output("y", &mut y);
        let result =
            checked_cache().launch(&device, &KernelSpec::new(&src, "scale"), [1, 1, 1], &args);
        let (_, access, param, offset, len) = out_of_bounds(result);
        assert_eq!(
            (access, param.as_str(), offset, len),
            ("a load", "x", -1, 16)
        );
    }
}

#[test]
fn atomics_are_checked_too() {
    for device in devices("atomics_are_checked_too") {
        let src = Source::new(
            "hist.kiln",
            "kernel scale(ids: *i32, counts: *mut i32) {
                let i = load(ids + range(8));
                atomic_add(counts + i, 1);
            }",
        );
        let ids = device.upload(&[0i32, 1, 2, 3, 3, 2, 1, 9]).unwrap();
        let mut counts = device.alloc(DType::I32, 4).unwrap();
        let args = Args::new().input("ids", &ids).output("counts", &mut counts);
        let result =
            checked_cache().launch(&device, &KernelSpec::new(&src, "scale"), [1, 1, 1], &args);
        let (_, access, param, offset, len) = out_of_bounds(result);
        assert_eq!(
            (access, param.as_str(), offset, len),
            ("an atomic add", "counts", 9, 4)
        );
        drop(args);
        assert_eq!(counts.download::<i32>().unwrap(), [1, 2, 2, 2]);
    }
}

#[test]
fn a_tile_of_the_largest_accepted_size_runs_on_the_cpu() {
    // 2^20 elements, each tile 4 MiB: more than a default thread stack holds.
    let src = Source::new(
        "big.kiln",
        "kernel big(x: *f32, y: *mut f32) {
            let o = range(1048576);
            let v = load(x + o);
            let w = v * v;
            store(y + o, w + v + sum(w));
        }",
    );
    let device = Device::cpu();
    let n = 1 << 20;
    let x: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) / 64.0).collect();
    let xb = device.upload(&x).unwrap();
    let mut yb = device.alloc(DType::F32, n).unwrap();
    KernelCache::in_memory()
        .launch(
            &device,
            &KernelSpec::new(&src, "big"),
            [2, 1, 1],
            &Args::new().input("x", &xb).output("y", &mut yb),
        )
        .unwrap();
    let total: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let y = yb.download::<f32>().unwrap();
    for (i, (&y, &v)) in y.iter().zip(&x).enumerate().step_by(4099) {
        let want = f64::from(v * v + v) + total;
        assert!(
            (f64::from(y) - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{i}: {y} vs {want}"
        );
    }
}

#[test]
fn a_program_needing_more_than_the_frame_limit_is_refused() {
    // 300 live tiles of 2^20 f32: 1.2 GiB, past the CPU backend's 1 GiB.
    let mut body = String::new();
    for i in 0..300 {
        body.push_str(&format!("let t{i} = load(x + o + {i});\n"));
    }
    body.push_str("let s0 = t0 * t299;\n");
    for i in 1..300 {
        body.push_str(&format!("let s{i} = s{} + t{i} * t{};\n", i - 1, 299 - i));
    }
    let src = Source::new(
        "huge.kiln",
        format!(
            "kernel huge(x: *f32, y: *mut f32) {{ let o = range(1048576);\n{body}store(y + o, s299); }}"
        ),
    );
    let device = Device::cpu();
    let x = device.alloc(DType::F32, 1 << 21).unwrap();
    let mut y = device.alloc(DType::F32, 1 << 20).unwrap();
    let err = KernelCache::in_memory()
        .launch(
            &device,
            &KernelSpec::new(&src, "huge"),
            [1, 1, 1],
            &Args::new().input("x", &x).output("y", &mut y),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("more than 1024 MiB"), "{err}");
}

/// One elementwise layer `y = x * w` with its backward `dx = dy * w`, `dw += dy * x`.
const LAYER: &str = "
kernel layer_fwd(x: *f32, w: *f32, y: *mut f32, n: i32) {
    let o = program_id(0) * 64 + range(64);
    let m = o < n;
    store(y + o, load(x + o, mask: m) * load(w + o, mask: m), mask: m);
}

kernel layer_bwd(x: *f32, w: *f32, dy: *f32, dx: *mut f32, dw: *mut f32, n: i32) {
    let o = program_id(0) * 64 + range(64);
    let m = o < n;
    let g = load(dy + o, mask: m);
    store(dx + o, g * load(w + o, mask: m), mask: m);
    store(dw + o, load(dw + o, mask: m) + g * load(x + o, mask: m), mask: m);
}
";

/// Parameters, their gradients and the activations of a two-layer chain, each in one arena
/// (`[w1 | w2]`, `[dw1 | dw2]`, `[x | h | y]`, `[dy | dh | dx]`).
struct Arenas {
    params: Buffer,
    grads: Buffer,
    acts: Buffer,
    act_grads: Buffer,
}

#[test]
fn arenas_lend_an_input_and_an_output_of_one_launch_at_once() {
    let n = 100usize;
    let values = |seed: u32| -> Vec<f32> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) % 1999) as f32 / 999.0 - 1.0)
            .collect()
    };
    let (w1, w2, x, dy) = (values(1), values(2), values(3), values(4));
    for device in devices("arenas_lend_an_input_and_an_output_of_one_launch_at_once") {
        let src = Source::new("layer.kiln", LAYER);
        let cache = checked_cache();
        let (fwd, bwd) = (
            KernelSpec::new(&src, "layer_fwd"),
            KernelSpec::new(&src, "layer_bwd"),
        );
        let grid = [n.div_ceil(64) as u32, 1, 1];
        let mut a = Arenas {
            params: device.upload(&[w1.clone(), w2.clone()].concat()).unwrap(),
            grads: device.alloc(DType::F32, 2 * n).unwrap(),
            acts: device
                .upload(&[x.clone(), vec![0.0; 2 * n]].concat())
                .unwrap(),
            act_grads: device
                .upload(&[dy.clone(), vec![0.0; 2 * n]].concat())
                .unwrap(),
        };
        // Two steps, so the weight gradients accumulate.
        for _ in 0..2 {
            let (w1v, w2v) = (a.params.slice(..n).unwrap(), a.params.slice(n..).unwrap());
            // Forward: h = x * w1, then y = h * w2, each reading one slice of the activation
            // arena while writing the next.
            let (x, rest) = a.acts.view_mut().split_at(n).unwrap();
            let (mut h, mut y) = rest.split_at(n).unwrap();
            let args = Args::new()
                .input("x", &x)
                .input("w", w1v)
                .output("y", &mut h)
                .i32("n", n as i32);
            cache.launch(&device, &fwd, grid, &args).unwrap();
            drop(args);
            let args = Args::new()
                .input("x", &h)
                .input("w", w2v)
                .output("y", &mut y)
                .i32("n", n as i32);
            cache.launch(&device, &fwd, grid, &args).unwrap();
            drop(args);

            // Backward, in reverse: dh from dy, then dx from dh.
            let (dy, rest) = a.act_grads.view_mut().split_at(n).unwrap();
            let (mut dh, mut dx) = rest.split_at(n).unwrap();
            let (mut dw1, mut dw2) = a.grads.view_mut().split_at(n).unwrap();
            let args = Args::new()
                .input("x", &h)
                .input("w", w2v)
                .input("dy", &dy)
                .output("dx", &mut dh)
                .in_out("dw", &mut dw2)
                .i32("n", n as i32);
            cache.launch(&device, &bwd, grid, &args).unwrap();
            drop(args);
            let args = Args::new()
                .input("x", &x)
                .input("w", w1v)
                .input("dy", &dh)
                .output("dx", &mut dx)
                .in_out("dw", &mut dw1)
                .i32("n", n as i32);
            cache.launch(&device, &bwd, grid, &args).unwrap();
        }
        let acts = a.acts.download::<f32>().unwrap();
        let act_grads = a.act_grads.download::<f32>().unwrap();
        let grads = a.grads.download::<f32>().unwrap();
        for i in 0..n {
            let h = x[i] * w1[i];
            let dh = dy[i] * w2[i];
            assert_eq!(acts[n + i], h, "h[{i}] on {device}");
            assert_eq!(acts[2 * n + i], h * w2[i], "y[{i}] on {device}");
            assert_eq!(act_grads[n + i], dh, "dh[{i}] on {device}");
            assert_eq!(act_grads[2 * n + i], dh * w1[i], "dx[{i}] on {device}");
            assert_eq!(grads[i], 2.0 * (dh * x[i]), "dw1[{i}] on {device}");
            assert_eq!(grads[n + i], 2.0 * (dy[i] * h), "dw2[{i}] on {device}");
        }
    }
}

#[test]
fn arguments_bind_by_name_not_position() {
    // Two outputs of the same type and length: naming them is what tells them apart.
    let src = Source::new(
        "pair.kiln",
        "kernel pair(x: *f32, dk: *mut f32, dv: *mut f32) {
            let o = range(16);
            let v = load(x + o);
            store(dk + o, v * 2.0);
            store(dv + o, v * 3.0);
        }",
    );
    let spec = KernelSpec::new(&src, "pair");
    for device in devices("arguments_bind_by_name_not_position") {
        let cache = checked_cache();
        let x = device.upload(&[1.0f32; 16]).unwrap();
        let (mut dk, mut dv) = (
            device.alloc(DType::F32, 16).unwrap(),
            device.alloc(DType::F32, 16).unwrap(),
        );
        // Listed in another order than the signature's: still bound by name.
        let args = Args::new()
            .output("dv", &mut dv)
            .output("dk", &mut dk)
            .input("x", &x);
        cache.launch(&device, &spec, [1, 1, 1], &args).unwrap();
        drop(args);
        assert_eq!(dk.download::<f32>().unwrap(), vec![2.0; 16]);
        assert_eq!(dv.download::<f32>().unwrap(), vec![3.0; 16]);
        // Names that do not match the signature are refused, with its parameters listed.
        let args = Args::new()
            .output("k", &mut dk)
            .output("v", &mut dv)
            .input("x", &x);
        let err = cache.launch(&device, &spec, [1, 1, 1], &args).unwrap_err();
        assert!(
            err.to_string().contains(
                "no parameter named `k`; the parameters are `x: *f32`, `dk: *mut f32`, `dv: *mut f32`"
            ),
            "{err}"
        );
    }
}

#[test]
fn kernels_refuse_arguments_that_break_their_specialisation() {
    let Some(gpu) = crate::cuda_or_skip("kernels_refuse_arguments_that_break_their_specialisation")
    else {
        return;
    };
    let src = Source::new("scale.kiln", SCALE);
    let spec = KernelSpec::new(&src, "scale");
    let cache = KernelCache::in_memory();
    let aligned = kiln_runtime::Specialization {
        divisible_by_16: 0b111,
    };
    let kernel = cache.kernel(&gpu, &spec, &aligned).unwrap();
    let x = gpu.upload(&vec![1.0f32; 1024]).unwrap();
    let mut y = gpu.alloc(DType::F32, 1024).unwrap();
    let args = Args::new()
        .input("x", x.slice(1..).unwrap())
        .output("y", &mut y)
        .i32("n", 1000)
        .f32("alpha", 1.0);
    let err = kernel.launch([4, 1, 1], &args).unwrap_err();
    assert!(err.to_string().contains("specialised as 0x7"), "{err}");
}

#[test]
fn unchecked_cpu_kernels_run_only_through_the_unsafe_launch() {
    let src = Source::new("scale.kiln", SCALE);
    let device = Device::cpu();
    let cache = KernelCache::in_memory();
    let spec = KernelSpec::new(&src, "scale").with_bounds_checks(BoundsChecks::Off);
    let kernel = cache.kernel(&device, &spec, &Default::default()).unwrap();
    assert!(!kernel.is_checked());
    // A different entry from the checked kernel of the same source.
    let checked = cache
        .kernel(
            &device,
            &KernelSpec::new(&src, "scale"),
            &Default::default(),
        )
        .unwrap();
    assert!(checked.is_checked());
    let x = device.upload(&vec![1.0f32; 1000]).unwrap();
    let mut y = device.alloc(DType::F32, 1000).unwrap();
    let args = Args::new()
        .input("x", &x)
        .output("y", &mut y)
        .i32("n", 1000)
        .f32("alpha", 3.0);
    let err = kernel.launch([4, 1, 1], &args).unwrap_err();
    assert!(err.to_string().contains("launch_unchecked"), "{err}");
    // SAFETY: the masks keep every access below n = 1000, the length of both buffers.
    unsafe { kernel.launch_unchecked([4, 1, 1], &args) }.unwrap();
    drop(args);
    assert_eq!(y.download::<f32>().unwrap(), vec![3.0; 1000]);
}
