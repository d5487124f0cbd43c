//! The causal-LM commands: generate, chat, tokenize, perplexity.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::json;
use zhinao::engine::{self, generate, GenOptions, Lm, LmOptions};
use zhinao::loader::config::GenerationConfig;
use zhinao::sampling::{Sampler, SamplingOverrides, SamplingParams};
use zhinao::tokenizer::{AnyTokenizer, Message, SpecialMode, StreamDecoder};

use crate::GpuArgs;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory as published (config.json, safetensors shards or a GPTQ file, vocab/360.tiktoken),
    /// or ORG/NAME of a repository already in the local cache (`zhinao download`).
    #[arg(long, value_parser = crate::download::model_path)]
    pub model: PathBuf,
    /// KV-cache length (default: the config's max_position_embeddings, reduced to fit memory).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Tokens per prefill pass.
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
    /// KV-cache storage: f16, q8 (8-bit, per-token groups of 32) or q4 (4-bit, Hadamard-rotated keys).
    #[arg(long = "kv-type", default_value = "f16", value_parser = parse_kv)]
    pub kv_type: engine::KvFormat,
    /// Positions a q8/q4 cache keeps in f16 at its start (attention sinks; default 16, 0 = none).
    #[arg(long = "kv-sink")]
    pub kv_sink: Option<usize>,
}

