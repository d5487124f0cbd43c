//! Running a `Zhinao` model: the KV cache, chunked prefill, and a decode step that is recorded
//! once and replayed (only its position parameters are rewritten), each forward one submission
//! with no readback until its outputs are needed.

use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer};
use crate::models::zhinao::{Layer, Zhinao};
use crate::ops;
use crate::ops::attention::{self, AttnShape};

/// Activation buffers for up to `chunk` tokens (reused by every layer).
struct Acts {
    ids: GpuBuffer,    // [T] u32
    h: GpuBuffer,      // [T, C] residual stream
    x: GpuBuffer,      // [T, C] normed
    q: GpuBuffer,      // [T, H·D]
    k: GpuBuffer,      // [T, Hkv·D]
    v: GpuBuffer,      // [T, Hkv·D]
    attn: GpuBuffer,   // [T, H·D]
    gu: GpuBuffer,     // [T, 2I]
    act: GpuBuffer,    // [T, I]
    logits: GpuBuffer, // [logit_rows, V]
    scratch: GpuBuffer, // decode partials
    best: GpuBuffer,   // [1] u32 argmax id
    best_val: GpuBuffer, // [1] f32
}

/// The decode step, recorded once: `dispatches` plus which of them carry the position.
struct DecodePlan {
    dispatches: Vec<Dispatch>,
    /// (dispatch index, kind) of every position-dependent dispatch.
    dynamic: Vec<(usize, Dyn)>,
    argmax: Vec<Dispatch>,
}

#[derive(Clone, Copy)]
enum Dyn {
    RopeQ,
    RopeK,
    KvWrite,
    Attn,
}

/// What a decode step returns.
pub enum Step {
    /// The argmax token (computed on the GPU; logits not read back).
    Greedy(u32),
    /// The full logits row [V].
    Logits(Vec<f32>),
}

/// A conversation's state on the GPU: the model, its KV cache and activations.
pub struct Session<'m> {
    m: &'m Zhinao,
    ctx_len: usize,
    chunk: usize,
    logit_rows: usize,
    kv: Vec<(GpuBuffer, GpuBuffer)>,
    pos: usize,
    a: Acts,
    plan: Option<DecodePlan>,
}

