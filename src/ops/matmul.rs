//! Host side of `shaders/matmul.wgsl`: y[T, N] (+)= x[T, K] · W[N, K]ᵀ (+ bias[N]).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::graph::{Bound, Op, WeightRef, Weights};
use crate::tensor::{DType, Weight};

/// Token counts up to this use the GEMV path (weights streamed once per token).
pub const GEMV_MAX_T: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    t: u32,
    n: u32,
    k: u32,
    row_words: u32,
    row0: u32,
    rows: u32,
    x_off: u32,
    _pad: u32,
}

fn dtype_flag(d: DType) -> &'static str {
    match d {
        DType::F16 => "W_F16",
        DType::BF16 => "W_BF16",
        _ => "W_F32",
    }
}

/// Shape checks shared by the matmuls: T > 0 and x [x_rows, K], y [T, N], bias [N] f32 fit their buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_io(
    op: &str,
    x: &GpuBuffer,
    x_rows: usize,
    k: usize,
    y: &GpuBuffer,
    t: usize,
    n: usize,
    bias: Option<&GpuBuffer>,
) -> Result<()> {
    if t == 0 {
        return Err(Error::shape(op, "T = 0"));
    }
    let mut need = vec![("x [T, K]", x, x_rows * k), ("y [T, N]", y, t * n)];
    if let Some(b) = bias {
        need.push(("bias [N]", b, n));
    }
    for (what, buf, elems) in need {
        if (buf.size as usize) < elems * 4 {
            return Err(Error::shape(
                op,
                format!("{what}: buffer of {} bytes, need {} ({elems} f32)", buf.size, elems * 4),
            ));
        }
    }
    Ok(())
}

/// The kernel for a weight dtype and options (also used by the shader validation test). The GEMM
/// here is the 64-token tile; see [`gemm_kernel`].
pub fn kernel(gemv: bool, dtype: DType, vec4: bool, bias: bool, acc: bool) -> Kernel {
    if !gemv {
        return gemm_kernel(dtype, vec4, false, bias, acc);
    }
    let mut slots = vec![Slot::Read, Slot::Read, Slot::ReadWrite];
    if bias {
        slots.push(Slot::Read);
    }
    Kernel::new("matmul", "gemv", &slots)
        .flag(dtype_flag(dtype))
        .flag_if(vec4, "VEC4")
        .flag_if(bias, "BIAS")
        .flag_if(acc, "ACC")
}

/// The SIMT GEMM (`shaders/gemm_simt.wgsl`): `vec4` = vector loads of x and W (K % 4 == 0, and
/// K % 8 == 0 for 16-bit weights); `bm128` = 128-token tiles (else 64).
pub fn gemm_kernel(dtype: DType, vec4: bool, bm128: bool, bias: bool, acc: bool) -> Kernel {
    let mut slots = vec![Slot::Read, Slot::Read, Slot::ReadWrite];
    if bias {
        slots.push(Slot::Read);
    }
    Kernel::new("matmul", "gemm", &slots)
        .flag("GEMM")
        .flag(dtype_flag(dtype))
        .flag_if(vec4, "VEC4")
        .flag_if(vec4, "GEMM_X4")
        .flag_if(bm128, "BM128")
        .flag_if(bias, "BIAS")
        .flag_if(acc, "ACC")
}

/// Tokens per SIMT GEMM tile: 128 when the grid of 128×128 tiles still has at least 512
/// workgroups (several per SM on a large GPU), else 64. `ZHINAO_GEMM_BM=64|128` overrides (tuning).
pub fn simt_bm128(t: usize, n: usize) -> bool {
    match std::env::var("ZHINAO_GEMM_BM").ok().as_deref() {
        Some("128") => true,
        Some("64") => false,
        _ => t.div_ceil(128) * n.div_ceil(128) >= 512,
    }
}

pub fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for d in [DType::F32, DType::F16, DType::BF16] {
        for vec4 in [false, true] {
            v.push(kernel(true, d, vec4, true, true));
            v.push(kernel(true, d, vec4, false, false));
            for bm128 in [false, true] {
                v.push(gemm_kernel(d, vec4, bm128, true, true));
                v.push(gemm_kernel(d, vec4, bm128, false, false));
            }
        }
    }
    v
}

/// Record y[T, N] (+)= x[T, K] · Wᵀ (+ bias): one dispatch per weight chunk.
/// `x` holds [T, K] f32 from offset 0, `y` [T, N] f32, `bias` [N] f32.
pub fn matmul(
    ctx: &Context,
    x: &GpuBuffer,
    t: usize,
    w: &Weight,
    bias: Option<&GpuBuffer>,
    y: &GpuBuffer,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    matmul_rows(ctx, x, 0, t, w, bias, y, accumulate)
}

