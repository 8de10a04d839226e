//! What a training step reports, and `OUT/metrics.jsonl`: one JSON object per optimizer step,
//! appended and flushed as the step ends, so a crash loses at most the step in flight and a
//! resumed run continues the same file (lines past the checkpoint are dropped first).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based.
    pub step: usize,
    /// The mean loss over the step's predicted tokens, before the update (`null` in the file
    /// when not finite).
    #[serde(with = "finite_or_null")]
    pub loss: f64,
    /// The global L2 norm of the gradient, before clipping (`null` when not finite).
    #[serde(with = "finite_or_null")]
    pub grad_norm: f64,
    /// The base learning rate of the step (LoRA+'s B used `ratio ×` this).
    pub lr: f64,
    /// Predicted tokens in the step (those the loss averages over).
    pub tokens: usize,
    /// Real input tokens in the step (no padding exists to count).
    pub input_tokens: usize,
    /// Input tokens per second of this step's wall time.
    pub tokens_per_s: f64,
    /// Seconds of training so far, this step included (across resumes).
    pub elapsed_s: f64,
    /// The process's peak resident memory so far (on a GPU, plus device memory).
    pub peak_memory_bytes: u64,
    /// Whether the update was skipped (a non-finite loss or gradient norm).
    pub skipped: bool,
    /// Micro-batches the step was packed into.
    pub micro_batches: usize,
    /// The evaluation loss after this step, on steps that evaluate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
}

/// JSON has no NaN or infinity: a non-finite number is written `null` and read back as NaN.
mod finite_or_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// `OUT/metrics.jsonl`, open for appending.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping every line of a step after `keep_through`
    /// (what a resumed run redoes). A fresh run passes 0 and starts an empty file.
    pub fn open(path: &Path, keep_through: usize) -> Result<MetricsLog> {
        let mut kept = String::new();
        if keep_through > 0 && path.exists() {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            for (i, line) in BufReader::new(file).lines().enumerate() {
                let line = line.map_err(|e| Error::io(path, e))?;
                let m: StepMetrics = serde_json::from_str(&line).map_err(|e| {
                    Error::format(format!("{}:{}", path.display(), i + 1), e.to_string())
                })?;
                if m.step <= keep_through {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
        }
        crate::atomic::write_file(path, kept.as_bytes())?;
        let file = File::options()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one step's line and flushes it.
    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        let line = serde_json::to_string(m).expect("metrics serialize");
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Every step of a metrics file.
    pub fn read(path: &Path) -> Result<Vec<StepMetrics>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    Error::format(format!("{}:{}", path.display(), i + 1), e.to_string())
                })
            })
            .collect()
    }
}

/// The process's peak resident set (`VmHWM` of `/proc/self/status`), 0 where unknown.
pub fn peak_resident_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
