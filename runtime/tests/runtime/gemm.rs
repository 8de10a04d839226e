//! `Device::gemm` against an f64 reference, on the CPU and (where there is one) the GPU.
//!
//! Tolerances: the accumulation error of an f32 dot product of length k is bounded by a few
//! ulps times `sqrt(k)` (typical) of the sum of the absolute products, and a bf16 output adds
//! one rounding, half an ulp (2^-9) of the value; both are taken with a margin.

use half::bf16;
use kiln_compiler::DType;
use kiln_runtime::{Buffer, Device, Error, Gemm};

use crate::{cuda_or_skip, devices};

/// xorshift64*: deterministic inputs, uniform in [-1, 1) (zero has probability 2^-24).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next()).collect()
    }
}

/// Host values rounded to `dtype` (so the reference sees exactly what the device sees).
fn round(dtype: DType, values: &[f32]) -> Vec<f32> {
    match dtype {
        DType::Bf16 => values.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        _ => values.to_vec(),
    }
}

fn upload(device: &Device, dtype: DType, values: &[f32]) -> Buffer {
    match dtype {
        DType::Bf16 => {
            let v: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
            device.upload(&v).unwrap()
        }
        DType::F32 => device.upload(values).unwrap(),
        other => panic!("no {other} test data"),
    }
}

fn download(buffer: &Buffer) -> Vec<f32> {
    match buffer.dtype() {
        DType::Bf16 => buffer
            .download::<bf16>()
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect(),
        _ => buffer.download::<f32>().unwrap(),
    }
}

/// An operand placed at element `offset` of a larger buffer, between padding values.
struct Placed {
    buffer: Buffer,
    offset: usize,
    len: usize,
    /// What the whole buffer held (rounded to its dtype).
    host: Vec<f32>,
}

const PAD: usize = 5;

impl Placed {
    fn new(device: &Device, dtype: DType, offset: usize, values: &[f32], pad: f32) -> Placed {
        let mut host = vec![pad; offset];
        host.extend_from_slice(values);
        host.extend(std::iter::repeat_n(pad, PAD));
        let host = round(dtype, &host);
        Placed {
            buffer: upload(device, dtype, &host),
            offset,
            len: values.len(),
            host,
        }
    }

    fn values(&self) -> &[f32] {
        &self.host[self.offset..self.offset + self.len]
    }

    fn view_mut(&mut self) -> kiln_runtime::BufferViewMut<'_> {
        self.buffer
            .slice_mut(self.offset..self.offset + self.len)
            .expect("in bounds")
    }

    fn view(&self) -> kiln_runtime::BufferView<'_> {
        self.buffer
            .slice(self.offset..self.offset + self.len)
            .unwrap()
    }
}

/// One product to check: element types of A and B, of C, of the bias (if any).
#[derive(Clone, Copy, Debug)]
struct Case {
    spec: Gemm,
    ab: DType,
    c: DType,
    bias: Option<DType>,
}

/// Element offsets of the operands inside their buffers. The GPU's bias must be 16-byte aligned.
fn offsets(device: &Device, bias: Option<DType>) -> [usize; 4] {
    let bias_offset = match (device.is_gpu(), bias) {
        (true, Some(dtype)) => 32 / dtype.size_bytes(),
        _ => 3,
    };
    [3, 5, 7, bias_offset]
}

