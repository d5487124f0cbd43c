//! Continuous batching: many sequences decoded in one step, so the weights are read once per step
//! for all of them (a server with several users, or `zhinao generate --batch-file`).
//!
//! The cache is a pool of `parallel` slots of `ctx_len` positions, one f16 buffer per layer for K
//! and one for V (`k_slots.{l}`, `v_slots.{l}`); a sequence owns a slot from the end of its prefill
//! until it leaves. A joining prompt is prefilled in a staging [`Session`], one chunk per step, so a
//! long prompt never stalls the running sequences for more than one chunk; when its last chunk is
//! done its keys and values are copied into a free slot and its first token is sampled from the
//! prefill's logits. Each step then runs one graph over the slots in use (`zhinao::build_slots`):
//! the weight matmuls over B rows (the fused GEMVs up to `gemv::MAX_T` rows, GEMMs beyond),
//! attention per sequence over its own slot and length (`pos[b]`), and one device sampler per
//! sequence with its own parameters, seed and token history. B is the highest slot in use + 1,
//! rounded up to a power of two; rows of free slots compute nothing anyone reads.
//!
//! Batch invariance: a sequence's prefill is the lone session's, and up to `gemv::MAX_T` slots each
//! row of a step is computed by the same kernels as a lone decode step, so its logits are bit for
//! bit the same (tests/batch.rs); the GEMM path beyond that may differ in the last bits.
//! Sequences join and leave between any two steps; `cancel` frees a slot without touching the
//! others.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::{Dispatch, GpuBuffer, ReadRing};
use crate::graph::ExeCache;
use crate::models::zhinao::{self, Zhinao};
use crate::ops::attention::cache_row_bytes;
use crate::ops::kv::{KvFormat, KvLayout};
use crate::ops::sampler::{self, GpuSampler, SamplerIo};
use crate::sampling::SamplingParams;

use super::generate::StopReason;
use super::session::Session;

/// How many sequences a [`Batch`] holds and how long each may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// Sequences decoded together (slots).
    pub parallel: usize,
    /// Positions per sequence (prompt + generated).
    pub ctx_len: usize,
    /// Prompt tokens prefilled per step while others decode.
    pub chunk: usize,
}

/// A sequence in a [`Batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// A token one step produced for a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Produced {
    pub seq: SeqId,
    pub token: u32,
    /// The sequence's slot is full: this token cannot be fed, and the sequence has left the batch.
    pub last: bool,
}

/// A sequence decoding in a slot.
struct Running {
    id: SeqId,
    /// Tokens in the slot's cache: the position of the token the next step feeds.
    len: usize,
    /// Its sampler over logits row `slot` (token history `hists[slot]`), writing `ids[slot]`.
    sampler: Dispatch,
}

/// A sequence whose prompt is (being) prefilled.
struct Waiting {
    id: SeqId,
    prompt: Vec<u32>,
    params: SamplingParams,
    fed: usize,
}

/// Sequences decoded together: the slot pool, the staging session that prefills joining prompts,
/// and the recorded step graphs.
pub struct Batch {
    m: Arc<Zhinao>,
    opts: BatchOptions,
    /// ids [P], pos [P], logits.0 [P, V], k_slots.{l}, v_slots.{l}.
    externals: Vec<(String, GpuBuffer)>,
    exes: ExeCache<usize>,
    slots: Vec<Option<Running>>,
    waiting: VecDeque<Waiting>,
    staging: Session,
    sampler: GpuSampler,
    /// [V] u32 token history per slot (the penalties), reset when a sequence joins.
    hists: Vec<GpuBuffer>,
    toks: GpuBuffer,
    ring: ReadRing,
    next_id: u64,
    steps: usize,
}

