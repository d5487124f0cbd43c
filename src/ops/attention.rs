//! Host side of `shaders/attention.wgsl`: KV-cache writes, flash-style prefill attention and
//! split-K ("flash-decoding") decode attention over an f16 cache `[ctx, Hkv, D/2]` u32 words.
//! Softmax scale is 1/sqrt(D) (Zhinao and BERT alike). Math is f32.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};

/// Largest head dim the kernels support (any even D up to this).
pub const MAX_D: usize = 256;
/// Keys per decode split the host aims for, and the most splits it dispatches.
pub const DECODE_KEYS_PER_SPLIT: usize = 256;
pub const DECODE_MAX_SPLITS: usize = 32;

fn scale(d: usize) -> f32 {
    1.0 / (d as f32).sqrt()
}

fn check_heads(op: &str, h: usize, hkv: usize, d: usize) -> Result<()> {
    if h == 0 || hkv == 0 || h % hkv != 0 {
        return Err(Error::shape(op, format!("H = {h} is not a positive multiple of Hkv = {hkv}")));
    }
    if d == 0 || d % 2 != 0 || d > MAX_D {
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
    words: u32,
    pos0: u32,
    _pad: u32,
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
    let p = WriteParams { t: t as u32, words: (hkv * d / 2) as u32, pos0: pos0 as u32, _pad: 0 };
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

/// Shape of a prefill attention call. Query i of sequence b sits at position `pos0 + i`; sequence b
/// has keys at cache rows `b*kv_stride .. b*kv_stride + pos0 + n_b`, n_b = S (or `lens[b]`).
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    pub s: usize,
    pub h: usize,
    pub hkv: usize,
    pub d: usize,
    /// Cache rows per sequence (>= pos0 + S).
    pub kv_stride: usize,
    /// Keys already in the cache before the first query (chunked prefill); 0 for a fresh prompt.
    pub pos0: usize,
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
    pos0: u32,
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
    let mut slots = vec![Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite];
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

/// Record o[B, S, H, D] = attention(q[B, S, H, D], cache) (see `AttnShape`). With `lens: [B]` u32,
/// query rows i >= lens[b] are padding (output 0) and only keys < pos0 + lens[b] are attended.
pub fn prefill(
    ctx: &Context,
    q: &GpuBuffer,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    out: &GpuBuffer,
    shape: &AttnShape,
    lens: Option<&GpuBuffer>,
) -> Result<Dispatch> {
    prefill_any(ctx, q, cache_k, cache_v, out, shape, lens, false)
}

/// As [`prefill`] with K and V in f32, `[B * kv_stride, Hkv, D]` (no f16 rounding). An encoder
/// (BERT) passes its k, v projections `[B, S, H, D]` directly with `kv_stride = S`, `pos0 = 0`.
pub fn prefill_kv_f32(
    ctx: &Context,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    out: &GpuBuffer,
    shape: &AttnShape,
    lens: Option<&GpuBuffer>,
) -> Result<Dispatch> {
    prefill_any(ctx, q, k, v, out, shape, lens, true)
}

#[allow(clippy::too_many_arguments)]
fn prefill_any(
    ctx: &Context,
    q: &GpuBuffer,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    out: &GpuBuffer,
    shape: &AttnShape,
    lens: Option<&GpuBuffer>,
    kv_f32: bool,
) -> Result<Dispatch> {
    let &AttnShape { b, s, h, hkv, d, kv_stride, pos0, causal } = shape;
    check_heads("attn_prefill", h, hkv, d)?;
    if b == 0 || s == 0 {
        return Err(Error::shape("attn_prefill", format!("B = {b}, S = {s}")));
    }
    if pos0 + s > kv_stride {
        return Err(Error::shape("attn_prefill", format!("pos0 + S = {} exceeds kv_stride = {kv_stride}", pos0 + s)));
    }
    let (bq, _) = prefill_tiles(d, kv_f32);
    let act = b * s * h * d * 4;
    let cache = b * kv_stride * cache_row_bytes(hkv, d) * if kv_f32 { 2 } else { 1 };
    need("attn_prefill", "q [B, S, H, D]", q, act)?;
    need("attn_prefill", "o [B, S, H, D]", out, act)?;
    need("attn_prefill", "cache_k [B * kv_stride, Hkv, D/2]", cache_k, cache)?;
    need("attn_prefill", "cache_v [B * kv_stride, Hkv, D/2]", cache_v, cache)?;
    if !kv_f32 {
        if let Some(d) = super::attention_coop::prefill(ctx, q, cache_k, cache_v, out, shape, lens)? {
            return Ok(d);
        }
    }
    let mut bufs = vec![
        q.slice(0, act as u64),
        cache_k.slice(0, cache as u64),
        cache_v.slice(0, cache as u64),
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
    let params = prefill_params(shape)?;
    let wg = [groups[0] as u32, groups[1] as u32, groups[2] as u32];
    ctx.dispatch(&prefill_kernel_kv(d, causal, lens.is_some(), kv_f32), &params, &bufs, wg)
}

/// Parameter block of a recorded `prefill` (rewrite it with `ctx.set_params` to move `pos0`; the
/// dispatch stays sized for the S it was recorded with).
pub fn prefill_params(shape: &AttnShape) -> Result<Vec<u8>> {
    let &AttnShape { b, s, h, hkv, d, kv_stride, pos0, .. } = shape;
    check_heads("attn_prefill", h, hkv, d)?;
    if pos0 + s > kv_stride {
        return Err(Error::shape("attn_prefill", format!("pos0 + S = {} exceeds kv_stride = {kv_stride}", pos0 + s)));
    }
    let params = PrefillParams {
        b: b as u32,
        s: s as u32,
        h: h as u32,
        hkv: hkv as u32,
        kv_stride: kv_stride as u32,
        pos0: pos0 as u32,
        scale: scale(d),
        _pad: 0,
    };
    Ok(bytemuck::bytes_of(&params).to_vec())
}

// ---- decode -------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DecodeParams {
    h: u32,
    hkv: u32,
    kv_len: u32,
    n_split: u32,
    chunk: u32,
    scale: f32,
    _pad: [u32; 2],
}

pub fn decode_kernel(d: usize) -> Kernel {
    Kernel::new("attention", "attn_decode", &[Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite])
        .flag("DECODE")
        .define("D", format!("{d}u"))
}

pub fn decode_reduce_kernel(d: usize) -> Kernel {
    Kernel::new("attention", "attn_decode_reduce", &[Slot::Read, Slot::ReadWrite])
        .flag("DECODE")
        .flag("REDUCE")
        .define("D", format!("{d}u"))
}

/// Splits dispatched for a cache of up to `max_ctx` keys: ceil(max_ctx / 256), at most 32.
pub fn decode_splits(max_ctx: usize) -> usize {
    max_ctx.div_ceil(DECODE_KEYS_PER_SPLIT).clamp(1, DECODE_MAX_SPLITS)
}

/// f32 elements of the decode scratch buffer: [H, n_split, D + 2] partials (max, sum, o[D]).
pub fn decode_scratch_len(h: usize, d: usize, max_ctx: usize) -> usize {
    h * decode_splits(max_ctx) * (d + 2)
}

/// Parameter block of both decode dispatches for `kv_len` keys, when they were recorded for
/// `max_ctx`. A replay at a new kv_len writes these bytes to each returned dispatch with
/// `ctx.set_params`. The split count stays the one dispatched; each split covers
/// ceil(kv_len / n_split) keys and splits past kv_len write neutral partials.
pub fn decode_params(h: usize, hkv: usize, d: usize, kv_len: usize, max_ctx: usize) -> Result<Vec<u8>> {
    check_heads("attn_decode", h, hkv, d)?;
    if kv_len == 0 || kv_len > max_ctx {
        return Err(Error::shape("attn_decode", format!("kv_len = {kv_len} outside 1..={max_ctx} (max_ctx)")));
    }
    let n_split = decode_splits(max_ctx);
    let p = DecodeParams {
        h: h as u32,
        hkv: hkv as u32,
        kv_len: kv_len as u32,
        n_split: n_split as u32,
        chunk: kv_len.div_ceil(n_split) as u32,
        scale: scale(d),
        _pad: [0; 2],
    };
    Ok(bytemuck::bytes_of(&p).to_vec())
}

/// Record decode attention for one token: o[H, D] = attention(q[H, D], cache rows 0 .. kv_len).
/// Sized for `max_ctx` (pass `max_ctx = kv_len` for a one-off call): the caches are bound for
/// `max_ctx` rows and `decode_splits(max_ctx)` splits are dispatched, so the pair can be replayed at
/// any kv_len <= max_ctx after rewriting both parameter blocks with `decode_params`.
/// `scratch` holds at least `decode_scratch_len(h, d, max_ctx)` f32.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    ctx: &Context,
    q: &GpuBuffer,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    scratch: &GpuBuffer,
    out: &GpuBuffer,
    h: usize,
    hkv: usize,
    d: usize,
    kv_len: usize,
    max_ctx: usize,
) -> Result<Vec<Dispatch>> {
    let params = decode_params(h, hkv, d, kv_len, max_ctx)?;
    let act = h * d * 4;
    let cache = max_ctx * cache_row_bytes(hkv, d);
    let part = decode_scratch_len(h, d, max_ctx) * 4;
    need("attn_decode", "q [H, D]", q, act)?;
    need("attn_decode", "o [H, D]", out, act)?;
    need("attn_decode", "cache_k [max_ctx, Hkv, D/2]", cache_k, cache)?;
    need("attn_decode", "cache_v [max_ctx, Hkv, D/2]", cache_v, cache)?;
    need("attn_decode", "scratch [H, n_split, D + 2]", scratch, part)?;
    if h > ctx.limits.workgroups_per_dim as usize {
        return Err(Error::shape(
            "attn_decode",
            format!("H = {h} exceeds {} workgroups per dimension", ctx.limits.workgroups_per_dim),
        ));
    }
    let part = scratch.slice(0, part as u64);
    let pass1 = ctx.dispatch(
        &decode_kernel(d),
        &params,
        &[q.slice(0, act as u64), cache_k.slice(0, cache as u64), cache_v.slice(0, cache as u64), part.clone()],
        [h as u32, decode_splits(max_ctx) as u32, 1],
    )?;
    let pass2 = ctx.dispatch(&decode_reduce_kernel(d), &params, &[part, out.slice(0, act as u64)], [h as u32, 1, 1])?;
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
        v.push(decode_kernel(d));
        v.push(decode_reduce_kernel(d));
    }
    v
}
