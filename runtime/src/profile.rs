//! Where a run's time goes: time and call counts per kernel and per GEMM shape.
//!
//! Off unless `KILN_PROFILE` is set (checked once); then every kernel launch and GEMM adds its
//! time under its name (`gemm MxNxK`, with `ᵀ` marking a transposed operand). CPU launches are
//! synchronous, so their wall time is exact. A GPU launch returns before the work runs, so it is
//! bracketed by two CUDA events on the device's stream and resolved (device time) when the table
//! is read: the sum is the device's busy time, and the launch gaps between kernels are what the
//! step's wall time adds to it. [`report`] formats the table, largest total first.

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
/// on): assign the next section to the same variable to end this one.
pub struct HostSection {
    name: &'static str,
    start: Option<Instant>,
}

/// Starts timing the host code from here to the returned section's drop under `name`.
pub fn section(name: &'static str) -> HostSection {
    HostSection {
        name,
        start: enabled().then(Instant::now),
    }
}

impl Drop for HostSection {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            add(host_table(), self.name.to_string(), start.elapsed());
        }
    }
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

/// A GPU launch bracketed by events, whose time is read when the table is.
#[cfg(feature = "cuda")]
struct PendingGpu {
    name: String,
    start: cudarc::driver::CudaEvent,
    end: cudarc::driver::CudaEvent,
}

#[cfg(feature = "cuda")]
fn pending() -> &'static Mutex<Vec<PendingGpu>> {
    static PENDING: OnceLock<Mutex<Vec<PendingGpu>>> = OnceLock::new();
    PENDING.get_or_init(Default::default)
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
        pending()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(PendingGpu { name, start, end });
    }
    out
}

/// Waits for the recorded GPU launches and moves their device times into the table.
fn resolve_gpu() {
    #[cfg(feature = "cuda")]
    {
        let done: Vec<PendingGpu> =
            std::mem::take(&mut *pending().lock().unwrap_or_else(PoisonError::into_inner));
        for p in done {
            if let Ok(ms) = p.start.elapsed_ms(&p.end) {
                let spent = Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3);
                add(table(), p.name, spent);
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
