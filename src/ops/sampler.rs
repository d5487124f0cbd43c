//! Host side of `shaders/sampler.wgsl`: the whole sampler over one logits row on the device, in
//! one dispatch of one workgroup: penalties from a token history, temperature, top-k, top-p and a
//! seeded draw with the semantics of `sampling::decide` (its CPU twin), or greedy argmax with the
//! same outputs. Writes the token to `ids[0]` (what the next decode step's embedding reads) and to
//! a ring `toks[pos % cap]`, counts it in the history, and optionally advances `pos[0]`, so a
//! recorded decode step + sampler replays with no host write and no readback.

use bytemuck::{Pod, Zeroable};

use super::elementwise::need_f32;
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::sampling::SamplingParams;

/// Words of the debug output `dbg` (u32 each; f32 values as bits).
pub mod dbg {
    /// The token.
    pub const TOKEN: usize = 0;
    /// Size of the kept set (`Decision::kept`).
    pub const KEPT: usize = 1;
    /// The kept set is {order_key(l) ≥ TAU} (the bound may lie below the smallest kept key).
    pub const TAU: usize = 2;
    /// The top-k set is {order_key(l) ≥ KAPPA}.
    pub const KAPPA: usize = 3;
    /// Size of the top-k set.
    pub const K_COUNT: usize = 4;
    /// order_key of the max penalised logit.
    pub const MAX_KEY: usize = 5;
    /// The 24 random bits of the draw.
    pub const U_BITS: usize = 6;
    /// Passes over the row after the first (select passes + the draw).
    pub const PASSES: usize = 7;
    /// f32: Σ q over the whole row (first pass).
    pub const SUM: usize = 8;
    /// f32: Σ q over the top-k set (0 when top-p did not need it).
    pub const K_MASS: usize = 9;
    /// f32: Σ q over the kept set (as the draw summed it).
    pub const KEPT_MASS: usize = 10;
    /// Bit 0: greedy; bit 1: top-p settled by the max alone; bit 2: one token kept, no draw.
    pub const FLAGS: usize = 11;
    /// Number of elements equal to the max.
    pub const COUNT_MAX: usize = 12;
    /// Lowest id of the max.
    pub const ARGMAX: usize = 13;
}
/// Length of the debug output.
pub const DBG_LEN: usize = 16;
/// Largest row the sampler accepts (counts are exact in f32 below 2^24).
pub const MAX_V: usize = 1 << 24;
/// Bit 31 of a history word: the token is in the prompt or the generated tokens.
pub const SEEN: u32 = 1 << 31;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    skip: u32,
    top_k: u32,
    advance: u32,
    inv_t: f32,
    top_p: f32,
    rep: f32,
    inv_rep: f32,
    presence: f32,
    frequency: f32,
    seed_lo: u32,
    seed_hi: u32,
    penalize: u32,
    n_prompt: u32,
    n_ids: u32,
    slot: u32,
}

/// Workgroup size: 1024 where the adapter allows it, else 256 (the WebGPU minimum).
pub fn workgroup(ctx: &Context) -> u32 {
    if ctx.limits.invocations_per_workgroup >= 1024 {
        1024
    } else {
        256
    }
}

/// The workgroup sizes of the sampler's variants that this adapter runs, largest first (tests and
/// checks run each one).
pub fn workgroups(ctx: &Context) -> Vec<u32> {
    WORKGROUPS.into_iter().filter(|&wg| wg <= ctx.limits.invocations_per_workgroup).collect()
}

/// Every workgroup size the sampler is built for.
const WORKGROUPS: [u32; 2] = [1024, 256];

const IO: [Slot; 7] =
    [Slot::Read, Slot::ReadWrite, Slot::ReadWrite, Slot::ReadWrite, Slot::ReadWrite, Slot::ReadWrite, Slot::ReadWrite];

