//! A conversation's state on the GPU: the KV cache, chunked prefill, and a decode step. Each forward
//! is the model's graph (`models::zhinao::build`) planned by liveness and recorded once
//! (`graph::Executable`): one submission with no readback until its outputs are needed. The decode
//! step and recent prefill shapes are replayed, rewriting only their position parameters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer};
use crate::graph::{Arena, ExeCache, Executable, Plan};
use crate::models::zhinao::{self, Logits, Mode, Zhinao};
use crate::ops;

use super::kv::KvCache;
use crate::ops::kv::{KvFormat, KvLayout};

/// Executables kept per session, keyed by (token count, mode): the decode step, full prefill
/// chunks and the last few remainders replay without re-recording.
const RECORDED: usize = 6;

/// What a decode step returns.
pub enum Step {
    /// The argmax token (computed on the GPU; logits not read back).
    Greedy(u32),
    /// The full logits row [V].
    Logits(Vec<f32>),
}

/// A conversation's state on the GPU: the model, its KV cache, the caller-owned buffers the
/// forward graphs bind by name, and the recorded executables.
pub struct Session {
    m: Arc<Zhinao>,
    ctx_len: usize,
    chunk: usize,
    logit_rows: usize,
    /// The tokens whose keys and values the cache holds, in position order (pos = its length).
    tokens: Vec<u32>,
    /// External tensors by graph name: ids, k_cache.{l}.{a}, v_cache.{l}.{a}, logits.{k}, argmax.*, h.
    externals: Vec<(String, GpuBuffer)>,
    /// The paged KV cache (its arenas are in `externals`).
    kv: KvCache,
    exes: ExeCache<(usize, Mode)>,
    /// GPU top-k over the decode logits, recorded once per k: (k, dispatches, ids [k], values [k]).
    top_k: Option<(usize, Vec<Dispatch>, GpuBuffer, GpuBuffer)>,
}

impl Session {
    /// A session with an f16 KV cache of up to `ctx_len` positions, prefilling up to `chunk`
    /// tokens per pass.
    pub fn new(m: Arc<Zhinao>, ctx_len: usize, chunk: usize) -> Result<Session> {
        Session::with_kv(m, ctx_len, chunk, KvFormat::F16)
    }

    /// A session whose KV cache is stored as `fmt`, paged: arenas are allocated as the context
    /// grows (the first now), up to `ctx_len` positions.
    pub fn with_kv(m: Arc<Zhinao>, ctx_len: usize, chunk: usize, fmt: KvFormat) -> Result<Session> {
        let cfg = m.cfg();
        let layout = KvLayout::for_binding(fmt, cfg.num_kv_heads(), cfg.head_dim(), m.ctx().limits.max_binding)?;
        Session::with_layout(m, ctx_len, chunk, layout)
    }

    /// As [`Session::with_kv`] with explicit arena sizes (tests: many small arenas).
    pub fn with_layout(m: Arc<Zhinao>, ctx_len: usize, chunk: usize, layout: KvLayout) -> Result<Session> {
        let cfg = m.cfg();
        let ctx = m.ctx().clone();
        if ctx_len == 0 || ctx_len > cfg.max_position_embeddings {
            return Err(Error::Input(format!("context {ctx_len} outside 1..={}", cfg.max_position_embeddings)));
        }
        let chunk = chunk.clamp(1, ctx_len);
        let (d, hkv, v) = (cfg.head_dim(), cfg.num_kv_heads(), cfg.vocab_size);
        let logit_rows = ((ctx.limits.max_binding / (v as u64 * 4)) as usize).clamp(1, chunk);
        let f = |label: &str, n: usize| -> Result<(String, GpuBuffer)> {
            Ok((label.to_string(), ctx.buffer(label, (n * 4) as u64)?))
        };
        let mut externals = vec![
            f("ids", chunk)?,
            f("pos", 1)?,
            f("logits.0", logit_rows * v)?,
            f("argmax.id", 1)?,
            f("argmax.val", 1)?,
        ];
        if (layout.hkv, layout.d) != (hkv, d) {
            return Err(Error::Input(format!(
                "KV layout for Hkv {} D {}, model has {hkv} x {d}",
                layout.hkv, layout.d
            )));
        }
        let mut kv = KvCache::with_layout(layout, cfg.num_hidden_layers, ctx_len);
        kv.grow(&ctx, &mut externals, chunk)?;
        // Size the activation arena up front for the largest prefill chunk and the decode step,
        // so running out of memory shows here rather than mid-conversation.
        let mut exes = ExeCache::new(RECORDED);
        for (t, mode) in [(chunk, Mode::Prefill(Logits::Last)), (1, Mode::Decode)] {
            exes.reserve(&ctx, &zhinao::build_with(cfg, ctx_len, kv.spec, logit_rows, t, mode, true)?)?;
        }
        Ok(Session { m, ctx_len, chunk, logit_rows, tokens: Vec::new(), externals, kv, exes, top_k: None })
    }

