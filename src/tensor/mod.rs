//! Shapes and dtypes shared by the loader (host side) and the GPU weight handles.

mod dtype;
mod linear;
mod qweight;
mod weight;
pub use dtype::DType;
pub use linear::Linear;
pub use qweight::{GptqParts, QChunk, QWeight};
pub use weight::{f16_scale, interleave_rows, pow2_scale, rows_per_chunk, Chunk, Weight};

/// Convert raw little-endian bytes of `dtype` to f32 values (host side; tests and small tensors).
pub fn to_f32(dtype: DType, data: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytemuck::pod_collect_to_vec(data),
        DType::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::I32 | DType::Q4 => {
            data.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32).collect()
        }
    }
}

/// Encode f32 values as little-endian bytes of `dtype` (round to nearest even).
pub fn from_f32(dtype: DType, v: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(v).to_vec(),
        DType::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        DType::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        DType::I32 | DType::Q4 => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
    }
}
