//! The causal-LM commands: generate, chat, tokenize, perplexity.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use serde_json::json;
use zhinao::generate::{fit_context, generate, generate_cancellable, Session};
use zhinao::loader::config::GenerationConfig;
use zhinao::models::zhinao::Zhinao;
use zhinao::sampling::{Sampler, SamplingOverrides, SamplingParams};
use zhinao::tokenizer::{make_context, ContextBudget, Message, SpecialMode, StreamDecoder, Tokenizer, DEFAULT_SYSTEM};

use crate::GpuArgs;

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory as published (config.json, safetensors shards or a GPTQ file, vocab/360.tiktoken).
    #[arg(long)]
    pub model: PathBuf,
    /// KV-cache length (default: the config's max_position_embeddings, reduced to fit memory).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Tokens per prefill pass.
    #[arg(long, default_value_t = 512)]
    pub chunk: usize,
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
    fn params(&self, g: &GenerationConfig) -> SamplingParams {
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

/// A loaded model with its tokenizer and generation defaults.
pub struct Loaded {
    pub model: Zhinao,
    pub tok: Tokenizer,
    pub gen: GenerationConfig,
    pub ctx_len: usize,
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

pub fn load(args: &ModelArgs, gpu: &GpuArgs) -> Result<Loaded> {
    let tok =
        Tokenizer::from_model_dir(&args.model).with_context(|| format!("tokenizer of {}", args.model.display()))?;
    let gen = GenerationConfig::load(&args.model)?;
    let ctx = gpu.context()?;
    // What will be allocated, before allocating: the weight files as stored (dense weights stay in
    // their dtype, GPTQ is repacked at the same size) and the f16 KV cache for the context.
    let cfg = zhinao::loader::ZhinaoConfig::load(&args.model)?;
    let files: u64 = std::fs::read_dir(&args.model)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".safetensors") || n.ends_with(".bin")))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0);
    let want_ctx = args.ctx.unwrap_or(cfg.max_position_embeddings);
    let kv = 2
        * cfg.num_hidden_layers as u64
        * want_ctx as u64
        * zhinao::ops::attention::cache_row_bytes(cfg.num_kv_heads(), cfg.head_dim()) as u64;
    eprintln!(
        "will allocate about {:.1} MiB of weights and {:.1} MiB of KV cache ({want_ctx} positions) on {}",
        files as f64 / 1048576.0,
        kv as f64 / 1048576.0,
        ctx.info.name
    );
    let mut bar = progress_bar();
    let model = Zhinao::load(ctx.clone(), &args.model, &mut bar)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let cfg = &model.cfg;
    if args.ctx.is_some_and(|c| c > cfg.max_position_embeddings) {
        bail!(
            "--ctx {} exceeds the model's max_position_embeddings {}",
            args.ctx.unwrap_or(0),
            cfg.max_position_embeddings
        );
    }
    let (ctx_len, note) = fit_context(&model, args.ctx)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    eprintln!(
        "model: {} layers, hidden {}, {} heads ({} kv), vocab {}; weights {:.1} MiB on the GPU; KV cache {} positions = {:.1} MiB",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_kv_heads(),
        cfg.vocab_size,
        model.weight_bytes as f64 / 1048576.0,
        ctx_len,
        model.kv_bytes(ctx_len) as f64 / 1048576.0
    );
    Ok(Loaded { model, tok, gen, ctx_len })
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
}

