//! Shared by the app tests: temporary data directories, the fake-engine app, the harness.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use egui_kittest::Harness;
use zhinao::app::fake::{FakeControl, FakeEngine};
use zhinao::app::fonts::{self, FontSource};
use zhinao::app::i18n::Lang;
use zhinao::app::{AppOptions, ChatApp};
use zhinao::gpu::{Context, GpuOptions};

pub const MODEL: &str = "assets/tiny-zhinao";

/// A fresh, empty directory for one test.
pub fn tmp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let d = std::env::temp_dir().join(format!("zhinao-app-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn options(dir: &Path, lang: Lang) -> AppOptions {
    AppOptions { data_dir: dir.to_path_buf(), model: Some(MODEL.into()), lang: Some(lang), ..Default::default() }
}

/// The app over a fake engine, with the tiny model "loaded".
pub fn fake_app(opts: AppOptions) -> (ChatApp, FakeControl) {
    let (engine, control) = FakeEngine::new();
    (ChatApp::new(Box::new(engine), opts).unwrap(), control)
}

/// A harness drawing `app` with the bundled fonts only (so a missing glyph panics everywhere).
pub fn harness(app: ChatApp) -> Harness<'static, ChatApp> {
    Harness::builder()
        .with_size([1000.0, 700.0])
        .with_context_setup(|ctx| fonts::install(ctx, FontSource::BundledOnly))
        .build_ui_state(|ui, app: &mut ChatApp| app.ui(ui), app)
}

/// The GPU context of this test binary (lavapipe in CI; Vulkan required under CI=true).
pub fn gpu() -> Arc<Context> {
    static C: OnceLock<Arc<Context>> = OnceLock::new();
    C.get_or_init(|| {
        let ctx = Context::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("app GPU tests need an adapter: {e}"));
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            assert_eq!(ctx.info.backend, "Vulkan", "CI must run on Vulkan (lavapipe), got {}", ctx.describe());
        }
        eprintln!("adapter: {}", ctx.describe());
        ctx
    })
    .clone()
}

pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}
