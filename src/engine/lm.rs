//! A loaded causal LM: the model on the device, its tokenizer, generation defaults and the
//! context length that fits the device; plus the memory estimate made before loading.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::loader::config::{GenerationConfig, ZhinaoConfig};
use crate::models::load::Progress;
use crate::models::zhinao::Zhinao;
use crate::ops::kv::{KvFormat, KvLayout};
use crate::sampling::SamplingParams;
use crate::tokenizer::{history_reserve, make_context_report, ContextBudget, Message, Tokenizer, DEFAULT_SYSTEM};

use super::Session;

/// How to load a causal LM.
#[derive(Clone, Debug)]
pub struct LmOptions {
    /// KV-cache positions (default: the config's `max_position_embeddings`, reduced to fit).
    pub ctx_len: Option<usize>,
    /// Tokens per prefill pass.
    pub chunk: usize,
    /// How sessions store K and V (f16, q8, q4).
    pub kv: KvFormat,
    /// Positions a quantized cache keeps in f16 at its start (default [`crate::ops::kv::SINK`]).
    pub kv_sink: Option<usize>,
}

impl Default for LmOptions {
    fn default() -> Self {
        LmOptions { ctx_len: None, chunk: 512, kv: KvFormat::F16, kv_sink: None }
    }
}

/// Bytes a model directory will take on the device, known before loading.
#[derive(Clone, Copy, Debug)]
pub struct MemoryEstimate {
    /// The weight files as stored (dense weights stay in their dtype, GPTQ is repacked at the
    /// same size).
    pub weights: u64,
    /// The KV cache once `ctx_len` positions are held (it is allocated as the context grows).
    pub kv: u64,
    pub ctx_len: usize,
    pub kv_format: KvFormat,
    /// Positions of the cache held in f16 at its start (quantized formats).
    pub kv_sink: usize,
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "about {:.1} MiB of weights and up to {:.1} MiB of {} KV cache ({} positions{}, allocated as the context grows)",
            self.weights as f64 / 1048576.0,
            self.kv as f64 / 1048576.0,
            self.kv_format,
            self.ctx_len,
            if self.kv_sink > 0 { format!(", the first {} in f16", self.kv_sink) } else { String::new() }
        )
    }
}

/// What loading `dir` with a context of `ctx_len` (default: the model's maximum) will allocate.
pub fn estimate(
    dir: &Path,
    ctx_len: Option<usize>,
    kv_format: KvFormat,
    sink: Option<usize>,
) -> Result<MemoryEstimate> {
    let cfg = ZhinaoConfig::load(dir)?;
    let weights = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".safetensors") || n.ends_with(".bin")))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .sum();
    let ctx_len = ctx_len.unwrap_or(cfg.max_position_embeddings);
    let kv_sink = kv_format.sink(sink).min(ctx_len);
    let kv = crate::models::kv::kv_bytes(&cfg, kv_format, kv_sink, ctx_len);
    Ok(MemoryEstimate { weights, kv, ctx_len, kv_format, kv_sink })
}

/// The context length to use for `cfg` on `ctx`: `requested` (default `max_position_embeddings`).
/// The cache is paged (no binding limits the context); the format must suit the head dim, and
/// one page of it (and its f16 sink) must fit a binding.
pub fn fit_context(
    cfg: &ZhinaoConfig,
    ctx: &Context,
    requested: Option<usize>,
    fmt: KvFormat,
    sink: Option<usize>,
) -> Result<(usize, Option<String>)> {
    let max = cfg.max_position_embeddings;
    let want = requested.unwrap_or(max);
    if want == 0 || want > max {
        return Err(Error::Input(format!(
            "a context of {want} positions is outside 1..={max} (the model's max_position_embeddings)"
        )));
    }
    KvLayout::for_binding(fmt, cfg.num_kv_heads(), cfg.head_dim(), sink, ctx.limits.max_binding)?;
    Ok((want, None))
}

/// A loaded causal LM and what a front end needs around it.
pub struct Lm {
    pub model: Arc<Zhinao>,
    pub tokenizer: Tokenizer,
    pub gen: GenerationConfig,
    /// KV-cache positions of every session.
    pub ctx_len: usize,
    /// Tokens per prefill pass.
    pub chunk: usize,
    /// Why the context is smaller than asked, when it is.
    pub note: Option<String>,
    /// How sessions store K and V.
    pub kv: KvFormat,
    /// Positions a session's quantized cache keeps in f16 at its start (0 for f16).
    pub kv_sink: usize,
}

impl Lm {
    /// Load a model directory (config, weights, tokenizer, generation_config) onto `ctx`.
    pub fn load(ctx: Arc<Context>, dir: &Path, opts: &LmOptions, progress: Progress) -> Result<Lm> {
        // Checks the directory and that it holds a causal LM before anything else is read.
        let cfg = ZhinaoConfig::load(dir)?;
        let (ctx_len, note) = fit_context(&cfg, &ctx, opts.ctx_len, opts.kv, opts.kv_sink)?;
        let tokenizer = Tokenizer::from_model_dir(dir)?;
        let gen = GenerationConfig::load(dir)?;
        let model = Arc::new(Zhinao::load(ctx, dir, progress)?);
        let (kv, kv_sink) = (opts.kv, opts.kv.sink(opts.kv_sink).min(ctx_len));
        Ok(Lm { model, tokenizer, gen, ctx_len, chunk: opts.chunk.max(1), note, kv, kv_sink })
    }

    /// A new conversation state (its own KV cache of `ctx_len` positions).
    pub fn session(&self) -> Result<Session> {
        Session::with_kv(self.model.clone(), self.ctx_len, self.chunk, self.kv, Some(self.kv_sink))
    }

    /// The sampling defaults of `generation_config.json`.
    pub fn default_sampling(&self) -> SamplingParams {
        SamplingParams::from_generation_config(&self.gen)
    }

    /// `max_new_tokens` of `generation_config.json`.
    pub fn default_max_new(&self) -> usize {
        self.gen.max_new_tokens
    }

    /// The reference chat prompt (make_context: system message default "You are a helpful
    /// assistant.") for `messages`, keeping history while it leaves [`history_reserve`]`(max_new)`
    /// tokens free.
    pub fn chat_prompt(&self, messages: &[Message], max_new: usize) -> Result<Vec<u32>> {
        Ok(self.chat_prompt_report(messages, max_new)?.0)
    }

    /// [`Lm::chat_prompt`] and how many of the oldest history messages did not fit (to be said, never
    /// dropped silently).
    pub fn chat_prompt_report(&self, messages: &[Message], max_new: usize) -> Result<(Vec<u32>, usize)> {
        let reserve = history_reserve(max_new, self.ctx_len);
        let budget = ContextBudget { model_max_length: self.ctx_len, max_new_tokens: reserve };
        make_context_report(&self.tokenizer, messages, DEFAULT_SYSTEM, budget)
    }

    /// The ids that end an answer (generation_config's eos_token_id list).
    pub fn stop_ids(&self) -> &[u32] {
        &self.gen.eos_token_id
    }
}
