//! Running a `Zhinao` model: the KV cache, chunked prefill, and a decode step. Each forward is the
//! model's graph (`models::zhinao::build`) planned by liveness and recorded once (`graph::
//! Executable`): one submission with no readback until its outputs are needed. The decode step
//! and recent prefill shapes are replayed, rewriting only their position parameters.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer};
use crate::graph::{Arena, Executable, Plan};
use crate::models::zhinao::{self, Logits, Mode, Zhinao};
use crate::ops::{self, attention};

/// Prefill executables kept per session, keyed by (token count, logits): full chunks and the
/// last few remainders replay without re-recording.
const PREFILL_CACHE: usize = 4;

/// What a decode step returns.
pub enum Step {
    /// The argmax token (computed on the GPU; logits not read back).
    Greedy(u32),
    /// The full logits row [V].
    Logits(Vec<f32>),
}

/// A conversation's state on the GPU: the model, its KV cache, the caller-owned buffers the
/// forward graphs bind by name, and the recorded executables (activations live in `arena`).
pub struct Session<'m> {
    m: &'m Zhinao,
    ctx_len: usize,
    chunk: usize,
    logit_rows: usize,
    pos: usize,
    /// External tensors by graph name: ids, k_cache.{l}, v_cache.{l}, logits.{k}, argmax.*, h.
    externals: Vec<(String, GpuBuffer)>,
    arena: Arena,
    decode: Option<Executable>,
    prefill: Vec<((usize, Logits), Executable)>,
    /// GPU top-k over the decode logits, recorded once per k: (k, dispatches, ids [k], values [k]).
    top_k: Option<(usize, Vec<Dispatch>, GpuBuffer, GpuBuffer)>,
}

impl<'m> Session<'m> {
    /// A session with a KV cache of `ctx_len` positions, prefilling up to `chunk` tokens per pass.
    pub fn new(m: &'m Zhinao, ctx_len: usize, chunk: usize) -> Result<Session<'m>> {
        let cfg = &m.cfg;
        let ctx = &*m.ctx;
        if m.lm_head.is_none() {
            return Err(Error::Unsupported(
                "this model was loaded without its lm_head (a backbone for another head)".into(),
            ));
        }
        if ctx_len == 0 || ctx_len > cfg.max_position_embeddings {
            return Err(Error::Input(format!("context {ctx_len} outside 1..={}", cfg.max_position_embeddings)));
        }
        let chunk = chunk.clamp(1, ctx_len);
        let (d, hkv, v) = (cfg.head_dim(), cfg.num_kv_heads(), cfg.vocab_size);
        let logit_rows = ((ctx.limits.max_binding / (v as u64 * 4)) as usize).clamp(1, chunk);
        let f = |label: &str, n: usize| -> Result<(String, GpuBuffer)> {
            Ok((label.to_string(), ctx.buffer(label, (n * 4) as u64)?))
        };
        let mut externals =
            vec![f("ids", chunk)?, f("logits.0", logit_rows * v)?, f("argmax.id", 1)?, f("argmax.val", 1)?];
        let row = attention::cache_row_bytes(hkv, d) as u64 * ctx_len as u64;
        for l in 0..cfg.num_hidden_layers {
            for kv in ["k_cache", "v_cache"] {
                let name = format!("{kv}.{l}");
                externals.push((name.clone(), ctx.buffer(&name, row)?));
            }
        }
        // Size the activation arena up front for the largest prefill chunk and the decode step,
        // so running out of memory shows here rather than mid-conversation.
        let mut arena = Arena::default();
        for (t, mode) in [(chunk, Mode::Prefill(Logits::Last)), (1, Mode::Decode)] {
            let plan = Plan::new(&zhinao::build(cfg, ctx_len, logit_rows, t, mode)?)?;
            arena.reserve(ctx, &plan.slot_bytes)?;
        }
        Ok(Session {
            m,
            ctx_len,
            chunk,
            logit_rows,
            pos: 0,
            externals,
            arena,
            decode: None,
            prefill: Vec::new(),
            top_k: None,
        })
    }

    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn ctx_len(&self) -> usize {
        self.ctx_len
    }
    /// Forget the cached tokens (the buffers are kept).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    fn ctx(&self) -> &Context {
        &self.m.ctx
    }

