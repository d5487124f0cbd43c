//! Host side of `shaders/rope.wgsl`: NeoX RoPE in place on fused QKV rows [T, (H + 2·Hkv)·D]
//! (Q and K heads rotated in one dispatch, V untouched); `rope_kv_write`, the fused RoPE + KV-cache
//! write of one layer (Q rotated in place, K rotated and V copied into the f16 cache, position read
//! from a GPU buffer); and the f32 inverse-frequency table.

use bytemuck::{Pod, Zeroable};

use super::attention::cache_row_bytes;
use super::elementwise::need_f32;
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::graph::{Bound, Op, WeightRef, Weights};

/// Largest angle the shader's range reduction handles exactly (2^18·π/2, see rope.wgsl);
/// positions are limited so that pos · inv_freq[0] = pos stays below it.
pub const MAX_ANGLE: f64 = 411_774.0;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    t: u32,
    heads: u32,
    d: u32,
    stride: u32,
    pos0: u32,
    /// Rows per sequence of a batch (positions restart at pos0); 0 = one sequence.
    seq: u32,
    _pad: [u32; 2],
}

/// inv_freq[i] = theta^(−2i/D) for i < D/2, computed in f32 (as the reference model does).
/// Upload it once per model; `cpu::rope` uses the same table.
pub fn inv_freq(theta: f32, d: usize) -> Vec<f32> {
    (0..d / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32)).collect()
}

/// Parameter block of a recorded `rope_qkv` (rewrite it with `ctx.set_params` to move `pos0`).
pub fn params(t: usize, h: usize, hkv: usize, d: usize, pos0: usize) -> Result<Vec<u8>> {
    param_block(t, h, hkv, d, pos0, 0)
}

fn param_block(t: usize, h: usize, hkv: usize, d: usize, pos0: usize, seq: usize) -> Result<Vec<u8>> {
    let last = if seq > 0 { seq.min(t) } else { t };
    if (pos0 + last) as f64 > MAX_ANGLE {
        return Err(Error::shape("rope", format!("positions up to {} exceed the supported {MAX_ANGLE}", pos0 + last)));
    }
    let stride = (h + 2 * hkv) * d;
    let p = Params {
        t: t as u32,
        heads: (h + hkv) as u32,
        d: d as u32,
        stride: stride as u32,
        pos0: pos0 as u32,
        seq: seq as u32,
        _pad: [0; 2],
    };
    Ok(bytemuck::bytes_of(&p).to_vec())
}

pub fn kernel() -> Kernel {
    Kernel::new("rope", "rope", &[Slot::ReadWrite, Slot::Read])
}

pub fn kv_write_kernel() -> Kernel {
    Kernel::new("rope", "rope_kv_write", &[Slot::ReadWrite, Slot::Read, Slot::Read, Slot::ReadWrite, Slot::ReadWrite])
        .flag("ROPE_KV")
}

pub fn variants() -> Vec<Kernel> {
    vec![kernel(), kv_write_kernel()]
}

/// Rotate, in place, the Q (H heads) and K (Hkv heads) parts of `qkv` [T, (H + 2·Hkv)·D] with
/// positions pos0 .. pos0 + T. `inv_freq` is [D/2] f32 (see [`inv_freq`]).
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv(
    ctx: &Context,
    qkv: &GpuBuffer,
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
    pos0: usize,
    inv_freq: &GpuBuffer,
) -> Result<Dispatch> {
    record(ctx, qkv, t, h, hkv, d, pos0, 0, inv_freq)
}

/// Rotate, in place, every head of `x` [T, heads·D] (a query-only or key-only buffer) with
/// positions pos0 .. pos0 + T, or with `seq > 0` positions restarting every `seq` rows (a
/// right-padded batch [B, S], T = B·S).
#[allow(clippy::too_many_arguments)]
pub fn rope(
    ctx: &Context,
    x: &GpuBuffer,
    t: usize,
    heads: usize,
    d: usize,
    pos0: usize,
    seq: usize,
    inv_freq: &GpuBuffer,
) -> Result<Dispatch> {
    if seq > 0 && !t.is_multiple_of(seq) {
        return Err(Error::shape("rope", format!("T = {t} is not a whole number of sequences of {seq} rows")));
    }
    record(ctx, x, t, heads, 0, d, pos0, seq, inv_freq)
}

