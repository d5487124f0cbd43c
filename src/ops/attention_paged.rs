//! Host side of `shaders/attention_paged.wgsl`: causal attention of one sequence over a paged KV
//! cache ([`super::kv::KvLayout`], any [`super::kv::KvFormat`]), one dispatch per arena (each in
//! its arena's format: an f16 sink arena before quantized ones):
//! chunked prefill carrying the online-softmax state across arenas, and split-K decode whose
//! partials from every arena meet in one reduce. An f16 cache held in a single arena has the layout
//! of `ops::attention`, so it is served by those kernels (the tuned decode and, when enabled, the
//! cooperative-matrix prefill); quantized formats and several arenas use the kernels here (the
//! cooperative-matrix prefill stays f16-only).

use bytemuck::{Pod, Zeroable};

use super::attention::{self, AttnShape};
use super::kv::{KvFormat, KvLayout};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::graph::{Bound, Op, Weights};

const WG: usize = 128;
/// Pass-1 workgroups an arena's split count aims for (over all head groups).
pub const DECODE_TARGET_WORKGROUPS: usize = 2048;
/// Fewest keys per used split (rounded up to the workgroup step).
pub const DECODE_MIN_KEYS: usize = 64;
/// Keys each lane group holds in flight per step.
const DECODE_U: usize = 2;

fn scale(d: usize) -> f32 {
    1.0 / (d as f32).sqrt()
}

/// Whether `ops::attention` serves this cache (f16 in one arena: its layout exactly).
pub fn single_f16(layout: &KvLayout, arenas: usize) -> bool {
    layout.fmt == KvFormat::F16 && arenas == 1
}

fn check(op: &str, h: usize, layout: &KvLayout, arenas: usize, kc: &[GpuBuffer], vc: &[GpuBuffer]) -> Result<()> {
    let hkv = layout.hkv;
    if h == 0 || !h.is_multiple_of(hkv) {
        return Err(Error::shape(op, format!("H = {h} is not a positive multiple of Hkv = {hkv}")));
    }
    if arenas == 0 || kc.len() != arenas || vc.len() != arenas {
        return Err(Error::shape(op, format!("{arenas} arenas, {} K and {} V buffers", kc.len(), vc.len())));
    }
    for (a, (k, v)) in kc.iter().zip(vc).enumerate() {
        let bytes = layout.arena_bytes(a);
        if k.size < bytes || v.size < bytes {
            return Err(Error::shape(op, format!("arena {a}: buffers of {} / {} bytes, need {bytes}", k.size, v.size)));
        }
    }
    Ok(())
}

fn need(op: &str, what: &str, buf: &GpuBuffer, bytes: usize) -> Result<()> {
    if (buf.size as usize) < bytes {
        return Err(Error::shape(op, format!("{what}: buffer of {} bytes, need {bytes}", buf.size)));
    }
    Ok(())
}

// ---- prefill --------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PrefillParams {
    s: u32,
    h: u32,
    hkv: u32,
    q_stride: u32,
    row0: u32,
    rows: u32,
    flags: u32,
    scale: f32,
    k_lo: u32,
    k_hi: u32,
    _pad: [u32; 2],
}

/// Query rows and keys per tile: workgroup memory (q tile BQ·D·4 B, one f32 K/V tile BK·D·4 B,
/// scores BQ·BK·4 B) stays under 16 KiB.
fn prefill_tiles(d: usize) -> (usize, usize) {
    match d {
        0..=64 => (16, 32),
        65..=128 => (8, 16),
        _ => (4, 8),
    }
}

