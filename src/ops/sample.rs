//! Host side of `shaders/sample.wgsl`: argmax over rows on the device, ties to the lower index
//! (as `cpu::sample`). Generation samples with `ops::sampler`; this kernel serves batch scoring
//! and the `bench ops` argmax row.

use bytemuck::{Pod, Zeroable};

use super::elementwise::need_f32;
use super::softmax::row_chunks;
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer, Kernel, Slot};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    r: u32,
    n: u32,
    k: u32,
    row0: u32,
    skip: u32,
    _pad: [u32; 3],
}

pub fn kernel_argmax() -> Kernel {
    Kernel::new("sample", "argmax", &[Slot::Read, Slot::ReadWrite, Slot::ReadWrite]).flag("ARGMAX")
}

pub fn variants() -> Vec<Kernel> {
    vec![kernel_argmax()]
}

/// ids[r] (u32) and vals[r] (f32) = index and value of the maximum of row r of x[R, N]
/// (lowest index among equal maxima). One dispatch per group of rows that fits one binding.
pub fn argmax(
    ctx: &Context,
    x: &GpuBuffer,
    r: usize,
    n: usize,
    ids: &GpuBuffer,
    vals: &GpuBuffer,
) -> Result<Vec<Dispatch>> {
    if r == 0 || n == 0 || n >= u32::MAX as usize {
        return Err(Error::shape("argmax", format!("[R, N] = [{r}, {n}]")));
    }
    need_f32("argmax", "x [R, N]", x, r * n)?;
    need_f32("argmax", "ids [R]", ids, r)?;
    need_f32("argmax", "vals [R]", vals, r)?;
    let mut ds = Vec::new();
    for c in row_chunks(ctx, "argmax", r, n * 4)? {
        let params =
            Params { r: c.rows as u32, n: n as u32, k: 0, row0: c.row0 as u32, skip: c.skip as u32, _pad: [0; 3] };
        let bufs = [x.slice(c.offset, c.size), ids.slice(0, (r * 4) as u64), vals.slice(0, (r * 4) as u64)];
        ds.push(ctx.dispatch(
            &kernel_argmax(),
            bytemuck::bytes_of(&params),
            &bufs,
            crate::gpu::grid(ctx, c.rows as u32),
        )?);
    }
    Ok(ds)
}
