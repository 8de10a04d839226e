//! Where a run's time goes: time and call counts per kernel and per GEMM shape.
//!
//! Off unless `KILN_PROFILE` is set (checked once); then every kernel launch and GEMM adds its
//! time under its name (`gemm MxNxK`, with `ᵀ` marking a transposed operand). CPU launches are
//! synchronous, so their wall time is exact. A GPU launch returns before the work runs, so it is
//! bracketed by two CUDA events on the device's stream and resolved (device time) when the table
//! is read: the sum is the device's busy time, and the launch gaps between kernels are what the
//! step's wall time adds to it. Named stretches of host code ([`section`], [`stretch`]) add the
//! host's time to queue them and, on a GPU, the device's wall time over them beside the busy
//! time of the operations queued inside, so idle time is found where it lies. [`report`] formats
//! the tables, largest total first.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Whether profiling is on (`KILN_PROFILE` set to anything but `0` or empty).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

type Table = Mutex<HashMap<String, (u64, Duration)>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// The host's time to queue GPU work, by name: a step whose queueing takes longer than the
/// device's work leaves the device idle.
fn host_table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

fn add(table: &Table, name: String, spent: Duration) {
    let mut t = table.lock().unwrap_or_else(PoisonError::into_inner);
    let e = t.entry(name).or_default();
    e.0 += 1;
    e.1 += spent;
}

/// A stretch of host code timed into the host's table until it is dropped (when profiling is
/// on): assign the next section to the same variable to end this one. On a GPU it is also
/// bracketed by two events, so the report sets the device's wall time over the stretch beside
/// the time its operations kept the device busy: the difference is the device's idle time there.
pub struct HostSection {
    name: &'static str,
    start: Option<Instant>,
    id: u64,
    #[cfg(feature = "cuda")]
    gpu_start: Option<cudarc::driver::CudaEvent>,
}

thread_local! {
    /// The sections open on this thread (ids and names), which every GPU operation queued
    /// meanwhile is counted in.
    static OPEN: std::cell::RefCell<Vec<(u64, &'static str)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Starts timing the host code from here to the returned section's drop under `name`.
pub fn section(name: &'static str) -> HostSection {
    if !enabled() {
        return HostSection {
            name,
            start: None,
            id: 0,
            #[cfg(feature = "cuda")]
            gpu_start: None,
        };
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    OPEN.with(|open| open.borrow_mut().push((id, name)));
    HostSection {
        name,
        start: Some(Instant::now()),
        id,
        #[cfg(feature = "cuda")]
        gpu_start: gpu::record(),
    }
}

impl Drop for HostSection {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            add(host_table(), self.name.to_string(), start.elapsed());
            // (A section replaced by the next one ends after that one began: remove by id.)
            OPEN.with(|open| open.borrow_mut().retain(|&(id, _)| id != self.id));
            #[cfg(feature = "cuda")]
            if let (Some(start), Some(end)) = (self.gpu_start.take(), gpu::record()) {
                gpu::pending()
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(gpu::Pending {
                        name: self.name.to_string(),
                        start,
                        end,
                        kind: gpu::Kind::Stretch,
                    });
            }
        }
    }
}

/// Runs `f` as a [`section`] named `name`.
pub fn stretch<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let _section = section(name);
    f()
}

/// Runs `f`, host work that queues device work (an allocation, finding a kernel), and when
/// profiling is on adds its wall time to the host's table under `name()`.
pub fn timed_host<T>(name: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    time_into(host_table(), name, f)
}

/// Runs `f`, and when profiling is on adds its wall time under the name `name()` returns.
pub(crate) fn timed<T>(name: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    time_into(table(), name, f)
}

/// Runs `f`, and when profiling is on adds its wall time to `table` under `name()`.
fn time_into<T>(table: &Table, name: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    add(table, name(), start.elapsed());
    out
}

/// Events on the device's stream: per operation, and per stretch of the step.
#[cfg(feature = "cuda")]
mod gpu {
    use std::sync::{Arc, Mutex, OnceLock};

    use cudarc::driver::{CudaEvent, CudaStream};

    pub(super) enum Kind {
        /// One kernel, GEMM or memset, counted in these open sections.
        Op(Vec<&'static str>),
        /// A whole section, from its first operation's queueing to its end.
        Stretch,
    }

    /// Two events around GPU work, resolved when the table is read.
    pub(super) struct Pending {
        pub(super) name: String,
        pub(super) start: CudaEvent,
        pub(super) end: CudaEvent,
        pub(super) kind: Kind,
    }

    pub(super) fn pending() -> &'static Mutex<Vec<Pending>> {
        static PENDING: OnceLock<Mutex<Vec<Pending>>> = OnceLock::new();
        PENDING.get_or_init(Default::default)
    }

    /// The stream sections are timed on: the first GPU's (the runtime queues everything there).
    pub(super) fn stream() -> &'static OnceLock<Arc<CudaStream>> {
        static STREAM: OnceLock<Arc<CudaStream>> = OnceLock::new();
        &STREAM
    }

    /// An event recorded on the sections' stream now, if there is a GPU.
    pub(super) fn record() -> Option<CudaEvent> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        stream().get()?.record_event(flags).ok()
    }
}