    fn external(&self, name: &str) -> Result<&GpuBuffer> {
        self.externals
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b)
            .ok_or_else(|| Error::Device(format!("session buffer '{name}' missing")))
    }

    /// Add the external buffer `name` of `bytes` if the session does not hold it yet.
    fn ensure_external(&mut self, name: &str, bytes: u64) -> Result<()> {
        if self.external(name).is_err() {
            let buf = self.ctx().buffer(name, bytes)?;
            self.externals.push((name.to_string(), buf));
        }
        Ok(())
    }

    /// Build, plan and record the forward for `t` tokens in `mode`. If the arena had to grow,
    /// the executables recorded before are dropped (they bind the old buffers).
    fn record(&mut self, t: usize, mode: Mode) -> Result<Executable> {
        let m = self.m;
        let g = zhinao::build(&m.cfg, self.ctx_len, self.logit_rows, t, mode)?;
        let plan = Plan::new(&g)?;
        if self.arena.reserve(&m.ctx, &plan.slot_bytes)? {
            self.decode = None;
            self.prefill.clear();
        }
        let logits_bytes = (self.logit_rows * m.cfg.vocab_size * 4) as u64;
        let h_bytes = (self.chunk * m.cfg.hidden_size * 4) as u64;
        for name in g.tensors.iter().map(|d| d.name.as_str()) {
            match name {
                "h" => self.ensure_external(name, h_bytes)?,
                _ if name.starts_with("logits.") => self.ensure_external(name, logits_bytes)?,
                _ => {}
            }
        }
        Executable::new(&m.ctx, g, plan, m, &mut self.arena, &self.externals)
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if self.pos + n > self.ctx_len {
            return Err(Error::ContextOverflow {
                tokens: self.pos + n,
                ctx: self.ctx_len,
                hint: " (raise --ctx up to the model's max_position_embeddings, or shorten the input)".into(),
            });
        }
        Ok(())
    }

    fn upload_ids(&self, ids: &[u32]) -> Result<()> {
        let v = self.m.cfg.vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= v) {
            return Err(Error::Input(format!("token id {bad} outside the vocabulary of {v}")));
        }
        self.ctx().write(self.external("ids")?, 0, bytemuck::cast_slice(ids));
        Ok(())
    }

    /// The recorded prefill for (t, logits), from the cache or recorded now.
    fn prefill_exe(&mut self, t: usize, logits: Logits) -> Result<&Executable> {
        let key = (t, logits);
        let k = match self.prefill.iter().position(|(k, _)| *k == key) {
            Some(k) => k,
            None => {
                let exe = self.record(t, Mode::Prefill(logits))?;
                if self.prefill.len() >= PREFILL_CACHE {
                    self.prefill.remove(0);
                }
                self.prefill.push((key, exe));
                self.prefill.len() - 1
            }
        };
        Ok(&self.prefill[k].1)
    }

    /// Feed `ids` (prefill, in chunks) and return logits: the last position's [V], or with
    /// `all` every position's [T, V].
    pub fn forward(&mut self, ids: &[u32], all: bool) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        self.check_room(ids.len())?;
        let v = self.m.cfg.vocab_size;
        let n_chunks = ids.len().div_ceil(self.chunk);
        let mut out = Vec::new();
        for (c, part) in ids.chunks(self.chunk).enumerate() {
            let t = part.len();
            let logits = match (all, c + 1 == n_chunks) {
                (true, _) => Logits::All,
                (false, true) => Logits::Last,
                (false, false) => Logits::None,
            };
            self.upload_ids(part)?;
            let pos0 = self.pos;
            let ctx = self.m.ctx.clone();
            let exe = self.prefill_exe(t, logits)?;
            exe.set_pos(&ctx, pos0)?;
            exe.run(&ctx)?;
            let heads = match logits {
                Logits::All => t.div_ceil(self.logit_rows),
                Logits::Last => 1,
                Logits::None => 0,
            };
            for k in 0..heads {
                let rows = if logits == Logits::All { self.logit_rows.min(t - k * self.logit_rows) } else { 1 };
                out.extend(ctx.read_f32(self.external(&format!("logits.{k}"))?, 0, rows * v)?);
            }
            self.pos += t;
        }
        Ok(out)
    }

    /// Per-layer hidden states for `ids` from a fresh cache (debugging and layer-by-layer
    /// parity): [L + 1] tensors of [T, C], the embedding output then each layer's output.
    /// Runs the embedding and then each layer as its own small graph over the external `h`.
    pub fn hidden_states(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.reset();
        let t = ids.len();
        if t == 0 || t > self.chunk {
            return Err(Error::Input(format!("hidden_states takes 1..={} tokens", self.chunk)));
        }
        let c = self.m.cfg.hidden_size;
        self.upload_ids(ids)?;
        let ctx = self.m.ctx.clone();
        let mut out = Vec::new();
        for mode in std::iter::once(Mode::Embed).chain((0..self.m.cfg.num_hidden_layers).map(Mode::Layer)) {
            let exe = self.record(t, mode)?;
            exe.set_pos(&ctx, 0)?;
            exe.run(&ctx)?;
            out.push(ctx.read_f32(self.external("h")?, 0, t * c)?);
        }
        self.pos = t;
        Ok(out)
    }

    /// One decode step for token `id` at the next position. With `greedy`, the argmax is taken on
    /// the GPU and only its id is read back; otherwise the logits row is returned. The step is
    /// recorded once and replayed with only its position parameters rewritten.
    pub fn step(&mut self, id: u32, greedy: bool) -> Result<Step> {
        self.advance(id)?;
        let ctx = &*self.m.ctx;
        if greedy {
            Ok(Step::Greedy(ctx.read_u32(self.external("argmax.id")?, 0, 1)?[0]))
        } else {
            Ok(Step::Logits(ctx.read_f32(self.external("logits.0")?, 0, self.m.cfg.vocab_size)?))
        }
    }
    /// Submit the recorded decode step for `id` at the next position (recording it the first time);
    /// nothing is read back.
    fn advance(&mut self, id: u32) -> Result<()> {
        self.check_room(1)?;
        if self.decode.is_none() {
            let exe = self.record(1, Mode::Decode)?;
            self.decode = Some(exe);
        }
        self.upload_ids(&[id])?;
        let ctx = self.m.ctx.clone();
        let exe = self.decode.as_ref().ok_or_else(|| Error::Device("decode plan missing".into()))?;
        exe.set_pos(&ctx, self.pos)?;
        exe.run(&ctx)?;
        self.pos += 1;
        Ok(())
    }

    /// As [`Session::step`], but only the `k` (≤ 64) largest logits of the new row come back, found on
    /// the GPU: (id, logit) best first, ties to the lower id.
    pub fn step_top_k(&mut self, id: u32, k: usize) -> Result<Vec<(u32, f32)>> {
        if !matches!(&self.top_k, Some((kk, ..)) if *kk == k) {
            let ctx = &*self.m.ctx;
            let top = ops::sample::TopK::new(ctx, self.m.cfg.vocab_size, k)?;
            let ids = ctx.buffer("top-k ids", (k * 4) as u64)?;
            let vals = ctx.buffer("top-k values", (k * 4) as u64)?;
            let ds = top.record(ctx, self.external("logits.0")?, 0, &ids, &vals)?;
            self.top_k = Some((k, ds, ids, vals));
        }
        self.advance(id)?;
        let ctx = &*self.m.ctx;
        let (_, ds, ids, vals) = self.top_k.as_ref().ok_or_else(|| Error::Device("top-k missing".into()))?;
        ctx.run(&ds.iter().collect::<Vec<_>>())?;
        let ids = ctx.read_u32(ids, 0, k)?;
        let vals = ctx.read_f32(vals, 0, k)?;
        Ok(ids.into_iter().zip(vals).collect())
    }
}