/// As [`rope_qkv`] for a right-padded batch of sequences laid out as `[B, S]` rows (T = B·S):
/// row r gets position `r % seq`, so every sequence starts at position 0.
#[allow(clippy::too_many_arguments)]
pub fn rope_qkv_batch(
    ctx: &Context,
    qkv: &GpuBuffer,
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
    seq: usize,
    inv_freq: &GpuBuffer,
) -> Result<Dispatch> {
    if seq == 0 || !t.is_multiple_of(seq) {
        return Err(Error::shape("rope", format!("T = {t} is not a whole number of sequences of {seq} rows")));
    }
    record(ctx, qkv, t, h, hkv, d, 0, seq, inv_freq)
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    qkv: &GpuBuffer,
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
    pos0: usize,
    seq: usize,
    inv_freq: &GpuBuffer,
) -> Result<Dispatch> {
    if t == 0 || h == 0 || d == 0 || !d.is_multiple_of(2) {
        return Err(Error::shape("rope", format!("T={t} H={h} Hkv={hkv} D={d} (D must be even, T, H > 0)")));
    }
    let stride = (h + 2 * hkv) * d;
    let pairs = t * (h + hkv) * d / 2;
    if pairs > u32::MAX as usize / 2 {
        return Err(Error::shape("rope", format!("{pairs} rotation pairs")));
    }
    need_f32("rope", "qkv [T, (H + 2Hkv)·D]", qkv, t * stride)?;
    need_f32("rope", "inv_freq [D/2]", inv_freq, d / 2)?;
    let params = param_block(t, h, hkv, d, pos0, seq)?;
    let bufs = [qkv.slice(0, (t * stride * 4) as u64), inv_freq.slice(0, (d / 2 * 4) as u64)];
    ctx.dispatch(&kernel(), &params, &bufs, grid(ctx, (pairs as u32).div_ceil(256)))
}

/// Graph op: `qkv [T, (H + 2·Hkv)·D] -> qkv'` (in place): RoPE on the Q and K heads of fused rows
/// at positions pos0 .. pos0 + T (a uniform parameter, rewritten on replay by `set_pos`).
#[derive(Debug)]
pub struct RopeQkv {
    pub inv_freq: WeightRef,
    pub t: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
}

impl Op for RopeQkv {
    fn record(&self, ctx: &Context, io: &Bound, w: &dyn Weights) -> Result<Vec<Dispatch>> {
        let inv = w.vector(&self.inv_freq)?;
        // Recorded at position 0: the owner moves it with `set_pos` before every run.
        let recorded_pos0 = 0;
        Ok(vec![rope_qkv(ctx, io.output(0)?, self.t, self.h, self.hkv, self.d, recorded_pos0, inv)?])
    }
    fn uses_pos(&self) -> bool {
        true
    }
    fn set_pos(&self, ctx: &Context, ds: &[Dispatch], pos0: usize) -> Result<()> {
        let bytes = params(self.t, self.h, self.hkv, self.d, pos0)?;
        ds.iter().for_each(|d| ctx.set_params(d, &bytes));
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct KvParams {
    t: u32,
    h: u32,
    hkv: u32,
    d: u32,
    seq: u32,
    ctx_len: u32,
    slots: u32,
    _pad: u32,
}

/// Record the fused RoPE + KV write of one layer over fused rows `qkv [T, (H + 2·Hkv)·D]` f32 (per
/// token: H query heads, Hkv key heads, Hkv value heads), with pos0 = pos[0] read on the GPU
/// (`pos: [1] u32`, the tokens already in the cache):
/// - the Q heads are rotated in place (positions pos0 + t);
/// - the K heads are rotated and written as f16 to `cache_k` rows pos0 + t (K in `qkv` stays unrotated);
/// - the V heads are written as f16 to `cache_v` rows pos0 + t.
///
/// Caches are `[ctx_len, Hkv, D/2]` u32 (whole rows bound); rows >= ctx_len are skipped on the GPU, so
/// the caller keeps pos0 + T <= ctx_len. With `seq > 0` (a right-padded batch `[B, S]`, T = B·S,
/// pos0 = 0) row t is rotated at position t % seq and written to cache row t. Angles are exact up to
/// position [`MAX_ANGLE`] (same sincos as `rope_qkv`). Nothing position-dependent is in the
/// parameter block: after writing a new pos[0], the dispatch is replayed as recorded.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write(
    ctx: &Context,
    qkv: &GpuBuffer,
    t: usize,
    h: usize,
    hkv: usize,
    d: usize,
    seq: usize,
    inv_freq: &GpuBuffer,
    pos: &GpuBuffer,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    ctx_len: usize,
) -> Result<Dispatch> {
    if seq > 0 && !t.is_multiple_of(seq) {
        return Err(Error::shape("rope_kv_write", format!("T = {t} is not a whole number of sequences of {seq} rows")));
    }
    if t > ctx_len {
        return Err(Error::shape("rope_kv_write", format!("T = {t} rows do not fit a cache of {ctx_len}")));
    }
    let io = KvWriteIo { qkv, inv_freq, pos, cache_k, cache_v };
    kv_write(ctx, &io, KvParams { seq: seq as u32, ..kv_params(t, h, hkv, d, ctx_len, false) }, 1, ctx_len)
}

/// As [`rope_kv_write`] for the one new token of each of `b` sequences of a batch: row t is
/// sequence t's token at position pos[t] (`pos: [B] u32`), written to row t·`slot_rows` + pos[t] of
/// caches `[B·slot_rows, Hkv, D/2]` (slot t); positions ≥ `slot_rows` are not written.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write_slots(
    ctx: &Context,
    qkv: &GpuBuffer,
    b: usize,
    h: usize,
    hkv: usize,
    d: usize,
    inv_freq: &GpuBuffer,
    pos: &GpuBuffer,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    slot_rows: usize,
) -> Result<Dispatch> {
    let io = KvWriteIo { qkv, inv_freq, pos, cache_k, cache_v };
    kv_write(ctx, &io, kv_params(b, h, hkv, d, slot_rows, true), b, b * slot_rows)
}