impl<'m> Session<'m> {
    /// A session with a KV cache of `ctx_len` positions, prefilling up to `chunk` tokens per pass.
    pub fn new(m: &'m Zhinao, ctx_len: usize, chunk: usize) -> Result<Session<'m>> {
        let cfg = &m.cfg;
        let ctx = &*m.ctx;
        if m.lm_head.is_none() {
            return Err(Error::Unsupported("this model was loaded without its lm_head (a backbone for another head)".into()));
        }
        if ctx_len == 0 || ctx_len > cfg.max_position_embeddings {
            return Err(Error::Input(format!("context {ctx_len} outside 1..={}", cfg.max_position_embeddings)));
        }
        let chunk = chunk.clamp(1, ctx_len);
        let (c, d, h, hkv, i, v) = (cfg.hidden_size, cfg.head_dim(), cfg.num_attention_heads, cfg.num_kv_heads(), cfg.intermediate_size, cfg.vocab_size);
        let logit_rows = ((ctx.limits.max_binding / (v as u64 * 4)) as usize).clamp(1, chunk);
        let f = |label: &str, n: usize| ctx.buffer(label, (n * 4) as u64);
        let a = Acts {
            ids: f("ids", chunk)?,
            h: f("h", chunk * c)?,
            x: f("x", chunk * c)?,
            q: f("q", chunk * h * d)?,
            k: f("k", chunk * hkv * d)?,
            v: f("v", chunk * hkv * d)?,
            attn: f("attn", chunk * h * d)?,
            gu: f("gu", chunk * 2 * i)?,
            act: f("act", chunk * i)?,
            logits: f("logits", logit_rows * v)?,
            scratch: f("decode scratch", attention::decode_scratch_len(h, d, ctx_len))?,
            best: f("argmax id", 1)?,
            best_val: f("argmax value", 1)?,
        };
        let row = attention::cache_row_bytes(hkv, d) as u64 * ctx_len as u64;
        let mut kv = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            kv.push((ctx.buffer(&format!("k cache {l}"), row)?, ctx.buffer(&format!("v cache {l}"), row)?));
        }
        Ok(Session { m, ctx_len, chunk, logit_rows, kv, pos: 0, a, plan: None })
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
    /// Drop cached tokens after position `pos` (e.g. to rewind a conversation).
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    fn ctx(&self) -> &Context {
        &self.m.ctx
    }

    /// Record one layer for `t` tokens at positions `pos0..pos0+t`.
    fn record_layer(&self, l: usize, layer: &Layer, t: usize, pos0: usize, ds: &mut Vec<Dispatch>, dynamic: Option<&mut Vec<(usize, Dyn)>>) -> Result<()> {
        let ctx = self.ctx();
        let cfg = &self.m.cfg;
        let a = &self.a;
        let (c, d, h, hkv, i) = (cfg.hidden_size, cfg.head_dim(), cfg.num_attention_heads, cfg.num_kv_heads(), cfg.intermediate_size);
        let eps = cfg.rms_norm_eps as f32;
        let (ck, cv) = &self.kv[l];
        ds.push(ops::norm::rms_norm(ctx, &a.h, None, t, c, &layer.input_layernorm, eps, &a.x)?);
        ds.extend(layer.q_proj.record(ctx, &a.x, t, Some(&layer.q_bias), &a.q, false)?);
        ds.extend(layer.k_proj.record(ctx, &a.x, t, Some(&layer.k_bias), &a.k, false)?);
        ds.extend(layer.v_proj.record(ctx, &a.x, t, Some(&layer.v_bias), &a.v, false)?);
        let mut marks = Vec::new();
        marks.push((ds.len(), Dyn::RopeQ));
        ds.push(ops::rope::rope_qkv(ctx, &a.q, t, h, 0, d, pos0, &self.m.inv_freq)?);
        marks.push((ds.len(), Dyn::RopeK));
        ds.push(ops::rope::rope_qkv(ctx, &a.k, t, hkv, 0, d, pos0, &self.m.inv_freq)?);
        marks.push((ds.len(), Dyn::KvWrite));
        ds.push(attention::kv_write(ctx, &a.k, &a.v, t, hkv, d, pos0, ck, cv, self.ctx_len)?);
        if let Some(dy) = dynamic {
            marks.push((ds.len(), Dyn::Attn));
            marks.push((ds.len() + 1, Dyn::Attn));
            ds.extend(attention::decode(ctx, &a.q, ck, cv, &a.scratch, &a.attn, h, hkv, d, pos0 + t, self.ctx_len)?);
            dy.extend(marks);
        } else {
            let shape = AttnShape { b: 1, s: t, h, hkv, d, kv_stride: self.ctx_len, pos0, causal: true };
            ds.push(attention::prefill(ctx, &a.q, ck, cv, &a.attn, &shape, None)?);
        }
        ds.extend(layer.o_proj.record(ctx, &a.attn, t, None, &a.h, true)?);
        ds.push(ops::norm::rms_norm(ctx, &a.h, None, t, c, &layer.post_attention_layernorm, eps, &a.x)?);
        ds.extend(layer.gate_up.record(ctx, &a.x, t, None, &a.gu, false)?);
        ds.push(ops::elementwise::silu_mul(ctx, &a.gu, t, i, &a.act)?);
        ds.extend(layer.down_proj.record(ctx, &a.act, t, None, &a.h, true)?);
        Ok(())
    }

    /// Final norm and lm_head for rows `row0..row0+n` of x (n ≤ logit_rows) into `logits`.
    fn record_head(&self, t: usize, row0: usize, n: usize, ds: &mut Vec<Dispatch>) -> Result<()> {
        let ctx = self.ctx();
        let cfg = &self.m.cfg;
        let lm_head = self.m.lm_head.as_ref().ok_or_else(|| Error::Unsupported("model loaded without its lm_head".into()))?;
        ds.push(ops::norm::rms_norm(ctx, &self.a.h, None, t, cfg.hidden_size, &self.m.norm, cfg.rms_norm_eps as f32, &self.a.x)?);
        ds.extend(ops::matmul::matmul_rows(ctx, &self.a.x, row0, n, lm_head, None, &self.a.logits, false)?);
        Ok(())
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
        self.ctx().write(&self.a.ids, 0, bytemuck::cast_slice(ids));
        Ok(())
    }

    /// Feed `ids` (prefill, in chunks) and return logits: the last position's [V], or with
    /// `all` every position's [T, V].
    pub fn forward(&mut self, ids: &[u32], all: bool) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        self.check_room(ids.len())?;
        let v = self.m.cfg.vocab_size;
        let mut out = Vec::new();
        for part in ids.chunks(self.chunk) {
            let t = part.len();
            let pos0 = self.pos;
            self.upload_ids(part)?;
            let mut ds = ops::embedding::embedding(self.ctx(), &self.m.embed_tokens, part, &self.a.ids, &self.a.h)?;
            for (l, layer) in self.m.layers.iter().enumerate() {
                self.record_layer(l, layer, t, pos0, &mut ds, None)?;
            }
            let last = std::ptr::eq(part.as_ptr_range().end, ids.as_ptr_range().end);
            let rows: Vec<(usize, usize)> = if all {
                (0..t).step_by(self.logit_rows).map(|r| (r, self.logit_rows.min(t - r))).collect()
            } else if last {
                vec![(t - 1, 1)]
            } else {
                vec![]
            };
            if rows.is_empty() {
                self.ctx().run(&ds.iter().collect::<Vec<_>>())?;
            }
            for (i, &(r0, n)) in rows.iter().enumerate() {
                let mut head = Vec::new();
                self.record_head(t, r0, n, &mut head)?;
                let mut all_ds: Vec<&Dispatch> = if i == 0 { ds.iter().collect() } else { Vec::new() };
                all_ds.extend(head.iter());
                self.ctx().run(&all_ds)?;
                out.extend(self.ctx().read_f32(&self.a.logits, 0, n * v)?);
            }
            self.pos += t;
        }
        Ok(out)
    }

