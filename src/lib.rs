//! zhinao: a pure-Rust, GPU-portable (wgpu) inference engine for the 360Zhinao model family.

#[cfg(feature = "app")]
pub mod app;
pub mod cpu;
pub mod embed;
pub mod engine;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod graph;
pub mod hub;
pub mod loader;
pub mod models;
pub mod ops;
#[cfg(feature = "python")]
mod python;
pub mod rng;
pub mod sampling;
#[cfg(feature = "server")]
pub mod serve;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
