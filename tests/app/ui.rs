//! The chat window driven through AccessKit (as a screen reader or a user would), against the fake
//! engine. Every `run()` also checks that each input widget has an accessible name, and every
//! frame panics on a glyph the bundled fonts lack.

use egui::accesskit::Role;
use egui::{Event, ImeEvent, Key, Modifiers, OutputCommand};
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use zhinao::app::engine::GenParams;
use zhinao::app::i18n::{tr, Key as T, Lang};
use zhinao::app::settings::Theme;
use zhinao::app::{ChatApp, ModelState};

use super::common::{fake_app, harness, options, tmp_dir};

const HINT_EN: &str = "Message";

/// Type `text` into the input box and press Send.
fn send(h: &mut Harness<'_, ChatApp>, text: &str) {
    h.get_by_label(HINT_EN).click();
    h.run();
    h.get_by_label(HINT_EN).type_text(text);
    h.run();
    h.get_by_label("Send").click();
    h.run();
}

/// Replace the whole text of the field labelled `label`.
fn replace_text(h: &mut Harness<'_, ChatApp>, label: &str, text: &str) {
    h.get_by_label(label).click();
    h.run();
    h.key_press_modifiers(Modifiers::COMMAND, Key::A);
    h.run();
    h.get_by_label(label).type_text(text);
    h.run();
}

fn ready(h: &Harness<'_, ChatApp>) -> bool {
    matches!(h.state().model(), ModelState::Ready(_))
}

#[test]
fn tokens_appear_as_they_stream_and_stop_cancels() {
    let dir = tmp_dir("stream");
    let (app, fake) = fake_app(options(&dir, Lang::En));
    let mut h = harness(app);
    h.run();
    assert!(ready(&h), "{:?}", h.state().model());
    fake.gate();
    fake.set_reply(&["alpha ", "beta ", "gamma ", "delta"]);
    send(&mut h, "hello");
    assert!(h.state().is_generating());
    assert_eq!(h.state().conversation().turns.len(), 2);
    h.get_by_label("Generating…");
    for (i, want) in ["alpha ", "alpha beta "].iter().enumerate() {
        fake.release(1);
        h.run();
        assert_eq!(h.state().conversation().turns[1].content, *want, "after {} pieces", i + 1);
        h.get_by_label_contains(want.trim());
        assert!(h.query_by_label_contains("gamma").is_none());
    }
    // Stop: the fake sees the flag on its next poll and reports a cancelled reply.
    h.get_by_label("Stop").click();
    h.run();
    h.run();
    assert!(!h.state().is_generating());
    assert_eq!(fake.cancelled(), vec![1]);
    let turn = &h.state().conversation().turns[1];
    assert_eq!(turn.content, "alpha beta ");
    assert_eq!(turn.stop.as_deref(), Some("cancelled"));
    h.get_by_label_contains("stopped");
    h.get_by_label("Send");
    // The conversation is on disk with the partial reply.
    let (saved, _) = zhinao::app::store::Store::open(&dir).unwrap().list();
    assert_eq!(saved[0].turns[1].content, "alpha beta ");
}

#[test]
fn reply_markdown_stats_copy_and_context_meter() {
    let dir = tmp_dir("reply");
    let (app, _fake) = fake_app(options(&dir, Lang::En));
    let mut h = harness(app);
    h.run();
    send(&mut h, "hi");
    h.run();
    let turn = h.state().conversation().turns[1].clone();
    assert_eq!(turn.content, zhinao::app::fake::DEFAULT_REPLY.concat());
    let stats = turn.stats.expect("stats");
    // The timing line under the reply.
    h.get_by_label_contains("first token 0.05 s · 42.0 tokens/s · 9 tokens");
    // The context meter shows what the conversation uses of the model's 4096 positions.
    h.get_by_label(&format!("Context {} / 4096 · left {}", stats.ctx_used, 4096 - stats.ctx_used));
    // Markdown: the bold word is its own text run, the code block is rendered as code.
    h.get_by_label_contains("测试");
    h.get(egui_kittest::kittest::by().role(Role::MultilineTextInput).value("fn main() {}"));
    // Copy puts the whole reply on the clipboard.
    h.get_by_label("Copy").click();
    h.step();
    let copied = h
        .output()
        .platform_output
        .commands
        .iter()
        .any(|c| matches!(c, OutputCommand::CopyText(t) if *t == turn.content));
    assert!(copied, "{:?}", h.output().platform_output.commands);
}