/// Runs `case` on `device` and compares every element of C with the f64 reference.
fn check(device: &Device, case: Case, rng: &mut Rng) {
    let Case { spec, ab, c, bias } = case;
    let (m, n, k) = (spec.m, spec.n, spec.k);
    let [oa, ob, oc, obias] = offsets(device, bias);
    let a = Placed::new(device, ab, oa, &rng.vec(m * k), 0.5);
    let b = Placed::new(device, ab, ob, &rng.vec(k * n), 0.5);
    // When beta is 0, C must not be read: NaN there would show up in the result.
    let c_old = if spec.beta == 0.0 {
        vec![f32::NAN; m * n]
    } else {
        rng.vec(m * n)
    };
    let mut out = Placed::new(device, c, oc, &c_old, 3.0);
    let bias = bias.map(|dtype| Placed::new(device, dtype, obias, &rng.vec(n), 0.5));

    device
        .gemm(
            &spec,
            a.view(),
            b.view(),
            out.view_mut(),
            bias.as_ref().map(Placed::view),
        )
        .unwrap_or_else(|e| panic!("{case:?} on {device}: {e}"));
    let got = download(&out.buffer);

    let mut pads = got[..oc].iter().chain(&got[oc + m * n..]);
    assert!(
        pads.all(|&v| v == 3.0),
        "{case:?} on {device}: wrote outside C"
    );

    let (av, bv, cv) = (a.values(), b.values(), out.values());
    let eps = f32::EPSILON as f64;
    let accumulate_tol = 8.0 * eps * (1.0 + (k as f64).sqrt());
    let round_tol = if c == DType::Bf16 { 2f64.powi(-8) } else { 0.0 };
    let mut worst = 0.0f64;
    for i in 0..m {
        for j in 0..n {
            let (mut dot, mut abs) = (0.0f64, 0.0f64);
            for p in 0..k {
                let x = av[if spec.trans_a { p * m + i } else { i * k + p }] as f64;
                let y = bv[if spec.trans_b { j * k + p } else { p * n + j }] as f64;
                dot += x * y;
                abs += (x * y).abs();
            }
            let alpha = spec.alpha as f64;
            let mut want = alpha * dot;
            let mut scale = alpha.abs() * abs;
            if spec.beta != 0.0 {
                let old = spec.beta as f64 * cv[i * n + j] as f64;
                want += old;
                scale += old.abs();
            }
            if let Some(bias) = &bias {
                want += bias.values()[j] as f64;
                scale += (bias.values()[j] as f64).abs();
            }
            let value = got[oc + i * n + j] as f64;
            let err = (value - want).abs();
            // A bf16 output may also be rounded once before the epilogue adds beta * C or the
            // bias (cuBLASLt does, seen on the H200): one more rounding of a partial sum.
            let epilogue = spec.beta != 0.0 || bias.is_some();
            let partial_round = if epilogue { round_tol * scale } else { 0.0 };
            let tol = accumulate_tol * scale + round_tol * want.abs() + partial_round;
            assert!(
                err <= tol,
                "{case:?} on {device}: C[{i}, {j}] = {value}, expected {want} (error {err:e} > {tol:e})"
            );
            worst = worst.max(err / tol.max(f64::MIN_POSITIVE));
        }
    }
    assert!(worst.is_finite());
}

/// Every transpose combination, element-type combination and kind of scalars, on odd shapes.
fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    // The last three take the CPU's skinny path (a few rows against Bᵀ): partial column
    // blocks, a k with a tail past the vector width.
    let shapes = [
        (37, 53, 19),
        (1, 1, 1),
        (64, 128, 96),
        (130, 7, 33),
        (1, 200, 67),
        (5, 130, 40),
        (8, 65, 9),
    ];
    for (m, n, k) in shapes {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            for (ab, c) in [
                (DType::F32, DType::F32),
                (DType::Bf16, DType::Bf16),
                (DType::Bf16, DType::F32),
            ] {
                let other = if c == DType::F32 {
                    DType::Bf16
                } else {
                    DType::F32
                };
                let spec = Gemm {
                    trans_a,
                    trans_b,
                    ..Gemm::new(m, n, k)
                };
                for (spec, bias) in [
                    (spec, None),
                    (spec.with_alpha(-0.75).with_beta(1.5), Some(c)),
                    (spec.with_alpha(2.0), Some(other)),
                    (spec.with_beta(1.0), None),
                ] {
                    all.push(Case { spec, ab, c, bias });
                }
            }
        }
    }
    all
}

