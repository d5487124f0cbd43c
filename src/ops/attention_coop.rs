//! Host side of `shaders/attention_coop.wgsl`: flash attention for prefill on 16×16×16 f16×f16→f32
//! cooperative matrices, over the f16 KV cache `[B * kv_stride, Hkv, D/2]` u32 words (causal, padding
//! mask, GQA). `ops::attention::prefill` routes here when the context enabled the coop path and the
//! head dim is a multiple of 16; the parameter block is `attention::prefill_params`' (q_stride 0), so
//! a recorded dispatch is replayed at a new pos0 the same way. [`prefill_pos`] follows the
//! position-buffer convention: `pos[0]` on the GPU and q rows with a stride (a fused qkv buffer).

use bytemuck::{Pod, Zeroable};

use super::attention::{cache_row_bytes, AttnShape};
use crate::error::{Error, Result};
use crate::gpu::{Context, CoopMode, Dispatch, GpuBuffer, Kernel, Slot};

/// Largest head dim the coop kernel takes (a multiple of 16).
pub const MAX_D: usize = 256;

/// Query rows per workgroup are 16 per subgroup; keys per tile `bk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub nsg: u32,
    pub bk: u32,
}

/// Tiles the host may pick, largest first.
pub const TILES: [Tile; 5] = [
    Tile { nsg: 4, bk: 32 },
    Tile { nsg: 4, bk: 16 },
    Tile { nsg: 2, bk: 32 },
    Tile { nsg: 2, bk: 16 },
    Tile { nsg: 1, bk: 16 },
];

/// Workgroup memory of a variant (the shader's tiles: q, K/V, scores, probabilities, row factors
/// and scales).
pub fn storage_bytes(d: usize, tile: Tile, split: bool) -> u64 {
    let (bq, bk, dq) = (16 * tile.nsg as u64, tile.bk as u64, d as u64 + 8);
    let halves = if split { 2 } else { 1 };
    bq * dq * 2 * halves + bk * dq * 2 + bq * (bk + 4) * 4 + bq * (bk + 8) * 2 * halves + bq * 12 + 8
}

/// The largest tile that fits the adapter, or `None` (then the SIMT kernel runs).
pub fn pick_tile(ctx: &Context, d: usize, split: bool) -> Option<Tile> {
    TILES.into_iter().find(|t| {
        storage_bytes(d, *t, split) <= ctx.limits.workgroup_storage as u64
            && t.nsg * ctx.caps.coop_sg <= ctx.limits.invocations_per_workgroup
    })
}

/// The kernel for a head dim and options; `sg` is the subgroup size it is compiled for.
#[allow(clippy::too_many_arguments)]
pub fn kernel(
    d: usize,
    tile: Tile,
    sg: u32,
    mode: CoopMode,
    emulated: bool,
    causal: bool,
    lens: bool,
    pos_buf: bool,
) -> Kernel {
    // q, cache_k, cache_v, o, lens [B], pos [1]
    let mut slots = vec![Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite];
    if lens {
        slots.push(Slot::Read);
    }
    if pos_buf {
        slots.push(Slot::Read);
    }
    Kernel::new("attention_coop", "attn_prefill", &slots)
        .define("D", format!("{d}u"))
        .define("NSG", format!("{}u", tile.nsg))
        .define("BK", format!("{}u", tile.bk))
        .define("SG", format!("{sg}u"))
        .flag_if(mode == CoopMode::Exact, "SPLIT")
        .flag_if(emulated, "COOP_EMU")
        .flag_if(causal, "CAUSAL")
        .flag_if(lens, "LENS")
        .flag_if(pos_buf, "POS_BUF")
}

/// Every variant the engine can request for the 7B, reranker and BERT head dims at subgroup size 32
/// (native and emulated), for the shader validation test.
pub fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for emulated in [false, true] {
        for mode in [CoopMode::Exact, CoopMode::Fast] {
            for (d, tile) in [(64, TILES[0]), (128, TILES[2]), (128, TILES[3]), (128, TILES[0])] {
                for (causal, lens, pos_buf) in [(true, false, false), (true, true, false), (false, true, true)] {
                    v.push(kernel(d, tile, 32, mode, emulated, causal, lens, pos_buf));
                }
            }
        }
    }
    v
}

/// Whether the coop kernel takes this head dim on this context.
pub fn usable(ctx: &Context, d: usize) -> bool {
    let split = ctx.caps.coop == CoopMode::Exact;
    ctx.caps.coop_f16() && d.is_multiple_of(16) && d > 0 && d <= MAX_D && pick_tile(ctx, d, split).is_some()
}

