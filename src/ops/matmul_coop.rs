//! Host side of `shaders/matmul_coop.wgsl`: the tensor-core GEMM, y[T, N] (+)= x[T, K] · Wᵀ (+ bias)
//! on 16×16×16 f16×f16→f32 cooperative matrices, for dense f16/bf16 weights and GPTQ int4 weights.
//! `ops::matmul::matmul_rows` and `ops::matmul_q4::matmul_q4` call it for T > GEMV_MAX_T; it records
//! nothing (returns `None`) unless the context enabled the coop path (`Caps::coop_f16`) and the weight
//! was found f16-safe at load (`f16_scale`), so the caller falls back to the SIMT GEMM.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{Caps, Context, CoopMode, Dispatch, GpuBuffer, Kernel, Slot};
use crate::tensor::{DType, QWeight, Weight};

/// Which weight the kernel stages into its f16 tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoopWeight {
    F16,
    BF16,
    /// GPTQ int4; `gidx`: the weight keeps a g_idx table (act-order).
    Q4 {
        gidx: bool,
    },
}

/// Workgroup tile: `sgm` × `sgn` subgroups, each owning 32×32 outputs (2×2 fragments), so the tile
/// is 32·sgm tokens × 32·sgn output columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub sgm: u32,
    pub sgn: u32,
}

impl Tile {
    pub const fn new(sgm: u32, sgn: u32) -> Tile {
        Tile { sgm, sgn }
    }
    pub fn bm(&self) -> usize {
        32 * self.sgm as usize
    }
    pub fn bn(&self) -> usize {
        32 * self.sgn as usize
    }
}

/// Tiles the host may pick, largest first.
pub const TILES: [Tile; 4] = [Tile::new(4, 4), Tile::new(4, 2), Tile::new(2, 4), Tile::new(2, 2)];

const BKP: u64 = 40; // row stride of the staged f16 tiles (shader constant)

/// Workgroup memory of a variant: the f16 x and W tiles (doubled when split), one 16×16 f32 stage
/// per subgroup, and the range-check words and per-row scales.
pub fn storage_bytes(tile: Tile, split: bool, q4: bool) -> u64 {
    let (bm, bn) = (tile.bm() as u64, tile.bn() as u64);
    let x = bm * BKP * 2 * if split { 2 } else { 1 };
    let w = bn * BKP * 2 * if split && q4 { 2 } else { 1 };
    x + w + (tile.sgm * tile.sgn) as u64 * 1024 + 8 + bm * 8
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    t: u32,
    n: u32,
    k: u32,
    words: u32,
    row0: u32,
    rows: u32,
    x_off: u32,
    groups: u32,
    gs: u32,
    w_scale: f32,
    w_unscale: f32,
    _pad: u32,
}

/// The kernel for a weight kind and options. `sg`: the subgroup size it is compiled for (the
/// adapter's fixed size; 32 when emulated). `mode` must not be `Off`.
#[allow(clippy::too_many_arguments)]
pub fn kernel(w: CoopWeight, mode: CoopMode, emulated: bool, sg: u32, tile: Tile, bias: bool, acc: bool) -> Kernel {
    // x [T, K], W (dense [rows, K/2] | Q4 qweight [rows, K/8], groups [rows, G]), y [T, N], bias [N], g_idx [K]
    let mut slots = vec![Slot::Read, Slot::Read];
    if let CoopWeight::Q4 { .. } = w {
        slots.push(Slot::Read);
    }
    slots.push(Slot::ReadWrite);
    if bias {
        slots.push(Slot::Read);
    }
    let gidx = matches!(w, CoopWeight::Q4 { gidx: true });
    if gidx {
        slots.push(Slot::Read);
    }
    let k = Kernel::new("matmul_coop", "gemm", &slots)
        .define("SGM", format!("{}u", tile.sgm))
        .define("SGN", format!("{}u", tile.sgn))
        .define("SG", format!("{sg}u"))
        .flag_if(mode == CoopMode::Exact, "SPLIT")
        .flag_if(emulated, "COOP_EMU")
        .flag_if(gidx, "GIDX")
        .flag_if(bias, "BIAS")
        .flag_if(acc, "ACC");
    match w {
        CoopWeight::F16 => k.flag("W_F16"),
        CoopWeight::BF16 => k.flag("W_BF16"),
        CoopWeight::Q4 { .. } => k.flag("Q4"),
    }
}

