//! Drawing the chat window: top bar (model, context meter, theme, language), conversation list,
//! settings panel (system prompt, sampling, context and KV cache), the conversation (markdown
//! replies with their timing) and the input bar. Every input widget carries an accessible name (a label or a hint).

use egui::{Button, DragValue, Key as K, Modifiers, ProgressBar, RichText, ScrollArea, Slider, TextEdit, Ui};
use egui_commonmark::CommonMarkViewer;

use super::super::engine::ReplyStats;
use super::super::i18n::{tr, Key, Lang};
use super::super::settings::Theme;
use super::{Browser, ChatApp, Edit, ModelState};

impl ChatApp {
    pub(super) fn draw(&mut self, ui: &mut Ui) {
        if self.applied_theme != Some(self.settings.theme) {
            ui.ctx().set_theme(match self.settings.theme {
                Theme::Dark => egui::ThemePreference::Dark,
                Theme::Light => egui::ThemePreference::Light,
            });
            self.applied_theme = Some(self.settings.theme);
        }
        egui::Panel::top("top").show(ui, |ui| self.top_bar(ui));
        if !self.notices.is_empty() {
            egui::Panel::top("notices").show(ui, |ui| self.notice_bar(ui));
        }
        egui::Panel::left("conversations").default_size(200.0).show(ui, |ui| self.sidebar(ui));
        if self.show_settings {
            egui::Panel::right("settings").default_size(260.0).show(ui, |ui| self.settings_panel(ui));
        }
        egui::Panel::bottom("input").show(ui, |ui| self.input_bar(ui));
        egui::CentralPanel::default().show(ui, |ui| self.chat(ui));
        if self.browser.is_some() {
            self.browser_window(ui.ctx());
        }
    }

