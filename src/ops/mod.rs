//! The host side of each shader: shape checks, parameter blocks, dispatch recording.
//! Each function returns `Dispatch`es for the caller to run (alone or inside a graph).

pub mod attention;
pub mod matmul;

use crate::gpu::Kernel;

/// Every kernel variant the engine can request (validated and translated by the shader tests).
pub fn all_kernels() -> Vec<Kernel> {
    let mut v = Vec::new();
    v.extend(matmul::variants());
    v.extend(attention::variants());
    v
}
