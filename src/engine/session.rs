//! A conversation's state on the GPU: the KV cache, chunked prefill, and a decode step. Each forward
//! is the model's graph (`models::zhinao::build`) planned by liveness and recorded once
//! (`graph::Executable`): one submission with no readback until its outputs are needed. The decode
//! step and recent prefill shapes are replayed; the position lives in a device buffer the session
//! writes before each pass. Sampling runs on the device too (`ops::sampler`): a decode step and its
//! sampler go in one submission whose 4-byte token comes back through a ring of staging buffers, so
//! the generation loop (`engine::generate`) keeps steps queued and never leaves the GPU idle.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer, ReadRing, Ticket};
use crate::graph::{Arena, ExeCache, Executable, Plan};
use crate::models::zhinao::{self, Logits, Mode, Zhinao};
use crate::ops::kv::{KvFormat, KvLayout};
use crate::ops::sampler;
use crate::sampling::SamplingParams;

use super::kv::KvCache;

/// Executables kept per session, keyed by (token count, mode): the decode step, full prefill
/// chunks and the last few remainders replay without re-recording.
const RECORDED: usize = 6;
/// Staging slots for sampled tokens: the generation loop keeps at most this many steps in flight.
pub(crate) const RING_SLOTS: usize = 4;
/// Length of the device ring of sampled tokens (`toks[pos % TOKS]`, a debugging aid).
const TOKS: usize = 64;

/// What a decode step returns.
pub enum Step {
    /// The greedy token (picked on the device; logits not read back).
    Greedy(u32),
    /// The full logits row [V].
    Logits(Vec<f32>),
}

/// The device sampler, its token history and the readback ring, made on the first sampled step.
struct DeviceSampling {
    gpu: sampler::GpuSampler,
    /// [V] u32 token history (prompt flags and generated counts, for the penalties).
    hist: GpuBuffer,
    /// [TOKS] u32 ring of sampled tokens.
    toks: GpuBuffer,
    ring: ReadRing,
    /// The sampler dispatch over `logits.0` and the parameters it was recorded or last set with.
    recorded: Option<(SamplingParams, Dispatch)>,
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
    /// External tensors by graph name: ids, pos, k_cache.{l}.{a}, v_cache.{l}.{a}, logits.{k}, h.
    externals: Vec<(String, GpuBuffer)>,
    /// The paged KV cache (its arenas are in `externals`).
    kv: KvCache,
    exes: ExeCache<(usize, Mode)>,
    sampling: Option<DeviceSampling>,
}

impl Session {
    /// A session with an f16 KV cache of up to `ctx_len` positions, prefilling up to `chunk`
    /// tokens per pass.
    pub fn new(m: Arc<Zhinao>, ctx_len: usize, chunk: usize) -> Result<Session> {
        Session::with_kv(m, ctx_len, chunk, KvFormat::F16, None)
    }