impl Batch {
    /// A pool of `opts.parallel` slots of `opts.ctx_len` positions (f16 K and V), allocated now:
    /// an error says when the device cannot bind or hold it.
    pub fn new(m: Arc<Zhinao>, opts: BatchOptions) -> Result<Batch> {
        let cfg = m.cfg();
        let ctx = m.ctx().clone();
        let (n, rows) = (opts.parallel, opts.ctx_len);
        if n == 0 || rows == 0 || rows > cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "a batch of {n} sequences of {rows} positions (1 ≤ ctx ≤ {})",
                cfg.max_position_embeddings
            )));
        }
        let (hkv, d, v) = (cfg.num_kv_heads(), cfg.head_dim(), cfg.vocab_size);
        let layer_bytes = (n * rows * cache_row_bytes(hkv, d)) as u64;
        let limit = ctx.limits.max_binding;
        if layer_bytes > limit {
            return Err(Error::Input(format!(
                "--parallel {n} × --ctx {rows} needs {:.1} MiB per layer for K (one binding), the device binds at most {:.1} MiB: lower --parallel or --ctx",
                layer_bytes as f64 / 1048576.0,
                limit as f64 / 1048576.0
            )));
        }
        let total = 2 * cfg.num_hidden_layers as u64 * layer_bytes;
        let oom = |e: Error| {
            Error::Device(format!(
                "the KV cache for --parallel {n} × --ctx {rows} ({:.1} MiB) does not fit the device ({e}): lower --parallel or --ctx",
                total as f64 / 1048576.0
            ))
        };
        let buf = |name: String, bytes: u64| -> Result<(String, GpuBuffer)> {
            let b = ctx.buffer(&name, bytes).map_err(oom)?;
            Ok((name, b))
        };
        let mut externals = vec![
            buf("ids".into(), (n * 4) as u64)?,
            buf("pos".into(), (n * 4) as u64)?,
            buf("logits.0".into(), (n * v * 4) as u64)?,
        ];
        for l in 0..cfg.num_hidden_layers {
            externals.push(buf(format!("k_slots.{l}"), layer_bytes)?);
            externals.push(buf(format!("v_slots.{l}"), layer_bytes)?);
        }
        let layout = KvLayout::with_rows(KvFormat::F16, hkv, d, rows, rows)?;
        let staging = Session::with_layout(m.clone(), rows, opts.chunk, layout)?;
        let mut exes = ExeCache::new(8);
        exes.reserve(&ctx, &zhinao::build_slots(cfg, rows, n, m.decoder.layout())?)?;
        Ok(Batch {
            sampler: GpuSampler::new(&ctx, v)?,
            hists: (0..n).map(|_| buf("slot history".into(), (v * 4) as u64).map(|b| b.1)).collect::<Result<_>>()?,
            toks: ctx.buffer("batch sampled tokens", 256)?,
            ring: ctx.read_ring(2, (n * 4) as u64)?,
            m,
            opts,
            externals,
            exes,
            slots: (0..n).map(|_| None).collect(),
            waiting: VecDeque::new(),
            staging,
            next_id: 0,
            steps: 0,
        })
    }

    pub fn options(&self) -> BatchOptions {
        self.opts
    }
    /// Sequences decoding now.
    pub fn running(&self) -> usize {
        self.slots.iter().flatten().count()
    }
    /// Sequences waiting for (or in) their prefill.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
    /// Nothing to do: no sequence running or waiting.
    pub fn is_idle(&self) -> bool {
        self.running() == 0 && self.waiting.is_empty()
    }
    /// Decode steps run so far.
    pub fn steps(&self) -> usize {
        self.steps
    }
    /// Step graphs recorded so far (one per batch size used).
    pub fn recordings(&self) -> usize {
        self.exes.recordings()
    }

    /// Queue `prompt` to be generated with `params`: it is prefilled between the next steps and
    /// joins the batch when a slot is free. The prompt must leave room in the slot for its prefill
    /// (at most `ctx_len` tokens); its ids must be in the vocabulary.
    pub fn add(&mut self, prompt: &[u32], params: &SamplingParams) -> Result<SeqId> {
        params.check()?;
        let v = self.m.cfg().vocab_size;
        if prompt.is_empty() {
            return Err(Error::Input("an empty prompt".into()));
        }
        if prompt.len() > self.opts.ctx_len {
            return Err(Error::ContextOverflow {
                tokens: prompt.len(),
                ctx: self.opts.ctx_len,
                hint: " (raise --ctx, or shorten the prompt)".into(),
            });
        }
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= v) {
            return Err(Error::Input(format!("token id {bad} outside the vocabulary of {v}")));
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.waiting.push_back(Waiting { id, prompt: prompt.to_vec(), params: params.clone(), fed: 0 });
        Ok(id)
    }

    /// Take `id` out of the batch (a stop, a cancel, a client gone): its slot is free for the next
    /// sequence from the next step on; the others are untouched. False if it is not in the batch.
    pub fn cancel(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.waiting.iter().position(|w| w.id == id) {
            self.waiting.remove(i);
            return true;
        }
        match self.slots.iter_mut().find(|s| s.as_ref().is_some_and(|r| r.id == id)) {
            Some(slot) => {
                *slot = None;
                true
            }
            None => false,
        }
    }

    /// One step: a prefill chunk of the first waiting prompt (when a slot is free for it; its first
    /// token when the prompt is done), then one decode step of every running sequence. Returns
    /// the tokens produced, in order; a sequence that joined this step may have two. After the
    /// caller stops a sequence (`cancel`), later tokens of it in the same result are to be dropped.
    pub fn step(&mut self) -> Result<Vec<Produced>> {
        let mut out = Vec::new();
        if let Some(slot) = self.slots.iter().position(|s| s.is_none()) {
            if let Some(w) = self.waiting.front_mut() {
                if w.fed == 0 {
                    self.staging.reset();
                }
                let end = (w.fed + self.opts.chunk).min(w.prompt.len());
                let part = w.prompt[w.fed..end].to_vec();
                w.fed = end;
                let done = end == w.prompt.len();
                self.staging.prefill(&part, &|| false)?;
                if done {
                    let w = self.waiting.pop_front().ok_or_else(|| Error::Device("waiting queue".into()))?;
                    out.push(self.admit(slot, w)?);
                }
            }
        }
        if let Some(hi) = self.slots.iter().rposition(|s| s.is_some()) {
            out.extend(self.decode(hi + 1)?);
        }
        Ok(out)
    }

    fn external(&self, name: &str) -> Result<&GpuBuffer> {
        self.externals
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b)
            .ok_or_else(|| Error::Device(format!("batch buffer '{name}' missing")))
    }

    /// Move the staged prefill of `w` into `slot` and sample its first token.
    fn admit(&mut self, slot: usize, w: Waiting) -> Result<Produced> {
        let m = self.m.clone();
        let (ctx, cfg) = (m.ctx(), m.cfg());
        let (v, n) = (cfg.vocab_size, w.prompt.len());
        let row = cache_row_bytes(cfg.num_kv_heads(), cfg.head_dim()) as u64;
        let at = (slot * self.opts.ctx_len) as u64 * row;
        let mut regions = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            let (k, v) = crate::models::kv::arena_names(l, 0);
            for (src, dst) in [(k, format!("k_slots.{l}")), (v, format!("v_slots.{l}"))] {
                regions.push((self.staging.external(&src)?, 0, self.external(&dst)?, at, n as u64 * row));
            }
        }
        let logits = self.external("logits.0")?;
        regions.push((self.staging.external("logits.0")?, 0, logits, (slot * v * 4) as u64, (v * 4) as u64));
        ctx.copy_regions(&regions);
        let hist = &self.hists[slot];
        if w.params.has_penalty() {
            sampler::hist_init(ctx, hist, v, &w.prompt, &[])?;
        }
        let (ids, pos) = (self.external("ids")?.clone(), self.external("pos")?);
        let io = SamplerIo { logits, offset: slot * v, hist, ids: &ids, pos, toks: &self.toks, slot };
        let d = self.sampler.record(ctx, &w.params, &io, false)?;
        // The draw's counter is the position of the last token fed, as in a lone session.
        ctx.write(pos, (slot * 4) as u64, &((n - 1) as u32).to_le_bytes());
        let t = ctx.submit_and_read(&mut self.ring, &[&d], &ids, 0)?;
        let (bytes, _) = ctx.read_ticket(&mut self.ring, t)?;
        let token = word(&bytes, slot)?;
        let last = n >= self.opts.ctx_len;
        if !last {
            self.slots[slot] = Some(Running { id: w.id, len: n, sampler: d });
        }
        Ok(Produced { seq: w.id, token, last })
    }

    /// One decode step over slots 0 .. `used` (rounded up to a power of two).
    fn decode(&mut self, used: usize) -> Result<Vec<Produced>> {
        let b = used.next_power_of_two().min(self.opts.parallel);
        let m = self.m.clone();
        let ctx = m.ctx();
        let ids = self.external("ids")?.clone();
        // Free slots feed position 0 of their own slot: nothing reads what they compute.
        let pos: Vec<u32> = self.slots[..b].iter().map(|s| s.as_ref().map_or(0, |r| r.len as u32)).collect();
        ctx.write(self.external("pos")?, 0, bytemuck::cast_slice(&pos));
        if self.exes.get(&b).is_none() {
            let g = zhinao::build_slots(m.cfg(), self.opts.ctx_len, b, m.decoder.layout())?;
            self.exes.insert(ctx, b, g, &*m, &self.externals)?;
        }
        let exe = self.exes.get(&b).ok_or_else(|| Error::Device("executable missing".into()))?;
        let mut list: Vec<&Dispatch> = exe.dispatches().iter().collect();
        list.extend(self.slots[..b].iter().flatten().map(|r| &r.sampler));
        let t = ctx.submit_and_read(&mut self.ring, &list, &ids, 0)?;
        let (bytes, _) = ctx.read_ticket(&mut self.ring, t)?;
        self.steps += 1;
        let mut out = Vec::new();
        for (i, s) in self.slots[..b].iter_mut().enumerate() {
            let Some(r) = s else { continue };
            r.len += 1;
            let last = r.len >= self.opts.ctx_len;
            out.push(Produced { seq: r.id, token: word(&bytes, i)?, last });
            if last {
                *s = None;
            }
        }
        Ok(out)
    }
}