/// As [`matmul`] for the `t` rows of x starting at row `x_row0` (e.g. only the last token's
/// hidden state into the lm_head).
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows(
    ctx: &Context,
    x: &GpuBuffer,
    x_row0: usize,
    t: usize,
    w: &Weight,
    bias: Option<&GpuBuffer>,
    y: &GpuBuffer,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let (n, k) = (w.rows, w.cols);
    check_io("matmul", x, x_row0 + t, k, y, t, n, bias)?;
    if t <= GEMV_MAX_T {
        let opts = super::gemv::GemvOpts { bias, acc: accumulate, x_row0, ..Default::default() };
        return super::gemv::gemv(ctx, x, t, super::gemv::GemvWeight::Dense(w), &opts, y);
    }
    if let Some(ds) = super::matmul_coop::dense(ctx, x, x_row0, t, w, bias, y, accumulate, None)? {
        return Ok(ds);
    }
    record(ctx, x, x_row0, t, w, bias, y, accumulate, Some(simt_bm128(t, n)))
}

/// As [`matmul_rows`], always with the SIMT GEMM (any T; `bm128`: 128-token tiles), never the GEMV
/// or the coop GEMM: for tests and benchmarks of that path.
#[allow(clippy::too_many_arguments)]
pub fn gemm_simt(
    ctx: &Context,
    x: &GpuBuffer,
    x_row0: usize,
    t: usize,
    w: &Weight,
    bias: Option<&GpuBuffer>,
    y: &GpuBuffer,
    accumulate: bool,
    bm128: bool,
) -> Result<Vec<Dispatch>> {
    check_io("matmul", x, x_row0 + t, w.cols, y, t, w.rows, bias)?;
    record(ctx, x, x_row0, t, w, bias, y, accumulate, Some(bm128))
}

/// One dispatch per weight chunk: the GEMV (`gemm` None) or the SIMT GEMM (Some(bm128)).
#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    x: &GpuBuffer,
    x_row0: usize,
    t: usize,
    w: &Weight,
    bias: Option<&GpuBuffer>,
    y: &GpuBuffer,
    accumulate: bool,
    gemm: Option<bool>,
) -> Result<Vec<Dispatch>> {
    let (n, k) = (w.rows, w.cols);
    let per_word = if w.dtype == DType::F32 { 1 } else { 2 };
    let vec4 = w.row_words.is_multiple_of(4) && k.is_multiple_of(4 * per_word);
    let kern = match gemm {
        None => kernel(true, w.dtype, vec4, bias.is_some(), accumulate),
        Some(bm128) => gemm_kernel(w.dtype, vec4, bm128, bias.is_some(), accumulate),
    };
    let mut out = Vec::with_capacity(w.chunks.len());
    for c in &w.chunks {
        let params = Params {
            t: t as u32,
            n: n as u32,
            k: k as u32,
            row_words: w.row_words as u32,
            row0: c.row0 as u32,
            rows: c.rows as u32,
            x_off: (x_row0 * k) as u32,
            _pad: 0,
        };
        let mut bufs = vec![x.slice(0, ((x_row0 + t) * k * 4) as u64), c.buf.whole(), y.slice(0, (t * n * 4) as u64)];
        if let Some(b) = bias {
            bufs.push(b.slice(0, (n * 4) as u64));
        }
        let wg = match gemm {
            None => {
                let g = grid(ctx, c.rows.div_ceil(4) as u32);
                [g[0], g[1], t as u32]
            }
            Some(bm128) => [c.rows.div_ceil(128) as u32, t.div_ceil(if bm128 { 128 } else { 64 }) as u32, 1],
        };
        out.push(ctx.dispatch(&kern, bytemuck::bytes_of(&params), &bufs, wg)?);
    }
    Ok(out)
}

/// Graph op: `x [T, K] -> y [T, N] = x · Wᵀ (+ bias)` for a model Linear (dense or GPTQ); with
/// `accumulate`: `x, y -> y' = y + x · Wᵀ` (in place: the residual stream).
#[derive(Debug)]
pub struct Linear {
    pub weight: WeightRef,
    pub bias: Option<WeightRef>,
    pub t: usize,
    pub accumulate: bool,
}

impl Op for Linear {
    fn record(&self, ctx: &Context, io: &Bound, w: &dyn Weights) -> Result<Vec<Dispatch>> {
        let bias = self.bias.as_ref().map(|b| w.vector(b)).transpose()?;
        w.linear(&self.weight)?.record(ctx, io.input(0)?, self.t, bias, io.output(0)?, self.accumulate)
    }
}

/// Graph op: `x [.., K] -> y [rows, N] = x[row0 .. row0 + rows] · Wᵀ` for a dense table (the
/// vocabulary projection, possibly split across bindings).
#[derive(Debug)]
pub struct TableMatmul {
    pub weight: WeightRef,
    pub row0: usize,
    pub rows: usize,
}

impl Op for TableMatmul {
    fn record(&self, ctx: &Context, io: &Bound, w: &dyn Weights) -> Result<Vec<Dispatch>> {
        matmul_rows(ctx, io.input(0)?, self.row0, self.rows, w.table(&self.weight)?, None, io.output(0)?, false)
    }
}
