//! Host side of `shaders/matmul_q4.wgsl`: y[T, N] (+)= x[T, K] · Wᵀ (+ bias[N]) with W a GPTQ int4
//! weight (`QWeight`), dequantized inside the kernel.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::tensor::QWeight;

/// Token counts up to this use the GEMV path (weights streamed once per token).
pub const GEMV_MAX_T: usize = 4;

/// Output rows per GEMV workgroup (`ROWS` in the shader).
const GEMV_ROWS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    t: u32,
    n: u32,
    k: u32,
    words: u32,
    groups: u32,
    gs: u32,
    row0: u32,
    rows: u32,
}

/// The kernel for the given options (also used by the shader validation test). `gidx`: the weight
/// keeps a g_idx table (desc_act); `vec4`: K % 32 == 0 (GEMV only).
pub fn kernel(gemv: bool, gidx: bool, vec4: bool, bias: bool, acc: bool) -> Kernel {
    if !gemv {
        return gemm_kernel(gidx, false, bias, acc);
    }
    // x [T, K], qweight [rows, K/8], groups [rows, G], y [T, N], bias [N], g_idx [K]
    let mut slots = vec![Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite];
    if bias {
        slots.push(Slot::Read);
    }
    if gidx {
        slots.push(Slot::Read);
    }
    Kernel::new("matmul_q4", "gemv", &slots)
        .flag_if(vec4, "VEC4")
        .flag_if(gidx, "GIDX")
        .flag_if(bias, "BIAS")
        .flag_if(acc, "ACC")
}

/// The SIMT GEMM (`shaders/gemm_simt.wgsl` with int4 weight tiles); `bm128` = 128-token tiles.
pub fn gemm_kernel(gidx: bool, bm128: bool, bias: bool, acc: bool) -> Kernel {
    let mut slots = vec![Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite];
    if bias {
        slots.push(Slot::Read);
    }
    if gidx {
        slots.push(Slot::Read);
    }
    Kernel::new("matmul_q4", "gemm", &slots)
        .flag("GEMM")
        .flag_if(bm128, "BM128")
        .flag_if(gidx, "GIDX")
        .flag_if(bias, "BIAS")
        .flag_if(acc, "ACC")
}

pub fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for gidx in [false, true] {
        for vec4 in [false, true] {
            v.push(kernel(true, gidx, vec4, true, true));
            v.push(kernel(true, gidx, vec4, false, false));
        }
        for bm128 in [false, true] {
            v.push(gemm_kernel(gidx, bm128, true, true));
            v.push(gemm_kernel(gidx, bm128, false, false));
        }
    }
    v
}

/// Record y[T, N] (+)= x[T, K] · Wᵀ (+ bias): one dispatch per weight chunk.
/// `x` holds [T, K] f32 from offset 0, `y` [T, N] f32, `bias` [N] f32.
pub fn matmul_q4(
    ctx: &Context,
    x: &GpuBuffer,
    t: usize,
    w: &QWeight,
    bias: Option<&GpuBuffer>,
    y: &GpuBuffer,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let (n, k) = (w.rows, w.cols);
    super::matmul::check_io("matmul_q4", x, t, k, y, t, n, bias)?;
    if t <= GEMV_MAX_T {
        let opts = super::gemv::GemvOpts { bias, acc: accumulate, ..Default::default() };
        return super::gemv::gemv(ctx, x, t, super::gemv::GemvWeight::Q4(w), &opts, y);
    }
    if let Some(ds) = super::matmul_coop::q4(ctx, x, t, w, bias, y, accumulate, None)? {
        return Ok(ds);
    }
    record(ctx, x, t, w, bias, y, accumulate, Some(super::matmul::simt_bm128(t, n)))
}

/// As [`matmul_q4`], always with the SIMT GEMM (any T; `bm128`: 128-token tiles), never the GEMV or
/// the coop GEMM: for tests and benchmarks of that path.
#[allow(clippy::too_many_arguments)]
pub fn gemm_simt(
    ctx: &Context,
    x: &GpuBuffer,
    t: usize,
    w: &QWeight,
    bias: Option<&GpuBuffer>,
    y: &GpuBuffer,
    accumulate: bool,
    bm128: bool,
) -> Result<Vec<Dispatch>> {
    super::matmul::check_io("matmul_q4", x, t, w.cols, y, t, w.rows, bias)?;
    record(ctx, x, t, w, bias, y, accumulate, Some(bm128))
}

/// One dispatch per weight chunk: the GEMV (`gemm` None) or the SIMT GEMM (Some(bm128)).
#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    x: &GpuBuffer,
    t: usize,
    w: &QWeight,
    bias: Option<&GpuBuffer>,
    y: &GpuBuffer,
    accumulate: bool,
    gemm: Option<bool>,
) -> Result<Vec<Dispatch>> {
    let (n, k) = (w.rows, w.cols);
    let vec4 = k % 32 == 0;
    let mut out = Vec::with_capacity(w.chunks.len());
    for c in &w.chunks {
        let kern = match gemm {
            None => kernel(true, c.g_idx.is_some(), vec4, bias.is_some(), accumulate),
            Some(bm128) => gemm_kernel(c.g_idx.is_some(), bm128, bias.is_some(), accumulate),
        };
        let params = Params {
            t: t as u32,
            n: n as u32,
            k: k as u32,
            words: (k / 8) as u32,
            groups: w.groups as u32,
            gs: w.group_size as u32,
            row0: c.row0 as u32,
            rows: c.rows as u32,
        };
        let mut bufs =
            vec![x.slice(0, (t * k * 4) as u64), c.qweight.whole(), c.groups.whole(), y.slice(0, (t * n * 4) as u64)];
        if let Some(b) = bias {
            bufs.push(b.slice(0, (n * 4) as u64));
        }
        if let Some(g) = &c.g_idx {
            bufs.push(g.whole());
        }
        let wg = match gemm {
            None => {
                let g = grid(ctx, c.rows.div_ceil(GEMV_ROWS) as u32);
                [g[0], g[1], t as u32]
            }
            Some(bm128) => [c.rows.div_ceil(128) as u32, t.div_ceil(if bm128 { 128 } else { 64 }) as u32, 1],
        };
        out.push(ctx.dispatch(&kern, bytemuck::bytes_of(&params), &bufs, wg)?);
    }
    Ok(out)
}
