//! The conversation the app is for: Chinese, Japanese, emoji, markdown and a code block, drawn on
//! the engine's GPU device in dark and light mode and compared with the committed images under
//! `tests/snapshots/` (regenerate with `UPDATE_SNAPSHOTS=1`). Only egui's and the bundled fonts are
//! used, so the pixels do not depend on the machine's fonts, and any character those fonts lack
//! panics (egui_kittest's missing-glyph policy) instead of drawing a box.

use egui_kittest::Harness;
use zhinao::app::fonts::{self, FontSource};
use zhinao::app::i18n::Lang;
use zhinao::app::settings::Theme;
use zhinao::app::{AppOptions, ChatApp};

use super::common::{fake_app, gpu, options, tmp_dir};

pub const PROMPT: &str = "请用一句话介绍你自己，再写一个 Rust 的 hello world。日本語も話せますか？👍";

/// The reply, in the pieces the fake engine streams.
pub const REPLY: &[&str] = &[
    "你好！我是**智脑**，",
    "一个乐于助人的中文助手 😀。\n\n",
    "はい、日本語も少し話せます。🎉\n\n",
    "```rust\n",
    "fn main() {\n",
    "    println!(\"你好，世界！\");\n",
    "}\n",
    "```\n\n",
    "- 支持 *Markdown* 与代码高亮\n",
    "- 代码块右上角可以一键复制 ✅",
];

fn render(theme: Theme) -> Harness<'static, ChatApp> {
    let dir = tmp_dir("snapshot");
    let (app, fake) = fake_app(AppOptions { theme: Some(theme), ..options(&dir, Lang::Zh) });
    fake.set_reply(REPLY);
    let egui_theme = match theme {
        Theme::Dark => egui::Theme::Dark,
        Theme::Light => egui::Theme::Light,
    };
    let mut h = Harness::builder()
        .with_size([960.0, 640.0])
        .with_theme(egui_theme)
        .with_context_setup(|ctx| fonts::install(ctx, FontSource::BundledOnly))
        .wgpu_setup(zhinao::gpu::ui::wgpu_setup(&gpu()))
        .build_ui_state(|ui, app: &mut ChatApp| app.ui(ui), app);
    h.run();
    h.state_mut().set_input(PROMPT);
    h.state_mut().send();
    h.run();
    h.run();
    assert!(!h.state().is_generating());
    assert_eq!(h.state().conversation().turns[1].content, REPLY.concat());
    h.remove_cursor();
    h.run();
    h
}

#[test]
fn chinese_conversation_dark() {
    render(Theme::Dark).snapshot("chat_dark");
}

#[test]
fn chinese_conversation_light() {
    render(Theme::Light).snapshot("chat_light");
}
