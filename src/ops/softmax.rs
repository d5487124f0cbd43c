//! Host side of `shaders/softmax.wgsl`: row softmax / log-softmax in place over [R, N].

use bytemuck::{Pod, Zeroable};

use super::elementwise::need_f32;
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    r: u32,
    n: u32,
    _pad: [u32; 2],
}

/// Split R rows of `row_bytes` each into (row0, rows) ranges whose bindings fit the adapter's
/// binding limit and start at aligned offsets (logits [T, V] can exceed one binding).
pub(crate) fn row_chunks(ctx: &Context, op: &str, r: usize, row_bytes: usize) -> Result<Vec<(usize, usize)>> {
    let align = ctx.limits.storage_offset_alignment.max(4) as usize;
    let step = align / gcd(row_bytes, align); // rows per aligned offset
    let fit = (ctx.limits.max_binding as usize / row_bytes.max(1)) / step * step;
    if fit == 0 && r > 1 || row_bytes as u64 > ctx.limits.max_binding {
        return Err(Error::LimitTooSmall {
            what: format!("{op}: rows of {row_bytes} bytes at {align}-byte aligned offsets"),
            requested: (row_bytes * step.min(r)) as u64,
            available: ctx.limits.max_binding,
        });
    }
    let fit = fit.max(1);
    Ok((0..r).step_by(fit).map(|r0| (r0, fit.min(r - r0))).collect())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

pub fn kernel(log: bool) -> Kernel {
    Kernel::new("softmax", "softmax", &[Slot::ReadWrite]).flag_if(log, "LOG")
}

pub fn variants() -> Vec<Kernel> {
    vec![kernel(false), kernel(true)]
}

/// Softmax (or, with `log`, log-softmax) of each row of x[R, N], in place. One dispatch per
/// group of rows that fits one binding.
pub fn softmax(ctx: &Context, x: &GpuBuffer, r: usize, n: usize, log: bool) -> Result<Vec<Dispatch>> {
    let op = if log { "log_softmax" } else { "softmax" };
    if r == 0 || n == 0 {
        return Err(Error::shape(op, format!("empty [R, N] = [{r}, {n}]")));
    }
    need_f32(op, "x [R, N]", x, r * n)?;
    let kern = kernel(log);
    let mut ds = Vec::new();
    for (r0, rows) in row_chunks(ctx, op, r, n * 4)? {
        let params = Params { r: rows as u32, n: n as u32, _pad: [0; 2] };
        let bufs = [x.slice((r0 * n * 4) as u64, (rows * n * 4) as u64)];
        ds.push(ctx.dispatch(&kern, bytemuck::bytes_of(&params), &bufs, grid(ctx, rows as u32))?);
    }
    Ok(ds)
}
