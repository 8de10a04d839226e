//! `kiln generate`: text from a model, greedy or sampled, with a KV cache, streamed as it comes.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use kiln::models::generate::{GenerateOptions, Sampling};
use kiln::models::model::Model;
use kiln::models::precision::Precision;
use kiln::models::tokenizer::{ChatMessage, Tokenizer};

use super::device::{self, DeviceChoice};
use super::eval::parse_precision;

/// The arguments of `kiln generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A Hugging Face model folder (`kiln import` writes one from a GGUF file).
    #[arg(long)]
    model: PathBuf,
    /// A PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors`),
    /// merged into the weights it targets before generating.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 (the default) is greedy; above 0, sampling at this temperature.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// With `--temperature`: sample only from the most likely tokens whose probability adds up
    /// to this.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// With `--temperature`: the sampler's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "bf16", value_parser = parse_precision)]
    precision: Precision,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    device: DeviceChoice,
}

pub fn run(args: GenerateArgs) -> Result<String, String> {
    let err = |e: kiln::models::Error| e.to_string();
    let ops = device::ops(args.device)?;
    let load_start = Instant::now();
    let mut model = Model::load(&args.model, ops, args.precision).map_err(err)?;
    if let Some(adapter) = &args.adapter {
        model.merge_adapter(adapter).map_err(err)?;
    }
    let tokenizer = Tokenizer::load(&args.model).map_err(err)?;
    let load_seconds = load_start.elapsed().as_secs_f64();

    let (text, add_special) = if args.chat {
        let messages = [ChatMessage::new("user", args.prompt.clone())];
        let rendered = tokenizer
            .apply_chat_template(&messages, true)
            .map_err(err)?;
        // The template writes the special tokens itself.
        (rendered, false)
    } else {
        (args.prompt.clone(), true)
    };
    let prompt = tokenizer.encode(&text, add_special).map_err(err)?;
    let sampling = if args.temperature > 0.0 {
        Sampling::Nucleus {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        }
    } else {
        Sampling::Greedy
    };
    let mut stop_tokens = tokenizer.eos_ids().to_vec();
    stop_tokens.extend(&model.config.eos_token_ids);
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop_tokens: stop_tokens.clone(),
    };

    let start = Instant::now();
    let mut first_token = None;
    let mut decoder = tokenizer.incremental_decoder(true);
    let mut stdout = std::io::stdout();
    let generated = model
        .generate(&prompt, &options, |token| {
            first_token.get_or_insert_with(|| start.elapsed().as_secs_f64());
            if !stop_tokens.contains(&token) {
                print!("{}", decoder.push(token)?);
                let _ = stdout.flush();
            }
            Ok(())
        })
        .map_err(err)?;
    println!("{}", decoder.finish().map_err(err)?);
    let total = start.elapsed().as_secs_f64();
    let first = first_token.unwrap_or(total);
    let decoded = generated.len().saturating_sub(1);
    let decode_rate = decoded as f64 / (total - first).max(1e-9);
    eprintln!(
        "{} prompt tokens, {} new tokens; load {:.2} s, time to first token {:.3} s, decode \
         {:.1} tokens/s ({} {})",
        prompt.len(),
        generated.len(),
        load_seconds,
        first,
        decode_rate,
        model.precision,
        model.ops().device(),
    );
    Ok(String::new())
}