pub fn kernel_sample(wg: u32) -> Kernel {
    Kernel::new("sampler", "sample", &IO).flag("SAMPLE").define("WG", format!("{wg}u"))
}
pub fn kernel_greedy(wg: u32) -> Kernel {
    Kernel::new("sampler", "greedy", &IO).flag("GREEDY").define("WG", format!("{wg}u"))
}
pub fn kernel_hist_init(wg: u32) -> Kernel {
    Kernel::new("sampler", "hist_init", &[Slot::ReadWrite, Slot::Read]).flag("HIST_INIT").define("WG", format!("{wg}u"))
}

pub fn variants() -> Vec<Kernel> {
    WORKGROUPS.into_iter().flat_map(|wg| [kernel_sample(wg), kernel_greedy(wg), kernel_hist_init(wg)]).collect()
}

/// The buffers one sampling dispatch binds.
pub struct SamplerIo<'a> {
    /// f32 logits; the row is elements `offset .. offset + V`.
    pub logits: &'a GpuBuffer,
    pub offset: usize,
    /// [V] u32 token history: [`SEEN`] | count in the generated tokens (see [`hist_init`]).
    pub hist: &'a GpuBuffer,
    /// [> slot] u32: ids[slot] receives the token.
    pub ids: &'a GpuBuffer,
    /// [> slot] u32: pos[slot] is the RNG counter, the position of the last token fed.
    pub pos: &'a GpuBuffer,
    /// [cap ≥ 1] u32 ring: toks[pos[slot] % cap] receives the token.
    pub toks: &'a GpuBuffer,
    /// The element of `ids` and `pos` this sampler owns: 0 for a lone sequence, b for sequence b
    /// of a batch.
    pub slot: usize,
}

/// The device sampler for rows of V logits: the scratch it keeps between its passes and the
/// debug output [`dbg`] (read it after a run to see the decision).
pub struct GpuSampler {
    pub n: usize,
    wg: u32,
    /// [V] f32: the penalised row (written only when a penalty is on).
    pub scores: GpuBuffer,
    /// [DBG_LEN] u32.
    pub dbg: GpuBuffer,
}

impl GpuSampler {
    pub fn new(ctx: &Context, n: usize) -> Result<GpuSampler> {
        GpuSampler::with_workgroup(ctx, n, workgroup(ctx))
    }

    /// As [`GpuSampler::new`] with a chosen workgroup size, one of [`workgroups`] (tests of every
    /// variant the adapter runs).
    pub fn with_workgroup(ctx: &Context, n: usize, wg: u32) -> Result<GpuSampler> {
        if !WORKGROUPS.contains(&wg) || wg > ctx.limits.invocations_per_workgroup {
            return Err(Error::LimitTooSmall {
                what: format!("sampler workgroup of {wg} invocations (256 or 1024)"),
                requested: wg as u64,
                available: ctx.limits.invocations_per_workgroup as u64,
            });
        }
        if n == 0 || n > MAX_V {
            return Err(Error::shape("sampler", format!("V = {n} (1 ≤ V ≤ {MAX_V})")));
        }
        let scores = ctx.buffer("sampler scores", (n * 4) as u64)?;
        let dbg = ctx.buffer("sampler dbg", (DBG_LEN * 4) as u64)?;
        Ok(GpuSampler { n, wg, scores, dbg })
    }

    /// The parameter block and the aligned logits binding (byte offset, skip in elements).
    fn block(
        &self,
        ctx: &Context,
        p: &SamplingParams,
        offset: usize,
        slot: usize,
        advance: bool,
    ) -> Result<(Params, u64, usize)> {
        p.check()?;
        let align = ctx.limits.storage_offset_alignment.max(4) as usize;
        let base = offset * 4 / align * align;
        let skip = offset - base / 4;
        let greedy = p.is_greedy();
        let params = Params {
            n: self.n as u32,
            skip: skip as u32,
            top_k: p.top_k.min(self.n) as u32,
            advance: advance as u32,
            inv_t: if greedy { 0.0 } else { 1.0 / p.temperature },
            top_p: p.top_p,
            rep: p.repetition_penalty,
            inv_rep: 1.0 / p.repetition_penalty,
            presence: p.presence_penalty,
            frequency: p.frequency_penalty,
            seed_lo: p.seed as u32,
            seed_hi: (p.seed >> 32) as u32,
            penalize: p.has_penalty() as u32,
            n_prompt: 0,
            n_ids: 0,
            slot: slot as u32,
        };
        Ok((params, base as u64, skip))
    }

