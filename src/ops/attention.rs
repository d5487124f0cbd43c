//! Host side of `shaders/attention.wgsl`: KV-cache writes, flash-style prefill attention and
//! split-K ("flash-decoding") decode attention over an f16 cache `[ctx, Hkv, D/2]` u32 words.
//! Softmax scale is 1/sqrt(D) (Zhinao and BERT alike). Math is f32.
//!
//! Prefill and decode read the position from a GPU buffer `pos: [1] u32` (pos[0] = tokens already in
//! the cache before the pass; decode: kv_len = pos[0] + 1), so a recorded pass is replayed at any
//! position by writing pos[0] only: nothing position-dependent is in their parameter blocks.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::graph::{Bound, Op, Weights};

/// Largest head dim the kernels support (any even D up to this).
pub const MAX_D: usize = 256;

fn scale(d: usize) -> f32 {
    1.0 / (d as f32).sqrt()
}

fn check_heads(op: &str, h: usize, hkv: usize, d: usize) -> Result<()> {
    if h == 0 || hkv == 0 || !h.is_multiple_of(hkv) {
        return Err(Error::shape(op, format!("H = {h} is not a positive multiple of Hkv = {hkv}")));
    }
    if d == 0 || !d.is_multiple_of(2) || d > MAX_D {
        return Err(Error::shape(op, format!("D = {d} must be even and at most {MAX_D}")));
    }
    Ok(())
}

fn need(op: &str, what: &str, buf: &GpuBuffer, bytes: usize) -> Result<()> {
    if (buf.size as usize) < bytes {
        return Err(Error::shape(op, format!("{what}: buffer of {} bytes, need {bytes}", buf.size)));
    }
    Ok(())
}

/// Bytes of one cache row (one position, all kv heads): Hkv * D f16.
pub fn cache_row_bytes(hkv: usize, d: usize) -> usize {
    hkv * d * 2
}

// ---- kv_write ---------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct WriteParams {
    t: u32,
    hkv: u32,
    dp: u32,
    pos0: u32,
}

pub fn kv_write_kernel() -> Kernel {
    Kernel::new("attention", "kv_write", &[Slot::Read, Slot::Read, Slot::ReadWrite, Slot::ReadWrite]).flag("KV_WRITE")
}

/// Parameter block of a recorded `kv_write` (rewrite it with `ctx.set_params` to move `pos0`).
pub fn kv_write_params(t: usize, hkv: usize, d: usize, pos0: usize, ctx_len: usize) -> Result<Vec<u8>> {
    check_heads("kv_write", hkv, hkv, d)?;
    if t == 0 || pos0 + t > ctx_len {
        return Err(Error::shape(
            "kv_write",
            format!("rows {pos0}..{} do not fit a cache of {ctx_len} (T = {t})", pos0 + t),
        ));
    }
    let p = WriteParams { t: t as u32, hkv: hkv as u32, dp: (d / 2) as u32, pos0: pos0 as u32 };
    Ok(bytemuck::bytes_of(&p).to_vec())
}

/// Record: cache_k/v[pos0 .. pos0+T] = f16(k/v), with `k, v: [T, Hkv, D]` f32 and the caches
/// `[ctx_len, Hkv, D/2]` u32 (the whole `ctx_len` rows are bound, so a replay may move `pos0`).
/// The dispatch is sized for `t` tokens.
#[allow(clippy::too_many_arguments)]
pub fn kv_write(
    ctx: &Context,
    k: &GpuBuffer,
    v: &GpuBuffer,
    t: usize,
    hkv: usize,
    d: usize,
    pos0: usize,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    ctx_len: usize,
) -> Result<Dispatch> {
    let params = kv_write_params(t, hkv, d, pos0, ctx_len)?;
    let act = t * hkv * d * 4;
    let cache = ctx_len * cache_row_bytes(hkv, d);
    need("kv_write", "k [T, Hkv, D]", k, act)?;
    need("kv_write", "v [T, Hkv, D]", v, act)?;
    need("kv_write", "cache_k [ctx, Hkv, D/2]", cache_k, cache)?;
    need("kv_write", "cache_v [ctx, Hkv, D/2]", cache_v, cache)?;
    let words = t * hkv * d / 2;
    let bufs = [
        k.slice(0, act as u64),
        v.slice(0, act as u64),
        cache_k.slice(0, cache as u64),
        cache_v.slice(0, cache as u64),
    ];
    ctx.dispatch(&kv_write_kernel(), &params, &bufs, grid(ctx, words.div_ceil(128) as u32))
}