#[test]
fn gemm_matches_an_f64_reference_on_every_transpose_dtype_and_epilogue() {
    for device in devices("gemm_matches_an_f64_reference_on_every_transpose_dtype_and_epilogue") {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in cases() {
            if device.is_gpu() && case.bias.is_some_and(|b| b != case.c) {
                let err = gpu_bias_of_another_type(&device, case);
                assert!(err.contains("the bias must have C's type"), "{err}");
                continue;
            }
            check(&device, case, &mut rng);
        }
    }
}

/// The error a GPU gives for a bias whose type is not C's, which cuBLASLt cannot run.
fn gpu_bias_of_another_type(device: &Device, case: Case) -> String {
    let spec = case.spec;
    let a = device.alloc(case.ab, spec.m * spec.k).unwrap();
    let b = device.alloc(case.ab, spec.k * spec.n).unwrap();
    let mut c = device.alloc(case.c, spec.m * spec.n).unwrap();
    let bias = device.alloc(case.bias.unwrap(), spec.n).unwrap();
    device
        .gemm(&spec, &a, &b, &mut c, Some(bias.view()))
        .unwrap_err()
        .to_string()
}

#[test]
fn gemm_runs_the_three_products_of_a_linear_layer() {
    // y = x @ Wᵀ, dx = dy @ W, dW += dyᵀ @ x, with x [T, H] and W [O, H].
    let (t, h, o) = (48, 40, 24);
    for device in devices("gemm_runs_the_three_products_of_a_linear_layer") {
        let mut rng = Rng(7);
        let bf = DType::Bf16;
        for (spec, c) in [
            (Gemm::new(t, o, h).transpose_b(), bf),
            (Gemm::new(t, h, o), bf),
            (Gemm::new(o, h, t).transpose_a().with_beta(1.0), DType::F32),
        ] {
            let case = Case {
                spec,
                ab: bf,
                c,
                bias: None,
            };
            check(&device, case, &mut rng);
        }
    }
}

#[test]
fn gemm_on_chunks_of_rows_of_a_weight_matches_the_whole() {
    // Cut cross-entropy's pattern: logits[:, rows] = hidden @ W[rows, :]ᵀ, chunk by chunk.
    let (t, h, v, chunk) = (16, 24, 50, 16);
    for device in devices("gemm_on_chunks_of_rows_of_a_weight_matches_the_whole") {
        let mut rng = Rng(11);
        let hidden = device.upload(&rng.vec(t * h)).unwrap();
        let w = device.upload(&rng.vec(v * h)).unwrap();
        let mut whole = device.alloc(DType::F32, t * v).unwrap();
        let spec = Gemm::new(t, v, h).transpose_b();
        device
            .gemm(&spec, hidden.view(), w.view(), &mut whole, None)
            .unwrap();
        let whole = whole.download::<f32>().unwrap();
        for start in (0..v).step_by(chunk) {
            let rows = chunk.min(v - start);
            let mut part = device.alloc(DType::F32, t * rows).unwrap();
            let w_rows = w.slice(start * h..(start + rows) * h).unwrap();
            let spec = Gemm::new(t, rows, h).transpose_b();
            device
                .gemm(&spec, hidden.view(), w_rows, &mut part, None)
                .unwrap();
            let part = part.download::<f32>().unwrap();
            for i in 0..t {
                for j in 0..rows {
                    let (x, y) = (part[i * rows + j], whole[i * v + start + j]);
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                        "{device} [{i}, {j}]"
                    );
                }
            }
        }
    }
}

fn gemm_error(result: kiln_runtime::Result<()>) -> String {
    match result {
        Err(e @ Error::Gemm { .. }) => e.to_string(),
        other => panic!("expected a gemm error, got {other:?}"),
    }
}