/// Sets the stream the sections are timed on (the first GPU opened).
#[cfg(feature = "cuda")]
pub(crate) fn watch_stream(stream: &std::sync::Arc<cudarc::driver::CudaStream>) {
    let _ = gpu::stream().set(stream.clone());
}

/// Queues `f` (GPU work on `stream`) between two events when profiling is on; its device time
/// is added under `name()` when the table is read. An event that cannot be recorded only loses
/// that entry: profiling never fails a launch.
#[cfg(feature = "cuda")]
pub(crate) fn timed_gpu<T>(
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    name: impl FnOnce() -> String,
    f: impl FnOnce() -> T,
) -> T {
    if !enabled() {
        return f();
    }
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = stream.record_event(flags).ok();
    let queueing = Instant::now();
    let out = f();
    let queued = queueing.elapsed();
    let name = name();
    add(host_table(), name.clone(), queued);
    if let (Some(start), Ok(end)) = (start, stream.record_event(flags)) {
        let sections = OPEN.with(|open| open.borrow().iter().map(|&(_, n)| n).collect());
        gpu::pending()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(gpu::Pending {
                name,
                start,
                end,
                kind: gpu::Kind::Op(sections),
            });
    }
    out
}

/// Per section: how often it ran, the device's wall time over it, and the time its operations
/// were busy in it.
type StretchTable = Mutex<HashMap<String, (u64, Duration, Duration)>>;

/// The device's wall time over each section, and the time its operations were busy in it.
fn stretch_table() -> &'static StretchTable {
    static TABLE: OnceLock<StretchTable> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Waits for the recorded GPU launches and moves their device times into the tables.
fn resolve_gpu() {
    #[cfg(feature = "cuda")]
    {
        let done: Vec<gpu::Pending> = std::mem::take(
            &mut *gpu::pending()
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut stretches = stretch_table()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for p in done {
            let Ok(ms) = p.start.elapsed_ms(&p.end) else {
                continue;
            };
            let spent = Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3);
            match p.kind {
                gpu::Kind::Op(sections) => {
                    add(table(), p.name, spent);
                    for s in sections {
                        stretches.entry(s.to_string()).or_default().2 += spent;
                    }
                }
                gpu::Kind::Stretch => {
                    let e = stretches.entry(p.name).or_default();
                    e.0 += 1;
                    e.1 += spent;
                }
            }
        }
    }
}

/// Forgets everything recorded so far (to profile only the steps after a warm-up).
pub fn reset() {
    resolve_gpu();
    for t in [table(), host_table()] {
        t.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
    stretch_table()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

/// The recorded entries, largest total time first: name, calls, total time.
pub fn entries() -> Vec<(String, u64, Duration)> {
    resolve_gpu();
    sorted(table())
}

/// `table`'s entries, largest total time first.
fn sorted(table: &Table) -> Vec<(String, u64, Duration)> {
    let t = table.lock().unwrap_or_else(PoisonError::into_inner);
    let mut v: Vec<_> = t.iter().map(|(k, &(n, d))| (k.clone(), n, d)).collect();
    v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    v
}

/// The recorded entries as a table, with each one's share of the total.
pub fn report() -> String {
    let v = entries();
    let total: Duration = v.iter().map(|e| e.2).sum();
    let mut out = format!(
        "{:<40} {:>8} {:>10} {:>7}\n",
        "kernel / gemm", "calls", "ms", "share"
    );
    for (name, calls, d) in &v {
        out.push_str(&format!(
            "{:<40} {:>8} {:>10.1} {:>6.1}%\n",
            name,
            calls,
            d.as_secs_f64() * 1e3,
            100.0 * d.as_secs_f64() / total.as_secs_f64().max(1e-12)
        ));
    }
    out.push_str(&format!(
        "{:<40} {:>8} {:>10.1}\n",
        "total",
        "",
        total.as_secs_f64() * 1e3
    ));
    let mut stretches: Vec<_> = stretch_table()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(_, e)| e.0 > 0)
        .map(|(k, &e)| (k.clone(), e))
        .collect();
    if !stretches.is_empty() {
        stretches.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then_with(|| a.0.cmp(&b.0)));
        out.push_str(&format!(
            "\nthe device's time over each stretch of the step: wall, busy in its operations, idle\n\
             {:<40} {:>8} {:>10} {:>10} {:>10}\n",
            "stretch", "calls", "wall ms", "busy ms", "idle ms"
        ));
        for (name, (calls, wall, busy)) in stretches {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            out.push_str(&format!(
                "{:<40} {:>8} {:>10.1} {:>10.1} {:>10.1}\n",
                name,
                calls,
                ms(wall),
                ms(busy),
                ms(wall) - ms(busy)
            ));
        }
    }
    let host = sorted(host_table());
    if !host.is_empty() {
        // No total: a stretch of the step (`step: ...`) includes the calls timed within it.
        out.push_str(&format!(
            "\nthe host's time to queue it (stretches include the calls within them)\n\
             {:<40} {:>8} {:>10} {:>9}\n",
            "kernel / gemm / allocation / stretch", "calls", "ms", "us a call"
        ));
        for (name, calls, d) in host.iter().take(30) {
            out.push_str(&format!(
                "{:<40} {:>8} {:>10.1} {:>9.1}\n",
                name,
                calls,
                d.as_secs_f64() * 1e3,
                d.as_secs_f64() * 1e6 / (*calls).max(1) as f64
            ));
        }
    }
    out
}