// ---- prefill ------------------------------------------------------------------------------------

/// Shape of a prefill attention call. Query i of sequence b sits at position `pos0 + i`, where
/// pos0 = pos[0] is read from the `pos` buffer on the GPU (keys already in the cache: chunked
/// prefill; 0 for a fresh prompt); sequence b has keys at cache rows
/// `b*kv_stride .. b*kv_stride + pos0 + n_b`, n_b = S (or `lens[b]`), clamped to its kv_stride rows.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    pub s: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    /// Cache rows per sequence (>= pos0 + S; the kernel never reads past them).
    pub kv_stride: usize,
    /// f32 elements between the q rows of consecutive tokens: H·D for a separate q `[B, S, H, D]`,
    /// (H + 2·Hkv)·D when q is the Q part of fused qkv rows.
    pub q_stride: usize,
    /// Causal LM mask (query i sees keys <= pos0 + i); otherwise bidirectional.
    pub causal: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PrefillParams {
    b: u32,
    s: u32,
    h: u32,
    hkv: u32,
    kv_stride: u32,
    q_stride: u32,
    scale: f32,
    _pad: u32,
}

/// Query rows and keys per tile for a head dim: workgroup memory stays under 16 KiB
/// (q tile BQ*D*4 B + one K/V tile BK*D*2 B, or BK*D*4 B for f32 K/V, + scores BQ*BK*4 B).
fn prefill_tiles(d: usize, kv_f32: bool) -> (usize, usize) {
    match (d, kv_f32) {
        (0..=64, _) => (16, 32),
        (65..=128, false) => (16, 16),
        (65..=128, true) => (8, 16),
        (_, false) => (8, 8),
        (_, true) => (4, 8),
    }
}

pub fn prefill_kernel(d: usize, causal: bool, lens: bool) -> Kernel {
    prefill_kernel_kv(d, causal, lens, false)
}

/// The prefill kernel, with f32 K/V (`KV_F32`) or the f16 cache.
pub fn prefill_kernel_kv(d: usize, causal: bool, lens: bool, kv_f32: bool) -> Kernel {
    let (bq, bk) = prefill_tiles(d, kv_f32);
    let mut slots = vec![Slot::Read, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite];
    if lens {
        slots.push(Slot::Read);
    }
    Kernel::new("attention", "attn_prefill", &slots)
        .flag("PREFILL")
        .define("D", format!("{d}u"))
        .define("BQ", format!("{bq}u"))
        .define("BK", format!("{bk}u"))
        .flag_if(causal, "CAUSAL")
        .flag_if(lens, "LENS")
        .flag_if(kv_f32, "KV_F32")
}

/// Record o[B, S, H, D] = attention(q, cache) (see `AttnShape`): q of token t = b·S + i, head h at
/// `q[t·q_stride + h·D ..]`; `pos: [1] u32` holds pos0. With `lens: [B]` u32, query rows i >= lens[b]
/// are padding (output 0) and only keys < pos0 + lens[b] are attended. The dispatch holds no
/// position: after writing a new pos[0], it is replayed as recorded.
#[allow(clippy::too_many_arguments)]
pub fn prefill(
    ctx: &Context,
    q: &GpuBuffer,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    pos: &GpuBuffer,
    out: &GpuBuffer,
    shape: &AttnShape,
    lens: Option<&GpuBuffer>,
) -> Result<Dispatch> {
    prefill_any(ctx, q, cache_k, cache_v, pos, out, shape, lens, false)
}

/// As [`prefill`] with K and V in f32, `[B * kv_stride, Hkv, D]` (no f16 rounding). An encoder
/// (BERT) passes its k, v projections `[B, S, H, D]` directly with `kv_stride = S` and pos[0] = 0.
#[allow(clippy::too_many_arguments)]
pub fn prefill_kv_f32(
    ctx: &Context,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    pos: &GpuBuffer,
    out: &GpuBuffer,
    shape: &AttnShape,
    lens: Option<&GpuBuffer>,
) -> Result<Dispatch> {
    prefill_any(ctx, q, k, v, pos, out, shape, lens, true)
}

