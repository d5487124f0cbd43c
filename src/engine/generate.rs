//! The generation loop: prefill, then decode steps that never wait on the host. Each step is one
//! submission (the recorded decode graph + the device sampler) whose input token is the one the
//! previous submission sampled into `ids[0]`, so the host queues steps ahead without knowing their
//! tokens. It keeps [`LOOKAHEAD`] steps in flight and reads each 4-byte token through a ring of
//! staging buffers while the next step runs. A stop (eos, length, cancel) found on token k leaves
//! the steps queued after it to finish; their tokens are dropped and the cache keeps only what was
//! really generated (later positions are overwritten by the next turn).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::session::{Session, RING_SLOTS};
use crate::error::{Error, Result};
use crate::gpu::Ticket;
use crate::sampling::Sampler;

/// Steps submitted ahead of the one being read: the GPU works on step k + 1 while the host reads
/// step k's token. More only adds wasted steps after a stop.
pub const LOOKAHEAD: usize = 2;
const _: () = assert!(LOOKAHEAD < RING_SLOTS);

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

/// How the decode loop used the device: submissions, dispatches and host waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Submissions (the first token's sampler, then one per decode step), wasted ones included.
    pub submits: usize,
    /// Dispatches in those submissions.
    pub dispatches: usize,
    /// Tokens the host had to block for (the GPU was still computing them).
    pub waits: usize,
    /// Of those, the waits with no later step queued: the GPU goes idle until the host submits.
    pub idle_waits: usize,
}

pub struct Generation {
    pub output_ids: Vec<u32>,
    /// Prompt tokens found in the cache (not prefilled again).
    pub cached_tokens: usize,
    pub stop_reason: StopReason,
    /// Prompt tokens prefilled by this call.
    pub prefill_tokens: usize,
    /// From the call to the first token's arrival (prefill + the first sample: time to first token).
    pub prefill_secs: f64,
    /// From the first token's arrival to the end.
    pub decode_secs: f64,
    pub steps: StepStats,
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
/// previous sequence (a chat's history), so only the new tokens are prefilled. Sampling (all of
/// `sampler.params`: penalties, temperature, top-k, top-p, seed) runs on the device with the
/// semantics of `sampling::decide`. `on_token` sees each new token and returns false to stop.
pub fn generate(
    s: &mut Session,
    prompt: &[u32],
    opts: &GenOptions,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    let cancelled = || opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let t0 = Instant::now();
    let cached = s.reuse_prefix(prompt);
    let mut g = Generation {
        output_ids: Vec::new(),
        cached_tokens: cached,
        stop_reason: StopReason::Cancelled,
        prefill_tokens: prompt.len() - cached,
        prefill_secs: 0.0,
        decode_secs: 0.0,
        steps: StepStats::default(),
    };
    sampler.params.check()?;
    match s.prefill(&prompt[cached..], &cancelled) {
        Err(Error::Cancelled) => {
            g.prefill_secs = t0.elapsed().as_secs_f64();
            return Ok(g);
        }
        r => r?,
    }
    s.prepare_sampling(&sampler.params, prompt, &[])?;
    let mut first = None;
    let r = decode_loop(s, opts, &cancelled, on_token, &mut g, &mut first);
    // Steps queued past a stop (or an error) finish before the session is used again.
    let drained = s.drain();
    g.stop_reason = r?;
    drained?;
    // The prefill is not waited for: its time ends when the first token arrives (time to first
    // token); decoding is the rest.
    let first = first.unwrap_or_else(Instant::now);
    g.prefill_secs = (first - t0).as_secs_f64();
    g.decode_secs = first.elapsed().as_secs_f64();
    Ok(g)
}

/// Token k (k ≥ 0) comes from submission k: the sampler alone for k = 0 (over the prefill's last
/// logits), else the decode step of token k − 1 at position p0 + k − 1 followed by the sampler.
/// Submission k is made only when it can be used: k < max_new and its position is in the cache.
fn decode_loop(
    s: &mut Session,
    opts: &GenOptions,
    cancelled: &dyn Fn() -> bool,
    on_token: &mut dyn FnMut(u32) -> bool,
    g: &mut Generation,
    first: &mut Option<Instant>,
) -> Result<StopReason> {
    let p0 = s.pos();
    let per_step = s.step_dispatches()?;
    // At least one token, as before the first check of `max_new`.
    let max_new = opts.max_new.max(1);
    let ctx_len = s.ctx_len();
    let allowed = |k: usize| k < max_new && (k == 0 || p0 + k - 1 < ctx_len);
    let mut inflight: VecDeque<Ticket> = VecDeque::new();
    let mut submitted = 0;
    let out = &mut g.output_ids;
    let reason = loop {
        let k = out.len();
        while submitted <= k + LOOKAHEAD && allowed(submitted) {
            let t = if submitted == 0 { s.submit_sample()? } else { s.submit_step(p0 + submitted - 1)? };
            inflight.push_back(t);
            g.steps.submits += 1;
            g.steps.dispatches += if submitted == 0 { 1 } else { per_step };
            submitted += 1;
        }
        let Some(t) = inflight.pop_front() else {
            break if k >= max_new { StopReason::Length } else { StopReason::Context };
        };
        let (tok, waited) = s.read_token(t)?;
        first.get_or_insert_with(Instant::now);
        if waited {
            g.steps.waits += 1;
            g.steps.idle_waits += inflight.is_empty() as usize;
        }
        if opts.stop_ids.contains(&tok) {
            break StopReason::Eos;
        }
        out.push(tok);
        if !on_token(tok) || cancelled() {
            break StopReason::Cancelled;
        }
    };
    // Submissions 1..submitted fed tokens 0..submitted - 1 (those past a stop are not the
    // conversation's): the cache holds the prompt and the generated tokens that were fed.
    let fed = submitted.saturating_sub(1).min(out.len());
    s.commit(&out[..fed]);
    Ok(reason)
}