/// Keys one prefill dispatch covers: a whole arena on GPUs; on a CPU adapter (lavapipe) 32 tiles,
/// because llvmpipe was seen to cut long key loops short after a fixed amount of inner-loop work
/// (deterministically: 8000 keys in one dispatch gave the result of fewer), consistent with
/// gallivm's loop-iteration limiter. `ZHINAO_PREFILL_KEYS` overrides (benchmarks, tests).
pub fn prefill_keys_per_dispatch(ctx: &Context, d: usize) -> usize {
    let env = std::env::var("ZHINAO_PREFILL_KEYS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&k| k > 0);
    let bk = prefill_tiles(d).1;
    match env {
        Some(k) => k.div_ceil(bk) * bk,
        None if ctx.info.device_type.eq_ignore_ascii_case("cpu") => 32 * bk,
        None => usize::MAX / 2,
    }
}

pub fn prefill_kernel(fmt: KvFormat, d: usize) -> Kernel {
    let (bq, bk) = prefill_tiles(d);
    let slots = [Slot::Read, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite, Slot::ReadWrite];
    let k = Kernel::new("attention_paged", "attn_paged_prefill", &slots)
        .flag("PREFILL")
        .define("BQ", format!("{bq}u"))
        .define("BK", format!("{bk}u"));
    fmt.apply(k, d, true)
}

/// f32 elements of the prefill state buffer `ml` [T, H, 2].
pub fn prefill_state_len(t: usize, h: usize) -> usize {
    t * h * 2
}

/// Record causal prefill attention of `t` queries at positions pos[0] .. pos[0] + t over the
/// arenas `kc`, `vc` of `layout`: `o [T, H, D]`; q of token i, head h at `q[i·q_stride + h·D]`.
/// `ml` holds `prefill_state_len(t, h)` f32 (the state carried across arenas; unused for a single
/// f16 arena). Nothing position-dependent is in the parameters.
#[allow(clippy::too_many_arguments)]
pub fn prefill(
    ctx: &Context,
    q: &GpuBuffer,
    q_stride: usize,
    t: usize,
    h: usize,
    layout: &KvLayout,
    kc: &[GpuBuffer],
    vc: &[GpuBuffer],
    pos: &GpuBuffer,
    out: &GpuBuffer,
    ml: &GpuBuffer,
) -> Result<Vec<Dispatch>> {
    let (hkv, d, n) = (layout.hkv, layout.d, kc.len());
    check("attn_paged_prefill", h, layout, n, kc, vc)?;
    if t == 0 || q_stride < h * d {
        return Err(Error::shape("attn_paged_prefill", format!("T = {t}, q_stride = {q_stride} < H·D = {}", h * d)));
    }
    if single_f16(layout, n) {
        let rows = layout.arena_rows(0);
        let shape = AttnShape { b: 1, s: t, h, hkv, d, kv_stride: rows, q_stride, causal: true };
        return Ok(vec![attention::prefill(ctx, q, &kc[0], &vc[0], pos, out, &shape, None)?]);
    }
    need("attn_paged_prefill", "q [T, q_stride]", q, ((t - 1) * q_stride + h * d) * 4)?;
    need("attn_paged_prefill", "o [T, H, D]", out, t * h * d * 4)?;
    need("attn_paged_prefill", "ml [T, H, 2]", ml, prefill_state_len(t, h) * 4)?;
    need("attn_paged_prefill", "pos [1]", pos, 4)?;
    let (bq, _) = prefill_tiles(d);
    let groups = [t.div_ceil(bq) as u32, h as u32, 1];
    if groups[0] > ctx.limits.workgroups_per_dim || groups[1] > ctx.limits.workgroups_per_dim {
        return Err(Error::shape("attn_paged_prefill", format!("grid {groups:?} too large")));
    }
    let (qs, os, ms) =
        (q.whole(), out.slice(0, (t * h * d * 4) as u64), ml.slice(0, (prefill_state_len(t, h) * 4) as u64));
    let keys = prefill_keys_per_dispatch(ctx, d);
    let pieces: Vec<(usize, usize, usize)> = layout
        .spans(n)
        .iter()
        .enumerate()
        .flat_map(|(a, span)| (0..span.rows).step_by(keys).map(move |lo| (a, lo, (lo + keys).min(span.rows))))
        .collect();
    let mut ds = Vec::new();
    for (i, &(a, lo, hi)) in pieces.iter().enumerate() {
        let span = layout.spans(a + 1)[a];
        let p = PrefillParams {
            s: t as u32,
            h: h as u32,
            hkv: hkv as u32,
            q_stride: q_stride as u32,
            row0: span.row0 as u32,
            rows: span.rows as u32,
            flags: u32::from(i == 0) | (u32::from(i + 1 == pieces.len()) << 1),
            scale: scale(d),
            k_lo: lo as u32,
            k_hi: hi as u32,
            _pad: [0; 2],
        };
        let bytes = layout.arena_bytes(a);
        let bufs = [qs.clone(), kc[a].slice(0, bytes), vc[a].slice(0, bytes), pos.slice(0, 4), os.clone(), ms.clone()];
        let kernel = prefill_kernel(layout.arena_fmt(a), d);
        ds.push(ctx.dispatch(&kernel, bytemuck::bytes_of(&p), &bufs, groups)?);
    }
    Ok(ds)
}

// ---- decode ---------------------------------------------------------------------------------------

/// How the decode kernel maps a (head group, split) workgroup onto its 128 lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeConfig {
    /// Query heads per workgroup (sharing one kv head).
    pub gq: usize,
    /// Lanes per key row (a power of two <= 8).
    pub lk: usize,
    /// Words per lane per key row.
    pub nr: usize,
    /// Keys per lane group per step.
    pub u: usize,
}