#[test]
fn regenerate_replaces_the_last_reply() {
    let dir = tmp_dir("regen");
    let (app, fake) = fake_app(options(&dir, Lang::En));
    let mut h = harness(app);
    h.run();
    send(&mut h, "question");
    h.run();
    fake.set_reply(&["second ", "answer"]);
    h.get_by_label("Regenerate").click();
    h.run();
    h.run();
    let turns = &h.state().conversation().turns;
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1].content, "second answer");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    // The same prompt both times: the system prompt and the user's question.
    assert_eq!(reqs[0].messages, reqs[1].messages);
    assert_eq!(reqs[1].messages.len(), 2);
    assert_eq!(reqs[1].messages[1].content, "question");
}

#[test]
fn edit_a_user_message_and_rerun_from_it() {
    let dir = tmp_dir("edit");
    let (app, fake) = fake_app(options(&dir, Lang::En));
    let mut h = harness(app);
    h.run();
    fake.set_reply(&["A"]);
    send(&mut h, "first");
    h.run();
    fake.set_reply(&["B"]);
    send(&mut h, "second");
    h.run();
    assert_eq!(h.state().conversation().turns.len(), 4);
    // Edit the first user message: everything after it is replaced by a new answer.
    h.get_all_by_label("Edit").next().unwrap().click();
    h.run();
    replace_text(&mut h, "Edit message", "first, edited");
    fake.set_reply(&["C"]);
    h.get_by_label("Save and re-run").click();
    h.run();
    h.run();
    let turns: Vec<(String, String)> =
        h.state().conversation().turns.iter().map(|t| (t.role.clone(), t.content.clone())).collect();
    assert_eq!(turns, vec![("user".into(), "first, edited".into()), ("assistant".into(), "C".into())]);
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.messages.len(), 2);
    assert_eq!(last.messages[1].content, "first, edited");
}

#[test]
fn system_prompt_and_sampling_reach_the_engine() {
    let dir = tmp_dir("system");
    let (app, fake) = fake_app(options(&dir, Lang::En));
    let mut h = harness(app);
    h.run();
    h.get_by_label("Settings").click();
    h.run();
    // The default system prompt, per conversation.
    assert_eq!(h.get_by_label("System prompt").value().as_deref(), Some("You are a helpful assistant."));
    replace_text(&mut h, "System prompt", "你是一位诗人。");
    // Sampling defaults come from the model (generation_config.json); a change is the user's.
    assert_eq!(h.state().params(), GenParams::default());
    h.get_by_role_and_label(Role::Slider, "temperature").set_value_accesskit(0.5);
    h.run();
    h.get_by_role_and_label(Role::Slider, "top_k (0 = off)").set_value_accesskit(40.0);
    h.run();
    send(&mut h, "写一首诗");
    h.run();
    let req = fake.requests().pop().unwrap();
    assert_eq!(req.messages[0].role, "system");
    assert_eq!(req.messages[0].content, "你是一位诗人。");
    assert_eq!((req.params.temperature, req.params.top_k, req.params.top_p), (0.5, 40, 0.8));
    h.get_by_label("Reset to the model's defaults").click();
    h.run();
    assert_eq!(h.state().params(), GenParams::default());
}