/// The KV-cache length for `model`: `requested`, or the config's `max_position_embeddings` when
/// `None`, reduced so that one layer's K (or V) cache fits one storage binding. Returns the length and,
/// when it was reduced, a note saying why. A request above `max_position_embeddings` is an error.
pub fn fit_context(model: &Zhinao, requested: Option<usize>) -> Result<(usize, Option<String>)> {
    let cfg = &model.cfg;
    let max = cfg.max_position_embeddings;
    let want = requested.unwrap_or(max);
    if want == 0 || want > max {
        return Err(Error::Input(format!("context {want} outside 1..={max} (the model's max_position_embeddings)")));
    }
    let per_pos = attention::cache_row_bytes(cfg.num_kv_heads(), cfg.head_dim()) as u64;
    let binding = model.ctx.limits.max_binding;
    let fit = (binding / per_pos.max(1)) as usize;
    if want > fit {
        let note = format!(
            "context reduced from {want} to {fit} positions (one layer's KV cache must fit a {} MiB binding)",
            binding >> 20
        );
        return Ok((fit, Some(note)));
    }
    Ok((want, None))
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id (eos) was produced; it is not part of `output_ids`.
    Eos,
    /// `max_new_tokens` reached.
    Length,
    /// The KV cache is full.
    Context,
    /// The caller asked to stop (e.g. Ctrl-C).
    Cancelled,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::Length => "length",
            StopReason::Context => "context",
            StopReason::Cancelled => "cancelled",
        }
    }
}

