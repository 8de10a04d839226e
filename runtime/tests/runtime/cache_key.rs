use std::collections::HashSet;

use kiln_compiler::{ConstValue, DType, Defines, Source};
use kiln_runtime::cache::Backend;
use kiln_runtime::{Args, BoundsChecks, CacheKey, Device, KernelCache, KernelSpec, Specialization};

fn defines(pairs: &[(&str, ConstValue)]) -> Defines {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn key_changes_with_every_input() {
    let src = Source::new("a.kiln", "kernel k() {}");
    let src2 = Source::new("a.kiln", "kernel k() { }");
    let d0 = defines(&[]);
    let d1 = defines(&[("BLOCK", ConstValue::Int(128))]);
    let d2 = defines(&[("BLOCK", ConstValue::Int(256))]);
    let d3 = defines(&[("BLOCK", ConstValue::Float(128.0))]);
    let d4 = defines(&[
        ("BLOCK", ConstValue::Int(128)),
        ("EPS", ConstValue::Float(1e-6)),
    ]);
    let d5 = defines(&[
        ("BLOCK", ConstValue::Int(128)),
        ("EPS", ConstValue::Float(1e-5)),
    ]);
    let d6 = defines(&[("BLOCK", ConstValue::Bool(true))]);
    let d7 = defines(&[("BLOCKS", ConstValue::Int(128))]);
    let none = Specialization::NONE;
    let aligned = Specialization {
        divisible_by_16: 0b101,
    };
    let base = KernelSpec::new(&src, "k");
    let keys = [
        CacheKey::new(&base, Backend::Nvptx, "sm_90", &none),
        CacheKey::new(&KernelSpec::new(&src2, "k"), Backend::Nvptx, "sm_90", &none),
        CacheKey::new(&KernelSpec::new(&src, "k2"), Backend::Nvptx, "sm_90", &none),
        CacheKey::new(
            &base.clone().with_defines(&d1),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().with_defines(&d2),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().with_defines(&d3),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().with_defines(&d4),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().with_defines(&d5),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().with_defines(&d6),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().with_defines(&d7),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(&base, Backend::Cranelift, "sm_90", &none),
        CacheKey::new(&base, Backend::Nvptx, "sm_80", &none),
        CacheKey::new(&base, Backend::Nvptx, "sm_90", &aligned),
        CacheKey::new(
            &base.clone().with_num_warps(8),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().with_num_stages(3),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().with_bounds_checks(BoundsChecks::On),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().with_bounds_checks(BoundsChecks::Off),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().define("BLOCK", 64),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        // Type parameters: each element type, and a type against a number of the same name.
        CacheKey::new(
            &base.clone().define("T", DType::F32),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().define("T", DType::Bf16),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
        CacheKey::new(
            &base.clone().define("BLOCK", DType::I32),
            Backend::Nvptx,
            "sm_90",
            &none,
        ),
    ];
    let digests: HashSet<_> = keys.iter().map(|k| *k.digest()).collect();
    assert_eq!(
        digests.len(),
        keys.len(),
        "two different inputs share a key"
    );
    // Same inputs, same key; defines are compared as a set, not by insertion order.
    assert_eq!(
        CacheKey::new(
            &base.clone().with_defines(&d0),
            Backend::Nvptx,
            "sm_90",
            &none
        ),
        keys[0]
    );
    let reordered: Defines = d4.iter().rev().map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(
        CacheKey::new(
            &base.clone().with_defines(&reordered),
            Backend::Nvptx,
            "sm_90",
            &none
        ),
        keys[6]
    );
    // The file name only shows in error messages.
    let renamed = Source::new("b.kiln", src.text.clone());
    assert_eq!(
        CacheKey::new(
            &KernelSpec::new(&renamed, "k"),
            Backend::Nvptx,
            "sm_90",
            &none
        ),
        keys[0]
    );
}

#[test]
fn key_text_is_readable_and_digest_is_its_sha256() {
    let src = Source::new("a.kiln", "kernel k() {}");
    let d = defines(&[("BLOCK", ConstValue::Int(64))]);
    let key = CacheKey::new(
        &KernelSpec::new(&src, "k").with_defines(&d),
        Backend::Nvptx,
        "sm_90",
        &Specialization::NONE,
    );
    assert!(key.text().contains("kernel \"k\"\n"), "{}", key.text());
    assert!(
        key.text().contains("define \"BLOCK\" int 64\n"),
        "{}",
        key.text()
    );
    assert!(key.text().contains("target \"sm_90\"\n"), "{}", key.text());
    assert_eq!(key.hex().len(), 64);
    assert_eq!(CacheKey::from_text(key.text()), key);
    // SHA-256 of "abc", a published test vector.
    assert_eq!(
        CacheKey::from_text("abc").hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn specialization_follows_the_actual_arguments() {
    let device = Device::cpu();
    let x = device.upload(&[1.0f32; 8]).unwrap();
    let src = Source::new(
        "s.kiln",
        "kernel s(x: *f32, a: i32, b: i32, c: f32, d: i64) {}",
    );
    let params = KernelCache::in_memory()
        .params(&KernelSpec::new(&src, "s"))
        .unwrap();
    // By name, whatever the order of the arguments.
    let args = Args::new()
        .i64("d", -48)
        .f32("c", 16.0)
        .i32("b", 33)
        .i32("a", 32)
        .input("x", &x);
    let spec = Specialization::for_args(&args, &params);
    assert_eq!(spec.divisible_by_16, 0b10011);
    // A view one element in is no longer 16-byte aligned.
    let args = Args::new().input("x", x.slice(1..).unwrap());
    assert_eq!(args.specialization(&params).divisible_by_16, 0);
}

#[test]
fn cpu_keys_ignore_what_cranelift_ignores() {
    let cache = KernelCache::in_memory();
    let cpu = Device::cpu();
    let src = Source::new("a.kiln", "kernel k() {}");
    let spec = KernelSpec::new(&src, "k");
    let a = cache.key(&cpu, &spec, &Specialization::NONE).unwrap();
    let b = cache
        .key(
            &cpu,
            &spec.with_num_warps(8).with_num_stages(3),
            &Specialization { divisible_by_16: 1 },
        )
        .unwrap();
    assert_eq!(a, b);
    assert!(a.text().contains("backend cranelift"), "{}", a.text());
}

#[test]
fn the_cache_key_matches_the_plain_key_and_follows_edited_sources() {
    let cache = KernelCache::in_memory();
    let cpu = Device::cpu();
    let mut src = Source::new("a.kiln", "kernel k() {}");
    let plain = |src: &Source| {
        let spec = KernelSpec::new(src, "k").with_num_warps(0);
        CacheKey::new(
            &spec,
            Backend::Cranelift,
            std::env::consts::ARCH,
            &Specialization::NONE,
        )
    };
    let first = cache
        .key(&cpu, &KernelSpec::new(&src, "k"), &Specialization::NONE)
        .unwrap();
    assert_eq!(first, plain(&src));
    // Same allocation, same length, new contents: the remembered source digest must not be reused.
    let address = src.text.as_ptr();
    src.text.replace_range(0..6, "KERNEL");
    assert_eq!(src.text.as_ptr(), address);
    let edited = cache
        .key(&cpu, &KernelSpec::new(&src, "k"), &Specialization::NONE)
        .unwrap();
    assert_ne!(edited, first);
    assert_eq!(edited, plain(&src));
}
