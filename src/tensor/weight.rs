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
    /// The power of two the cooperative-matrix GEMM multiplies this weight by before rounding it
    /// to f16 (undone exactly on the f32 result), or `None` when the weight must stay on the f32
    /// path (f32 weights, non-finite values, or the coop path is off). See `f16_scale`.
    pub f16_scale: Option<f32>,
}

/// The power of two `2^s` that brings `max_abs` into [2^14, 2^15), so every value of a weight whose
/// largest magnitude is `max_abs` is finite in f16 after scaling, and values down to max·2^-28 stay
/// f16 normals (exact for bf16's 8-bit mantissa). `None` for non-finite or absurdly small maxima.
pub fn pow2_scale(max_abs: f32) -> Option<f32> {
    if !max_abs.is_finite() {
        return None;
    }
    if max_abs == 0.0 {
        return Some(1.0);
    }
    let e = ((max_abs.to_bits() >> 23) & 0xff) as i32 - 127; // max_abs in [2^e, 2^(e+1))
    let s = 14 - e;
    if s > 64 {
        return None;
    }
    Some(2f32.powi(s))
}

/// Decide at load whether a 16-bit weight may enter the f16 tensor-core GEMM: the scale of
/// `pow2_scale` for BF16 (its exponent range exceeds f16's, so it is rescaled), 1 for F16 (already
/// f16), `None` for F32 (rounding it to f16 would lose 13 bits) or any inf/NaN. One pass over the
/// 16-bit patterns (`|v|` orders like its bits with the sign cleared).
pub fn f16_scale(dtype: DType, data: &[u8]) -> Option<f32> {
    let max_bits = || match bytemuck::try_cast_slice::<u8, u16>(data) {
        // Aligned (the usual mmap case): a plain u16 max, which vectorizes.
        Ok(v) if cfg!(target_endian = "little") => v.iter().map(|b| b & 0x7fff).max().unwrap_or(0),
        _ => data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7fff).max().unwrap_or(0),
    };
    match dtype {
        DType::BF16 => {
            let m = max_bits();
            if m >= 0x7f80 {
                return None;
            }
            pow2_scale(half::bf16::from_bits(m).to_f32())
        }
        DType::F16 => (max_bits() < 0x7c00).then_some(1.0),
        _ => None,
    }
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
        // Only scanned when the coop path is on: it costs one pass over the weight.
        let f16_scale = if ctx.caps.coop_f16() { f16_scale(dtype, data) } else { None };
        Ok(Weight { dtype, rows, cols, row_words, chunks, f16_scale })
    }

    pub fn from_f32(ctx: &Context, label: &str, rows: usize, cols: usize, data: &[f32]) -> Result<Weight> {
        Weight::upload(ctx, label, DType::F32, rows, cols, bytemuck::cast_slice(data))
    }

    /// Bytes this weight occupies on the device.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.buf.size).sum()
    }
}