    fn top_bar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            ui.strong(self.t(Key::AppTitle));
            ui.separator();
            match &self.model {
                ModelState::None => {
                    ui.label(self.t(Key::NoModel));
                }
                ModelState::Loading { done, total, .. } => {
                    let frac = if *total > 0 { *done as f32 / *total as f32 } else { 0.0 };
                    ui.label(self.t(Key::Loading));
                    ui.add(ProgressBar::new(frac).desired_width(120.0).show_percentage());
                }
                ModelState::Ready(m) => {
                    ui.label(RichText::new(format!("{} · {}", m.name, m.format)).strong()).on_hover_text(format!(
                        "{}\n{}",
                        m.dir.display(),
                        m.device
                    ));
                }
                ModelState::Failed { .. } => {
                    ui.colored_label(ui.visuals().error_fg_color, self.t(Key::LoadFailed));
                }
            }
            let (used, total) = self.context_use();
            if total > 0 {
                ui.separator();
                let left = total.saturating_sub(used);
                ui.label(format!("{} {used} / {total} · {} {left}", self.t(Key::Context), self.t(Key::Left)));
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let theme = match self.settings.theme {
                    Theme::Dark => (Key::Light, Theme::Light),
                    Theme::Light => (Key::Dark, Theme::Dark),
                };
                if ui.button(self.t(theme.0)).clicked() {
                    self.set_theme(theme.1);
                }
                if ui.button(self.t(Key::Language)).clicked() {
                    self.set_language(if self.lang() == Lang::Zh { Lang::En } else { Lang::Zh });
                }
                if ui.selectable_label(self.show_settings, self.t(Key::Settings)).clicked() {
                    self.show_settings = !self.show_settings;
                }
            });
        });
        ui.horizontal(|ui| {
            let l = ui.label(self.t(Key::ModelPath));
            ui.add(TextEdit::singleline(&mut self.model_input).desired_width(360.0)).labelled_by(l.id);
            let loading = matches!(self.model, ModelState::Loading { .. });
            if ui.add_enabled(!loading, Button::new(self.t(Key::OpenModel))).clicked() {
                let dir = std::path::PathBuf::from(self.model_input.trim());
                self.load_model(&dir);
            }
            if ui.add_enabled(!loading, Button::new(self.t(Key::Browse))).clicked() {
                let start = std::path::PathBuf::from(self.model_input.trim());
                let dir = if start.is_dir() { start } else { std::env::current_dir().unwrap_or_default() };
                self.browser = Some(Browser { dir });
            }
            if !loading && !self.settings.recent_models.is_empty() {
                let mut chosen = None;
                ui.menu_button(self.t(Key::Recent), |ui| {
                    for d in &self.settings.recent_models {
                        if ui.button(d.display().to_string()).clicked() {
                            chosen = Some(d.clone());
                        }
                    }
                });
                if let Some(d) = chosen {
                    self.load_model(&d);
                }
            }
        });
    }

    fn notice_bar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            if ui.button(self.t(Key::Dismiss)).clicked() {
                self.notices.clear();
            }
            ui.vertical(|ui| {
                for n in self.notices.iter().rev().take(3) {
                    ui.colored_label(ui.visuals().warn_fg_color, n);
                }
            });
        });
    }

    fn sidebar(&mut self, ui: &mut Ui) {
        ui.add_space(4.0);
        if ui.button(self.t(Key::NewChat)).clicked() {
            self.new_conversation();
        }
        ui.separator();
        ui.label(RichText::new(self.t(Key::Conversations)).weak());
        let mut clicked = None;
        ScrollArea::vertical().id_salt("conv-list").max_height(ui.available_height() - 90.0).show(ui, |ui| {
            for (i, c) in self.convs.iter().enumerate() {
                if ui.selectable_label(i == self.current, &c.title).clicked() {
                    clicked = Some(i);
                }
            }
        });
        if let Some(i) = clicked {
            self.select(i);
        }
        ui.separator();
        if let Some(mut draft) = self.renaming.take() {
            let l = ui.label(self.t(Key::RenameField));
            let r = ui.add(TextEdit::singleline(&mut draft)).labelled_by(l.id);
            let enter = r.lost_focus() && ui.input(|i| i.key_pressed(K::Enter));
            ui.horizontal(|ui| {
                if ui.button(self.t(Key::Save)).clicked() || enter {
                    self.rename_current(&draft);
                } else if ui.button(self.t(Key::Cancel)).clicked() {
                } else {
                    self.renaming = Some(draft);
                }
            });
            return;
        }
        ui.horizontal(|ui| {
            if ui.button(self.t(Key::Rename)).clicked() {
                self.renaming = Some(self.conversation().title.clone());
            }
            if self.confirm_delete {
                if ui.button(RichText::new(self.t(Key::ConfirmDelete)).color(ui.visuals().error_fg_color)).clicked() {
                    self.confirm_delete = false;
                    self.delete_current();
                } else if ui.button(self.t(Key::Cancel)).clicked() {
                    self.confirm_delete = false;
                }
            } else if ui.button(self.t(Key::Delete)).clicked() {
                self.confirm_delete = true;
            }
        });
    }

    fn settings_panel(&mut self, ui: &mut Ui) {
        ui.add_space(4.0);
        let l = ui.strong(self.t(Key::SystemPrompt));
        let mut system = self.conversation().system.clone();
        let r = ui.add(TextEdit::multiline(&mut system).desired_rows(3).desired_width(f32::INFINITY)).labelled_by(l.id);
        if r.changed() {
            self.set_system_prompt(&system);
        }
        ui.separator();
        ui.horizontal(|ui| {
            ui.strong(self.t(Key::Sampling));
            let from = if self.settings.sampling.is_some() { Key::SamplingCustom } else { Key::SamplingFromModel };
            ui.label(RichText::new(self.t(from)).weak().small());
        });
        let mut p = self.params();
        let max_new = match &self.model {
            ModelState::Ready(m) => m.ctx_len.max(1),
            _ => 32768,
        };
        let mut changed = false;
        changed |= ui.add(Slider::new(&mut p.temperature, 0.0..=2.0).text(self.t(Key::Temperature))).changed();
        changed |= ui.add(Slider::new(&mut p.top_p, 0.0..=1.0).text(self.t(Key::TopP))).changed();
        changed |= ui.add(Slider::new(&mut p.top_k, 0..=200).text(self.t(Key::TopK))).changed();
        changed |=
            ui.add(Slider::new(&mut p.repetition_penalty, 1.0..=2.0).text(self.t(Key::RepetitionPenalty))).changed();
        changed |= ui
            .add(Slider::new(&mut p.max_new_tokens, 1..=max_new).logarithmic(true).text(self.t(Key::MaxNewTokens)))
            .changed();
        if changed {
            self.set_sampling(Some(p));
        }
        if ui.add_enabled(self.settings.sampling.is_some(), Button::new(self.t(Key::ResetSampling))).clicked() {
            self.set_sampling(None);
        }
        ui.separator();
        self.memory_settings(ui);
    }

    /// Context length and KV-cache type: they apply when a model is (re)loaded.
    fn memory_settings(&mut self, ui: &mut Ui) {
        ui.strong(self.t(Key::Memory));
        let mut ctx = self.settings.ctx_len.unwrap_or(0);
        let mut kv = self.settings.kv_type;
        let mut changed = false;
        ui.horizontal(|ui| {
            let l = ui.label(self.t(Key::ContextLength));
            let field = DragValue::new(&mut ctx).range(0..=1 << 24).speed(64.0);
            changed |= ui.add(field).labelled_by(l.id).changed();
        });
        ui.horizontal(|ui| {
            ui.label(self.t(Key::KvCache));
            for f in crate::engine::KvFormat::ALL {
                changed |= ui.selectable_value(&mut kv, f, f.name()).changed();
            }
        });
        ui.label(RichText::new(self.t(Key::KvCacheHint)).weak().small());
        if changed {
            self.set_load_options(Some(ctx), kv);
        }
        let stale = matches!(&self.model, ModelState::Ready(m) if m.options != self.settings.load_options());
        if ui.add_enabled(stale, Button::new(self.t(Key::Reload))).clicked() {
            self.reload_model();
        }
    }

    fn input_bar(&mut self, ui: &mut Ui) {
        ui.add_space(6.0);
        let id = ui.make_persistent_id("chat-input");
        // Enter sends, Shift+Enter is a new line (taken before the text field sees the key).
        let focused = ui.ctx().memory(|m| m.has_focus(id));
        let enter = focused && ui.input_mut(|i| i.consume_key(Modifiers::NONE, K::Enter));
        ui.horizontal(|ui| {
            let button_w = 80.0;
            let field = TextEdit::multiline(&mut self.input)
                .id(id)
                .hint_text(tr(self.settings.language, Key::InputHint))
                .desired_rows(2)
                .desired_width(ui.available_width() - button_w - 8.0);
            ui.add(field).accessible_name(tr(self.settings.language, Key::MessageField));
            if let Some(_job) = &self.job {
                let label = if self.stopping() { Key::Stopping } else { Key::Stop };
                if ui.add_sized([button_w, 28.0], Button::new(self.t(label))).clicked() {
                    self.stop();
                }
            } else {
                let ready = self.can_generate() && !self.input.trim().is_empty();
                if ui.add_enabled(ready, Button::new(self.t(Key::Send)).min_size([button_w, 28.0].into())).clicked()
                    || (enter && ready)
                {
                    self.send();
                }
            }
        });
        ui.add_space(6.0);
    }

    fn chat(&mut self, ui: &mut Ui) {
        let busy = self.job.is_some();
        let streaming_turn = self.job.as_ref().filter(|j| j.conv == self.conversation().id).map(|j| j.turn);
        let n = self.conversation().turns.len();
        if n == 0 {
            ui.centered_and_justified(|ui| ui.label(RichText::new(self.t(Key::Empty)).weak()));
            return;
        }
        let mut action: Option<Action> = None;
        ScrollArea::vertical().id_salt("chat").stick_to_bottom(true).auto_shrink([false, false]).show(ui, |ui| {
            for i in 0..n {
                ui.push_id(i, |ui| {
                    let turn = &self.convs[self.current].turns[i];
                    if turn.is_user() {
                        ui.strong(self.t(Key::You));
                        if let Some(edit) = self.edit.as_mut().filter(|e| e.turn == i) {
                            let l = tr(self.settings.language, Key::EditField);
                            let lab = ui.label(RichText::new(l).weak().small());
                            ui.add(TextEdit::multiline(&mut edit.draft).desired_width(f32::INFINITY))
                                .labelled_by(lab.id);
                            ui.horizontal(|ui| {
                                let lang = self.settings.language;
                                if ui.add_enabled(!busy, Button::new(tr(lang, Key::SaveAndRerun))).clicked() {
                                    action = Some(Action::Rerun(i));
                                }
                                if ui.button(tr(lang, Key::Cancel)).clicked() {
                                    action = Some(Action::CancelEdit);
                                }
                            });
                        } else {
                            ui.add(egui::Label::new(&turn.content).selectable(true));
                            if ui.add_enabled(!busy, Button::new(self.t(Key::Edit)).small()).clicked() {
                                action = Some(Action::Edit(i));
                            }
                        }
                    } else {
                        ui.strong(self.t(Key::Assistant));
                        if turn.content.is_empty() && streaming_turn == Some(i) {
                            ui.label(RichText::new(self.t(Key::Generating)).weak());
                        } else {
                            CommonMarkViewer::new().show(ui, &mut self.md_cache, &turn.content);
                        }
                        if streaming_turn != Some(i) {
                            let footer = footer(self.settings.language, turn.stats.as_ref(), turn.stop.as_deref());
                            ui.horizontal(|ui| {
                                if !footer.is_empty() {
                                    ui.label(RichText::new(footer).weak().small());
                                }
                                if ui.add(Button::new(self.t(Key::Copy)).small()).clicked() {
                                    ui.ctx().copy_text(turn.content.clone());
                                }
                                if i + 1 == n
                                    && ui.add_enabled(!busy, Button::new(self.t(Key::Regenerate)).small()).clicked()
                                {
                                    action = Some(Action::Regenerate);
                                }
                            });
                        }
                    }
                    ui.add_space(10.0);
                });
            }
        });
        match action {
            Some(Action::Edit(i)) => {
                let draft = self.conversation().turns[i].content.clone();
                self.edit = Some(Edit { turn: i, draft });
            }
            Some(Action::CancelEdit) => self.edit = None,
            Some(Action::Rerun(i)) => {
                if let Some(e) = self.edit.take() {
                    self.edit_and_rerun(i, &e.draft);
                }
            }
            Some(Action::Regenerate) => self.regenerate(),
            None => {}
        }
    }

    fn browser_window(&mut self, ctx: &egui::Context) {
        let Some(browser) = self.browser.as_mut() else { return };
        let lang = self.settings.language;
        let mut open_dir = None;
        let mut close = false;
        egui::Window::new(tr(lang, Key::BrowseTitle)).collapsible(false).default_width(420.0).show(ctx, |ui| {
            ui.label(browser.dir.display().to_string());
            ui.horizontal(|ui| {
                if ui.button(tr(lang, Key::Up)).clicked() {
                    if let Some(p) = browser.dir.parent() {
                        browser.dir = p.to_path_buf();
                    }
                }
                if ui.button(tr(lang, Key::OpenThisDir)).clicked() {
                    open_dir = Some(browser.dir.clone());
                }
                if ui.button(tr(lang, Key::Cancel)).clicked() {
                    close = true;
                }
            });
            ui.separator();
            let mut entries: Vec<_> = std::fs::read_dir(&browser.dir)
                .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
                .unwrap_or_default();
            entries.sort();
            let mut next = None;
            ScrollArea::vertical().id_salt("browser").max_height(320.0).show(ui, |ui| {
                for p in entries {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let is_model = p.join("config.json").is_file();
                    let text = if is_model { format!("{name}  {}", tr(lang, Key::IsModelDir)) } else { name };
                    if ui.selectable_label(false, text).clicked() {
                        next = Some(p);
                    }
                }
            });
            if let Some(p) = next {
                browser.dir = p;
            }
        });
        if let Some(dir) = open_dir {
            self.browser = None;
            self.load_model(&dir);
        } else if close {
            self.browser = None;
        }
    }
}

enum Action {
    Edit(usize),
    CancelEdit,
    Rerun(usize),
    Regenerate,
}

/// "first token 0.05 s · 42.0 tokens/s · 9 tokens · stopped" under a reply.
pub fn footer(lang: Lang, stats: Option<&ReplyStats>, stop: Option<&str>) -> String {
    let t = |k| tr(lang, k);
    let mut parts = Vec::new();
    if let Some(s) = stats {
        parts.push(format!("{} {:.2} {}", t(Key::FirstToken), s.ttft_secs, t(Key::Seconds)));
        if s.tokens_per_sec > 0.0 {
            parts.push(format!("{:.1} {}", s.tokens_per_sec, t(Key::TokensPerSec)));
        }
        parts.push(format!("{} {}", s.new_tokens, t(Key::Tokens)));
    }
    match stop {
        Some("cancelled") => parts.push(t(Key::StoppedByUser).to_string()),
        Some("length") => parts.push(t(Key::StoppedLength).to_string()),
        Some("context") => parts.push(t(Key::StoppedContext).to_string()),
        Some(e) if e.starts_with("error") => {
            parts.push(format!("{}: {}", t(Key::Error), e.trim_start_matches("error: ")))
        }
        _ => {}
    }
    parts.join(" · ")
}