    /// A session whose KV cache is stored as `fmt` (a quantized one with its first `sink`
    /// positions in f16, default [`crate::ops::kv::SINK`]), paged: arenas are allocated as the
    /// context grows (the first now), up to `ctx_len` positions.
    pub fn with_kv(
        m: Arc<Zhinao>,
        ctx_len: usize,
        chunk: usize,
        fmt: KvFormat,
        sink: Option<usize>,
    ) -> Result<Session> {
        let cfg = m.cfg();
        let layout = KvLayout::for_binding(fmt, cfg.num_kv_heads(), cfg.head_dim(), sink, m.ctx().limits.max_binding)?;
        let layout = layout.with_sink(layout.sink.min(ctx_len))?;
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
        let mut externals = vec![f("ids", chunk)?, f("pos", 1)?, f("logits.0", logit_rows * v)?];
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
            exes.reserve(&ctx, &zhinao::build_with(cfg, ctx_len, kv.spec, logit_rows, t, mode, m.decoder.layout())?)?;
        }
        Ok(Session { m, ctx_len, chunk, logit_rows, tokens: Vec::new(), externals, kv, exes, sampling: None })
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
    /// Most tokens one prefill pass takes.
    pub fn chunk(&self) -> usize {
        self.chunk
    }
    /// The KV cache's format.
    pub fn kv_format(&self) -> KvFormat {
        self.kv.format()
    }
    /// Positions the cache holds in f16 at its start (a quantized cache's sink).
    pub fn kv_sink(&self) -> usize {
        self.kv.spec.layout.sink
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

    pub(crate) fn external(&self, name: &str) -> Result<&GpuBuffer> {
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
        let g = zhinao::build_with(cfg, self.ctx_len, self.kv.spec, self.logit_rows, t, mode, m.decoder.layout())?;
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
        self.feed(ids, all, true, cancelled)
    }

    /// Feed `ids` in chunks; with `read`, return the logits the chunks produce (see `forward`).
    fn feed(&mut self, ids: &[u32], all: bool, read: bool, cancelled: &dyn Fn() -> bool) -> Result<Vec<f32>> {
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
                _ if !read => 0,
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

    /// One decode step for token `id` at the next position. With `greedy`, the device sampler takes
    /// the argmax and only its id is read back; otherwise the logits row is returned. The step is
    /// recorded once and replayed.
    pub fn step(&mut self, id: u32, greedy: bool) -> Result<Step> {
        self.check_room(1)?;
        self.upload_ids(&[id])?;
        let pos = self.pos();
        if greedy {
            self.prepare_sampling(&SamplingParams::greedy(), &[], &[])?;
            let t = self.submit_step(pos)?;
            let (tok, _) = self.read_token(t)?;
            self.tokens.push(id);
            return Ok(Step::Greedy(tok));
        }
        self.ensure_kv(pos + 1)?;
        let m = self.m.clone();
        self.decode_exe()?;
        let exe = self.exes.get(&(1, Mode::Decode)).ok_or_else(|| Error::Device("executable missing".into()))?;
        self.set_pos(exe, pos)?;
        exe.run(m.ctx())?;
        self.tokens.push(id);
        Ok(Step::Logits(self.ctx().read_f32(self.external("logits.0")?, 0, m.cfg().vocab_size)?))
    }

    fn decode_exe(&mut self) -> Result<&Executable> {
        self.exe(1, Mode::Decode)
    }

    /// Feed `ids` in chunks without reading anything back; the last position's logits stay in
    /// `logits.0` for the device sampler. Checks `cancelled` between chunks.
    pub(crate) fn prefill(&mut self, ids: &[u32], cancelled: &dyn Fn() -> bool) -> Result<()> {
        self.feed(ids, false, false, cancelled).map(|_| ())
    }

    /// Make the device sampler ready for `p`: record its dispatch over `logits.0` (or rewrite its
    /// parameters) and set the token history from `prompt` and the `generated` tokens so far.
    pub(crate) fn prepare_sampling(&mut self, p: &SamplingParams, prompt: &[u32], generated: &[u32]) -> Result<()> {
        let m = self.m.clone();
        let (ctx, v) = (m.ctx(), m.cfg().vocab_size);
        if self.sampling.is_none() {
            self.sampling = Some(DeviceSampling {
                gpu: sampler::GpuSampler::new(ctx, v)?,
                hist: ctx.buffer("sampler history", (v * 4) as u64)?,
                toks: ctx.buffer("sampled tokens", (TOKS * 4) as u64)?,
                ring: ctx.read_ring(RING_SLOTS, 4)?,
                recorded: None,
            });
        }
        let (logits, ids, pos) =
            (self.external("logits.0")?.clone(), self.external("ids")?.clone(), self.external("pos")?.clone());
        let sm = self.sampling.as_mut().ok_or_else(|| Error::Device("sampler missing".into()))?;
        match &mut sm.recorded {
            Some((q, d)) if q.is_greedy() == p.is_greedy() => {
                if q != p {
                    sm.gpu.set_params(ctx, d, p, 0, 0, false)?;
                    *q = p.clone();
                }
            }
            slot => {
                let io = sampler::SamplerIo {
                    logits: &logits,
                    offset: 0,
                    hist: &sm.hist,
                    ids: &ids,
                    pos: &pos,
                    toks: &sm.toks,
                    slot: 0,
                };
                *slot = Some((p.clone(), sm.gpu.record(ctx, p, &io, false)?));
            }
        }
        if p.has_penalty() {
            sampler::hist_init(ctx, &sm.hist, v, prompt, generated)?;
        }
        Ok(())
    }

    fn sampling_parts(&mut self) -> Result<(&Dispatch, &mut ReadRing)> {
        let sm = self.sampling.as_mut().ok_or_else(|| Error::Device("prepare_sampling first".into()))?;
        let d = &sm.recorded.as_ref().ok_or_else(|| Error::Device("prepare_sampling first".into()))?.1;
        Ok((d, &mut sm.ring))
    }

    /// Submit the sampler over the logits in `logits.0` (those of the token at `pos - 1`, the last
    /// one fed): the token goes to `ids[0]`, where the next decode step reads it, and comes back
    /// through the ring. The draw's RNG counter is `pos - 1`, the position of the last token fed.
    pub(crate) fn submit_sample(&mut self) -> Result<Ticket> {
        let counter = self.pos().checked_sub(1).ok_or_else(|| Error::Input("nothing fed to sample from".into()))?;
        self.ctx().write(self.external("pos")?, 0, &(counter as u32).to_le_bytes());
        let m = self.m.clone();
        let ids = self.external("ids")?.clone();
        let (d, ring) = self.sampling_parts()?;
        m.ctx().submit_and_read(ring, &[d], &ids, 0)
    }

    /// Submit the decode step of the token already in `ids[0]` (sampled by the previous submission)
    /// at position `pos`, and the sampler after it, in one submission. The host does not know the
    /// token yet, so the caller records it with [`Session::commit`] once read.
    pub(crate) fn submit_step(&mut self, pos: usize) -> Result<Ticket> {
        if pos >= self.ctx_len {
            return Err(Error::ContextOverflow { tokens: pos + 1, ctx: self.ctx_len, hint: String::new() });
        }
        self.ensure_kv(pos + 1)?;
        let m = self.m.clone();
        let ids = self.external("ids")?.clone();
        self.exe(1, Mode::Decode)?;
        let exe = self.exes.get(&(1, Mode::Decode)).ok_or_else(|| Error::Device("executable missing".into()))?;
        self.set_pos(exe, pos)?;
        let mut list: Vec<&Dispatch> = exe.dispatches().iter().collect();
        let sm = self.sampling.as_mut().ok_or_else(|| Error::Device("prepare_sampling first".into()))?;
        let d = &sm.recorded.as_ref().ok_or_else(|| Error::Device("prepare_sampling first".into()))?.1;
        list.push(d);
        m.ctx().submit_and_read(&mut sm.ring, &list, &ids, 0)
    }

    /// The dispatches one decode step + sampler submits.
    pub fn step_dispatches(&mut self) -> Result<usize> {
        Ok(self.decode_exe()?.dispatches().len() + 1)
    }

    /// Time each dispatch of one decode step and its sampler with timestamp queries, at the next
    /// position (its cache entry is overwritten later): (label, seconds) in order, or None when the
    /// adapter has no timestamps. Uses the sampler as the last generation left it (greedy if none).
    pub fn profile_step(&mut self) -> Result<Option<Vec<(&'static str, f64)>>> {
        if self.sampling.as_ref().is_none_or(|sm| sm.recorded.is_none()) {
            self.prepare_sampling(&SamplingParams::greedy(), &[], &[])?;
        }
        let pos = self.pos().min(self.ctx_len - 1);
        self.ensure_kv(pos + 1)?;
        let m = self.m.clone();
        self.decode_exe()?;
        let exe = self.exes.get(&(1, Mode::Decode)).ok_or_else(|| Error::Device("executable missing".into()))?;
        self.set_pos(exe, pos)?;
        let mut list: Vec<&Dispatch> = exe.dispatches().iter().collect();
        let sm = self.sampling.as_ref().ok_or_else(|| Error::Device("sampler missing".into()))?;
        list.extend(sm.recorded.as_ref().map(|r| &r.1));
        let times = m.ctx().run_profiled(&list)?;
        Ok(times.map(|t| list.iter().map(|d| d.label).zip(t).collect()))
    }

    /// The token of ticket `t`, and whether the host had to wait for it.
    pub(crate) fn read_token(&mut self, t: Ticket) -> Result<(u32, bool)> {
        let m = self.m.clone();
        let (_, ring) = self.sampling_parts()?;
        let (bytes, waited) = m.ctx().read_ticket(ring, t)?;
        let tok = u32::from_le_bytes(bytes[..4].try_into().map_err(|_| Error::Device("short token read".into()))?);
        Ok((tok, waited))
    }

    /// Wait for every submitted step (their tokens are dropped).
    pub(crate) fn drain(&mut self) -> Result<()> {
        let m = self.m.clone();
        match self.sampling.as_mut() {
            Some(sm) => m.ctx().drain_ring(&mut sm.ring),
            None => Ok(()),
        }
    }

    /// Record that `ids` were fed by submitted steps (their keys and values are in the cache).
    pub(crate) fn commit(&mut self, ids: &[u32]) {
        self.tokens.extend_from_slice(ids);
    }
}