/// Every variant the engine can request at subgroup size 32 (native and emulated), for the shader
/// validation test.
pub fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for emulated in [false, true] {
        for mode in [CoopMode::Exact, CoopMode::Fast] {
            for w in [CoopWeight::F16, CoopWeight::BF16, CoopWeight::Q4 { gidx: false }, CoopWeight::Q4 { gidx: true }]
            {
                for tile in TILES {
                    v.push(kernel(w, mode, emulated, 32, tile, true, true));
                    v.push(kernel(w, mode, emulated, 32, tile, false, false));
                }
            }
        }
    }
    v
}

/// The tile for T tokens and N outputs that fits the adapter: 128×128 for long inputs (T ≥ 1024),
/// else 64×64. `ZHINAO_COOP_TILE=MxN` (64x64, 64x128, 128x64, 128x128) overrides it, for tuning.
pub fn pick_tile(ctx: &Context, t: usize, split: bool, q4: bool) -> Option<Tile> {
    let caps = &ctx.caps;
    let fits = |tile: &Tile| {
        storage_bytes(*tile, split, q4) <= ctx.limits.workgroup_storage as u64
            && tile.sgm * tile.sgn * caps.coop_sg <= ctx.limits.invocations_per_workgroup
    };
    let forced = std::env::var("ZHINAO_COOP_TILE").ok().and_then(|v| {
        let (m, n) = v.split_once('x')?;
        let (m, n) = (m.trim().parse::<u32>().ok()?, n.trim().parse::<u32>().ok()?);
        TILES.into_iter().find(|tl| tl.bm() as u32 == m && tl.bn() as u32 == n)
    });
    if let Some(tile) = forced.filter(&fits) {
        return Some(tile);
    }
    let wanted = if t >= 1024 { TILES.to_vec() } else { vec![Tile::new(2, 2)] };
    wanted.into_iter().find(fits)
}

fn usable(caps: &Caps) -> bool {
    caps.coop_f16() && caps.coop_sg > 0
}

/// The tile to use: `forced` if it fits the adapter (tests), else `pick_tile`'s.
fn tile_for(ctx: &Context, t: usize, split: bool, q4: bool, forced: Option<Tile>) -> Option<Tile> {
    match forced {
        Some(tile) => (storage_bytes(tile, split, q4) <= ctx.limits.workgroup_storage as u64
            && tile.sgm * tile.sgn * ctx.caps.coop_sg <= ctx.limits.invocations_per_workgroup)
            .then_some(tile),
        None => pick_tile(ctx, t, split, q4),
    }
}