    /// Per-layer hidden states for `ids` from a fresh cache (debugging and layer-by-layer
    /// parity): [L + 1] tensors of [T, C], the embedding output then each layer's output.
    pub fn hidden_states(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.reset();
        let t = ids.len();
        if t == 0 || t > self.chunk {
            return Err(Error::Input(format!("hidden_states takes 1..={} tokens", self.chunk)));
        }
        let c = self.m.cfg.hidden_size;
        self.upload_ids(ids)?;
        let ds = ops::embedding::embedding(self.ctx(), &self.m.embed_tokens, ids, &self.a.ids, &self.a.h)?;
        self.ctx().run(&ds.iter().collect::<Vec<_>>())?;
        let mut out = vec![self.ctx().read_f32(&self.a.h, 0, t * c)?];
        for (l, layer) in self.m.layers.iter().enumerate() {
            let mut ds = Vec::new();
            self.record_layer(l, layer, t, 0, &mut ds, None)?;
            self.ctx().run(&ds.iter().collect::<Vec<_>>())?;
            out.push(self.ctx().read_f32(&self.a.h, 0, t * c)?);
        }
        self.pos = t;
        Ok(out)
    }

    fn build_plan(&self) -> Result<DecodePlan> {
        let ctx = self.ctx();
        let mut ds = ops::embedding::embedding_device_ids(ctx, &self.m.embed_tokens, 1, &self.a.ids, &self.a.h)?;
        let mut dynamic = Vec::new();
        for (l, layer) in self.m.layers.iter().enumerate() {
            self.record_layer(l, layer, 1, 0, &mut ds, Some(&mut dynamic))?;
        }
        self.record_head(1, 0, 1, &mut ds)?;
        let argmax = ops::sample::argmax(ctx, &self.a.logits, 1, self.m.cfg.vocab_size, &self.a.best, &self.a.best_val)?;
        Ok(DecodePlan { dispatches: ds, dynamic, argmax })
    }

    /// One decode step for token `id` at the next position. With `greedy`, the argmax is taken on
    /// the GPU and only its id is read back; otherwise the logits row is returned.
    pub fn step(&mut self, id: u32, greedy: bool) -> Result<Step> {
        self.check_room(1)?;
        if self.plan.is_none() {
            self.plan = Some(self.build_plan()?);
        }
        self.upload_ids(&[id])?;
        let cfg = &self.m.cfg;
        let (d, h, hkv) = (cfg.head_dim(), cfg.num_attention_heads, cfg.num_kv_heads());
        let pos = self.pos;
        let rope_q = ops::rope::params(1, h, 0, d, pos)?;
        let rope_k = ops::rope::params(1, hkv, 0, d, pos)?;
        let kvw = attention::kv_write_params(1, hkv, d, pos, self.ctx_len)?;
        let att = attention::decode_params(h, hkv, d, pos + 1, self.ctx_len)?;
        let ctx = self.m.ctx.clone();
        let plan = self.plan.as_ref().ok_or_else(|| Error::Device("decode plan missing".into()))?;
        for &(i, kind) in &plan.dynamic {
            let bytes = match kind {
                Dyn::RopeQ => &rope_q,
                Dyn::RopeK => &rope_k,
                Dyn::KvWrite => &kvw,
                Dyn::Attn => &att,
            };
            ctx.set_params(&plan.dispatches[i], bytes);
        }
        let mut all: Vec<&Dispatch> = plan.dispatches.iter().collect();
        if greedy {
            all.extend(plan.argmax.iter());
        }
        ctx.run(&all)?;
        self.pos += 1;
        if greedy {
            Ok(Step::Greedy(ctx.read_u32(&self.a.best, 0, 1)?[0]))
        } else {
            Ok(Step::Logits(ctx.read_f32(&self.a.logits, 0, self.m.cfg.vocab_size)?))
        }
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
    let t0 = std::time::Instant::now();
    let mut logits = s.forward(prompt, false)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let mut out = Vec::new();
    let gpu_argmax = !sampler.params.needs_logits();
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
        next = match s.step(next, gpu_argmax)? {
            Step::Greedy(t) => t,
            Step::Logits(mut l) => sampler.sample(&mut l, prompt, &out),
        };
    };
    Ok(Generation { output_ids: out, stop_reason: reason, prefill_tokens: prompt.len(), prefill_secs, decode_secs: t1.elapsed().as_secs_f64() })
}
