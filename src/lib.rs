//! zhinao: a pure-Rust, GPU-portable (wgpu) inference engine for the 360Zhinao model family.

pub mod cpu;
pub mod error;
pub mod gpu;
pub mod loader;
pub mod ops;
pub mod rng;
pub mod tensor;

pub use error::{Error, Result};