fn need(what: &str, buf: &GpuBuffer, bytes: usize) -> Result<()> {
    if (buf.size as usize) < bytes {
        return Err(Error::shape("attn_prefill_coop", format!("{what}: buffer of {} bytes, need {bytes}", buf.size)));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    q: &GpuBuffer,
    q_stride: usize,
    pos: Option<&GpuBuffer>,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    out: &GpuBuffer,
    shape: &AttnShape,
    lens: Option<&GpuBuffer>,
    params: Vec<u8>,
) -> Result<Dispatch> {
    let &AttnShape { b, s, h, hkv, d, kv_stride, causal, .. } = shape;
    let split = ctx.caps.coop == CoopMode::Exact;
    let tile = pick_tile(ctx, d, split)
        .ok_or_else(|| Error::Unsupported(format!("coop attention: no tile for D = {d} fits this adapter")))?;
    let q_bytes = ((b * s - 1) * q_stride.max(h * d) + h * d) * 4;
    let act = b * s * h * d * 4;
    let cache = b * kv_stride * cache_row_bytes(hkv, d);
    need("q [B, S, q_stride]", q, q_bytes)?;
    need("o [B, S, H, D]", out, act)?;
    need("cache_k [B * kv_stride, Hkv, D/2]", cache_k, cache)?;
    need("cache_v [B * kv_stride, Hkv, D/2]", cache_v, cache)?;
    let mut bufs = vec![
        q.slice(0, q_bytes as u64),
        cache_k.slice(0, cache as u64),
        cache_v.slice(0, cache as u64),
        out.slice(0, act as u64),
    ];
    if let Some(l) = lens {
        need("lens [B]", l, b * 4)?;
        bufs.push(l.slice(0, (b * 4) as u64));
    }
    if let Some(pb) = pos {
        need("pos [1]", pb, 4)?;
        bufs.push(pb.slice(0, 4));
    }
    let groups = [s.div_ceil(16 * tile.nsg as usize), h, b];
    if groups.iter().any(|&g| g > ctx.limits.workgroups_per_dim as usize) {
        return Err(Error::shape(
            "attn_prefill_coop",
            format!("grid {groups:?} exceeds {} workgroups per dimension", ctx.limits.workgroups_per_dim),
        ));
    }
    let caps = &ctx.caps;
    let kern = kernel(d, tile, caps.coop_sg, caps.coop, caps.coop_emulated, causal, lens.is_some(), pos.is_some());
    ctx.dispatch(&kern, &params, &bufs, [groups[0] as u32, groups[1] as u32, groups[2] as u32])
}

/// Record coop prefill attention for `ops::attention::prefill` (whose checks the caller has run):
/// the position of query 0 is `pos[0]` on the GPU and q rows are `shape.q_stride` floats apart; or
/// `None` when the coop path does not apply (off, D not a multiple of 16, or no tile fits): then the
/// SIMT kernel runs.
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
) -> Result<Option<Dispatch>> {
    if !usable(ctx, shape.d) {
        return Ok(None);
    }
    prefill_pos(ctx, q, shape.q_stride, pos, cache_k, cache_v, out, shape, lens).map(Some)
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PosParams {
    b: u32,
    s: u32,
    h: u32,
    hkv: u32,
    kv_stride: u32,
    pos0: u32,
    scale: f32,
    q_stride: u32,
}

/// Record coop prefill attention reading the position of query 0 from `pos[0]` (u32, on the GPU)
/// and q from rows of `q_stride` floats (head h of token (b, i) at `(b*S + i)*q_stride + h*D`, e.g. a
/// fused qkv buffer). `shape.pos0` is ignored; keys past `kv_stride` are never read. Fails with
/// `Unsupported` when the coop path is off or does not take this head dim.
#[allow(clippy::too_many_arguments)]
pub fn prefill_pos(
    ctx: &Context,
    q: &GpuBuffer,
    q_stride: usize,
    pos: &GpuBuffer,
    cache_k: &GpuBuffer,
    cache_v: &GpuBuffer,
    out: &GpuBuffer,
    shape: &AttnShape,
    lens: Option<&GpuBuffer>,
) -> Result<Dispatch> {
    let &AttnShape { b, s, h, hkv, d, kv_stride, .. } = shape;
    if !usable(ctx, d) {
        return Err(Error::Unsupported(format!("coop attention is off on this context or takes no D = {d}")));
    }
    if b == 0 || s == 0 || h == 0 || hkv == 0 || !h.is_multiple_of(hkv) || s > kv_stride {
        return Err(Error::shape(
            "attn_prefill_coop",
            format!("B = {b}, S = {s}, H = {h}, Hkv = {hkv}, kv_stride = {kv_stride}"),
        ));
    }
    if q_stride != 0 && q_stride < h * d {
        return Err(Error::shape("attn_prefill_coop", format!("q_stride {q_stride} < H·D = {}", h * d)));
    }
    let p = PosParams {
        b: b as u32,
        s: s as u32,
        h: h as u32,
        hkv: hkv as u32,
        kv_stride: kv_stride as u32,
        pos0: 0,
        scale: 1.0 / (d as f32).sqrt(),
        q_stride: q_stride as u32,
    };
    record(ctx, q, q_stride, Some(pos), cache_k, cache_v, out, shape, lens, bytemuck::bytes_of(&p).to_vec())
}
