//! `kiln bench`: measured throughput of Kiln kernels against yardsticks.

pub mod cpu;
pub mod data;
pub mod gemm;
mod gpu;
mod handwritten;
pub mod host_profile;
pub mod jit;
pub mod kernels;
pub mod ops;
pub mod train;

/// Runs a peer script (`python script args...`) and returns the last JSON line it printed: how
/// every benchmark reads its yardstick.
pub fn run_peer(
    python: &str,
    script: &std::path::Path,
    args: &[String],
) -> Result<serde_json::Value, String> {
    let output = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {python} {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "the peer {} failed ({}):\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .ok_or_else(|| format!("the peer printed no JSON line:\n{stdout}"))
}