#[test]
fn gemm_refuses_bad_shapes_dtypes_and_overlaps() {
    for device in devices("gemm_refuses_bad_shapes_dtypes_and_overlaps") {
        let f32s = |len| device.alloc(DType::F32, len).unwrap();
        let bf16s = |len| device.alloc(DType::Bf16, len).unwrap();
        let spec = Gemm::new(4, 3, 2);
        let (a, b, mut c) = (f32s(8), f32s(6), f32s(12));
        device
            .gemm(&spec, a.view(), b.view(), &mut c, None)
            .unwrap();

        let err = gemm_error(device.gemm(&spec, b.view(), b.view(), &mut c, None));
        assert!(err.contains("A must have 8 elements ([4, 2])"), "{err}");
        assert!(err.starts_with("gemm m=4 n=3 k=2 (A, B): "), "{err}");
        let err =
            gemm_error(device.gemm(&spec.transpose_b(), a.view(), b.view(), &mut f32s(8), None));
        assert!(err.contains("C must have 12"), "{err}");
        let bias = f32s(4);
        let err = gemm_error(device.gemm(&spec, a.view(), b.view(), &mut c, Some(bias.view())));
        assert!(err.contains("bias must have 3"), "{err}");

        let err = gemm_error(device.gemm(&spec, bf16s(8).view(), b.view(), &mut c, None));
        assert!(
            err.contains("A and B must both be bf16 or both f32"),
            "{err}"
        );
        let err = gemm_error(device.gemm(&spec, a.view(), b.view(), &mut bf16s(12), None));
        assert!(err.contains("C must be"), "{err}");
        let mut ints = device.alloc(DType::I32, 12).unwrap();
        let err = gemm_error(device.gemm(&spec, bf16s(8).view(), bf16s(6).view(), &mut ints, None));
        assert!(err.contains("got i32"), "{err}");

        // C is an exclusive view, so it cannot share elements with an input (the types rule
        // it out: see `Device::gemm`'s compile-fail example); disjoint parts of one buffer are
        // fine.
        let mut packed = f32s(8 + 12);
        let (input, output) = packed.view_mut().split_at(8).unwrap();
        device
            .gemm(&spec, input.into_view(), b.view(), output, None)
            .unwrap();

        let err = gemm_error(device.gemm(
            &Gemm::new(4, 3, 0),
            f32s(0).view(),
            f32s(0).view(),
            &mut c,
            None,
        ));
        assert!(err.contains("k = 0"), "{err}");
        // An empty C is nothing to do.
        device
            .gemm(
                &Gemm::new(0, 3, 2),
                f32s(0).view(),
                b.view(),
                &mut f32s(0),
                None,
            )
            .unwrap();
    }
}

#[test]
fn gemm_refuses_operands_on_another_device_and_a_misaligned_gpu_bias() {
    let Some(gpu) =
        cuda_or_skip("gemm_refuses_operands_on_another_device_and_a_misaligned_gpu_bias")
    else {
        return;
    };
    let cpu = Device::cpu();
    let spec = Gemm::new(4, 3, 2);
    let (a, b, mut c) = (
        gpu.alloc(DType::F32, 8).unwrap(),
        cpu.alloc(DType::F32, 6).unwrap(),
        gpu.alloc(DType::F32, 12).unwrap(),
    );
    let err = gemm_error(gpu.gemm(&spec, a.view(), b.view(), &mut c, None));
    assert!(
        err.contains("B is on cpu, the gemm runs on cuda:0"),
        "{err}"
    );

    let b = gpu.alloc(DType::F32, 6).unwrap();
    let bias = gpu.alloc(DType::F32, 4).unwrap();
    let err = gemm_error(gpu.gemm(
        &spec,
        a.view(),
        b.view(),
        &mut c,
        Some(bias.slice(1..).unwrap()),
    ));
    assert!(err.contains("16-byte aligned"), "{err}");
}