fn word(bytes: &[u8], i: usize) -> Result<u32> {
    bytes
        .get(4 * i..4 * i + 4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .ok_or_else(|| Error::Device("short token read".into()))
}

/// One prompt of a batch generation.
#[derive(Clone, Debug)]
pub struct BatchJob {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// Most new tokens.
    pub max_new: usize,
}

/// What [`generate_batch`] produced for one job.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchOutput {
    pub output_ids: Vec<u32>,
    pub stop_reason: StopReason,
    /// Why the job could not run (its prompt does not fit, a bad token id); the others go on.
    pub error: Option<String>,
}

/// Generate every job through `batch`: jobs join as slots free up and each stops at one of
/// `stop_ids` (not part of its output), at `max_new` tokens, or when its slot is full. `on_done(i,
/// out)` sees job i as it finishes (in finishing order); `cancel` ends the unfinished jobs with
/// `Cancelled`. Returns the outputs in job order.
pub fn generate_batch(
    batch: &mut Batch,
    jobs: &[BatchJob],
    stop_ids: &[u32],
    cancel: Option<&AtomicBool>,
    on_done: &mut dyn FnMut(usize, &BatchOutput),
) -> Result<Vec<BatchOutput>> {
    let mut outs: Vec<Option<BatchOutput>> = vec![None; jobs.len()];
    let mut acc: Vec<Vec<u32>> = vec![Vec::new(); jobs.len()];
    let mut index: HashMap<SeqId, usize> = HashMap::new();
    let mut finish = |i: usize, ids: Vec<u32>, stop_reason: StopReason, error: Option<String>| {
        let out = BatchOutput { output_ids: ids, stop_reason, error };
        on_done(i, &out);
        outs[i] = Some(out);
    };
    for (i, j) in jobs.iter().enumerate() {
        if j.max_new == 0 {
            finish(i, Vec::new(), StopReason::Length, None);
            continue;
        }
        match batch.add(&j.prompt, &j.params) {
            Ok(id) => {
                index.insert(id, i);
            }
            Err(e @ (Error::Input(_) | Error::ContextOverflow { .. })) => {
                finish(i, Vec::new(), StopReason::Cancelled, Some(e.to_string()))
            }
            Err(e) => return Err(e),
        }
    }
    while !index.is_empty() {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            let mut left: Vec<(SeqId, usize)> = index.drain().collect();
            left.sort();
            for (id, i) in left {
                batch.cancel(id);
                finish(i, std::mem::take(&mut acc[i]), StopReason::Cancelled, None);
            }
            break;
        }
        for p in batch.step()? {
            let Some(&i) = index.get(&p.seq) else { continue };
            let reason = if stop_ids.contains(&p.token) {
                Some(StopReason::Eos)
            } else {
                acc[i].push(p.token);
                if acc[i].len() >= jobs[i].max_new {
                    Some(StopReason::Length)
                } else if p.last {
                    Some(StopReason::Context)
                } else {
                    None
                }
            };
            if let Some(r) = reason {
                index.remove(&p.seq);
                batch.cancel(p.seq);
                finish(i, std::mem::take(&mut acc[i]), r, None);
            }
        }
    }
    outs.into_iter().map(|o| o.ok_or_else(|| Error::Device("a batch job ended without an output".into()))).collect()
}