pub struct Generation {
    pub output_ids: Vec<u32>,
    pub stop_reason: StopReason,
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

/// Prefill `prompt` (after whatever the session already holds) and generate up to `max_new`
/// tokens. `on_token` sees each new token and returns false to stop.
pub fn generate(
    s: &mut Session,
    prompt: &[u32],
    max_new: usize,
    stop_ids: &[u32],
    sampler: &mut crate::sampling::Sampler,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    generate_cancellable(s, prompt, max_new, stop_ids, sampler, &AtomicBool::new(false), on_token)
}

/// As [`generate`], but `cancel` is also checked before each prefill chunk and each decode step, so
/// a request whose client went away stops within one chunk or one token, prefill included (then
/// `stop_reason` is `Cancelled`, possibly with no output). The prompt is fed chunk by chunk, each
/// waited for, so the check between chunks sees the GPU's progress.
pub fn generate_cancellable(
    s: &mut Session,
    prompt: &[u32],
    max_new: usize,
    stop_ids: &[u32],
    sampler: &mut crate::sampling::Sampler,
    cancel: &AtomicBool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    let t0 = std::time::Instant::now();
    let cancelled = || cancel.load(Ordering::Relaxed);
    let cancelled_result = |prefill_secs: f64| Generation {
        output_ids: Vec::new(),
        stop_reason: StopReason::Cancelled,
        prefill_tokens: prompt.len(),
        prefill_secs,
        decode_secs: 0.0,
    };
    if prompt.is_empty() {
        return Err(Error::Input("no tokens to run".into()));
    }
    s.check_room(prompt.len())?;
    let mut logits = Vec::new();
    for part in prompt.chunks(s.chunk) {
        if cancelled() {
            return Ok(cancelled_result(t0.elapsed().as_secs_f64()));
        }
        logits = s.forward(part, false)?;
    }
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut out = Vec::new();
    let gpu_argmax = !sampler.params.needs_logits();
    // Top-k sampling without penalties needs only the k best logits (HF applies top-k before top-p).
    let p = &sampler.params;
    let no_penalty = p.repetition_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0;
    let gpu_top_k = (no_penalty && (1..=ops::sample::MAX_K).contains(&p.top_k)).then_some(p.top_k);
    let mut next = sampler.sample(&mut logits, prompt, &out);
    let reason = loop {
        if stop_ids.contains(&next) {
            break StopReason::Eos;
        }
        out.push(next);
        if !on_token(next) {
            break StopReason::Cancelled;
        }
        if out.len() >= max_new {
            break StopReason::Length;
        }
        if s.pos() >= s.ctx_len() {
            break StopReason::Context;
        }
        if cancelled() {
            break StopReason::Cancelled;
        }
        next = if gpu_argmax {
            match s.step(next, true)? {
                Step::Greedy(t) => t,
                Step::Logits(mut l) => sampler.sample(&mut l, prompt, &out),
            }
        } else if let Some(k) = gpu_top_k {
            let cands = s.step_top_k(next, k)?;
            sampler.sample_candidates(&cands)
        } else {
            match s.step(next, false)? {
                Step::Logits(mut l) => sampler.sample(&mut l, prompt, &out),
                Step::Greedy(t) => t,
            }
        };
    };
    Ok(Generation {
        output_ids: out,
        stop_reason: reason,
        prefill_tokens: prompt.len(),
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}
