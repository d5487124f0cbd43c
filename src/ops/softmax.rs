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
    skip: u32,
    _pad: u32,
}

/// Rows `row0 .. row0 + rows` of a [R, N] f32 tensor, bound from the aligned byte `offset`:
/// the first row starts `skip` elements into the binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowChunk {
    pub row0: usize,
    pub rows: usize,
    pub offset: u64,
    pub skip: usize,
    /// Bytes to bind: skip and rows.
    pub size: u64,
}

/// Split R rows of `row_bytes` each (a multiple of 4) into chunks whose bindings fit the
/// adapter's binding limit (logits [T, V] can exceed one binding). A binding starts at the
/// aligned offset at or below its first row and the kernel skips the difference, so any
/// alignment the adapter reports works (SwiftShader's 256 bytes with 400-byte rows included);
/// only a row that does not fit one binding together with its misalignment is an error.
pub(crate) fn row_chunks(ctx: &Context, op: &str, r: usize, row_bytes: usize) -> Result<Vec<RowChunk>> {
    chunks_for(ctx.limits.storage_offset_alignment as u64, ctx.limits.max_binding, op, r, row_bytes)
}

fn chunks_for(align: u64, max_binding: u64, op: &str, r: usize, row_bytes: usize) -> Result<Vec<RowChunk>> {
    let align = align.max(4);
    let row = row_bytes as u64;
    let mut out = Vec::new();
    let mut row0 = 0usize;
    while row0 < r {
        let start = row0 as u64 * row;
        let offset = start / align * align;
        let skip = start - offset;
        let rows = (max_binding.saturating_sub(skip) / row.max(1)).min((r - row0) as u64) as usize;
        if rows == 0 {
            return Err(Error::LimitTooSmall {
                what: format!("{op}: a row of {row_bytes} bytes {skip} bytes past a {align}-byte aligned offset"),
                requested: skip + row,
                available: max_binding,
            });
        }
        out.push(RowChunk { row0, rows, offset, skip: (skip / 4) as usize, size: skip + rows as u64 * row });
        row0 += rows;
    }
    Ok(out)
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
    for c in row_chunks(ctx, op, r, n * 4)? {
        let params = Params { r: c.rows as u32, n: n as u32, skip: c.skip as u32, _pad: 0 };
        let bufs = [x.slice(c.offset, c.size)];
        ds.push(ctx.dispatch(&kern, bytemuck::bytes_of(&params), &bufs, grid(ctx, c.rows as u32))?);
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks tile the rows, start at aligned offsets and fit the binding, whatever the alignment.
    #[test]
    fn chunks_fit_any_alignment() {
        for align in [4u64, 16, 64, 128, 256, 512] {
            for (r, row_bytes, max) in [(40, 400, 4096), (9, 3800, 4352), (1000, 12, 256 + 512), (7, 4, 4096)] {
                let cs = chunks_for(align, max, "t", r, row_bytes).unwrap();
                let mut next = 0;
                for c in &cs {
                    assert_eq!(c.row0, next);
                    assert_eq!(c.offset % align, 0);
                    assert_eq!(c.offset + c.skip as u64 * 4, (c.row0 * row_bytes) as u64);
                    assert!(c.size <= max && c.size == (c.skip * 4 + c.rows * row_bytes) as u64);
                    next += c.rows;
                }
                assert_eq!(next, r, "align {align} rows {r} of {row_bytes} bytes");
            }
        }
        // A row that cannot fit with its misalignment is an error, not a panic.
        assert!(chunks_for(256, 4096, "t", 3, 4000).is_err());
        assert!(chunks_for(4, 4096, "t", 1, 4100).is_err());
    }
}
