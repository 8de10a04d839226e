//! The model commands of the `kiln` CLI, one file each.

pub mod compare;
pub mod data;
pub mod device;
pub mod distributed;
pub mod eval;
pub mod export;
pub mod generate;
pub mod import;
pub mod info;
pub mod train;

/// Runs `work` under a spinner that says `what` and the elapsed time, on a terminal (long
/// steps without their own progress: importing, exporting).
pub fn with_spinner<T>(what: &str, work: impl FnOnce() -> T) -> T {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return work();
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .expect("a valid template"),
    );
    spinner.set_message(what.to_string());
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let out = work();
    spinner.finish_and_clear();
    out
}
