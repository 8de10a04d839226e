use std::fs;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_runtime::cache::Lookup;
use kiln_runtime::{CacheKey, DiskCache};

/// A payload recognisable as writer `id`'s: every byte equals `id`, long enough that writes
/// take a while.
fn payload(id: u8) -> Vec<u8> {
    vec![id; 256 * 1024 + id as usize]
}

/// Panics unless `lookup` is nothing or one writer's complete payload.
fn assert_whole(lookup: &Lookup) {
    match lookup {
        Lookup::Missing => {}
        Lookup::Hit(bytes) => {
            let id = bytes.first().copied().unwrap_or(0);
            assert!(
                *bytes == payload(id),
                "a mixed or partial payload was returned"
            );
        }
        Lookup::Corrupt(why) => panic!("a reader saw a corrupt entry: {why}"),
    }
}

#[test]
fn stores_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskCache::new(dir.path().join("nested/cache"));
    let key = CacheKey::from_text("k1");
    assert_eq!(disk.load(&key).unwrap(), Lookup::Missing);
    disk.store(&key, b"hello").unwrap();
    assert_eq!(disk.load(&key).unwrap(), Lookup::Hit(b"hello".to_vec()));
    disk.store(&key, b"").unwrap();
    assert_eq!(disk.load(&key).unwrap(), Lookup::Hit(vec![]));
    assert_eq!(
        disk.load(&CacheKey::from_text("k2")).unwrap(),
        Lookup::Missing
    );
    // Only the entry is left: no temporary files.
    let names: Vec<_> = fs::read_dir(disk.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [disk.path_of(&key).file_name().unwrap().to_owned()]);
}

#[test]
fn every_truncation_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskCache::new(dir.path());
    let key = CacheKey::from_text("truncate me");
    disk.store(&key, b"some payload bytes").unwrap();
    let path = disk.path_of(&key);
    let whole = fs::read(&path).unwrap();
    for len in 0..whole.len() {
        fs::write(&path, &whole[..len]).unwrap();
        assert!(
            matches!(disk.load(&key).unwrap(), Lookup::Corrupt(_)),
            "cut at {len} not detected"
        );
    }
    let mut padded = whole.clone();
    padded.push(0);
    fs::write(&path, &padded).unwrap();
    assert!(matches!(disk.load(&key).unwrap(), Lookup::Corrupt(_)));
}

#[test]
fn every_flipped_byte_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskCache::new(dir.path());
    let key = CacheKey::from_text("flip me");
    disk.store(&key, b"payload").unwrap();
    let path = disk.path_of(&key);
    let whole = fs::read(&path).unwrap();
    for i in 0..whole.len() {
        let mut bad = whole.clone();
        bad[i] ^= 0x20;
        fs::write(&path, &bad).unwrap();
        assert!(
            matches!(disk.load(&key).unwrap(), Lookup::Corrupt(_)),
            "flip at {i} not detected"
        );
    }
}

#[test]
fn an_entry_for_another_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskCache::new(dir.path());
    let (a, b) = (CacheKey::from_text("a"), CacheKey::from_text("b"));
    disk.store(&a, b"for a").unwrap();
    fs::copy(disk.path_of(&a), disk.path_of(&b)).unwrap();
    match disk.load(&b).unwrap() {
        Lookup::Corrupt(why) => assert!(why.contains("another key"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn concurrent_writers_and_readers_in_threads_never_see_a_partial_entry() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskCache::new(dir.path());
    let key = CacheKey::from_text("contended");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut reads = 0;
                    while !done.load(Ordering::Relaxed) {
                        assert_whole(&disk.load(&key).unwrap());
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let writers: Vec<_> = (1..=6u8)
            .map(|id| {
                let (disk, key) = (&disk, &key);
                s.spawn(move || {
                    for _ in 0..10 {
                        disk.store(key, &payload(id)).unwrap();
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        done.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    });
    let last = disk.load(&key).unwrap();
    assert!(matches!(last, Lookup::Hit(_)));
    assert_whole(&last);
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temporary files left behind"
    );
}

const CHILD_DIR: &str = "KILN_TEST_DISK_CHILD_DIR";
const CHILD_ID: &str = "KILN_TEST_DISK_CHILD_ID";

/// Not a test on its own: run by `concurrent_writer_processes_never_leave_a_partial_entry` in
/// child processes of this test binary.
#[test]
#[ignore = "helper process of concurrent_writer_processes_never_leave_a_partial_entry"]
fn disk_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        println!("skipped: a helper process, run by concurrent_writer_processes_never_leave_a_partial_entry");
        return;
    };
    let id: u8 = std::env::var(CHILD_ID).unwrap().parse().unwrap();
    let disk = DiskCache::new(dir);
    let key = CacheKey::from_text("contended across processes");
    for _ in 0..20 {
        disk.store(&key, &payload(id)).unwrap();
        assert_whole(&disk.load(&key).unwrap());
    }
}

#[test]
fn concurrent_writer_processes_never_leave_a_partial_entry() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (1..=3u8)
        .map(|id| {
            Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "disk::disk_child_writer",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR, dir.path())
                .env(CHILD_ID, id.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let disk = DiskCache::new(dir.path());
    let key = CacheKey::from_text("contended across processes");
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The child really ran the helper (a filter matching nothing would also succeed).
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
    let last = disk.load(&key).unwrap();
    assert!(matches!(last, Lookup::Hit(_)));
    assert_whole(&last);
}