#[allow(clippy::too_many_arguments)]
fn prefill_any(
    ctx: &Context,
    q: &GpuBuffer,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    pos: &GpuBuffer,
    out: &GpuBuffer,
    shape: &AttnShape,
    lens: Option<&GpuBuffer>,
    kv_f32: bool,
) -> Result<Dispatch> {
    let &AttnShape { b, s, h, hkv, d, kv_stride, q_stride, causal } = shape;
    let params = prefill_params(shape)?;
    let (bq, _) = prefill_tiles(d, kv_f32);
    let qb = ((b * s - 1) * q_stride + h * d) * 4;
    let act = b * s * h * d * 4;
    let cache = b * kv_stride * cache_row_bytes(hkv, d) * if kv_f32 { 2 } else { 1 };
    need("attn_prefill", "q [B, S, q_stride]", q, qb)?;
    need("attn_prefill", "o [B, S, H, D]", out, act)?;
    need("attn_prefill", "cache_k [B * kv_stride, Hkv, D/2]", cache_k, cache)?;
    need("attn_prefill", "cache_v [B * kv_stride, Hkv, D/2]", cache_v, cache)?;
    need("attn_prefill", "pos [1]", pos, 4)?;
    if !kv_f32 {
        if let Some(d) = super::attention_coop::prefill(ctx, q, cache_k, cache_v, pos, out, shape, lens)? {
            return Ok(d);
        }
    }
    let mut bufs = vec![
        q.slice(0, qb as u64),
        cache_k.slice(0, cache as u64),
        cache_v.slice(0, cache as u64),
        pos.slice(0, 4),
        out.slice(0, act as u64),
    ];
    if let Some(l) = lens {
        need("attn_prefill", "lens [B]", l, b * 4)?;
        bufs.push(l.slice(0, (b * 4) as u64));
    }
    let groups = [s.div_ceil(bq), h, b];
    if groups.iter().any(|&g| g > ctx.limits.workgroups_per_dim as usize) {
        return Err(Error::shape(
            "attn_prefill",
            format!("grid {groups:?} exceeds {} workgroups per dimension", ctx.limits.workgroups_per_dim),
        ));
    }
    let wg = [groups[0] as u32, groups[1] as u32, groups[2] as u32];
    ctx.dispatch(&prefill_kernel_kv(d, causal, lens.is_some(), kv_f32), &params, &bufs, wg)
}

/// Parameter block of a prefill dispatch (position-free: it never needs rewriting).
fn prefill_params(shape: &AttnShape) -> Result<Vec<u8>> {
    let &AttnShape { b, s, h, hkv, d, kv_stride, q_stride, .. } = shape;
    check_heads("attn_prefill", h, hkv, d)?;
    if b == 0 || s == 0 {
        return Err(Error::shape("attn_prefill", format!("B = {b}, S = {s}")));
    }
    if s > kv_stride {
        return Err(Error::shape("attn_prefill", format!("S = {s} exceeds kv_stride = {kv_stride}")));
    }
    if q_stride < h * d {
        return Err(Error::shape("attn_prefill", format!("q_stride = {q_stride} < H·D = {}", h * d)));
    }
    let params = PrefillParams {
        b: b as u32,
        s: s as u32,
        h: h as u32,
        hkv: hkv as u32,
        kv_stride: kv_stride as u32,
        q_stride: q_stride as u32,
        scale: scale(d),
        _pad: 0,
    };
    Ok(bytemuck::bytes_of(&params).to_vec())
}

// ---- decode -------------------------------------------------------------------------------------

/// Workgroup size of the decode kernel (`WG` in attention.wgsl).
const DECODE_WG: usize = 128;
/// Fewest keys a used split covers: at kv_len keys, ceil(kv_len / 64) splits work (up to the
/// number dispatched) and the rest return at once.
pub const DECODE_MIN_KEYS: usize = 64;
/// Pass-1 workgroups the split count aims for at the longest context (several waves on a large GPU).
pub const DECODE_TARGET_WORKGROUPS: usize = 2048;
/// Most splits dispatched per head.
pub const DECODE_MAX_SPLITS: usize = 256;

/// Decode tuning knobs for benchmark runs, read once from the environment (unset: the constants):
/// `ZHINAO_DECODE_MIN_KEYS` (DECODE_MIN_KEYS), `ZHINAO_DECODE_WORKGROUPS` (DECODE_TARGET_WORKGROUPS)
/// and `ZHINAO_DECODE_U` (keys in flight per lane group, 1..=4, instead of the register-budget rule).
fn tuning() -> (usize, usize, Option<usize>) {
    static T: std::sync::OnceLock<(usize, usize, Option<usize>)> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&v| v > 0);
        (
            var("ZHINAO_DECODE_MIN_KEYS").unwrap_or(DECODE_MIN_KEYS),
            var("ZHINAO_DECODE_WORKGROUPS").unwrap_or(DECODE_TARGET_WORKGROUPS),
            var("ZHINAO_DECODE_U").map(|u| u.min(4)),
        )
    })
}

