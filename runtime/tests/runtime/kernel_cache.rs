//! The cache's layers, driven with a fake compiler (the backends are not needed).

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_compiler::ir::{Param, ParamKind};
use kiln_compiler::{DType, Source};
use kiln_runtime::cache::Lookup;
use kiln_runtime::{
    CacheKey, CacheStats, Device, Error, KernelCache, KernelSpec, PtxArtifact, Specialization,
};

fn artifact(tag: &str) -> PtxArtifact {
    PtxArtifact {
        kernel: "scale".into(),
        params: vec![
            Param {
                name: "x".into(),
                kind: ParamKind::Ptr {
                    pointee: DType::Bf16,
                    mutable: false,
                },
            },
            Param {
                name: "y".into(),
                kind: ParamKind::Ptr {
                    pointee: DType::F32,
                    mutable: true,
                },
            },
            Param {
                name: "n".into(),
                kind: ParamKind::Scalar(DType::I32),
            },
        ],
        ptx: format!("// fake PTX {tag}\n.version 8.0\n"),
        entry: "scale".into(),
        threads_per_block: 128,
        shared_bytes: 4096,
        divisible_by_16: 0,
        bounds_checks: false,
        cubin: format!("cubin {tag}").into_bytes(),
    }
}

/// A compile function that counts its calls.
struct FakeCompiler(AtomicUsize);

impl FakeCompiler {
    fn new() -> FakeCompiler {
        FakeCompiler(AtomicUsize::new(0))
    }

    fn compile(&self, tag: &str) -> kiln_runtime::Result<PtxArtifact> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(artifact(tag))
    }

    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn stats(memory_hits: u64, disk_hits: u64, misses: u64, corrupt_entries: u64) -> CacheStats {
    CacheStats {
        memory_hits,
        disk_hits,
        misses,
        corrupt_entries,
        disk_errors: 0,
    }
}

#[test]
fn artifacts_round_trip_through_bytes() {
    let a = artifact("x");
    assert_eq!(PtxArtifact::decode(&a.encode()), Some(a.clone()));
    let bytes = a.encode();
    for len in 0..bytes.len() {
        assert_eq!(PtxArtifact::decode(&bytes[..len]), None, "cut at {len}");
    }
}

#[test]
fn miss_then_memory_hit_then_disk_hit_in_a_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::from_text("kernel one");
    let fake = FakeCompiler::new();

    let cache = KernelCache::with_dir(dir.path());
    let first = cache.ptx_artifact(&key, || fake.compile("v1")).unwrap();
    assert_eq!(cache.stats(), stats(0, 0, 1, 0));
    let again = cache.ptx_artifact(&key, || fake.compile("v2")).unwrap();
    assert_eq!(again, first);
    assert_eq!(cache.stats(), stats(1, 0, 1, 0));

    // A fresh cache on the same directory, as after a restart: read from disk, nothing compiled.
    let warm = KernelCache::with_dir(dir.path());
    let from_disk = warm.ptx_artifact(&key, || fake.compile("v3")).unwrap();
    assert_eq!(*from_disk, artifact("v1"));
    assert_eq!(warm.stats(), stats(0, 1, 0, 0));
    assert_eq!(fake.calls(), 1);

    // Another key is another entry.
    warm.ptx_artifact(&CacheKey::from_text("kernel two"), || fake.compile("w"))
        .unwrap();
    assert_eq!(warm.stats(), stats(0, 1, 1, 0));
    assert_eq!(fake.calls(), 2);
}

/// Damages the entry for `key`, then checks that a fresh cache rejects it, recompiles and
/// leaves a valid entry in its place.
fn check_rebuilt(damage: impl Fn(&std::path::Path)) {
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::from_text("fragile");
    let fake = FakeCompiler::new();
    KernelCache::with_dir(dir.path())
        .ptx_artifact(&key, || fake.compile("good"))
        .unwrap();
    let cache = KernelCache::with_dir(dir.path());
    let path = cache.disk().unwrap().path_of(&key);
    damage(&path);

    let got = cache
        .ptx_artifact(&key, || fake.compile("rebuilt"))
        .unwrap();
    assert_eq!(*got, artifact("rebuilt"));
    assert_eq!(cache.stats(), stats(0, 0, 1, 1));
    assert_eq!(fake.calls(), 2);
    let on_disk = cache.disk().unwrap().load(&key).unwrap();
    assert_eq!(
        on_disk,
        Lookup::Hit(artifact("rebuilt").encode()),
        "the bad entry was not overwritten"
    );
}

#[test]
fn a_truncated_entry_is_rebuilt() {
    check_rebuilt(|path| {
        let bytes = fs::read(path).unwrap();
        fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    });
}

