//! Host side of `shaders/elementwise.wgsl`: SwiGLU's silu(gate)·up, exact-erf GELU (in place),
//! y += x, and a row gather. One thread per element; large sizes fold the workgroup grid into y.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::graph::{Bound, Op, Weights};

/// Threads per workgroup (`WG` in the shader).
const WG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    i: u32,
    t: u32,
    _pad: u32,
}

/// Check that `buf` holds at least `elems` 4-byte elements (shared by the small-op modules).
pub(crate) fn need_f32(op: &str, what: &str, buf: &GpuBuffer, elems: usize) -> Result<()> {
    if (buf.size as usize) < elems * 4 {
        return Err(Error::shape(
            op,
            format!("{what}: buffer of {} bytes, need {} ({elems} elements)", buf.size, elems * 4),
        ));
    }
    Ok(())
}

pub fn kernel_silu_mul(interleaved: bool) -> Kernel {
    Kernel::new("elementwise", "silu_mul", &[Slot::Read, Slot::ReadWrite])
        .flag("SILU_MUL")
        .flag_if(interleaved, "INTERLEAVED")
}
pub fn kernel_gelu() -> Kernel {
    Kernel::new("elementwise", "gelu", &[Slot::ReadWrite]).flag("GELU")
}
pub fn kernel_add() -> Kernel {
    Kernel::new("elementwise", "add", &[Slot::Read, Slot::ReadWrite]).flag("ADD")
}

pub fn kernel_gather_rows() -> Kernel {
    Kernel::new("elementwise", "gather_rows", &[Slot::Read, Slot::Read, Slot::ReadWrite]).flag("GATHER_ROWS")
}

pub fn variants() -> Vec<Kernel> {
    vec![kernel_silu_mul(false), kernel_silu_mul(true), kernel_gelu(), kernel_add(), kernel_gather_rows()]
}

fn count(op: &str, n: usize) -> Result<u32> {
    if n == 0 || n > u32::MAX as usize - WG {
        return Err(Error::shape(op, format!("{n} elements")));
    }
    Ok(n as u32)
}

/// out[T, I] = silu(gu[T, :I]) · gu[T, I:] (gu is [T, 2I]: gate | up per row).
pub fn silu_mul(ctx: &Context, gu: &GpuBuffer, t: usize, i: usize, out: &GpuBuffer) -> Result<Dispatch> {
    silu_mul_any(ctx, gu, t, i, false, out)
}

/// As [`silu_mul`] with gu's rows interleaved (gate_0, up_0, gate_1, up_1, …).
pub fn silu_mul_interleaved(ctx: &Context, gu: &GpuBuffer, t: usize, i: usize, out: &GpuBuffer) -> Result<Dispatch> {
    silu_mul_any(ctx, gu, t, i, true, out)
}

fn silu_mul_any(
    ctx: &Context,
    gu: &GpuBuffer,
    t: usize,
    i: usize,
    interleaved: bool,
    out: &GpuBuffer,
) -> Result<Dispatch> {
    let n = count("silu_mul", t * i)?;
    if gu == out {
        return Err(Error::shape("silu_mul", "gu and out must be distinct buffers"));
    }
    need_f32("silu_mul", "gu [T, 2I]", gu, t * 2 * i)?;
    need_f32("silu_mul", "out [T, I]", out, t * i)?;
    let params = Params { n, i: i as u32, t: 0, _pad: 0 };
    let bufs = [gu.slice(0, (t * 2 * i * 4) as u64), out.slice(0, (t * i * 4) as u64)];
    ctx.dispatch(&kernel_silu_mul(interleaved), bytemuck::bytes_of(&params), &bufs, grid(ctx, n.div_ceil(WG as u32)))
}

/// x[n] = gelu(x) = 0.5·x·(1 + erf(x/√2)), in place on the first `n` elements.
pub fn gelu(ctx: &Context, x: &GpuBuffer, n: usize) -> Result<Dispatch> {
    let n32 = count("gelu", n)?;
    need_f32("gelu", "x [n]", x, n)?;
    let params = Params { n: n32, i: 0, t: 0, _pad: 0 };
    ctx.dispatch(
        &kernel_gelu(),
        bytemuck::bytes_of(&params),
        &[x.slice(0, (n * 4) as u64)],
        grid(ctx, n32.div_ceil(WG as u32)),
    )
}

/// y[n] += x[n] (the residual add).
pub fn add(ctx: &Context, x: &GpuBuffer, y: &GpuBuffer, n: usize) -> Result<Dispatch> {
    let n32 = count("add", n)?;
    if x == y {
        return Err(Error::shape("add", "x and y must be distinct buffers"));
    }
    need_f32("add", "x [n]", x, n)?;
    need_f32("add", "y [n]", y, n)?;
    let params = Params { n: n32, i: 0, t: 0, _pad: 0 };
    let bytes = (n * 4) as u64;
    ctx.dispatch(
        &kernel_add(),
        bytemuck::bytes_of(&params),
        &[x.slice(0, bytes), y.slice(0, bytes)],
        grid(ctx, n32.div_ceil(WG as u32)),
    )
}

/// out[R, C] = x[rows[r], :] for x [T, C] and row indices `rows` [R] u32 on the device (an index
/// ≥ T gives a row of zeros).
pub fn gather_rows(
    ctx: &Context,
    x: &GpuBuffer,
    t: usize,
    c: usize,
    rows: &GpuBuffer,
    r: usize,
    out: &GpuBuffer,
) -> Result<Dispatch> {
    let n = count("gather_rows", r * c)?;
    if x == out {
        return Err(Error::shape("gather_rows", "x and out must be distinct buffers"));
    }
    need_f32("gather_rows", "x [T, C]", x, t * c)?;
    need_f32("gather_rows", "rows [R]", rows, r)?;
    need_f32("gather_rows", "out [R, C]", out, r * c)?;
    let params = Params { n, i: c as u32, t: t as u32, _pad: 0 };
    let bufs = [x.slice(0, (t * c * 4) as u64), rows.slice(0, (r * 4) as u64), out.slice(0, (r * c * 4) as u64)];
    ctx.dispatch(&kernel_gather_rows(), bytemuck::bytes_of(&params), &bufs, grid(ctx, n.div_ceil(WG as u32)))
}

/// Graph op: `gu [T, 2I] -> out [T, I] = silu(gate) · up` (gate | up per row, or interleaved).
#[derive(Debug)]
pub struct SiluMul {
    pub t: usize,
    pub i: usize,
    pub interleaved: bool,
}

impl Op for SiluMul {
    fn record(&self, ctx: &Context, io: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
        Ok(vec![silu_mul_any(ctx, io.input(0)?, self.t, self.i, self.interleaved, io.output(0)?)?])
    }
}

/// Graph op: `x [n] -> x' = gelu(x)` (in place).
#[derive(Debug)]
pub struct Gelu {
    pub n: usize,
}

impl Op for Gelu {
    fn record(&self, ctx: &Context, io: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
        Ok(vec![gelu(ctx, io.output(0)?, self.n)?])
    }
}

/// Graph op: `x [T, C], rows [R] u32 -> out [R, C] = x[rows]`.
#[derive(Debug)]
pub struct GatherRows {
    pub t: usize,
    pub c: usize,
    pub r: usize,
}

impl Op for GatherRows {
    fn record(&self, ctx: &Context, io: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
        Ok(vec![gather_rows(ctx, io.input(0)?, self.t, self.c, io.input(1)?, self.r, io.output(0)?)?])
    }
}