/// Record the coop GEMM for a dense weight, or return `None` when it does not apply (coop off, f32
/// weight or not f16-safe, K % 8 != 0, no tile fits the adapter): the caller then uses the SIMT GEMM.
/// Arguments as `ops::matmul::matmul_rows` (checked there); `tile` forces a tile (tests; `None`
/// when it does not fit the adapter).
#[allow(clippy::too_many_arguments)]
pub fn dense(
    ctx: &Context,
    x: &GpuBuffer,
    x_row0: usize,
    t: usize,
    w: &Weight,
    bias: Option<&GpuBuffer>,
    y: &GpuBuffer,
    accumulate: bool,
    tile: Option<Tile>,
) -> Result<Option<Vec<Dispatch>>> {
    let caps = ctx.caps;
    let kind = match w.dtype {
        DType::F16 => CoopWeight::F16,
        DType::BF16 => CoopWeight::BF16,
        _ => return Ok(None),
    };
    let (n, k) = (w.rows, w.cols);
    let Some(scale) = w.f16_scale else { return Ok(None) };
    if !usable(&caps) || !k.is_multiple_of(8) || !w.row_words.is_multiple_of(4) {
        return Ok(None);
    }
    let split = caps.coop == CoopMode::Exact;
    let Some(tile) = tile_for(ctx, t, split, false, tile) else { return Ok(None) };
    let kern = kernel(kind, caps.coop, caps.coop_emulated, caps.coop_sg, tile, bias.is_some(), accumulate);
    let mut out = Vec::with_capacity(w.chunks.len());
    for c in &w.chunks {
        let params = Params {
            t: t as u32,
            n: n as u32,
            k: k as u32,
            words: w.row_words as u32,
            row0: c.row0 as u32,
            rows: c.rows as u32,
            x_off: (x_row0 * k / 4) as u32,
            groups: 0,
            gs: 0,
            w_scale: scale,
            w_unscale: 1.0 / scale,
            _pad: 0,
        };
        let mut bufs = vec![x.slice(0, ((x_row0 + t) * k * 4) as u64), c.buf.whole(), y.slice(0, (t * n * 4) as u64)];
        if let Some(b) = bias {
            bufs.push(b.slice(0, (n * 4) as u64));
        }
        let wg = [c.rows.div_ceil(tile.bn()) as u32, t.div_ceil(tile.bm()) as u32, 1];
        out.push(ctx.dispatch(&kern, bytemuck::bytes_of(&params), &bufs, wg)?);
    }
    Ok(Some(out))
}

/// As [`dense`] for a GPTQ int4 weight (K % 32 == 0), dequantized into the f16 tile as it is staged.
/// Arguments as `ops::matmul_q4::matmul_q4` (checked there).
#[allow(clippy::too_many_arguments)]
pub fn q4(
    ctx: &Context,
    x: &GpuBuffer,
    t: usize,
    w: &QWeight,
    bias: Option<&GpuBuffer>,
    y: &GpuBuffer,
    accumulate: bool,
    tile: Option<Tile>,
) -> Result<Option<Vec<Dispatch>>> {
    let caps = ctx.caps;
    let (n, k) = (w.rows, w.cols);
    let Some(scale) = w.f16_scale else { return Ok(None) };
    if !usable(&caps) || !k.is_multiple_of(32) {
        return Ok(None);
    }
    let split = caps.coop == CoopMode::Exact;
    let Some(tile) = tile_for(ctx, t, split, true, tile) else { return Ok(None) };
    let mut out = Vec::with_capacity(w.chunks.len());
    for c in &w.chunks {
        let kind = CoopWeight::Q4 { gidx: c.g_idx.is_some() };
        let kern = kernel(kind, caps.coop, caps.coop_emulated, caps.coop_sg, tile, bias.is_some(), accumulate);
        let params = Params {
            t: t as u32,
            n: n as u32,
            k: k as u32,
            words: (k / 8) as u32,
            row0: c.row0 as u32,
            rows: c.rows as u32,
            x_off: 0,
            groups: w.groups as u32,
            gs: w.group_size as u32,
            w_scale: scale,
            w_unscale: 1.0 / scale,
            _pad: 0,
        };
        let mut bufs =
            vec![x.slice(0, (t * k * 4) as u64), c.qweight.whole(), c.groups.whole(), y.slice(0, (t * n * 4) as u64)];
        if let Some(b) = bias {
            bufs.push(b.slice(0, (n * 4) as u64));
        }
        if let Some(g) = &c.g_idx {
            bufs.push(g.whole());
        }
        let wg = [c.rows.div_ceil(tile.bn()) as u32, t.div_ceil(tile.bm()) as u32, 1];
        out.push(ctx.dispatch(&kern, bytemuck::bytes_of(&params), &bufs, wg)?);
    }
    Ok(Some(out))
}