#[test]
fn gemm_at_qwen2_mlp_size_matches_sampled_reference_entries_on_gpu() {
    let Some(gpu) = cuda_or_skip("gemm_at_qwen2_mlp_size_matches_sampled_reference_entries_on_gpu")
    else {
        return;
    };
    // Qwen2-0.5B's MLP down projection over 8192 tokens: y[T, H] = act[T, I] @ W[H, I]ᵀ + bias,
    // then its weight gradient dW[H, I] += dyᵀ @ act in f32.
    let (t, h, i) = (8192, 896, 4864);
    let mut rng = Rng(3);
    let act = round(DType::Bf16, &rng.vec(t * i));
    let w = round(DType::Bf16, &rng.vec(h * i));
    let bias = round(DType::Bf16, &rng.vec(h));
    let (act_b, w_b, bias_b) = (
        upload(&gpu, DType::Bf16, &act),
        upload(&gpu, DType::Bf16, &w),
        upload(&gpu, DType::Bf16, &bias),
    );
    let mut y = gpu.alloc(DType::Bf16, t * h).unwrap();
    let forward = Gemm::new(t, h, i).transpose_b();
    gpu.gemm(
        &forward,
        act_b.view(),
        w_b.view(),
        &mut y,
        Some(bias_b.view()),
    )
    .unwrap();
    let y = download(&y);

    let dy = round(DType::Bf16, &rng.vec(t * h));
    let dw_old = rng.vec(h * i);
    let mut dw = upload(&gpu, DType::F32, &dw_old);
    let backward = Gemm::new(h, i, t).transpose_a().with_beta(1.0);
    gpu.gemm(
        &backward,
        upload(&gpu, DType::Bf16, &dy).view(),
        act_b.view(),
        &mut dw,
        None,
    )
    .unwrap();
    let dw = download(&dw);

    let eps = f32::EPSILON as f64;
    for _ in 0..512 {
        let (r, col) = (
            (rng.next().abs() * t as f32) as usize % t,
            (rng.next().abs() * h as f32) as usize % h,
        );
        let (mut dot, mut abs) = (bias[col] as f64, (bias[col] as f64).abs());
        for p in 0..i {
            let x = act[r * i + p] as f64 * w[col * i + p] as f64;
            dot += x;
            abs += x.abs();
        }
        let tol = 8.0 * eps * (1.0 + (i as f64).sqrt()) * abs + 2f64.powi(-8) * dot.abs();
        let got = y[r * h + col] as f64;
        assert!(
            (got - dot).abs() <= tol,
            "y[{r}, {col}] = {got}, expected {dot}"
        );

        let (row, col) = (r % h, (rng.next().abs() * i as f32) as usize % i);
        let (mut dot, mut abs) = (
            dw_old[row * i + col] as f64,
            (dw_old[row * i + col] as f64).abs(),
        );
        for p in 0..t {
            let x = dy[p * h + row] as f64 * act[p * i + col] as f64;
            dot += x;
            abs += x.abs();
        }
        let tol = 8.0 * eps * (1.0 + (t as f64).sqrt()) * abs;
        let got = dw[row * i + col] as f64;
        assert!(
            (got - dot).abs() <= tol,
            "dW[{row}, {col}] = {got}, expected {dot}"
        );
    }
}

/// On a GPU a class of shapes runs with cuBLASLt's first pick until its candidates have been
/// measured (queued beside the first product, in place when it overwrites C, into scratch when
/// it adds to C), then with the fastest: the products of a training step's skinny shapes (LoRA's
/// rank-wide ones, weight gradients over many tokens) match the reference before and after.
#[test]
fn gemm_matches_the_reference_before_and_after_its_algorithm_is_chosen_by_measurement() {
    let name = "gemm_matches_the_reference_before_and_after_its_algorithm_is_chosen_by_measurement";
    let Some(gpu) = cuda_or_skip(name) else {
        return;
    };
    let mut rng = Rng(17);
    let (bf, f32_) = (DType::Bf16, DType::F32);
    for (spec, c) in [
        (Gemm::new(4096, 32, 896).transpose_b(), bf), // u = x Aᵀ
        (Gemm::new(32, 896, 4096).transpose_a().with_beta(1.0), f32_), // dA += duᵀ x
        (Gemm::new(4096, 896, 32).with_beta(1.0), bf), // dx += du A
        (Gemm::new(1, 128, 4096).with_beta(1.0), f32_), // a bias gradient
    ] {
        // Downloading each result waits for the trials queued with the first product, so the
        // second and third run with the class's measured choice.
        for _ in 0..3 {
            let case = Case {
                spec,
                ab: bf,
                c,
                bias: None,
            };
            check(&gpu, case, &mut rng);
        }
    }
}
