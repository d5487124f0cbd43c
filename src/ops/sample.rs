//! Host side of `shaders/sample.wgsl`: argmax over rows and top-k over one row on the device,
//! ordered by value descending with ties to the lower index (as `cpu::sample`).

use bytemuck::{Pod, Zeroable};

use super::elementwise::need_f32;
use super::softmax::row_chunks;
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::graph::{Bound, Op, Weights};

/// Elements per workgroup in top-k pass 1 (`SLICE` in the shader).
const SLICE: usize = 2048;
/// Largest k supported by [`TopK`].
pub const MAX_K: usize = 64;

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
pub fn kernel_topk_slices() -> Kernel {
    Kernel::new("sample", "topk_slices", &[Slot::Read, Slot::ReadWrite, Slot::ReadWrite]).flag("TOPK_SLICES")
}
pub fn kernel_topk_merge() -> Kernel {
    Kernel::new("sample", "topk_merge", &[Slot::Read, Slot::Read, Slot::ReadWrite, Slot::ReadWrite]).flag("TOPK_MERGE")
}

pub fn variants() -> Vec<Kernel> {
    vec![kernel_argmax(), kernel_topk_slices(), kernel_topk_merge()]
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
    for (r0, rows) in row_chunks(ctx, "argmax", r, n * 4)? {
        let params = Params { r: rows as u32, n: n as u32, k: 0, row0: r0 as u32, skip: 0, _pad: [0; 3] };
        let bufs = [
            x.slice((r0 * n * 4) as u64, (rows * n * 4) as u64),
            ids.slice(0, (r * 4) as u64),
            vals.slice(0, (r * 4) as u64),
        ];
        ds.push(ctx.dispatch(
            &kernel_argmax(),
            bytemuck::bytes_of(&params),
            &bufs,
            crate::gpu::grid(ctx, rows as u32),
        )?);
    }
    Ok(ds)
}

/// Top-k of one row of N values: scratch for the per-slice candidates, reused across calls.
pub struct TopK {
    pub n: usize,
    pub k: usize,
    slices: usize,
    cand_v: GpuBuffer,
    cand_i: GpuBuffer,
}

impl TopK {
    /// Scratch for rows of `n` values and `k` ≤ [`MAX_K`] results (k ≤ n).
    pub fn new(ctx: &Context, n: usize, k: usize) -> Result<TopK> {
        if k == 0 || k > MAX_K || k > n || n >= u32::MAX as usize {
            return Err(Error::shape("top_k", format!("k = {k} for N = {n} (1 ≤ k ≤ min(N, {MAX_K}))")));
        }
        let slices = n.div_ceil(SLICE);
        let cand_v = ctx.buffer("topk cand_v", (slices * k * 4) as u64)?;
        let cand_i = ctx.buffer("topk cand_i", (slices * k * 4) as u64)?;
        Ok(TopK { n, k, slices, cand_v, cand_i })
    }

    /// Record the two passes over x[offset .. offset + N] (elements of `x`); writes the k best,
    /// descending, to vals[0..k] (f32) and ids[0..k] (u32, indices within the row).
    pub fn record(
        &self,
        ctx: &Context,
        x: &GpuBuffer,
        offset: usize,
        ids: &GpuBuffer,
        vals: &GpuBuffer,
    ) -> Result<Vec<Dispatch>> {
        let (n, k) = (self.n, self.k);
        need_f32("top_k", "x [offset + N]", x, offset + n)?;
        need_f32("top_k", "ids [k]", ids, k)?;
        need_f32("top_k", "vals [k]", vals, k)?;
        // Bind from the aligned offset at or below the row; the shader skips the difference.
        let align = ctx.limits.storage_offset_alignment.max(4) as usize;
        let base = offset * 4 / align * align;
        let skip = offset - base / 4;
        let p1 = Params { r: 0, n: n as u32, k: k as u32, row0: 0, skip: skip as u32, _pad: [0; 3] };
        let cand = (self.slices * k * 4) as u64;
        let d1 = ctx.dispatch(
            &kernel_topk_slices(),
            bytemuck::bytes_of(&p1),
            &[x.slice(base as u64, ((skip + n) * 4) as u64), self.cand_v.slice(0, cand), self.cand_i.slice(0, cand)],
            [self.slices as u32, 1, 1],
        )?;
        let p2 = Params { r: (self.slices * k) as u32, n: n as u32, k: k as u32, row0: 0, skip: 0, _pad: [0; 3] };
        let d2 = ctx.dispatch(
            &kernel_topk_merge(),
            bytemuck::bytes_of(&p2),
            &[
                self.cand_v.slice(0, cand),
                self.cand_i.slice(0, cand),
                vals.slice(0, (k * 4) as u64),
                ids.slice(0, (k * 4) as u64),
            ],
            [1, 1, 1],
        )?;
        Ok(vec![d1, d2])
    }
}

/// Graph op: `x [rows, n] -> ids [rows] u32, vals [rows] f32` (argmax per row).
#[derive(Debug)]
pub struct Argmax {
    pub rows: usize,
    pub n: usize,
}

impl Op for Argmax {
    fn record(&self, ctx: &Context, io: &Bound, _: &dyn Weights) -> Result<Vec<Dispatch>> {
        argmax(ctx, io.input(0)?, self.rows, self.n, io.output(0)?, io.output(1)?)
    }
}
