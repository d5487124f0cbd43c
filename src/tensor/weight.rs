//! Weights on the GPU. A matrix `[rows, cols]` is stored row-major in u32 words (f32: one value
//! per word; f16/bf16: two, packed) and split by rows into chunks that each fit one storage
//! binding, so the 158464×4096 embedding and lm_head work on adapters that bind 128 MiB.

use crate::error::{Error, Result};
use crate::gpu::{Context, GpuBuffer};
use crate::tensor::DType;

/// One row range of a split matrix, in its own buffer.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub buf: GpuBuffer,
    pub row0: usize,
    pub rows: usize,
}

/// A dense weight matrix `[rows, cols]` (PyTorch Linear layout: `[out, in]`).
#[derive(Clone, Debug)]
pub struct Weight {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// u32 words per row (rows are padded to a whole word).
    pub row_words: usize,
    pub chunks: Vec<Chunk>,
}

/// Interleave the rows of two row-major matrices with rows of `row_bytes` (equal lengths, whole
/// rows): a₀, b₀, a₁, b₁, …
pub fn interleave_rows(a: &[u8], b: &[u8], row_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    for (ra, rb) in a.chunks_exact(row_bytes.max(1)).zip(b.chunks_exact(row_bytes.max(1))) {
        out.extend_from_slice(ra);
        out.extend_from_slice(rb);
    }
    out
}

/// Largest number of rows of `row_bytes` bytes that fit one binding (at least 1).
pub fn rows_per_chunk(ctx: &Context, row_bytes: u64) -> usize {
    let max = ctx.limits.max_binding.min(ctx.limits.max_buffer_size);
    (max / row_bytes.max(1)).max(1) as usize
}

impl Weight {
    /// Upload `data` (rows × cols elements of `dtype`, little-endian, row-major) as a weight.
    pub fn upload(ctx: &Context, label: &str, dtype: DType, rows: usize, cols: usize, data: &[u8]) -> Result<Weight> {
        Weight::upload_aligned(ctx, label, dtype, rows, cols, data, 1)
    }

    /// Two weights `a`, `b` [rows, cols] (little-endian bytes of `dtype`) as one [2·rows, cols]
    /// weight with interleaved rows (row 2i = a_i, row 2i+1 = b_i), every chunk holding whole
    /// pairs: the gate/up layout of the GEMV's SiLU·mul epilogue (`ops::gemv`, `silu`).
    pub fn upload_interleaved(
        ctx: &Context,
        label: &str,
        dtype: DType,
        rows: usize,
        cols: usize,
        a: &[u8],
        b: &[u8],
    ) -> Result<Weight> {
        let row_bytes = cols * dtype.size();
        let want = rows * row_bytes;
        if a.len() != want || b.len() != want {
            return Err(Error::shape(
                "Weight::upload_interleaved",
                format!(
                    "{label}: {} and {} bytes for two [{rows}, {cols}] {dtype} ({want} expected)",
                    a.len(),
                    b.len()
                ),
            ));
        }
        let data = interleave_rows(a, b, row_bytes);
        Weight::upload_aligned(ctx, label, dtype, 2 * rows, cols, &data, 2)
    }

    /// As [`Weight::upload`], every chunk's row count a multiple of `row_align`.
    fn upload_aligned(
        ctx: &Context,
        label: &str,
        dtype: DType,
        rows: usize,
        cols: usize,
        data: &[u8],
        row_align: usize,
    ) -> Result<Weight> {
        let per_word = match dtype {
            DType::F32 => 1,
            DType::F16 | DType::BF16 => 2,
            other => return Err(Error::Unsupported(format!("{label}: dense weight of dtype {other}"))),
        };
        let row_bytes_in = cols * dtype.size();
        if data.len() != rows * row_bytes_in {
            return Err(Error::shape(
                "Weight::upload",
                format!(
                    "{label}: {} bytes for [{rows}, {cols}] {dtype} ({} expected)",
                    data.len(),
                    rows * row_bytes_in
                ),
            ));
        }
        let row_words = cols.div_ceil(per_word);
        let row_bytes = row_words * 4;
        if (row_align * row_bytes) as u64 > ctx.limits.max_binding {
            return Err(Error::LimitTooSmall {
                what: format!("{row_align} row(s) of {label}"),
                requested: (row_align * row_bytes) as u64,
                available: ctx.limits.max_binding,
            });
        }
        let per_chunk = (rows_per_chunk(ctx, row_bytes as u64) / row_align).max(1) * row_align;
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = per_chunk.min(rows - row0);
            let src = &data[row0 * row_bytes_in..(row0 + n) * row_bytes_in];
            let buf = if row_bytes == row_bytes_in {
                ctx.upload(label, src)?
            } else {
                // Pad each row to a whole word (odd cols in a 16-bit type).
                let mut padded = vec![0u8; n * row_bytes];
                for r in 0..n {
                    padded[r * row_bytes..r * row_bytes + row_bytes_in]
                        .copy_from_slice(&src[r * row_bytes_in..(r + 1) * row_bytes_in]);
                }
                ctx.upload(label, &padded)?
            };
            chunks.push(Chunk { buf, row0, rows: n });
            row0 += n;
        }
        Ok(Weight { dtype, rows, cols, row_words, chunks })
    }

    pub fn from_f32(ctx: &Context, label: &str, rows: usize, cols: usize, data: &[f32]) -> Result<Weight> {
        Weight::upload(ctx, label, DType::F32, rows, cols, bytemuck::cast_slice(data))
    }

    /// Bytes this weight occupies on the device.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.buf.size).sum()
    }
}