impl DecodeConfig {
    pub fn step_keys(&self) -> usize {
        WG / self.lk * self.u
    }
    fn min_keys(&self) -> usize {
        DECODE_MIN_KEYS.div_ceil(self.step_keys()) * self.step_keys()
    }
}

pub fn decode_config(fmt: KvFormat, h: usize, hkv: usize, d: usize) -> DecodeConfig {
    let wpr = fmt.words(d).max(1);
    let lk = wpr.next_power_of_two().min(8);
    let nr = wpr.div_ceil(lk);
    let ratio = if hkv > 0 && h.is_multiple_of(hkv) { h / hkv } else { 1 };
    let cap = (512 / d.max(1)).clamp(1, 8);
    let gq = [8, 4, 2, 1].into_iter().find(|&g| g <= cap && ratio % g == 0).unwrap_or(1);
    DecodeConfig { gq, lk, nr, u: DECODE_U }
}

pub fn decode_kernel(fmt: KvFormat, d: usize, c: &DecodeConfig, sg_dot: bool) -> Kernel {
    let slots = [Slot::Read, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite];
    let k = Kernel::new("attention_paged", "attn_paged_decode", &slots)
        .flag("DECODE")
        .define("GQ", format!("{}u", c.gq))
        .define("LK", format!("{}u", c.lk))
        .define("NR", format!("{}u", c.nr))
        .define("U", format!("{}u", c.u))
        .flag_if(sg_dot, "SG_DOT");
    fmt.apply(k, d, true)
}

pub fn reduce_kernel(d: usize) -> Kernel {
    let k = Kernel::new("attention_paged", "attn_paged_reduce", &[Slot::Read, Slot::ReadWrite])
        .flag("DECODE")
        .flag("REDUCE");
    KvFormat::F16.apply(k, d, false)
}

/// Splits dispatched per arena of `rows` positions.
fn arena_splits(c: &DecodeConfig, h: usize, rows: usize) -> usize {
    let groups = (h / c.gq).max(1);
    let cap = (DECODE_TARGET_WORKGROUPS / groups).clamp(1, 256);
    rows.div_ceil(c.min_keys()).clamp(1, cap)
}

/// Splits of all `arenas` arenas (the scratch's middle dimension).
pub fn decode_splits(h: usize, layout: &KvLayout, arenas: usize) -> usize {
    let spans = layout.spans(arenas);
    spans.iter().enumerate().map(|(a, s)| arena_splits(&arena_config(layout, a, h), h, s.rows)).sum()
}

/// The decode kernel's configuration for arena `a` (its format's).
fn arena_config(layout: &KvLayout, a: usize, h: usize) -> DecodeConfig {
    decode_config(layout.arena_fmt(a), h, layout.hkv, layout.d)
}

