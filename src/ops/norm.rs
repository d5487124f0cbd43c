//! Host side of `shaders/norm.wgsl`: RMSNorm and LayerNorm over rows of [T, C], each with an
//! optional fused residual add (x += r first; x is then the updated residual stream h).

use bytemuck::{Pod, Zeroable};

use super::elementwise::need_f32;
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::graph::{Bound, Op, WeightRef, Weights};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    t: u32,
    c: u32,
    eps: f32,
    _pad: u32,
}

/// The kernel for `layer` (LayerNorm, else RMSNorm) with or without the fused residual add.
pub fn kernel(layer: bool, residual: bool) -> Kernel {
    let mut slots = vec![if residual { Slot::ReadWrite } else { Slot::Read }, Slot::Read, Slot::ReadWrite];
    if layer {
        slots.push(Slot::Read);
    }
    if residual {
        slots.push(Slot::Read);
    }
    Kernel::new("norm", if layer { "layer_norm" } else { "rms_norm" }, &slots)
        .flag_if(layer, "LAYER_NORM")
        .flag_if(residual, "RESIDUAL")
}

pub fn variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for layer in [false, true] {
        for residual in [false, true] {
            v.push(kernel(layer, residual));
        }
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    op: &str,
    x: &GpuBuffer,
    residual: Option<&GpuBuffer>,
    t: usize,
    c: usize,
    w: &GpuBuffer,
    b: Option<&GpuBuffer>,
    eps: f32,
    y: &GpuBuffer,
) -> Result<Dispatch> {
    if t == 0 || c == 0 {
        return Err(Error::shape(op, format!("empty [T, C] = [{t}, {c}]")));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::shape(op, format!("eps = {eps}")));
    }
    if x == y || residual.is_some_and(|r| r == y || r == x) {
        return Err(Error::shape(op, "x, r and y must be distinct buffers"));
    }
    let tc = t * c;
    need_f32(op, "x [T, C]", x, tc)?;
    need_f32(op, "y [T, C]", y, tc)?;
    need_f32(op, "w [C]", w, c)?;
    let bytes = (tc * 4) as u64;
    let mut bufs = vec![x.slice(0, bytes), w.slice(0, (c * 4) as u64), y.slice(0, bytes)];
    if let Some(b) = b {
        need_f32(op, "b [C]", b, c)?;
        bufs.push(b.slice(0, (c * 4) as u64));
    }
    if let Some(r) = residual {
        need_f32(op, "r [T, C]", r, tc)?;
        bufs.push(r.slice(0, bytes));
    }
    let params = Params { t: t as u32, c: c as u32, eps, _pad: 0 };
    let k = kernel(b.is_some(), residual.is_some());
    ctx.dispatch(&k, bytemuck::bytes_of(&params), &bufs, grid(ctx, t as u32))
}

/// y[T, C] = w ⊙ x·rsqrt(mean(x²) + eps). With `residual = Some(r)`: x += r first (x is
/// updated in place) and y = rms_norm(x). `w` is [C] f32; x, r, y are distinct buffers.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm(
    ctx: &Context,
    x: &GpuBuffer,
    residual: Option<&GpuBuffer>,
    t: usize,
    c: usize,
    w: &GpuBuffer,
    eps: f32,
    y: &GpuBuffer,
) -> Result<Dispatch> {
    record(ctx, "rms_norm", x, residual, t, c, w, None, eps, y)
}

/// y[T, C] = (x − mean)·rsqrt(var + eps) ⊙ w + b (BERT LayerNorm, biased variance). With
/// `residual = Some(r)`: x += r first (in place). `w`, `b` are [C] f32.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm(
    ctx: &Context,
    x: &GpuBuffer,
    residual: Option<&GpuBuffer>,
    t: usize,
    c: usize,
    w: &GpuBuffer,
    b: &GpuBuffer,
    eps: f32,
    y: &GpuBuffer,
) -> Result<Dispatch> {
    record(ctx, "layer_norm", x, residual, t, c, w, Some(b), eps, y)
}

/// Graph op: `x [T, C] -> y [T, C] = rms_norm(x) ⊙ weight`.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: WeightRef,
    pub t: usize,
    pub c: usize,
    pub eps: f32,
}

impl Op for RmsNorm {
    fn record(&self, ctx: &Context, io: &Bound, w: &dyn Weights) -> Result<Vec<Dispatch>> {
        let (x, y) = (io.input(0)?, io.output(0)?);
        Ok(vec![rms_norm(ctx, x, None, self.t, self.c, w.vector(&self.weight)?, self.eps, y)?])
    }
}

/// Graph op: `x [T, C] -> y [T, C] = layer_norm(x) ⊙ weight + bias`; with `residual`:
/// `x, r [T, C] -> x' (x + r, in place), y = layer_norm(x')`.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: WeightRef,
    pub bias: WeightRef,
    pub t: usize,
    pub c: usize,
    pub eps: f32,
    pub residual: bool,
}

impl Op for LayerNorm {
    fn record(&self, ctx: &Context, io: &Bound, w: &dyn Weights) -> Result<Vec<Dispatch>> {
        let x = io.input(0)?;
        let (r, y) = if self.residual { (Some(io.input(1)?), io.output(1)?) } else { (None, io.output(0)?) };
        let (g, b) = (w.vector(&self.weight)?, w.vector(&self.bias)?);
        Ok(vec![layer_norm(ctx, x, r, self.t, self.c, g, b, self.eps, y)?])
    }
}
