//! A sampled profile of the host's CPU time (`KILN_HOST_PROFILE=1`, built with the
//! `host-profile` feature): which functions the host spends a GPU step's queueing time in.
//! `KILN_PROFILE` times driver calls and named stretches; this finds the time between them.

/// Samples the host's stacks until [`HostProfile::report`].
pub struct HostProfile {
    #[cfg(feature = "host-profile")]
    guard: pprof::ProfilerGuard<'static>,
}

/// Samples a second (the odd rate keeps clear of periodic work).
#[cfg(feature = "host-profile")]
const HZ: i32 = 997;

impl HostProfile {
    /// Starts sampling if `KILN_HOST_PROFILE` is set; says so if this build cannot.
    pub fn start() -> Option<HostProfile> {
        if std::env::var("KILN_HOST_PROFILE").map_or(true, |v| v.is_empty() || v == "0") {
            return None;
        }
        #[cfg(feature = "host-profile")]
        match pprof::ProfilerGuard::new(HZ) {
            Ok(guard) => Some(HostProfile { guard }),
            Err(e) => {
                eprintln!("KILN_HOST_PROFILE: could not start sampling: {e}");
                None
            }
        }
        #[cfg(not(feature = "host-profile"))]
        {
            eprintln!("KILN_HOST_PROFILE: this kiln was built without the `host-profile` feature");
            None
        }
    }

    /// The hottest functions: by samples in the function itself, and by samples anywhere
    /// below it (each function counted once per stack).
    pub fn report(self) -> String {
        #[cfg(feature = "host-profile")]
        {
            use std::collections::{HashMap, HashSet};
            let report = match self.guard.report().build() {
                Ok(r) => r,
                Err(e) => return format!("KILN_HOST_PROFILE: no report: {e}\n"),
            };
            let (mut own, mut under): (HashMap<String, isize>, HashMap<String, isize>) =
                Default::default();
            let mut total = 0;
            for (frames, &count) in &report.data {
                total += count;
                // Innermost frame first; an inlined call is several symbols of one frame.
                let names: Vec<String> = frames
                    .frames
                    .iter()
                    .flat_map(|f| f.iter().map(|s| s.name()))
                    .collect();
                if let Some(leaf) = names.first() {
                    *own.entry(leaf.clone()).or_default() += count;
                }
                for name in names.into_iter().collect::<HashSet<_>>() {
                    *under.entry(name).or_default() += count;
                }
            }
            let table = |title: &str, t: HashMap<String, isize>, n: usize| {
                let mut v: Vec<_> = t.into_iter().collect();
                v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let mut out = format!("{title} ({total} samples at {HZ} Hz)\n");
                for (name, count) in v.into_iter().take(n) {
                    let mut name = name;
                    name.truncate(150);
                    out.push_str(&format!(
                        "{:>6.1}% {count:>7}  {name}\n",
                        100.0 * count as f64 / total.max(1) as f64
                    ));
                }
                out
            };
            format!(
                "{}\n{}",
                table("host CPU time, in the function itself", own, 40),
                table("host CPU time, in the function or below it", under, 70)
            )
        }
        #[cfg(not(feature = "host-profile"))]
        String::new()
    }
}