struct KvWriteIo<'a> {
    qkv: &'a GpuBuffer,
    inv_freq: &'a GpuBuffer,
    pos: &'a GpuBuffer,
    cache_k: &'a GpuBuffer,
    cache_v: &'a GpuBuffer,
}

fn kv_params(t: usize, h: usize, hkv: usize, d: usize, ctx_len: usize, slots: bool) -> KvParams {
    KvParams {
        t: t as u32,
        h: h as u32,
        hkv: hkv as u32,
        d: d as u32,
        seq: 0,
        ctx_len: ctx_len as u32,
        slots: slots as u32,
        _pad: 0,
    }
}

/// Check and record the kernel: `n_pos` positions are read, `rows` cache rows are bound.
fn kv_write(ctx: &Context, io: &KvWriteIo, p: KvParams, n_pos: usize, rows: usize) -> Result<Dispatch> {
    let (t, h, hkv, d) = (p.t as usize, p.h as usize, p.hkv as usize, p.d as usize);
    if t == 0 || h == 0 || hkv == 0 || d == 0 || !d.is_multiple_of(2) || !h.is_multiple_of(hkv) || rows == 0 {
        return Err(Error::shape(
            "rope_kv_write",
            format!("T={t} H={h} Hkv={hkv} D={d} rows={rows} (D even; T, Hkv, rows > 0; H a multiple of Hkv)"),
        ));
    }
    let stride = (h + 2 * hkv) * d;
    let items = t * (h + hkv) * d / 2;
    if t * stride > u32::MAX as usize / 2 || rows * hkv * d > u32::MAX as usize {
        return Err(Error::shape("rope_kv_write", format!("T = {t}, {rows} cache rows: indices overflow u32")));
    }
    let cache = rows * cache_row_bytes(hkv, d);
    need_f32("rope_kv_write", "qkv [T, (H + 2Hkv)·D]", io.qkv, t * stride)?;
    need_f32("rope_kv_write", "inv_freq [D/2]", io.inv_freq, d / 2)?;
    need_f32("rope_kv_write", "pos", io.pos, n_pos)?;
    need_f32("rope_kv_write", "cache_k [rows, Hkv, D/2]", io.cache_k, cache / 4)?;
    need_f32("rope_kv_write", "cache_v [rows, Hkv, D/2]", io.cache_v, cache / 4)?;
    let bufs = [
        io.qkv.slice(0, (t * stride * 4) as u64),
        io.inv_freq.slice(0, (d / 2 * 4) as u64),
        io.pos.slice(0, (n_pos * 4) as u64),
        io.cache_k.slice(0, cache as u64),
        io.cache_v.slice(0, cache as u64),
    ];
    ctx.dispatch(&kv_write_kernel(), bytemuck::bytes_of(&p), &bufs, grid(ctx, (items as u32).div_ceil(256)))
}

/// Graph op, RoPE fused with the KV write: `qkv [T, (H + 2·Hkv)·D], pos (, cache_k, cache_v) ->
/// qkv' (Q rotated in place), cache_k', cache_v'` (K rotated and V written as f16 to rows pos[0] + t;
/// with `seq > 0`, a right-padded batch: positions t % seq, rows t). The caches are the outputs (new
/// versions of the inputs for a session's cache, or fresh tensors).
#[derive(Debug)]
pub struct RopeKvWrite {
    pub inv_freq: WeightRef,
    pub t: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    pub seq: usize,
    pub ctx_len: usize,
    /// Row t is sequence t's token, cached in slot t of `ctx_len` rows ([`rope_kv_write_slots`]).
    pub slots: bool,
}

impl Op for RopeKvWrite {
    fn record(&self, ctx: &Context, io: &Bound, w: &dyn Weights) -> Result<Vec<Dispatch>> {
        let (qkv, pos) = (io.output(0)?, io.input(1)?);
        let (ck, cv) = (io.output(1)?, io.output(2)?);
        let inv = w.vector(&self.inv_freq)?;
        let (t, h, hkv, d) = (self.t, self.h, self.hkv, self.d);
        Ok(vec![if self.slots {
            rope_kv_write_slots(ctx, qkv, t, h, hkv, d, inv, pos, ck, cv, self.ctx_len)?
        } else {
            rope_kv_write(ctx, qkv, t, h, hkv, d, self.seq, inv, pos, ck, cv, self.ctx_len)?
        }])
    }
}