/// f32 elements of the decode scratch: [H, total_splits, D + 2] partials.
pub fn decode_scratch_len(h: usize, layout: &KvLayout, arenas: usize) -> usize {
    if single_f16(layout, arenas) {
        return attention::decode_scratch_len(h, layout.hkv, layout.d, layout.arena_rows(0));
    }
    h * decode_splits(h, layout, arenas) * (layout.d + 2)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DecodeParams {
    h: u32,
    hkv: u32,
    row0: u32,
    rows: u32,
    n_split: u32,
    split_base: u32,
    total_splits: u32,
    min_keys: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Record decode attention for one token (kv_len = pos[0] + 1, read on the GPU): `o [H, D]` from
/// `q [H, D]` (a qkv row works) over the arenas of `layout`; one pass-1 dispatch per arena, then
/// one reduce. `scratch` holds `decode_scratch_len(h, layout, arenas)` f32.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    ctx: &Context,
    q: &GpuBuffer,
    h: usize,
    layout: &KvLayout,
    kc: &[GpuBuffer],
    vc: &[GpuBuffer],
    pos: &GpuBuffer,
    scratch: &GpuBuffer,
    out: &GpuBuffer,
) -> Result<Vec<Dispatch>> {
    let (hkv, d, n) = (layout.hkv, layout.d, kc.len());
    check("attn_paged_decode", h, layout, n, kc, vc)?;
    if single_f16(layout, n) {
        let rows = layout.arena_rows(0);
        return attention::decode(ctx, q, &kc[0], &vc[0], pos, scratch, out, h, hkv, d, rows);
    }
    let total = decode_splits(h, layout, n);
    let part = h * total * (d + 2) * 4;
    need("attn_paged_decode", "q [H, D]", q, h * d * 4)?;
    need("attn_paged_decode", "o [H, D]", out, h * d * 4)?;
    need("attn_paged_decode", "pos [1]", pos, 4)?;
    need("attn_paged_decode", "scratch [H, splits, D + 2]", scratch, part)?;
    if h > ctx.limits.workgroups_per_dim as usize {
        return Err(Error::shape("attn_paged_decode", format!("H = {h} too large")));
    }
    let (qs, ps) = (q.slice(0, (h * d * 4) as u64), scratch.slice(0, part as u64));
    let mut params = DecodeParams {
        h: h as u32,
        hkv: hkv as u32,
        row0: 0,
        rows: 0,
        n_split: 0,
        split_base: 0,
        total_splits: total as u32,
        min_keys: 0,
        scale: scale(d),
        _pad: [0; 3],
    };
    let mut ds = Vec::new();
    for (a, span) in layout.spans(n).iter().enumerate() {
        let c = arena_config(layout, a, h);
        let splits = arena_splits(&c, h, span.rows);
        let sg_dot = ctx.caps.subgroups && ctx.caps.subgroup_min as usize >= c.lk;
        let kernel = decode_kernel(layout.arena_fmt(a), d, &c, sg_dot);
        params.min_keys = c.min_keys() as u32;
        params.row0 = span.row0 as u32;
        params.rows = span.rows as u32;
        params.n_split = splits as u32;
        let bytes = layout.arena_bytes(a);
        let bufs = [qs.clone(), kc[a].slice(0, bytes), vc[a].slice(0, bytes), pos.slice(0, 4), ps.clone()];
        ds.push(ctx.dispatch(&kernel, bytemuck::bytes_of(&params), &bufs, [(h / c.gq) as u32, splits as u32, 1])?);
        params.split_base += splits as u32;
    }
    let reduce = [ps, out.slice(0, (h * d * 4) as u64)];
    ds.push(ctx.dispatch(&reduce_kernel(d), bytemuck::bytes_of(&params), &reduce, [h as u32, 1, 1])?);
    Ok(ds)
}

pub fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for fmt in KvFormat::ALL {
        for d in [64, 128, 256] {
            v.push(prefill_kernel(fmt, d));
        }
        for (d, h, hkv) in [(64, 8, 8), (64, 8, 1), (128, 32, 32), (128, 32, 8), (256, 4, 4)] {
            for sg in [true, false] {
                let k = decode_kernel(fmt, d, &decode_config(fmt, h, hkv, d), sg);
                if !v.contains(&k) {
                    v.push(k);
                }
            }
        }
    }
    for d in [64, 128, 256] {
        v.push(reduce_kernel(d));
    }
    v
}

// ---- graph ops --------------------------------------------------------------------------------------

fn arenas_of(io: &Bound, first: usize, n: usize) -> Result<(Vec<GpuBuffer>, Vec<GpuBuffer>)> {
    let kc = (0..n).map(|a| io.input(first + a).cloned()).collect::<Result<Vec<_>>>()?;
    let vc = (0..n).map(|a| io.input(first + n + a).cloned()).collect::<Result<Vec<_>>>()?;
    Ok((kc, vc))
}

/// Graph op, prefill: `q, pos, kc_0 .. kc_{A-1}, vc_0 .. vc_{A-1} -> o [T, H, D], ml [T, H, 2]`
/// (`ml` absent for a single f16 arena).
#[derive(Debug)]
pub struct PagedPrefill {
    pub t: usize,
    pub h: usize,
    pub q_stride: usize,
    pub layout: KvLayout,
    pub arenas: usize,
}

impl Op for PagedPrefill {
    fn record(&self, ctx: &Context, io: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
        let (q, pos) = (io.input(0)?, io.input(1)?);
        let (kc, vc) = arenas_of(io, 2, self.arenas)?;
        let o = io.output(0)?;
        // A single f16 arena needs no state buffer (the graph then has no second output).
        let ml = if single_f16(&self.layout, self.arenas) { o } else { io.output(1)? };
        prefill(ctx, q, self.q_stride, self.t, self.h, &self.layout, &kc, &vc, pos, o, ml)
    }
}

/// Graph op, decode: `q [H, D], pos, kc_0 .., vc_0 .. -> o [H, D], scratch`.
#[derive(Debug)]
pub struct PagedDecode {
    pub h: usize,
    pub layout: KvLayout,
    pub arenas: usize,
}

impl Op for PagedDecode {
    fn record(&self, ctx: &Context, io: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
        let (q, pos) = (io.input(0)?, io.input(1)?);
        let (kc, vc) = arenas_of(io, 2, self.arenas)?;
        let (o, scratch) = (io.output(0)?, io.output(1)?);
        decode(ctx, q, self.h, &self.layout, &kc, &vc, pos, scratch, o)
    }
}
