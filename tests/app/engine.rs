//! The real engine worker (`app::engine::Worker`) on the tiny checkpoints, with the window drawn by
//! egui on the same GPU device: loading (bf16 and GPTQ-Int4), streaming while the UI keeps
//! drawing, the KV cache reused across turns, Stop, and the context meter. The tiny checkpoints
//! have random weights: their text is meaningless (and may hold characters no font has).

use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use egui_kittest::wgpu::WgpuTestRenderer;
use egui_kittest::Harness;
use zhinao::app::engine::{GenParams, Worker};
use zhinao::app::fonts::{self, FontSource};
use zhinao::app::i18n::Lang;
use zhinao::app::{ChatApp, ModelState};

use super::common::{gpu, options, tmp_dir};

/// Step the UI (drawing on the GPU every frame) until `done`; returns the frames drawn.
fn wait(h: &mut Harness<'_, ChatApp>, what: &str, done: impl Fn(&ChatApp) -> bool) -> usize {
    let t0 = Instant::now();
    let mut frames = 0;
    while !done(h.state()) {
        h.step();
        h.render().expect("render");
        frames += 1;
        assert!(t0.elapsed() < Duration::from_secs(180), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    frames
}

fn real_app(model: &str) -> Harness<'static, ChatApp> {
    let ctx = gpu();
    let rs = zhinao::gpu::ui::render_state(&ctx).unwrap();
    assert!(zhinao::gpu::ui::shares_device(&ctx, &rs), "the UI renderer must use the engine's device");
    let worker = Worker::spawn(ctx, Box::new(|| {}));
    let dir = tmp_dir("engine");
    let app = ChatApp::new(
        Box::new(worker),
        zhinao::app::AppOptions { model: Some(model.into()), ..options(&dir, Lang::En) },
    )
    .unwrap();
    Harness::builder()
        .with_size([900.0, 600.0])
        .allow_missing_glyphs()
        .with_context_setup(|ctx| fonts::install(ctx, FontSource::BundledOnly))
        .renderer(WgpuTestRenderer::from_render_state(rs))
        .build_ui_state(|ui, app: &mut ChatApp| app.ui(ui), app)
}

fn greedy(max_new: usize) -> GenParams {
    GenParams { temperature: 0.0, max_new_tokens: max_new, ..GenParams::default() }
}

#[test]
fn real_engine_streams_on_the_ui_device_reuses_the_cache_and_stops() {
    let mut h = real_app("assets/tiny-zhinao");
    wait(&mut h, "the model", |a| !matches!(a.model(), ModelState::Loading { .. }));
    let ModelState::Ready(info) = h.state().model().clone() else { panic!("{:?}", h.state().model()) };
    assert_eq!((info.format.as_str(), info.ctx_len), ("bf16", 512));
    // Sampling defaults from generation_config.json.
    assert_eq!((info.defaults.top_p, info.defaults.temperature, info.defaults.max_new_tokens), (0.8, 1.0, 1024));

    // A greedy reply of at most 24 tokens; the UI keeps drawing while the worker generates.
    h.state_mut().set_sampling(Some(greedy(24)));
    h.state_mut().set_input("你好，请介绍一下你自己");
    h.state_mut().send();
    let frames = wait(&mut h, "the first reply", |a| !a.is_generating());
    assert!(frames >= 2, "the UI drew {frames} frames during the reply");
    let first = h.state().conversation().turns[1].clone();
    let s1 = first.stats.expect("stats");
    assert!(s1.new_tokens >= 1 && s1.new_tokens <= 24, "{s1:?}");
    assert!(matches!(first.stop.as_deref(), Some("eos" | "length")), "{:?}", first.stop);
    assert_eq!(s1.cached_tokens, 0);
    assert!(s1.ctx_used >= s1.prompt_tokens, "{s1:?}");
    h.get_by_label(&format!("Context {} / 512 · left {}", s1.ctx_used, 512 - s1.ctx_used));
    let image = h.render().unwrap();
    let colors: std::collections::HashSet<_> = image.pixels().copied().collect();
    assert!(colors.len() > 20, "rendered frame looks blank ({} colours)", colors.len());

    // The next turn prefills only what is new: the first turn is found in the session's cache.
    h.state_mut().set_sampling(Some(greedy(2000)));
    h.state_mut().set_input("再说一遍");
    h.state_mut().send();
    wait(&mut h, "the first token", |a| {
        a.conversation().turns[3].stats.is_some() || !a.conversation().turns[3].content.is_empty()
    });
    h.get_by_label("Stop").click();
    let t0 = Instant::now();
    wait(&mut h, "the stop", |a| !a.is_generating());
    let stopped_in = t0.elapsed();
    let second = h.state().conversation().turns[3].clone();
    let s2 = second.stats.expect("stats");
    assert_eq!(second.stop.as_deref(), Some("cancelled"), "{s2:?}");
    assert!(s2.cached_tokens > 0 && s2.cached_tokens < s2.prompt_tokens, "{s2:?}");
    assert!(s2.new_tokens < 512 - s2.prompt_tokens, "{s2:?}");
    eprintln!("stopped {stopped_in:?} after the click, {} tokens, {s2:?}", s2.new_tokens);
}

#[test]
fn gptq_model_opened_from_the_ui() {
    let mut h = real_app("assets/tiny-zhinao");
    wait(&mut h, "the first model", |a| !matches!(a.model(), ModelState::Loading { .. }));
    // Open another model through the model field.
    let field = h.get_by_label("Model directory");
    field.click();
    h.run();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.get_by_label("Model directory").type_text("assets/tiny-zhinao-gptq");
    h.run();
    h.get_by_label("Open").click();
    h.run();
    wait(&mut h, "the GPTQ model", |a| !matches!(a.model(), ModelState::Loading { .. }));
    let ModelState::Ready(info) = h.state().model().clone() else { panic!("{:?}", h.state().model()) };
    assert_eq!(info.format, "GPTQ-Int4");
    assert_eq!(h.state().settings().recent_models[0], std::path::PathBuf::from("assets/tiny-zhinao-gptq"));
    h.state_mut().set_sampling(Some(greedy(8)));
    h.state_mut().set_input("hello");
    h.state_mut().send();
    wait(&mut h, "the reply", |a| !a.is_generating());
    let turn = &h.state().conversation().turns[1];
    assert!(turn.stats.is_some_and(|s| s.new_tokens >= 1), "{turn:?}");
}

/// The settings' context length and KV-cache type reach the real engine: reloaded with a q4 cache
/// of 256 positions, the greedy reply equals `zhinao generate --chat --kv-type q4 --ctx 256`.
#[test]
fn quantized_kv_cache_from_the_settings() {
    let mut h = real_app("assets/tiny-zhinao");
    wait(&mut h, "the model", |a| !matches!(a.model(), ModelState::Loading { .. }));
    h.state_mut().set_load_options(Some(256), zhinao::engine::KvFormat::Q4);
    h.state_mut().reload_model();
    wait(&mut h, "the q4 model", |a| !matches!(a.model(), ModelState::Loading { .. }));
    let ModelState::Ready(info) = h.state().model().clone() else { panic!("{:?}", h.state().model()) };
    assert_eq!((info.ctx_len, info.options.kv), (256, zhinao::engine::KvFormat::Q4));
    h.state_mut().set_sampling(Some(greedy(12)));
    h.state_mut().set_input("你好，请介绍一下你自己");
    h.state_mut().send();
    wait(&mut h, "the reply", |a| !a.is_generating());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zhinao"))
        .args(["generate", "--model", "assets/tiny-zhinao", "--prompt", "你好，请介绍一下你自己", "--chat"])
        .args(["--temperature", "0", "--max-new-tokens", "12", "--kv-type", "q4", "--ctx", "256", "--json"])
        .output()
        .expect("run zhinao");
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(h.state().conversation().turns[1].content, cli["text"].as_str().expect("text"));
}