#[test]
fn settings_and_conversations_persist_across_a_restart() {
    let dir = tmp_dir("persist");
    let (app, fake) = fake_app(options(&dir, Lang::En));
    let mut h = harness(app);
    h.run();
    send(&mut h, "first conversation");
    h.run();
    h.get_by_label("Rename").click();
    h.run();
    replace_text(&mut h, "Conversation title", "Renamed");
    h.get_by_label("Save").click();
    h.run();
    h.get_by_label("New chat").click();
    h.run();
    send(&mut h, "to be deleted");
    h.run();
    h.get_by_label("Delete").click();
    h.run();
    h.get_by_label("Confirm delete").click();
    h.run();
    h.get_by_label("New chat").click();
    h.run();
    h.get_by_label("Settings").click();
    h.run();
    replace_text(&mut h, "System prompt", "Answer in haiku.");
    h.get_by_role_and_label(Role::Slider, "temperature").set_value_accesskit(0.3);
    h.run();
    // A reply cut off mid-stream: saved at least every half second while it streams.
    fake.gate();
    fake.set_reply(&["partial ", "reply ", "never finished"]);
    send(&mut h, "streaming");
    fake.release(2);
    h.run();
    std::thread::sleep(std::time::Duration::from_millis(600));
    h.run();
    h.get_by_label("Light").click();
    h.run();
    h.get_by_label("中文").click();
    h.run();
    // "Crash": drop the app without flushing anything.
    drop(h);

    let (app, _fake) = fake_app(zhinao::app::AppOptions { lang: None, ..options(&dir, Lang::En) });
    let mut h = harness(app);
    h.run();
    let s = h.state().settings().clone();
    assert_eq!(s.language, Lang::Zh);
    assert_eq!(s.theme, Theme::Light);
    let p = s.sampling.expect("custom sampling saved");
    assert_eq!(p.temperature, 0.3);
    assert_eq!(s.model.as_deref(), Some(std::path::Path::new(super::common::MODEL)));
    let titles: Vec<&str> = h.state().conversations().iter().map(|c| c.title.as_str()).collect();
    assert_eq!(titles.len(), 2, "{titles:?}");
    assert!(titles.contains(&"Renamed"), "{titles:?}");
    assert!(!titles.iter().any(|t| t.contains("deleted")), "{titles:?}");
    // The conversation shown last is shown again, with its system prompt and the partial reply.
    let c = h.state().conversation();
    assert_eq!(c.system, "Answer in haiku.");
    assert_eq!(c.turns[0].content, "streaming");
    assert_eq!(c.turns[1].content, "partial reply ");
    h.get_by_label(tr(Lang::Zh, T::Send));
    h.get_by_label("Renamed").click();
    h.run();
    assert_eq!(h.state().conversation().turns[0].content, "first conversation");
}

/// Context length and KV-cache type are settings: a change enables "Reload", which loads the model
/// again with them; a restart loads with the saved ones; 0 means the model's own context.
#[test]
fn context_and_kv_cache_settings_reach_the_engine_on_reload() {
    use zhinao::app::engine::LoadOptions;
    use zhinao::engine::KvFormat;
    let dir = tmp_dir("kvsettings");
    let (app, fake) = fake_app(options(&dir, Lang::En));
    let mut h = harness(app);
    h.run();
    assert_eq!(fake.loads(), [LoadOptions::default()]);
    h.get_by_label("Settings").click();
    h.run();
    assert!(h.get_by_label("Reload the model to apply").accesskit_node().is_disabled(), "nothing changed yet");
    h.get_by_label("context length (0 = the model's)").set_value_accesskit(1024.0);
    h.run();
    h.get_by_label("q4").click();
    h.run();
    h.get_by_label("Reload the model to apply").click();
    h.run();
    h.run();
    let want = LoadOptions { ctx_len: Some(1024), kv: KvFormat::Q4 };
    assert_eq!(fake.loads().last(), Some(&want));
    match h.state().model() {
        ModelState::Ready(m) => assert_eq!((m.ctx_len, m.options), (1024, want)),
        other => panic!("not loaded: {other:?}"),
    }
    assert!(h.get_by_label("Reload the model to apply").accesskit_node().is_disabled(), "applied");
    drop(h);

    let (app, fake) = fake_app(options(&dir, Lang::En));
    let mut h = harness(app);
    h.run();
    assert_eq!(fake.loads(), [want], "the saved settings load the model");
    h.get_by_label("Settings").click();
    h.run();
    h.get_by_label("context length (0 = the model's)").set_value_accesskit(0.0);
    h.run();
    assert_eq!(h.state().settings().load_options(), LoadOptions { ctx_len: None, kv: KvFormat::Q4 });
}

#[test]
fn deleting_the_conversation_being_answered_ends_the_reply() {
    let dir = tmp_dir("delete-streaming");
    let (app, fake) = fake_app(options(&dir, Lang::En));
    let mut h = harness(app);
    h.run();
    fake.gate();
    send(&mut h, "long question");
    fake.release(1);
    h.run();
    assert!(h.state().is_generating());
    h.get_by_label("Delete").click();
    h.run();
    h.get_by_label("Confirm delete").click();
    h.run();
    h.run();
    assert!(!h.state().is_generating());
    assert_eq!(fake.cancelled(), vec![1]);
    assert!(h.state().conversations().iter().all(|c| c.turns.is_empty()));
    let (saved, _) = zhinao::app::store::Store::open(&dir).unwrap().list();
    assert!(saved.is_empty(), "{saved:?}");
    h.get_by_label("Send");
}