/// How the decode kernel maps a (head group, split) workgroup onto its 128 lanes (see attention.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeConfig {
    /// Query heads per workgroup (sharing one kv head; divides H / Hkv).
    pub gq: usize,
    /// u32 words per vector load (4, 2 or 1).
    pub vw: usize,
    /// Lanes per key row (a power of two <= 8).
    pub lk: usize,
    /// Vector loads per lane per key row.
    pub nr: usize,
    /// Keys per lane group per step.
    pub u: usize,
}

impl DecodeConfig {
    /// Keys per workgroup step.
    pub fn step_keys(&self) -> usize {
        DECODE_WG / self.lk * self.u
    }
}

/// The decode mapping for a shape: widest aligned loads, at most 8 lanes per key row (so every
/// subgroup of 8 or more lanes holds whole rows), as many query heads per workgroup as divide the
/// GQA ratio within a register budget (GQ·D <= 512), and 1 to 4 keys in flight per lane group.
pub fn decode_config(h: usize, hkv: usize, d: usize) -> DecodeConfig {
    let dp = (d / 2).max(1);
    let vw = if dp.is_multiple_of(4) {
        4
    } else if dp.is_multiple_of(2) {
        2
    } else {
        1
    };
    let nv = dp / vw;
    let lk = nv.next_power_of_two().min(8);
    let nr = nv.div_ceil(lk);
    let ratio = if hkv > 0 && h.is_multiple_of(hkv) { h / hkv } else { 1 };
    let cap = (512 / d.max(1)).clamp(1, 8);
    let gq = [8, 4, 2, 1].into_iter().find(|&g| g <= cap && ratio % g == 0).unwrap_or(1);
    let u = tuning().2.unwrap_or((64 / (2 * nr * vw * gq)).clamp(1, 4));
    DecodeConfig { gq, vw, lk, nr, u }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DecodeParams {
    h: u32,
    hkv: u32,
    max_ctx: u32,
    n_split: u32,
    min_keys: u32,
    scale: f32,
    q_stride: u32,
    _pad: u32,
}

/// Pass 1 for a head dim and mapping; `sg_dot` sums the lanes of a key row with subgroup shuffles
/// (the context requests it only when every subgroup has at least `lk` lanes).
pub fn decode_kernel(d: usize, c: &DecodeConfig, sg_dot: bool) -> Kernel {
    Kernel::new("attention", "attn_decode", &[Slot::Read, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite])
        .flag("DECODE")
        .define("D", format!("{d}u"))
        .define("GQ", format!("{}u", c.gq))
        .define("VW", format!("{}u", c.vw))
        .define("LK", format!("{}u", c.lk))
        .define("NR", format!("{}u", c.nr))
        .define("U", format!("{}u", c.u))
        .flag_if(c.vw == 4, "KV_VEC4")
        .flag_if(c.vw == 2, "KV_VEC2")
        .flag_if(sg_dot, "SG_DOT")
}

pub fn decode_reduce_kernel(d: usize) -> Kernel {
    Kernel::new("attention", "attn_decode_reduce", &[Slot::Read, Slot::Read, Slot::ReadWrite])
        .flag("DECODE")
        .flag("REDUCE")
        .define("D", format!("{d}u"))
}

fn min_keys(c: &DecodeConfig) -> usize {
    tuning().0.div_ceil(c.step_keys()) * c.step_keys()
}

/// Splits dispatched for a cache of up to `max_ctx` keys: ceil(max_ctx / min_keys), at most
/// DECODE_MAX_SPLITS and about DECODE_TARGET_WORKGROUPS workgroups over the H / GQ head groups.
/// Fixed when recording; the kernel uses the first clamp(ceil(kv_len / min_keys), 1, n_split).
pub fn decode_splits(h: usize, hkv: usize, d: usize, max_ctx: usize) -> usize {
    let c = decode_config(h, hkv, d);
    let groups = (h / c.gq).max(1);
    let cap = (tuning().1 / groups).clamp(1, DECODE_MAX_SPLITS);
    max_ctx.div_ceil(min_keys(&c)).clamp(1, cap)
}

/// f32 elements of the decode scratch buffer: [H, n_split, D + 2] partials (max, sum, o[D]).
pub fn decode_scratch_len(h: usize, hkv: usize, d: usize, max_ctx: usize) -> usize {
    h * decode_splits(h, hkv, d, max_ctx) * (d + 2)
}

/// Record decode attention for one token: o[H, D] = attention(q[H, D], cache rows 0 .. kv_len) with
/// kv_len = pos[0] + 1 read on the GPU (clamped to `max_ctx`). `q` holds the H query heads of the
/// token at its start (a separate q, or a fused qkv row: Q heads come first). The caches are bound
/// for `max_ctx` rows and `decode_splits(h, hkv, d, max_ctx)` splits are dispatched, so the pair is
/// replayed at any 1 <= kv_len <= max_ctx after writing pos[0], with no parameter rewrite. Rows >=
/// kv_len are never read. `scratch` holds at least `decode_scratch_len(h, hkv, d, max_ctx)` f32.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    ctx: &Context,
    q: &GpuBuffer,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    pos: &GpuBuffer,
    scratch: &GpuBuffer,
    out: &GpuBuffer,
    h: usize,
    hkv: usize,
    d: usize,
    max_ctx: usize,
) -> Result<Vec<Dispatch>> {
    let io = DecodeIo { q, cache_k, cache_v, pos, scratch, out };
    decode_rows(ctx, &io, DecodeRows { b: 1, q_stride: h * d }, h, hkv, d, max_ctx)
}

