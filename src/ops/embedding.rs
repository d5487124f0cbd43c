//! Host side of `shaders/embedding.wgsl`: out[T, C] = table[ids] for a `Weight` table (f32, f16
//! or bf16, possibly split into chunks): one dispatch per chunk.

use bytemuck::{Pod, Zeroable};

use super::elementwise::need_f32;
use crate::error::{Error, Result};
use crate::gpu::{grid, Context, Dispatch, GpuBuffer, Kernel, Slot};
use crate::graph::{Bound, Op, WeightRef, Weights};
use crate::tensor::{DType, Weight};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    t: u32,
    c: u32,
    row_words: u32,
    row0: u32,
    rows: u32,
    _pad: [u32; 3],
}

pub fn kernel(dtype: DType) -> Kernel {
    let flag = match dtype {
        DType::F16 => "W_F16",
        DType::BF16 => "W_BF16",
        _ => "W_F32",
    };
    Kernel::new("embedding", "gather", &[Slot::Read, Slot::Read, Slot::ReadWrite]).flag(flag)
}

pub fn variants() -> Vec<Kernel> {
    [DType::F32, DType::F16, DType::BF16].into_iter().map(kernel).collect()
}

/// out[T, C] = table[ids[t], :] with `ids` given on the host (validated: every id < rows) and
/// also uploaded in `ids_buf` ([T] u32).
pub fn embedding(
    ctx: &Context,
    table: &Weight,
    ids: &[u32],
    ids_buf: &GpuBuffer,
    out: &GpuBuffer,
) -> Result<Vec<Dispatch>> {
    if let Some((t, id)) = ids.iter().enumerate().find(|(_, id)| **id as usize >= table.rows) {
        return Err(Error::Input(format!(
            "token id {id} at position {t} is outside the vocabulary of {} rows",
            table.rows
        )));
    }
    embedding_device_ids(ctx, table, ids.len(), ids_buf, out)
}

/// As [`embedding`] for ids that exist only on the device (e.g. a sampled token): an id ≥ rows
/// matches no chunk and leaves its output row unwritten.
pub fn embedding_device_ids(
    ctx: &Context,
    table: &Weight,
    t: usize,
    ids_buf: &GpuBuffer,
    out: &GpuBuffer,
) -> Result<Vec<Dispatch>> {
    let c = table.cols;
    if t == 0 || t > u32::MAX as usize {
        return Err(Error::shape("embedding", format!("T = {t}")));
    }
    need_f32("embedding", "ids [T]", ids_buf, t)?;
    need_f32("embedding", "out [T, C]", out, t * c)?;
    let kern = kernel(table.dtype);
    let mut ds = Vec::with_capacity(table.chunks.len());
    for ch in &table.chunks {
        let params = Params {
            t: t as u32,
            c: c as u32,
            row_words: table.row_words as u32,
            row0: ch.row0 as u32,
            rows: ch.rows as u32,
            _pad: [0; 3],
        };
        let bufs = [ids_buf.slice(0, (t * 4) as u64), ch.buf.whole(), out.slice(0, (t * c * 4) as u64)];
        ds.push(ctx.dispatch(&kern, bytemuck::bytes_of(&params), &bufs, grid(ctx, t as u32))?);
    }
    Ok(ds)
}

/// Graph op: `ids [T] u32 -> out [T, C] = table[ids]` (ids on the device).
#[derive(Debug)]
pub struct Embedding {
    pub table: WeightRef,
    pub t: usize,
}

impl Op for Embedding {
    fn record(&self, ctx: &Context, io: &Bound, w: &dyn Weights) -> Result<Vec<Dispatch>> {
        embedding_device_ids(ctx, w.table(&self.table)?, self.t, io.input(0)?, io.output(0)?)
    }
}