    pub fn model(&self) -> &Arc<Zhinao> {
        &self.m
    }
    pub fn pos(&self) -> usize {
        self.tokens.len()
    }
    /// The tokens in the cache, in position order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    pub fn ctx_len(&self) -> usize {
        self.ctx_len
    }
    /// The KV cache's format.
    pub fn kv_format(&self) -> KvFormat {
        self.kv.format()
    }
    /// Bytes of KV cache allocated now, and once the whole context is held.
    pub fn kv_bytes(&self) -> (u64, u64) {
        (self.kv.bytes(), self.kv.max_bytes())
    }

    /// Benchmarks only: pretend `n` positions are cached (token id 0) with synthetic K/V (every
    /// arena word set to one pattern: f16 pairs / scale words of 1.0, codes of 0), so decode can be
    /// timed at a long context without prefilling it. The model's output is meaningless after this.
    pub fn fill_synthetic(&mut self, n: usize) -> Result<()> {
        if n > self.ctx_len {
            return Err(Error::ContextOverflow { tokens: n, ctx: self.ctx_len, hint: String::new() });
        }
        self.ensure_kv(n + 1)?;
        let ctx = self.m.ctx().clone();
        for (_, b) in
            self.externals.iter().filter(|(name, _)| name.starts_with("k_cache.") || name.starts_with("v_cache."))
        {
            ctx.fill_u32(b, 0x3c00_3c00);
        }
        self.tokens = vec![0; n];
        Ok(())
    }

    /// Make the cache hold `positions` (allocating arenas; recorded passes are recorded again).
    fn ensure_kv(&mut self, positions: usize) -> Result<()> {
        let ctx = self.m.ctx().clone();
        if self.kv.grow(&ctx, &mut self.externals, positions)? {
            self.exes.clear();
        }
        Ok(())
    }
    /// Forget the cached tokens (the buffers are kept).
    pub fn reset(&mut self) {
        self.tokens.clear();
    }
    /// Keep only the first `pos` cached tokens (e.g. a conversation's common prefix).
    pub fn truncate(&mut self, pos: usize) {
        self.tokens.truncate(pos);
    }
    /// Prepare to feed `prompt` as a whole sequence: keep the longest cached prefix it shares
    /// (so a chat's next turn prefills only what is new) and return how many of its tokens are
    /// already in the cache. At least the last token is left to feed, so its logits come out.
    pub fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = common.min(prompt.len().saturating_sub(1));
        self.tokens.truncate(keep);
        keep
    }
    /// How many executables this session recorded (each shape once; replays record nothing).
    pub fn recordings(&self) -> usize {
        self.exes.recordings()
    }

    fn ctx(&self) -> &Context {
        self.m.ctx()
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

    /// The graph for `t` tokens in `mode`, with the external buffers it names.
    fn graph(&mut self, t: usize, mode: Mode) -> Result<crate::graph::Graph> {
        let m = self.m.clone();
        let cfg = m.cfg();
        let g = zhinao::build_with(cfg, self.ctx_len, self.kv.spec, self.logit_rows, t, mode, m.decoder.qkv_bias())?;
        let logits_bytes = (self.logit_rows * cfg.vocab_size * 4) as u64;
        let h_bytes = (self.chunk * cfg.hidden_size * 4) as u64;
        for name in g.tensors.iter().map(|d| d.name.as_str()) {
            match name {
                "h" => self.ensure_external(name, h_bytes)?,
                _ if name.starts_with("logits.") => self.ensure_external(name, logits_bytes)?,
                _ => {}
            }
        }
        Ok(g)
    }

    /// The recorded forward for `t` tokens in `mode`, from the cache or recorded now.
    fn exe(&mut self, t: usize, mode: Mode) -> Result<&Executable> {
        if self.exes.get(&(t, mode)).is_none() {
            let g = self.graph(t, mode)?;
            let m = self.m.clone();
            self.exes.insert(m.ctx(), (t, mode), g, &*m, &self.externals)?;
        }
        self.exes.get(&(t, mode)).ok_or_else(|| Error::Device("executable missing".into()))
    }

    /// Position the next pass at `pos0`: the GPU-side `pos` buffer, and the parameters of the ops
    /// that still take the position in their uniform block.
    fn set_pos(&self, exe: &Executable, pos0: usize) -> Result<()> {
        self.ctx().write(self.external("pos")?, 0, &(pos0 as u32).to_le_bytes());
        exe.set_pos(self.ctx(), pos0)
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if self.pos() + n > self.ctx_len {
            return Err(Error::ContextOverflow {
                tokens: self.pos() + n,
                ctx: self.ctx_len,
                hint: " (raise --ctx up to the model's max_position_embeddings, or shorten the input)".into(),
            });
        }
        Ok(())
    }

    fn upload_ids(&self, ids: &[u32]) -> Result<()> {
        let v = self.m.cfg().vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= v) {
            return Err(Error::Input(format!("token id {bad} outside the vocabulary of {v}")));
        }
        self.ctx().write(self.external("ids")?, 0, bytemuck::cast_slice(ids));
        Ok(())
    }

    /// Feed `ids` (prefill, in chunks) and return logits: the last position's [V], or with
    /// `all` every position's [T, V].
    pub fn forward(&mut self, ids: &[u32], all: bool) -> Result<Vec<f32>> {
        self.forward_cancellable(ids, all, &|| false)
    }

    /// As [`Session::forward`], checking `cancelled` between prefill chunks: when it returns true
    /// the tokens fed so far stay in the cache and `Error::Cancelled` is returned.
    pub fn forward_cancellable(&mut self, ids: &[u32], all: bool, cancelled: &dyn Fn() -> bool) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        self.check_room(ids.len())?;
        let v = self.m.cfg().vocab_size;
        let n_chunks = ids.len().div_ceil(self.chunk);
        let mut out = Vec::new();
        for (c, part) in ids.chunks(self.chunk).enumerate() {
            if cancelled() {
                return Err(Error::Cancelled);
            }
            let t = part.len();
            let logits = match (all, c + 1 == n_chunks) {
                (true, _) => Logits::All,
                (false, true) => Logits::Last,
                (false, false) => Logits::None,
            };
            let pos0 = self.pos();
            self.ensure_kv(pos0 + t)?;
            self.upload_ids(part)?;
            let m = self.m.clone();
            let ctx = m.ctx();
            self.exe(t, Mode::Prefill(logits))?;
            let exe =
                self.exes.get(&(t, Mode::Prefill(logits))).ok_or_else(|| Error::Device("executable missing".into()))?;
            self.set_pos(exe, pos0)?;
            exe.run(ctx)?;
            let heads = match logits {
                Logits::All => t.div_ceil(self.logit_rows),
                Logits::Last => 1,
                Logits::None => 0,
            };
            for k in 0..heads {
                let rows = if logits == Logits::All { self.logit_rows.min(t - k * self.logit_rows) } else { 1 };
                out.extend(ctx.read_f32(self.external(&format!("logits.{k}"))?, 0, rows * v)?);
            }
            self.tokens.extend_from_slice(part);
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
        let m = self.m.clone();
        let (ctx, c) = (m.ctx(), m.cfg().hidden_size);
        self.upload_ids(ids)?;
        let mut arena = Arena::default();
        let mut out = Vec::new();
        for mode in std::iter::once(Mode::Embed).chain((0..m.cfg().num_hidden_layers).map(Mode::Layer)) {
            let g = self.graph(t, mode)?;
            let plan = Plan::new(&g)?;
            let exe = Executable::new(ctx, g, plan, &*m, &mut arena, &self.externals)?;
            self.set_pos(&exe, 0)?;
            exe.run(ctx)?;
            out.push(ctx.read_f32(self.external("h")?, 0, t * c)?);
        }
        self.tokens = ids.to_vec();
        Ok(out)
    }

    /// One decode step for token `id` at the next position. With `greedy`, the argmax is taken on
    /// the GPU and only its id is read back; otherwise the logits row is returned. The step is
    /// recorded once and replayed with only its position parameters rewritten.
    pub fn step(&mut self, id: u32, greedy: bool) -> Result<Step> {
        self.advance(id)?;
        let ctx = self.ctx();
        if greedy {
            Ok(Step::Greedy(ctx.read_u32(self.external("argmax.id")?, 0, 1)?[0]))
        } else {
            Ok(Step::Logits(ctx.read_f32(self.external("logits.0")?, 0, self.m.cfg().vocab_size)?))
        }
    }

    /// Submit the recorded decode step for `id` at the next position (recording it the first time);
    /// nothing is read back.
    fn advance(&mut self, id: u32) -> Result<()> {
        self.check_room(1)?;
        let pos = self.pos();
        self.ensure_kv(pos + 1)?;
        self.upload_ids(&[id])?;
        let m = self.m.clone();
        self.exe(1, Mode::Decode)?;
        let exe = self.exes.get(&(1, Mode::Decode)).ok_or_else(|| Error::Device("executable missing".into()))?;
        self.set_pos(exe, pos)?;
        exe.run(m.ctx())?;
        self.tokens.push(id);
        Ok(())
    }

    /// The logits row of the last position run (after [`Session::step_top_k`], to finish a
    /// sample the candidates did not settle).
    pub fn last_logits(&self) -> Result<Vec<f32>> {
        self.ctx().read_f32(self.external("logits.0")?, 0, self.m.cfg().vocab_size)
    }

    /// As [`Session::step`], but only the `k` (≤ 64) largest logits of the new row come back, found on
    /// the GPU: (id, logit) best first, ties to the lower id.
    pub fn step_top_k(&mut self, id: u32, k: usize) -> Result<Vec<(u32, f32)>> {
        if !matches!(&self.top_k, Some((kk, ..)) if *kk == k) {
            let ctx = self.ctx();
            let top = ops::sample::TopK::new(ctx, self.m.cfg().vocab_size, k)?;
            let ids = ctx.buffer("top-k ids", (k * 4) as u64)?;
            let vals = ctx.buffer("top-k values", (k * 4) as u64)?;
            let ds = top.record(ctx, self.external("logits.0")?, 0, &ids, &vals)?;
            self.top_k = Some((k, ds, ids, vals));
        }
        self.advance(id)?;
        let ctx = self.ctx();
        let (_, ds, ids, vals) = self.top_k.as_ref().ok_or_else(|| Error::Device("top-k missing".into()))?;
        ctx.run(&ds.iter().collect::<Vec<_>>())?;
        let ids = ctx.read_u32(ids, 0, k)?;
        let vals = ctx.read_f32(vals, 0, k)?;
        Ok(ids.into_iter().zip(vals).collect())
    }
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
    /// Prompt tokens found in the cache (not prefilled again).
    pub cached_tokens: usize,
    pub stop_reason: StopReason,
    /// Prompt tokens prefilled by this call.
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