/// The buffers of a decode attention.
pub struct DecodeIo<'a> {
    pub q: &'a GpuBuffer,
    pub cache_k: &'a GpuBuffer,
    pub cache_v: &'a GpuBuffer,
    pub pos: &'a GpuBuffer,
    pub scratch: &'a GpuBuffer,
    pub out: &'a GpuBuffer,
}

/// The sequences of a batched decode attention: `b` query rows `q_stride` f32 apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeRows {
    pub b: usize,
    pub q_stride: usize,
}

/// Decode attention for one token of each of `rows.b` sequences: sequence b's query row starts at
/// q[b · q_stride], its keys are cache rows b·max_ctx + (0 .. pos[b] + 1) (slot b of caches
/// `[B·max_ctx, Hkv, D/2]`), and o[b] is [H, D] (o is [B, H, D]). B = 1 is [`decode`]. The split
/// count depends on `max_ctx` alone and the splits used on each kv_len, so a sequence's result
/// does not depend on its neighbours. `scratch` holds B·`decode_scratch_len(h, hkv, d, max_ctx)`.
pub fn decode_rows(
    ctx: &Context,
    io: &DecodeIo,
    rows: DecodeRows,
    h: usize,
    hkv: usize,
    d: usize,
    max_ctx: usize,
) -> Result<Vec<Dispatch>> {
    check_heads("attn_decode", h, hkv, d)?;
    let b = rows.b;
    if max_ctx == 0 || b == 0 || b * max_ctx > u32::MAX as usize / 2 || rows.q_stride < h * d {
        return Err(Error::shape("attn_decode", format!("B = {b}, max_ctx = {max_ctx}, q stride {}", rows.q_stride)));
    }
    let c = decode_config(h, hkv, d);
    let n_split = decode_splits(h, hkv, d, max_ctx);
    let act = h * d * 4;
    let q_len = ((b - 1) * rows.q_stride + h * d) * 4;
    let cache = b * max_ctx * cache_row_bytes(hkv, d);
    let part = b * decode_scratch_len(h, hkv, d, max_ctx) * 4;
    need("attn_decode", "q [B, q_stride]", io.q, q_len)?;
    need("attn_decode", "o [B, H, D]", io.out, b * act)?;
    need("attn_decode", "cache_k [B·max_ctx, Hkv, D/2]", io.cache_k, cache)?;
    need("attn_decode", "cache_v [B·max_ctx, Hkv, D/2]", io.cache_v, cache)?;
    need("attn_decode", "pos [B]", io.pos, b * 4)?;
    need("attn_decode", "scratch [B, H, n_split, D + 2]", io.scratch, part)?;
    let lim = ctx.limits.workgroups_per_dim as usize;
    if h > lim || b > lim {
        return Err(Error::shape("attn_decode", format!("H = {h} or B = {b} exceeds {lim} workgroups per dimension")));
    }
    let p = DecodeParams {
        h: h as u32,
        hkv: hkv as u32,
        max_ctx: max_ctx as u32,
        n_split: n_split as u32,
        min_keys: min_keys(&c) as u32,
        scale: scale(d),
        q_stride: rows.q_stride as u32,
        _pad: 0,
    };
    let params = bytemuck::bytes_of(&p);
    let sg_dot = ctx.caps.subgroups && ctx.caps.subgroup_min as usize >= c.lk;
    let (part, pos) = (io.scratch.slice(0, part as u64), io.pos.slice(0, (b * 4) as u64));
    let pass1 = ctx.dispatch(
        &decode_kernel(d, &c, sg_dot),
        params,
        &[
            io.q.slice(0, q_len as u64),
            io.cache_k.slice(0, cache as u64),
            io.cache_v.slice(0, cache as u64),
            pos.clone(),
            part.clone(),
        ],
        [(h / c.gq) as u32, n_split as u32, b as u32],
    )?;
    let out = io.out.slice(0, (b * act) as u64);
    let pass2 = ctx.dispatch(&decode_reduce_kernel(d), params, &[pos, part, out], [h as u32, b as u32, 1])?;
    Ok(vec![pass1, pass2])
}