pub fn run_generate(a: &GenerateArgs, gpu: &GpuArgs) -> Result<()> {
    let l = load(&a.model, gpu)?;
    let max_new = a.sample.max_new_tokens.unwrap_or(l.gen.max_new_tokens);
    let prompt = match (&a.prompt, &a.prompt_ids) {
        (_, Some(ids)) => parse_ids(ids)?,
        (Some(p), None) if a.chat => {
            let mut msgs = Vec::new();
            if let Some(s) = &a.system {
                msgs.push(Message::new("system", s));
            }
            msgs.push(Message::new("user", p));
            let budget = ContextBudget { model_max_length: l.ctx_len, max_new_tokens: max_new };
            make_context(&l.tok, &msgs, DEFAULT_SYSTEM, budget)?
        }
        (Some(p), None) => l.tok.encode(p, SpecialMode::All)?,
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    let mut session = Session::new(&l.model, l.ctx_len, a.model.chunk)?;
    let mut sampler = Sampler::new(a.sample.params(&l.gen));
    let mut stream = StreamDecoder::new(&l.tok, true);
    let json = a.json;
    let g = generate(&mut session, &prompt, max_new, &l.gen.eos_token_id, &mut sampler, &mut |id| {
        if !json {
            print!("{}", stream.push(id));
            let _ = std::io::stdout().flush();
        }
        true
    })?;
    let decode_tps = g.output_ids.len().saturating_sub(1) as f64 / g.decode_secs.max(1e-9);
    let prefill_tps = g.prefill_tokens as f64 / g.prefill_secs.max(1e-9);
    if json {
        let out = json!({
            "prompt_ids": prompt,
            "output_ids": g.output_ids,
            "text": l.tok.decode(&g.output_ids, true),
            "stop_reason": g.stop_reason.as_str(),
            "timings": {
                "prefill_tokens": g.prefill_tokens, "prefill_seconds": g.prefill_secs, "prefill_tokens_per_second": prefill_tps,
                "decode_tokens": g.output_ids.len(), "decode_seconds": g.decode_secs, "decode_tokens_per_second": decode_tps
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
}

/// Interactive chat like the reference cli_demo: streaming (toggle with `:stream`), multi-turn
/// history, `:clear`, `:exit`, multi-line input between lines of `"""`, Ctrl-C stops an answer.
pub fn run_chat(a: &ChatArgs, gpu: &GpuArgs) -> Result<()> {
    let l = load(&a.model, gpu)?;
    let max_new = a.sample.max_new_tokens.unwrap_or(l.gen.max_new_tokens);
    let mut sampler = Sampler::new(a.sample.params(&l.gen));
    let mut session = Session::new(&l.model, l.ctx_len, a.model.chunk)?;
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
        let budget = ContextBudget { model_max_length: l.ctx_len, max_new_tokens: max_new };
        let prompt = make_context(&l.tok, &history, DEFAULT_SYSTEM, budget)?;
        if prompt.len() >= l.ctx_len {
            eprintln!("error: this message alone ({} tokens) does not fit the context of {}", prompt.len(), l.ctx_len);
            history.pop();
            continue;
        }
        session.reset();
        stop.store(false, Ordering::SeqCst);
        let mut stream = StreamDecoder::new(&l.tok, true);
        print!("\nAssistant> ");
        let room = l.ctx_len - prompt.len();
        let eos = &l.gen.eos_token_id;
        let g = generate_cancellable(&mut session, &prompt, max_new.min(room), eos, &mut sampler, &stop, &mut |id| {
            if streaming {
                print!("{}", stream.push(id));
                let _ = std::io::stdout().flush();
            }
            !stop.load(Ordering::SeqCst)
        })?;
        let text = l.tok.decode(&g.output_ids, true);
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
    #[arg(long)]
    pub model: PathBuf,
    /// Recognise no special tokens (as make_context encodes message content).
    #[arg(long)]
    pub no_special: bool,
    #[arg(long)]
    pub json: bool,
    /// Text to tokenize (default: standard input).
    #[arg(long)]
    pub text: Option<String>,
}

pub fn run_tokenize(a: &TokenizeArgs) -> Result<()> {
    let tok = Tokenizer::from_model_dir(&a.model)?;
    let text = match &a.text {
        Some(t) => t.clone(),
        None => std::io::read_to_string(std::io::stdin())?,
    };
    let mode = if a.no_special { SpecialMode::None } else { SpecialMode::All };
    let ids = tok.encode(&text, mode)?;
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
        (Some(t), _, _) => l.tok.encode(t, SpecialMode::All)?,
        (_, Some(s), _) => parse_ids(s)?,
        (_, _, Some(f)) => {
            l.tok.encode(&std::fs::read_to_string(f).with_context(|| f.display().to_string())?, SpecialMode::All)?
        }
        _ => bail!("give --text, --ids or --file"),
    };
    if ids.is_empty() {
        bail!("the input has no tokens");
    }
    let v = l.model.cfg.vocab_size;
    let mut session = Session::new(&l.model, l.ctx_len, a.model.chunk)?;
    let mut positions = Vec::new();
    let (mut nll, mut count) = (0.0f64, 0usize);
    for (w, window) in ids.chunks(l.ctx_len).enumerate() {
        session.reset();
        let logits = session.forward(window, true)?;
        for i in 0..window.len() {
            let row = &logits[i * v..(i + 1) * v];
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            let mut order: Vec<usize> = (0..v).collect();
            let k = a.top_k.min(v);
            order.select_nth_unstable_by(k.saturating_sub(1).min(v - 1), |&x, &y| {
                row[y].total_cmp(&row[x]).then(x.cmp(&y))
            });
            let mut top: Vec<usize> = order[..k].to_vec();
            top.sort_by(|&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
            let next = window.get(i + 1).copied();
            let logprob = next.map(|n| row[n as usize] as f64 - lse);
            if let Some(lp) = logprob {
                nll -= lp;
                count += 1;
            }
            positions.push(json!({
                "window": w,
                "token": window[i],
                "argmax": zhinao::sampling::argmax(row),
                "logprob": logprob,
                "top": top.iter().map(|&t| json!([t, row[t]])).collect::<Vec<_>>(),
            }));
        }
    }
    if let Some(path) = &a.dump {
        let window = &ids[..ids.len().min(l.ctx_len)];
        let (t, c, layers) = (window.len(), l.model.cfg.hidden_size, l.model.cfg.num_hidden_layers);
        let mut s = Session::new(&l.model, l.ctx_len, t)?;
        let hidden: Vec<f32> = s.hidden_states(window)?.concat();
        s.reset();
        let logits = s.forward(window, true)?;
        write_f32_tensors(path, &[("hidden", vec![layers + 1, t, c], hidden), ("logits", vec![t, v], logits)])?;
        eprintln!("wrote {}", path.display());
    }
    let ppl = if count > 0 { (nll / count as f64).exp() } else { f64::NAN };
    if a.json {
        println!("{}", json!({ "positions": positions, "ppl": ppl, "scored_tokens": count }));
    } else {
        println!(
            "perplexity {ppl:.4} over {count} predicted tokens ({} windows of ≤{})",
            ids.len().div_ceil(l.ctx_len),
            l.ctx_len
        );
    }
    Ok(())
}
