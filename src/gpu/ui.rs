//! The engine's device handed to the UI renderer (feature `app`): eframe/egui-wgpu draw on the
//! same instance, adapter, device and queue as the engine (`WgpuSetup::Existing`), so the app has
//! one GPU device. Only this module names the wgpu types that takes.
//!
//! The engine's uncaptured-error handler stays installed on the shared device. [`wgpu_setup`] marks
//! the calling thread as the UI thread: an error raised there (drawing, a surface reconfiguration
//! that timed out waiting for a busy queue) is kept apart (`Context::take_ui_errors`) and never
//! fails the engine, which must run on another thread.

use eframe::egui_wgpu::{RenderState, RendererOptions, WgpuConfiguration, WgpuSetup, WgpuSetupExisting};

use super::Context;
use crate::error::{Error, Result};

/// The setup for eframe's `NativeOptions::wgpu_options.wgpu_setup` (or `egui_kittest`'s
/// `HarnessBuilder::wgpu_setup`) that renders on `ctx`'s device. Call it on the thread that will
/// draw (it becomes a UI thread, see the module doc).
pub fn wgpu_setup(ctx: &Context) -> WgpuSetup {
    ctx.mark_ui_thread();
    WgpuSetup::Existing(WgpuSetupExisting {
        instance: ctx.instance.clone(),
        adapter: ctx.adapter.clone(),
        device: ctx.device.clone(),
        queue: ctx.queue.clone(),
    })
}

/// Whether the UI renderer `state` draws with `ctx`'s device and queue (one device for both).
pub fn shares_device(ctx: &Context, state: &RenderState) -> bool {
    state.device == ctx.device && state.queue == ctx.queue && state.adapter == ctx.adapter
}

/// A line naming the renderer's adapter and backend, for logs.
pub fn describe_renderer(state: &RenderState) -> String {
    let i = state.adapter.get_info();
    format!("{} ({:?}, {:?}), target {:?}", i.name, i.backend, i.device_type, state.target_format)
}

/// An egui renderer on `ctx`'s device without a window (tests, offscreen drawing), with egui's
/// reproducible settings (no dithering, no multisampling).
pub fn render_state(ctx: &Context) -> Result<RenderState> {
    let config = WgpuConfiguration { wgpu_setup: wgpu_setup(ctx), ..Default::default() };
    pollster::block_on(RenderState::create(&config, &ctx.instance, None, RendererOptions::PREDICTABLE))
        .map_err(|e| Error::Device(format!("egui renderer: {e}")))
}
