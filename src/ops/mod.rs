//! The host side of each shader: shape checks, parameter blocks, dispatch recording.
//! Each function returns `Dispatch`es for the caller to run (alone or inside a graph).

pub mod attention;
pub mod attention_coop;
pub mod attention_paged;
pub mod elementwise;
pub mod embedding;
pub mod gemv;
pub mod kv;
pub mod matmul;
pub mod matmul_coop;
pub mod matmul_q4;
pub mod norm;
pub mod rope;
pub mod sample;
pub mod sampler;
pub mod softmax;

use crate::gpu::Kernel;

/// Every kernel variant the engine can request (validated and translated by the shader tests).
pub fn all_kernels() -> Vec<Kernel> {
    let mut v = Vec::new();
    v.extend(matmul::variants());
    v.extend(attention::variants());
    v.extend(norm::variants());
    v.extend(rope::variants());
    v.extend(elementwise::variants());
    v.extend(embedding::variants());
    v.extend(softmax::variants());
    v.extend(sample::variants());
    v.extend(sampler::variants());
    v.extend(matmul_q4::variants());
    v.extend(gemv::variants());
    v.extend(matmul_coop::variants());
    v.extend(attention_coop::variants());
    v.extend(kv::variants());
    v.extend(attention_paged::variants());
    v
}