pub fn parse_kv(s: &str) -> std::result::Result<engine::KvFormat, String> {
    engine::KvFormat::parse(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// 0 = greedy. Default: generation_config.json.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Default: generation_config.json (1024).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
}

impl SampleArgs {
    pub fn params(&self, g: &GenerationConfig) -> SamplingParams {
        let o = SamplingOverrides {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: Some(self.presence_penalty),
            frequency_penalty: Some(self.frequency_penalty),
            seed: Some(self.seed),
        };
        SamplingParams::with_overrides(g, &o)
    }
}

pub fn progress_bar() -> impl FnMut(u64, u64) {
    let t0 = Instant::now();
    let mut last = 0.0;
    move |done, total| {
        let s = t0.elapsed().as_secs_f64();
        if s - last < 0.1 && done < total {
            return;
        }
        last = s;
        let rate = done as f64 / s.max(1e-9);
        let eta = (total.saturating_sub(done)) as f64 / rate.max(1.0);
        eprint!(
            "\rloading {:>7.1} / {:.1} MiB  {:>7.1} MiB/s  ETA {:>4.0} s ",
            done as f64 / 1048576.0,
            total as f64 / 1048576.0,
            rate / 1048576.0,
            eta
        );
        if done >= total {
            eprintln!();
        }
    }
}

/// Load a causal LM: print what will be allocated, then a progress bar, then the model's shape.
pub fn load(args: &ModelArgs, gpu: &GpuArgs) -> Result<Lm> {
    // The config first: a missing directory or a model of another kind (a BERT embedder) is
    // reported as such, before the tokenizer or the GPU is looked at.
    zhinao::loader::ZhinaoConfig::load(&args.model)?;
    let ctx = gpu.context()?;
    let est = engine::estimate(&args.model, args.ctx, args.kv_type, args.kv_sink)?;
    eprintln!("will allocate {est} on {}", ctx.info.name);
    let opts = LmOptions { ctx_len: args.ctx, chunk: args.chunk, kv: args.kv_type, kv_sink: args.kv_sink };
    let mut bar = progress_bar();
    let lm =
        Lm::load(ctx, &args.model, &opts, &mut bar).with_context(|| format!("loading {}", args.model.display()))?;
    if let Some(note) = &lm.note {
        eprintln!("note: {note}");
    }
    let cfg = lm.model.cfg();
    eprintln!(
        "model: {} layers, hidden {}, {} heads ({} kv), vocab {}; weights {:.1} MiB on the GPU; KV cache {} positions = {:.1} MiB",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_kv_heads(),
        cfg.vocab_size,
        lm.model.weight_bytes as f64 / 1048576.0,
        lm.ctx_len,
        zhinao::models::kv::kv_bytes(cfg, lm.kv, lm.kv_sink, lm.ctx_len) as f64 / 1048576.0
    );
    Ok(lm)
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    serde_json::from_str::<Vec<u32>>(s).with_context(|| format!("expected a JSON list of token ids, got {s:?}"))
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// A JSON list of token ids.
    #[arg(long)]
    pub prompt_ids: Option<String>,
    /// Wrap the prompt in the chat template (make_context).
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Generate for every line of a JSONL file (`{"prompt": …}`, `{"messages": […]}` or
    /// `{"prompt_ids": […]}`, with optional `id`, `max_tokens`, `temperature`, `top_k`, `top_p`,
    /// `seed`), decoding up to --parallel sequences per step; one JSON line per input, in order.
    #[arg(long, conflicts_with_all = ["prompt", "prompt_ids", "json"])]
    pub batch_file: Option<PathBuf>,
    /// With --batch-file: sequences decoded together (each has its own --ctx positions of KV cache).
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// With --batch-file: write the JSONL here instead of stdout.
    #[arg(long, requires = "batch_file")]
    pub output: Option<PathBuf>,
}

pub fn run_generate(a: &GenerateArgs, gpu: &GpuArgs) -> Result<()> {
    let l = load(&a.model, gpu)?;
    let max_new = a.sample.max_new_tokens.unwrap_or(l.default_max_new());
    if let Some(path) = &a.batch_file {
        return crate::batch_file::run(a, &l, path, max_new, &a.sample.params(&l.gen));
    }
    let prompt = match (&a.prompt, &a.prompt_ids) {
        (_, Some(ids)) => parse_ids(ids)?,
        (Some(p), None) if a.chat => {
            let mut msgs = Vec::new();
            if let Some(s) = &a.system {
                msgs.push(Message::new("system", s));
            }
            msgs.push(Message::new("user", p));
            l.chat_prompt(&msgs, max_new)?
        }
        (Some(p), None) => l.tokenizer.encode(p, SpecialMode::All)?,
        (None, None) => bail!("give --prompt, --prompt-ids or --batch-file"),
    };
    let mut session = l.session()?;
    let mut sampler = Sampler::new(a.sample.params(&l.gen));
    let mut stream = StreamDecoder::new(&l.tokenizer, true);
    let json = a.json;
    let opts = GenOptions { max_new, stop_ids: l.stop_ids(), cancel: None };
    let g = generate(&mut session, &prompt, &opts, &mut sampler, &mut |id| {
        if !json {
            print!("{}", stream.push(id));
            let _ = std::io::stdout().flush();
        }
        true
    })?;
    let decode_tps = g.output_ids.len().saturating_sub(1) as f64 / g.decode_secs.max(1e-9);
    let prefill_tps = g.prefill_tokens as f64 / g.prefill_secs.max(1e-9);
    let per_token = |n: usize| n as f64 / g.output_ids.len().max(1) as f64;
    if json {
        let out = json!({
            "prompt_ids": prompt,
            "output_ids": g.output_ids,
            "text": l.tokenizer.decode(&g.output_ids, true),
            "stop_reason": g.stop_reason.as_str(),
            "timings": {
                "prefill_tokens": g.prefill_tokens, "prefill_seconds": g.prefill_secs, "prefill_tokens_per_second": prefill_tps,
                "decode_tokens": g.output_ids.len(), "decode_seconds": g.decode_secs, "decode_tokens_per_second": decode_tps,
                "submits_per_token": per_token(g.steps.submits), "dispatches_per_token": per_token(g.steps.dispatches),
                "waits_per_token": per_token(g.steps.waits), "idle_waits": g.steps.idle_waits
            }
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", stream.finish());
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} new tokens, {:.1} tok/s decode; stop: {}]",
            g.prefill_tokens,
            prefill_tps,
            g.output_ids.len(),
            decode_tps,
            g.stop_reason.as_str()
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Open the desktop app (`zhinao-chat`) on this model instead of the terminal chat (builds
    /// with `--features app`).
    #[arg(long)]
    pub gui: bool,
}

/// `zhinao chat --gui`: the desktop app on `--model`.
#[cfg(feature = "app")]
fn run_gui(a: &ChatArgs, gpu: &GpuArgs) -> Result<()> {
    let data_dir = zhinao::app::settings::data_dir(None)?;
    let opts = zhinao::app::RunOptions {
        app: zhinao::app::AppOptions { data_dir, model: Some(a.model.model.clone()), ..Default::default() },
        gpu: zhinao::gpu::GpuOptions { backend: gpu.backend.clone(), device: gpu.device.clone(), ..Default::default() },
        ..Default::default()
    };
    zhinao::app::run(opts).map_err(|e| anyhow::anyhow!(e))
}

#[cfg(not(feature = "app"))]
fn run_gui(_: &ChatArgs, _: &GpuArgs) -> Result<()> {
    anyhow::bail!(
        "this build has no desktop app: build with `cargo build --release --features app` (or run zhinao-chat)"
    )
}

/// Interactive chat like the reference cli_demo: streaming (toggle with `:stream`), multi-turn
/// history, `:clear`, `:exit`, multi-line input between lines of `"""`, Ctrl-C stops an answer.
pub fn run_chat(a: &ChatArgs, gpu: &GpuArgs) -> Result<()> {
    if a.gui {
        return run_gui(a, gpu);
    }
    let l = load(&a.model, gpu)?;
    let max_new = a.sample.max_new_tokens.unwrap_or(l.default_max_new());
    let mut sampler = Sampler::new(a.sample.params(&l.gen));
    let mut session = l.session()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let mut history: Vec<Message> = Vec::new();
    if let Some(s) = &a.system {
        history.push(Message::new("system", s));
    }
    let mut streaming = true;
    eprintln!("commands: :clear (new conversation), :stream (toggle streaming), :exit; \"\"\" starts and ends multi-line input; Ctrl-C stops an answer");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("\nUser> ");
        std::io::stdout().flush()?;
        let Some(line) = lines.next() else { break };
        let mut input = line?;
        if input.trim() == "\"\"\"" {
            input.clear();
            for l in lines.by_ref() {
                let l = l?;
                if l.trim() == "\"\"\"" {
                    break;
                }
                input.push_str(&l);
                input.push('\n');
            }
        }
        match input.trim() {
            "" => continue,
            ":exit" | ":quit" => break,
            ":clear" => {
                history.retain(|m| m.role == "system");
                eprintln!("(history cleared)");
                continue;
            }
            ":stream" => {
                streaming = !streaming;
                eprintln!("(streaming {})", if streaming { "on" } else { "off" });
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", input.trim_end_matches('\n')));
        let (prompt, dropped) = l.chat_prompt_report(&history, max_new)?;
        if dropped > 0 {
            eprintln!("(the {dropped} oldest messages no longer fit the context of {} and are left out)", l.ctx_len);
        }
        if prompt.len() >= l.ctx_len {
            eprintln!("error: this message alone ({} tokens) does not fit the context of {}", prompt.len(), l.ctx_len);
            history.pop();
            continue;
        }
        // The session keeps the conversation's KV cache: only the new turn is prefilled (all of
        // it again when make_context dropped old history).
        stop.store(false, Ordering::SeqCst);
        let mut stream = StreamDecoder::new(&l.tokenizer, true);
        print!("\nAssistant> ");
        let room = l.ctx_len - prompt.len();
        let opts = GenOptions { max_new: max_new.min(room), stop_ids: l.stop_ids(), cancel: Some(&stop) };
        let g = generate(&mut session, &prompt, &opts, &mut sampler, &mut |id| {
            if streaming {
                print!("{}", stream.push(id));
                let _ = std::io::stdout().flush();
            }
            true
        })?;
        let text = l.tokenizer.decode(&g.output_ids, true);
        if streaming {
            println!("{}", stream.finish());
        } else {
            println!("{text}");
        }
        let tps = g.output_ids.len().saturating_sub(1) as f64 / g.decode_secs.max(1e-9);
        eprintln!(
            "[{} tokens, {:.1} tok/s{}]",
            g.output_ids.len(),
            tps,
            if g.stop_reason.as_str() == "cancelled" { ", stopped" } else { "" }
        );
        history.push(Message::new("assistant", &text));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[arg(long, value_parser = crate::download::model_path)]
    pub model: PathBuf,
    /// Recognise no special tokens (as make_context encodes message content); for a BERT model,
    /// the word pieces without [CLS] and [SEP].
    #[arg(long)]
    pub no_special: bool,
    #[arg(long)]
    pub json: bool,
    /// Text to tokenize (default: standard input).
    #[arg(long)]
    pub text: Option<String>,
}

/// Token ids of any model directory the engine loads: a 360Zhinao causal LM (tiktoken or
/// byte-level tokenizer.json) or a BERT embedder (WordPiece tokenizer.json or vocab.txt).
pub fn run_tokenize(a: &TokenizeArgs) -> Result<()> {
    let tok = AnyTokenizer::from_model_dir(&a.model)?;
    let text = match &a.text {
        Some(t) => t.clone(),
        None => std::io::read_to_string(std::io::stdin())?,
    };
    let mode = if a.no_special { SpecialMode::None } else { SpecialMode::All };
    let ids = tok.encode(&text, mode)?;
    if let Some(max) = tok.max_len().filter(|&m| ids.len() > m) {
        eprintln!("note: {} tokens; the model takes at most {max}, the embedder truncates the rest", ids.len());
    }
    let tokens: Vec<String> = ids.iter().map(|&i| tok.token_str(i).unwrap_or_default()).collect();
    if a.json {
        println!("{}", json!({ "ids": ids, "tokens": tokens }));
    } else {
        for (i, t) in ids.iter().zip(&tokens) {
            println!("{i}\t{t:?}");
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, conflicts_with_all = ["ids", "file"])]
    pub text: Option<String>,
    /// A JSON list of token ids.
    #[arg(long, conflicts_with = "file")]
    pub ids: Option<String>,
    #[arg(long)]
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// Top logits to list per position.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Also score with a KV cache of this type (e.g. f16 beside --kv-type q4) and report its
    /// perplexity, the top-1 agreement and the KL divergence against it: what the cache type costs.
    #[arg(long = "compare-kv", value_parser = parse_kv)]
    pub compare_kv: Option<engine::KvFormat>,
    /// Also write the first window's f32 `logits` [T, V] and per-layer `hidden` [L+1, T, C]
    /// (embedding output, then each layer's residual stream) to this safetensors file.
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

/// Write f32 tensors to a safetensors file.
fn write_f32_tensors(path: &std::path::Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| bytemuck::cast_slice(v).to_vec()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| {
            Ok((n.to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::tensor::serialize_to_file(views, None, path)?;
    Ok(())
}

/// One forward per context-sized window (like llama.cpp's perplexity, without overlap).
pub fn run_perplexity(a: &PerplexityArgs, gpu: &GpuArgs) -> Result<()> {
    let l = load(&a.model, gpu)?;
    let ids = match (&a.text, &a.ids, &a.file) {
        (Some(t), _, _) => l.tokenizer.encode(t, SpecialMode::All)?,
        (_, Some(s), _) => parse_ids(s)?,
        (_, _, Some(f)) => l
            .tokenizer
            .encode(&std::fs::read_to_string(f).with_context(|| f.display().to_string())?, SpecialMode::All)?,
        _ => bail!("give --text, --ids or --file"),
    };
    let mut session = l.session()?;
    let (report, agreement) = match a.compare_kv {
        Some(fmt) => {
            let mut base = engine::Session::with_kv(l.model.clone(), l.ctx_len, l.chunk, fmt, None)?;
            let (r, g) = engine::perplexity_vs(&mut session, &mut base, &ids, a.top_k)?;
            (r, Some((fmt, base.kv_sink(), g)))
        }
        None => (engine::perplexity(&mut session, &ids, a.top_k)?, None),
    };
    if let Some(path) = &a.dump {
        let window = &ids[..ids.len().min(l.ctx_len)];
        let cfg = l.model.cfg();
        let (t, c, layers, v) = (window.len(), cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size);
        let mut s = engine::Session::with_kv(l.model.clone(), l.ctx_len, t, l.kv, Some(l.kv_sink))?;
        let hidden: Vec<f32> = s.hidden_states(window)?.concat();
        s.reset();
        let logits = s.forward(window, true)?;
        write_f32_tensors(path, &[("hidden", vec![layers + 1, t, c], hidden), ("logits", vec![t, v], logits)])?;
        eprintln!("wrote {}", path.display());
    }
    if a.json {
        let positions: Vec<_> = report
            .positions
            .iter()
            .map(|p| {
                json!({
                    "window": p.window,
                    "token": p.token,
                    "argmax": p.argmax,
                    "logprob": p.logprob,
                    "top": p.top.iter().map(|&(t, v)| json!([t, v])).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut out = json!({ "positions": positions, "ppl": report.ppl, "scored_tokens": report.scored,
                              "kv_type": l.kv.name(), "kv_sink": l.kv_sink });
        if let Some((fmt, sink, g)) = &agreement {
            out["compare"] = json!({ "kv_type": fmt.name(), "kv_sink": sink, "ppl": g.base_ppl,
                                     "top1_agreement": g.top1, "mean_kl": g.mean_kl, "max_kl": g.max_kl });
        }
        println!("{out}");
    } else {
        println!(
            "perplexity {:.4} over {} predicted tokens ({} windows of ≤{}; {} KV cache)",
            report.ppl, report.scored, report.windows, l.ctx_len, l.kv
        );
        if let Some((fmt, _, g)) = &agreement {
            println!(
                "the same with the {fmt} KV cache: perplexity {:.4}; top-1 agreement {:.2}%, KL divergence mean {:.3e} max {:.3e} nats",
                g.base_ppl,
                100.0 * g.top1,
                g.mean_kl,
                g.max_kl
            );
        }
    }
    Ok(())
}