#[test]
fn a_corrupt_entry_is_rebuilt() {
    check_rebuilt(|path| {
        let mut bytes = fs::read(path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(path, bytes).unwrap();
    });
}

#[test]
fn an_empty_or_foreign_file_is_rebuilt() {
    check_rebuilt(|path| fs::write(path, b"").unwrap());
    check_rebuilt(|path| fs::write(path, b"#!/bin/sh\necho not a cache entry\n").unwrap());
}

#[test]
fn an_intact_entry_with_an_undecodable_payload_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::with_dir(dir.path());
    let key = CacheKey::from_text("odd payload");
    cache
        .disk()
        .unwrap()
        .store(&key, b"not an artifact")
        .unwrap();
    let fake = FakeCompiler::new();
    cache.ptx_artifact(&key, || fake.compile("x")).unwrap();
    assert_eq!(cache.stats(), stats(0, 0, 1, 1));
}

#[test]
fn compile_errors_are_returned_and_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::with_dir(dir.path());
    let key = CacheKey::from_text("broken");
    let err = cache
        .ptx_artifact(&key, || Err(Error::Unsupported("fake failure".into())))
        .unwrap_err();
    assert_eq!(err.to_string(), "unsupported: fake failure");
    assert_eq!(cache.disk().unwrap().load(&key).unwrap(), Lookup::Missing);
    let fake = FakeCompiler::new();
    cache.ptx_artifact(&key, || fake.compile("fixed")).unwrap();
    assert_eq!(fake.calls(), 1);
}

#[test]
fn an_unwritable_directory_degrades_to_memory() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    fs::write(&not_a_dir, b"").unwrap();
    let cache = KernelCache::with_dir(&not_a_dir);
    let fake = FakeCompiler::new();
    let key = CacheKey::from_text("k");
    cache.ptx_artifact(&key, || fake.compile("a")).unwrap();
    cache.ptx_artifact(&key, || fake.compile("b")).unwrap();
    let s = cache.stats();
    assert_eq!((s.misses, s.memory_hits), (1, 1));
    assert!(s.disk_errors >= 1, "{s:?}");
}

#[test]
fn threads_racing_on_one_key_agree_and_leave_a_valid_entry() {
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::from_text("raced");
    let fake = FakeCompiler::new();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                // Separate caches, so every thread may compile and write the same entry.
                let cache = KernelCache::with_dir(dir.path());
                let got = cache.ptx_artifact(&key, || fake.compile("same")).unwrap();
                assert_eq!(*got, artifact("same"));
                assert_eq!(cache.stats().corrupt_entries, 0);
            });
        }
    });
    let disk = kiln_runtime::DiskCache::new(dir.path());
    assert_eq!(
        disk.load(&key).unwrap(),
        Lookup::Hit(artifact("same").encode())
    );
}

#[test]
fn in_memory_cache_has_no_disk() {
    let cache = KernelCache::in_memory();
    assert!(cache.disk().is_none());
    let fake = FakeCompiler::new();
    let key = CacheKey::from_text("m");
    cache.ptx_artifact(&key, || fake.compile("a")).unwrap();
    cache.ptx_artifact(&key, || fake.compile("a")).unwrap();
    assert_eq!(cache.stats(), stats(1, 0, 1, 0));
}

#[test]
fn default_dir_honours_kiln_cache_dir() {
    // The only test that touches this variable.
    std::env::set_var("KILN_CACHE_DIR", "/tmp/kiln-cache-test-dir");
    assert_eq!(
        KernelCache::default_dir().unwrap(),
        std::path::Path::new("/tmp/kiln-cache-test-dir")
    );
    std::env::set_var("KILN_CACHE_DIR", "");
    let fallback = KernelCache::default_dir();
    std::env::remove_var("KILN_CACHE_DIR");
    if let Some(dir) = fallback {
        assert!(dir.ends_with("kiln"), "{}", dir.display());
    }
}

const SOURCE: &str = "
kernel copy<BLOCK: i32 = 256>(x: *f32, y: *mut f32, n: i32) {
    let offs = program_id(0) * BLOCK + range(BLOCK);
    let m = offs < n;
    store(y + offs, load(x + offs, mask: m, other: 0.0), mask: m);
}
";

#[test]
fn source_errors_and_unknown_kernels_are_reported() {
    let cache = KernelCache::in_memory();
    let cpu = Device::cpu();
    let broken = Source::new("broken.kiln", "kernel oops(");
    let err = cache
        .kernel(
            &cpu,
            &KernelSpec::new(&broken, "oops"),
            &Specialization::NONE,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Compile(_)), "{err:?}");
    assert!(err.to_string().contains("broken.kiln:1:"), "{err}");

    let src = Source::new("copy.kiln", SOURCE);
    let err = cache
        .kernel(&cpu, &KernelSpec::new(&src, "paste"), &Specialization::NONE)
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::KernelNotFound { .. }), "{err:?}");
    assert!(
        message.contains("`paste`") && message.contains("`copy`"),
        "{message}"
    );
}