    /// Record one sampling step over the row at `io.offset` with `p` (greedy when
    /// `p.temperature ≤ 0`: the argmax kernel). With `advance`, pos[0] += 1 after the step.
    pub fn record(&self, ctx: &Context, p: &SamplingParams, io: &SamplerIo, advance: bool) -> Result<Dispatch> {
        let n = self.n;
        need_f32("sampler", "logits [offset + V]", io.logits, io.offset + n)?;
        need_f32("sampler", "hist [V]", io.hist, n)?;
        need_f32("sampler", "ids [slot + 1]", io.ids, io.slot + 1)?;
        need_f32("sampler", "pos [slot + 1]", io.pos, io.slot + 1)?;
        need_f32("sampler", "toks [cap]", io.toks, 1)?;
        let (params, base, skip) = self.block(ctx, p, io.offset, io.slot, advance)?;
        let slot_bytes = ((io.slot + 1) * 4) as u64;
        let k = if p.is_greedy() { kernel_greedy(self.wg) } else { kernel_sample(self.wg) };
        let v = (n * 4) as u64;
        ctx.dispatch(
            &k,
            bytemuck::bytes_of(&params),
            &[
                io.logits.slice(base, ((skip + n) * 4) as u64),
                io.hist.slice(0, v),
                self.scores.slice(0, v),
                io.ids.slice(0, slot_bytes),
                io.pos.slice(0, slot_bytes),
                io.toks.slice(0, io.toks.size / 4 * 4),
                self.dbg.whole(),
            ],
            [1, 1, 1],
        )
    }

    /// Rewrite the parameters of a dispatch recorded by [`GpuSampler::record`] (same row
    /// offset and slot; a greedy dispatch stays greedy and a sampling one must keep temperature > 0).
    pub fn set_params(
        &self,
        ctx: &Context,
        d: &Dispatch,
        p: &SamplingParams,
        offset: usize,
        slot: usize,
        advance: bool,
    ) -> Result<()> {
        if p.is_greedy() != (d.label == "greedy") {
            return Err(Error::Input("set_params cannot switch between greedy and sampling; record again".into()));
        }
        let (params, _, _) = self.block(ctx, p, offset, slot, advance)?;
        ctx.set_params(d, bytemuck::bytes_of(&params));
        Ok(())
    }
}

/// Set `hist [V]` on the device: [`SEEN`] for every `prompt` id, [`SEEN`] | count for the
/// `generated` ids (the state before the next sampled token). Uploads the ids and submits one
/// dispatch (no wait). Ids ≥ V are an input error.
pub fn hist_init(ctx: &Context, hist: &GpuBuffer, n: usize, prompt: &[u32], generated: &[u32]) -> Result<()> {
    if n == 0 || n > MAX_V {
        return Err(Error::shape("hist_init", format!("V = {n} (1 ≤ V ≤ {MAX_V})")));
    }
    need_f32("hist_init", "hist [V]", hist, n)?;
    if let Some(bad) = prompt.iter().chain(generated).find(|&&t| t as usize >= n) {
        return Err(Error::Input(format!("token id {bad} outside the vocabulary of {n}")));
    }
    let all: Vec<u32> = prompt.iter().chain(generated).copied().collect();
    let ids = ctx.upload_u32("hist ids", if all.is_empty() { &[0] } else { &all })?;
    let params = Params { n: n as u32, n_prompt: prompt.len() as u32, n_ids: all.len() as u32, ..Params::zeroed() };
    let d = ctx.dispatch(
        &kernel_hist_init(workgroup(ctx)),
        bytemuck::bytes_of(&params),
        &[hist.slice(0, (n * 4) as u64), ids.whole()],
        [1, 1, 1],
    )?;
    ctx.run(&[&d])
}