pub fn variants() -> Vec<Kernel> {
    let mut v =
        vec![kv_write_kernel(), prefill_kernel_kv(16, false, true, true), prefill_kernel_kv(256, false, true, true)];
    for d in [64, 128] {
        for causal in [true, false] {
            for lens in [false, true] {
                v.push(prefill_kernel(d, causal, lens));
            }
        }
        v.push(prefill_kernel_kv(d, false, true, true));
        v.push(decode_reduce_kernel(d));
    }
    // Decode mappings: GQA ratios 1..8 at D = 64 / 128, and the other load widths (D = 80, 6, 256).
    for (d, h, hkv) in
        [(64, 8, 8), (64, 8, 1), (128, 32, 32), (128, 32, 16), (128, 32, 8), (80, 4, 2), (6, 2, 1), (256, 4, 4)]
    {
        for sg in [true, false] {
            let k = decode_kernel(d, &decode_config(h, hkv, d), sg);
            if !v.contains(&k) {
                v.push(k);
            }
        }
    }
    v
}

/// Graph op, prefill attention: `q, k, v, pos (, lens [B] u32) -> o [B, S, H, D]` over an f16 cache
/// `[B·kv_stride, Hkv, D/2]` or, with `kv_f32`, f32 K/V `[B·kv_stride, Hkv, D]`; q rows are
/// `shape.q_stride` apart; the position of query 0 is pos[0] (`pos: [1] u32`, read on the GPU).
#[derive(Debug)]
pub struct Prefill {
    pub shape: AttnShape,
    pub lens: bool,
    pub kv_f32: bool,
}

impl Op for Prefill {
    fn record(&self, ctx: &Context, io: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
        let (q, k, v, pos, o) = (io.input(0)?, io.input(1)?, io.input(2)?, io.input(3)?, io.output(0)?);
        let lens = if self.lens { Some(io.input(4)?) } else { None };
        Ok(vec![prefill_any(ctx, q, k, v, pos, o, &self.shape, lens, self.kv_f32)?])
    }
}

/// Graph op, decode attention for one token: `q [H, D], cache_k, cache_v, pos -> o [H, D], scratch`
/// over the first pos[0] + 1 rows of `[ctx_len, Hkv, D/2]` f16 caches (`pos` read on the GPU); for
/// a batch, one token per sequence over its own slot ([`decode_rows`]).
#[derive(Debug)]
pub struct Decode {
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    /// Cache rows (per sequence).
    pub ctx_len: usize,
    /// The sequences: one (a session) or a batch's slots ([`decode_rows`]).
    pub rows: DecodeRows,
}

impl Op for Decode {
    fn record(&self, ctx: &Context, io: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
        let (q, cache_k, cache_v, pos) = (io.input(0)?, io.input(1)?, io.input(2)?, io.input(3)?);
        let (out, scratch) = (io.output(0)?, io.output(1)?);
        let io = DecodeIo { q, cache_k, cache_v, pos, scratch, out };
        decode_rows(ctx, &io, self.rows, self.h, self.hkv, self.d, self.ctx_len)
    }
}
