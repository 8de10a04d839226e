//! Checkpoints: `OUT/checkpoint-STEP/`, written atomically (a temporary folder, then a rename),
//! the last `keep` kept. One holds everything a run needs to continue bit-exactly:
//!
//! ```text
//! trainer_state.json          step, data cursor, optimizer step, fault count, elapsed time,
//!                             and the settings that decide the trajectory (checked on resume)
//! adapter_config.json         LoRA: the adapters' f32 masters as a PEFT folder
//! adapter_model.safetensors
//! model.safetensors           full fine-tuning: every f32 master, Hugging Face names
//! optimizer.safetensors       AdamW's moments, `exp_avg.NAME` and `exp_avg_sq.NAME`
//! ```
//!
//! The random state is the run's seed: every draw (data order, dropout masks) is derived from
//! it and the step, so nothing else needs saving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data_plan::Cursor;
use crate::weights::{self, SafeTensors, SaveDtype};
use crate::{Error, HostTensor, Result};

/// The name of the state file.
pub const STATE_FILE: &str = "trainer_state.json";
/// The optimizer's moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Full fine-tuning's weights.
pub const MODEL_FILE: &str = "model.safetensors";
const FORMAT: u32 = 1;

/// Where a run is, and what decides where it goes next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: u32,
    pub kiln_version: String,
    /// Steps done (skipped ones included).
    pub step: usize,
    pub cursor: Cursor,
    /// AdamW's `t`: updates applied.
    pub updates: u32,
    /// Skipped steps in a row at the end.
    pub consecutive_skips: usize,
    pub elapsed_s: f64,
    /// The settings a resume must share (mode, seed, batch shape, schedule...), as text.
    pub trajectory: BTreeMap<String, String>,
}

impl TrainerState {
    pub fn new(trajectory: BTreeMap<String, String>) -> TrainerState {
        TrainerState {
            format: FORMAT,
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            step: 0,
            cursor: Cursor::default(),
            updates: 0,
            consecutive_skips: 0,
            elapsed_s: 0.0,
            trajectory,
        }
    }

    /// Refuses to continue a run whose trajectory settings differ from this one's.
    pub fn check_resumable(&self, current: &BTreeMap<String, String>, dir: &Path) -> Result<()> {
        for (key, theirs) in &self.trajectory {
            let ours = current.get(key).map_or("(unset)", String::as_str);
            if ours != theirs {
                return Err(Error::Invalid(format!(
                    "{}: the checkpoint was trained with {key} {theirs}, this run has {ours}; \
                     resume with the same settings (or start a new run)",
                    dir.display()
                )));
            }
        }
        Ok(())
    }
}

/// Writes an adapter's files into a folder.
pub type WriteAdapter<'a> = &'a dyn Fn(&Path) -> Result<()>;

/// What a checkpoint holds besides its state.
pub struct CheckpointData<'a> {
    pub state: &'a TrainerState,
    /// LoRA: writes the adapter files into the folder given.
    pub adapter: Option<WriteAdapter<'a>>,
    /// Full fine-tuning: every master weight by name.
    pub model: Option<&'a [(String, HostTensor)]>,
    pub moments: &'a [(String, HostTensor)],
}

/// The folder of the checkpoint after `step` steps.
pub fn dir_of(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// Writes `OUT/checkpoint-STEP/` atomically and removes all but the newest `keep` (0 keeps
/// all); returns its path.
pub fn save(out: &Path, data: &CheckpointData<'_>, keep: usize) -> Result<PathBuf> {
    let dir = dir_of(out, data.state.step);
    crate::atomic::write_dir(
        &dir,
        |_| Ok(true),
        |tmp| {
            if let Some(write_adapter) = data.adapter {
                write_adapter(tmp)?;
            }
            if let Some(model) = data.model {
                save_tensors(&tmp.join(MODEL_FILE), model)?;
            }
            save_tensors(&tmp.join(OPTIMIZER_FILE), data.moments)?;
            let text = serde_json::to_string_pretty(data.state).expect("state serializes");
            let path = tmp.join(STATE_FILE);
            std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
        },
    )?;
    if keep > 0 {
        for (_, old) in list(out)?.into_iter().rev().skip(keep) {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
    }
    Ok(dir)
}

fn save_tensors(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    weights::save(path, &refs, SaveDtype::F32, &BTreeMap::new())
}

/// The complete checkpoints in `out`, oldest first (folders whose name parses and that hold a
/// state file; a temporary folder of an interrupted write is not one).
pub fn list(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut found = vec![];
    if !out.exists() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let path = entry.map_err(|e| Error::io(out, e))?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|s| s.parse::<usize>().ok());
        if let Some(step) = step {
            if path.join(STATE_FILE).is_file() {
                found.push((step, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// `--resume`'s argument: a checkpoint folder, or `latest` (the newest in `out`).
pub fn resolve(arg: &Path, out: &Path) -> Result<PathBuf> {
    if arg == Path::new("latest") {
        return list(out)?.pop().map(|(_, p)| p).ok_or_else(|| {
            Error::Invalid(format!(
                "--resume latest: {} holds no checkpoint",
                out.display()
            ))
        });
    }
    if !arg.join(STATE_FILE).is_file() {
        return Err(Error::Invalid(format!(
            "{}: not a checkpoint (no {STATE_FILE})",
            arg.display()
        )));
    }
    Ok(arg.to_path_buf())
}

/// Reads a checkpoint's state.
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
    if state.format != FORMAT {
        return Err(Error::unsupported(
            path.display().to_string(),
            format!(
                "checkpoint format {}, this Kiln reads {FORMAT}",
                state.format
            ),
        ));
    }
    Ok(state)
}

/// A reader of named f32 tensors of one of a checkpoint's safetensors files.
pub fn tensors(path: &Path) -> Result<impl Fn(&str) -> Result<Vec<f32>>> {
    let file = SafeTensors::open(path)?;
    let at = path.display().to_string();
    Ok(move |name: &str| {
        if !file.contains(name) {
            return Err(Error::format(&at, format!("tensor `{name}` is missing")));
        }
        Ok(file.get(name)?.data)
    })
}
