//! The dataset flags `kiln train` and `kiln eval` share, and reading a dataset with a progress
//! bar (tokenization is cached: a second run reads the cached tokens).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln::models::data::{
    default_cache_dir, load_cached, load_in_memory, DataOptions, DataReport, DataSource, Format,
    TokenStore,
};
use kiln::models::tokenizer::Tokenizer;

/// How dataset records become examples.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// The records' format: text, prompt-completion, messages or tokens (default: detected from
    /// the first record; a file holds one format).
    #[arg(long)]
    pub format: Option<Format>,
    /// Train on prompt tokens too (prompt-completion), or on every token of a conversation
    /// (messages), not only the completion's or the assistant's.
    #[arg(long)]
    pub train_on_prompt: bool,
    /// Skip invalid records (bad JSON, missing fields, unknown roles, ids outside the
    /// vocabulary, no target token), counted by kind, instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Where tokenized datasets are cached (default: $KILN_CACHE_DIR/tokens, else
    /// ~/.cache/kiln/tokens).
    #[arg(long, value_name = "DIR")]
    pub data_cache: Option<PathBuf>,
    /// Tokenize again instead of reading the cache (the result still replaces the cache).
    #[arg(long)]
    pub no_data_cache: bool,
}

impl DataArgs {
    pub fn options(&self) -> DataOptions {
        DataOptions {
            format: self.format,
            train_on_prompt: self.train_on_prompt,
            skip_invalid: self.skip_invalid,
        }
    }
}

/// The model folder's tokenizer, if it has one.
pub fn tokenizer(model_dir: &Path) -> Result<Option<Tokenizer>, String> {
    if model_dir.join("tokenizer.json").exists() {
        Tokenizer::load(model_dir)
            .map(Some)
            .map_err(|e| e.to_string())
    } else {
        Ok(None)
    }
}

/// Reads `path` through the token cache, showing a progress bar on a terminal (unless
/// `quiet`).
pub fn read_cached(
    path: &Path,
    tokenizer: Option<&Tokenizer>,
    vocab: usize,
    args: &DataArgs,
    quiet: bool,
) -> Result<(Arc<TokenStore>, DataReport), String> {
    let options = args.options();
    let source = DataSource {
        path,
        tokenizer,
        vocab,
        options: &options,
    };
    let dir = args.data_cache.clone().unwrap_or_else(default_cache_dir);
    if args.no_data_cache {
        if let Ok(key) = kiln::models::data::cache_key(&source) {
            let _ = std::fs::remove_file(dir.join(format!("{key}.tokens")));
        }
    }
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "tokenizing {prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ({eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(path.display().to_string());
        bar
    });
    let start = std::time::Instant::now();
    let (store, report, _) = load_cached(&source, &dir, &mut |p| {
        if let Some(bar) = &bar {
            bar.set_length(p.total);
            bar.set_position(p.bytes);
            bar.set_message(format!("{} records", p.records));
        }
    })
    .map_err(|e| e.to_string())?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if !quiet {
        eprintln!("{}", describe(path, &report, start.elapsed().as_secs_f64()));
    }
    Ok((Arc::new(store), report))
}

/// Reads a small file in memory (no cache).
pub fn read_small(
    path: &Path,
    tokenizer: Option<&Tokenizer>,
    vocab: usize,
    args: &DataArgs,
) -> Result<(TokenStore, DataReport), String> {
    let options = args.options();
    load_in_memory(&DataSource {
        path,
        tokenizer,
        vocab,
        options: &options,
    })
    .map_err(|e| e.to_string())
}

/// One line about what reading found: format, examples, tokens, targets, skips, cache.
pub fn describe(path: &Path, r: &DataReport, seconds: f64) -> String {
    let format = r.format.map(|f| f.name()).unwrap_or("?");
    let mut line = format!(
        "{}: {format}, {} records -> {} examples, {} tokens ({} targets)",
        path.display(),
        r.records,
        r.examples,
        r.tokens,
        r.targets
    );
    if r.cached {
        line.push_str(", from the token cache");
    } else if seconds > 0.0 {
        line.push_str(&format!(
            ", tokenized in {seconds:.1} s ({:.0} tokens/s)",
            r.tokens as f64 / seconds
        ));
    }
    if r.skipped_total() > 0 {
        let kinds: Vec<String> = r.skipped.iter().map(|(k, n)| format!("{n} {k}")).collect();
        line.push_str(&format!(
            "; skipped {} invalid: {} (first: {})",
            r.skipped_total(),
            kinds.join(", "),
            r.first_skipped.as_deref().unwrap_or("")
        ));
    }
    line
}