/// What to generate: at most `max_new` tokens, stopping at any of `stop_ids` (not part of the
/// output) or when `cancel` is set (checked between prefill chunks and after every token).
#[derive(Clone, Copy, Debug, Default)]
pub struct GenOptions<'a> {
    pub max_new: usize,
    pub stop_ids: &'a [u32],
    pub cancel: Option<&'a AtomicBool>,
}

/// Run `prompt` as the whole sequence and generate. The cache keeps what it shares with the
/// previous sequence (a chat's history), so only the new tokens are prefilled. `on_token` sees each
/// new token and returns false to stop.
pub fn generate(
    s: &mut Session,
    prompt: &[u32],
    opts: &GenOptions,
    sampler: &mut crate::sampling::Sampler,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    let cancelled = || opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let t0 = std::time::Instant::now();
    let done = |out: Vec<u32>, cached_tokens, stop_reason, prefill_secs, decode_secs| Generation {
        output_ids: out,
        cached_tokens,
        stop_reason,
        prefill_tokens: prompt.len() - cached_tokens,
        prefill_secs,
        decode_secs,
    };
    let cached = s.reuse_prefix(prompt);
    let mut logits = match s.forward_cancellable(&prompt[cached..], false, &cancelled) {
        Err(Error::Cancelled) => {
            return Ok(done(Vec::new(), cached, StopReason::Cancelled, t0.elapsed().as_secs_f64(), 0.0));
        }
        r => r?,
    };
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut out = Vec::new();
    let gpu_argmax = !sampler.params.needs_logits();
    // Top-k sampling without penalties needs only the best logits: k + 1 of them show whether
    // a tie at the boundary extends the top-k set (then the whole row is read).
    let p = &sampler.params;
    let v = s.m.cfg().vocab_size;
    let gpu_top_k = (!p.has_penalty() && (1..ops::sample::MAX_K).contains(&p.top_k) && p.top_k < v).then_some(p.top_k);
    // The sampler's RNG counter is the position of the token being sampled.
    let mut next = sampler.sample(&mut logits, prompt, &out, s.pos() as u32);
    let reason = loop {
        if opts.stop_ids.contains(&next) {
            break StopReason::Eos;
        }
        out.push(next);
        if !on_token(next) || cancelled() {
            break StopReason::Cancelled;
        }
        if out.len() >= opts.max_new {
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
                Step::Logits(mut l) => sampler.sample(&mut l, prompt, &out, s.pos() as u32),
            }
        } else if let Some(k) = gpu_top_k {
            let cands = s.step_top_k(next, k + 1)?;
            match sampler.sample_candidates(&cands, v, s.pos() as u32) {
                Some(t) => t,
                None => sampler.sample(&mut s.last_logits()?, prompt, &out, s.pos() as u32),
            }
        } else {
            match s.step(next, false)? {
                Step::Logits(mut l) => sampler.sample(&mut l, prompt, &out, s.pos() as u32),
                Step::Greedy(t) => t,
            }
        };
    };
    Ok(done(out, cached, reason, prefill_secs, t1.elapsed().as_secs_f64()))
}
