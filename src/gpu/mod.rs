//! The only module that names wgpu types: adapter and device, limits and capability tiers,
//! buffers, shaders, pipelines and dispatch recording.

mod buffer;
mod context;
mod pipeline;
mod readback;
pub mod shader;
#[cfg(feature = "app")]
pub mod ui;

pub use buffer::{BufSlice, GpuBuffer};
pub use context::{
    list_adapters, AdapterSummary, Caps, Context, CoopMode, DisplayHandle, GpuLimits, GpuOptions, COOP_M,
};
pub use pipeline::{grid, Dispatch, Kernel, Slot};
pub use readback::{ReadRing, Ticket};
