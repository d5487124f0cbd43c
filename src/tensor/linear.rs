//! A Linear layer's weight on the device, dense or GPTQ int4: what every model's projections
//! are, and what the `Linear` graph op multiplies by.

use crate::error::Result;
use crate::gpu::{Context, Dispatch, GpuBuffer};
use crate::ops;
use crate::tensor::{QWeight, Weight};

/// A `[out, in]` weight: dense (f32/f16/bf16) or GPTQ int4.
pub enum Linear {
    Dense(Weight),
    Q4(QWeight),
}

impl Linear {
    /// Record y[T, N] (+)= x[T, K] · Wᵀ (+ bias[N]).
    pub fn record(
        &self,
        ctx: &Context,
        x: &GpuBuffer,
        t: usize,
        bias: Option<&GpuBuffer>,
        y: &GpuBuffer,
        acc: bool,
    ) -> Result<Vec<Dispatch>> {
        match self {
            Linear::Dense(w) => ops::matmul::matmul(ctx, x, t, w, bias, y, acc),
            Linear::Q4(w) => ops::matmul_q4::matmul_q4(ctx, x, t, w, bias, y, acc),
        }
    }
    /// Output features N.
    pub fn rows(&self) -> usize {
        match self {
            Linear::Dense(w) => w.rows,
            Linear::Q4(w) => w.rows,
        }
    }
    /// Input features K.
    pub fn cols(&self) -> usize {
        match self {
            Linear::Dense(w) => w.cols,
            Linear::Q4(w) => w.cols,
        }
    }
    /// Bytes on the device.
    pub fn bytes(&self) -> u64 {
        match self {
            Linear::Dense(w) => w.bytes(),
            Linear::Q4(w) => w.bytes(),
        }
    }
}