#[test]
fn ime_preedit_and_commit_reach_the_input() {
    let dir = tmp_dir("ime");
    let (app, fake) = fake_app(options(&dir, Lang::Zh));
    let mut h = harness(app);
    h.run();
    let hint = tr(Lang::Zh, T::MessageField);
    h.get_by_label(hint).click();
    h.run();
    assert!(h.get_by_label(hint).is_focused());
    // Pinyin composition: preedit text is shown but not committed, the commit replaces it.
    h.event(Event::Ime(ImeEvent::Preedit { text: "ni".into(), active_range_chars: None }));
    h.run();
    h.event(Event::Ime(ImeEvent::Preedit { text: "nihao".into(), active_range_chars: None }));
    h.run();
    h.event(Event::Ime(ImeEvent::Commit("你好".into())));
    h.run();
    assert_eq!(h.state().input(), "你好");
    h.event(Event::Ime(ImeEvent::Preedit { text: "shi".into(), active_range_chars: None }));
    h.run();
    h.event(Event::Ime(ImeEvent::Commit("世界".into())));
    h.run();
    assert_eq!(h.state().input(), "你好世界");
    // Enter sends (Shift+Enter would add a line).
    h.key_press(Key::Enter);
    h.run();
    assert_eq!(fake.requests()[0].messages[1].content, "你好世界");
    assert_eq!(h.state().input(), "");
}

#[test]
fn every_widget_has_an_accessible_name_in_both_languages() {
    for lang in [Lang::Zh, Lang::En] {
        let dir = tmp_dir("a11y");
        let (app, _fake) = fake_app(options(&dir, lang));
        let mut h = harness(app);
        h.run();
        let t = |k| tr(lang, k);
        let hint = t(T::MessageField);
        h.get_by_label(hint).click();
        h.run();
        h.get_by_label(hint).type_text("测试 test");
        h.run();
        h.get_by_label(t(T::Send)).click();
        h.run();
        // Open everything that has inputs: settings, rename, delete confirmation, edit, browser.
        for k in [T::Settings, T::Rename, T::Edit, T::Browse, T::Recent] {
            h.get_all_by_label(t(k)).next().unwrap_or_else(|| panic!("{k:?}")).click();
            h.run();
        }
        h.get_by_label(t(T::BrowseTitle));
        h.get_by_label(t(T::RenameField));
        h.get_by_label(t(T::EditField));
        h.get_by_label(t(T::SystemPrompt));
        h.get_by_role_and_label(Role::Button, super::common::MODEL); // the recent-models menu
        let unnamed = h.unnamed_widgets();
        assert!(unnamed.is_empty(), "{lang:?}: {unnamed:?}");
        assert_eq!(h.state().lang(), lang);
    }
}

#[test]
fn a_model_that_fails_to_load_is_reported() {
    let dir = tmp_dir("loadfail");
    let opts = zhinao::app::AppOptions { model: Some("no/such/model".into()), ..options(&dir, Lang::En) };
    let (app, _fake) = fake_app(opts);
    let mut h = harness(app);
    h.run();
    assert!(matches!(h.state().model(), ModelState::Failed { .. }));
    h.get_by_label_contains("Loading failed: model directory no/such/model does not exist");
    // Nothing can be sent without a model.
    h.get_by_label(HINT_EN).click();
    h.run();
    h.get_by_label(HINT_EN).type_text("hello");
    h.run();
    h.get_by_label("Send").click();
    h.run();
    assert!(h.state().conversation().turns.is_empty());
    h.get_by_label("Dismiss").click();
    h.run();
    assert!(h.state().notices().is_empty());
}

#[test]
fn every_ui_string_exists_in_both_languages() {
    for &k in T::ALL {
        assert!(!tr(Lang::Zh, k).trim().is_empty(), "{k:?} zh");
        assert!(!tr(Lang::En, k).trim().is_empty(), "{k:?} en");
    }
}
