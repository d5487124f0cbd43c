//! The desktop app's tests (`cargo test --release --features app --test app`):
//! * `ui`: egui_kittest against the fake engine: streaming, Stop, regenerate, edit and re-run,
//!   system prompt, persistence across a restart, IME, accessible names;
//! * `snapshot`: a Chinese/Japanese/emoji/markdown/code conversation rendered on the engine's
//!   device in dark and light mode with the bundled fonts only (a missing glyph panics);
//! * `engine`: the real engine worker on the tiny checkpoints (bf16 and GPTQ), drawn on the same
//!   device: streaming, the KV cache across turns, Stop, the context meter;
//! * `window`: the `zhinao-chat` binary's scripted mode in a real window (Xvfb);
//! * `durability`: concurrent saves never tear a file, one app per data directory, a panicking
//!   engine job ends its reply with an error and the worker goes on.

mod common;
mod durability;
mod engine;
mod snapshot;
mod ui;
mod window;
