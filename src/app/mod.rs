//! The desktop chat app (feature `app`): an eframe/egui window that draws on the engine's own
//! wgpu device, streams replies from a worker thread, keeps conversations on disk and shows
//! Chinese (system fonts, then a bundled fallback). No GPU code here beyond handing the shared
//! device to the engine (`gpu::ui`).
//!
//! * `ui`       — the window's state, actions and drawing ([`ui::ChatApp`]);
//! * `engine`   — the command/event protocol, the [`engine::Engine`] trait, the real worker;
//! * `fake`     — a scripted engine for UI tests;
//! * `store`    — one JSON file per conversation; `settings` — settings and the data directory;
//! * `fonts`, `i18n` — fonts (CJK, emoji) and the UI's Chinese/English strings;
//! * `run`      — the native window, the shared device and the scripted mode.

pub mod engine;
pub mod fake;
pub mod fonts;
pub mod i18n;
pub mod run;
pub mod settings;
pub mod store;
pub mod ui;

pub use run::{run, RunOptions, Script};
pub use ui::{AppOptions, ChatApp, ModelState};
