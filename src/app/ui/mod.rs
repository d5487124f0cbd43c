//! The chat window's state and what its buttons do; `view.rs` draws it. [`ChatApp::ui`] is the
//! whole frame, so the same code runs in the native window (`app::run`) and in `egui_kittest`
//! tests against a fake engine.

mod view;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{Command, Engine, Event, GenParams, ModelInfo};
use super::i18n::{tr, Key, Lang};
use super::settings::{Settings, Theme};
use super::store::{now_secs, Conversation, Store, Turn};

/// Streaming replies are saved at least this often (and at once when they end).
const SAVE_EVERY: Duration = Duration::from_millis(500);

/// How the app starts.
#[derive(Clone, Debug, Default)]
pub struct AppOptions {
    /// Where settings and conversations live (see `settings::data_dir`).
    pub data_dir: PathBuf,
    /// Model to open now (else the one opened last, if any).
    pub model: Option<PathBuf>,
    /// Open no model at start, even the last one.
    pub no_model: bool,
    pub lang: Option<Lang>,
    pub theme: Option<Theme>,
    /// Conversation to show (by id), else the last one shown.
    pub conversation: Option<String>,
    /// Cap on new tokens per reply for this run (not saved; scripted runs keep replies short).
    pub max_new_tokens: Option<usize>,
}

/// The model as the UI knows it.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelState {
    None,
    Loading { dir: PathBuf, done: u64, total: u64 },
    Ready(ModelInfo),
    Failed { dir: PathBuf, error: String },
}

/// The reply being streamed.
struct Job {
    id: u64,
    conv: String,
    /// Index of the assistant turn being written.
    turn: usize,
    cancel: Arc<AtomicBool>,
    prompt_tokens: usize,
    pieces: usize,
}

/// A user turn being edited in place.
struct Edit {
    turn: usize,
    draft: String,
}

/// The in-app directory picker.
struct Browser {
    dir: PathBuf,
}

pub struct ChatApp {
    engine: Box<dyn Engine>,
    data_dir: PathBuf,
    store: Store,
    settings: Settings,
    convs: Vec<Conversation>,
    current: usize,
    model: ModelState,
    input: String,
    job: Option<Job>,
    next_job: u64,
    conv_dirty: Option<Instant>,
    edit: Option<Edit>,
    renaming: Option<String>,
    confirm_delete: bool,
    show_settings: bool,
    model_input: String,
    browser: Option<Browser>,
    notices: Vec<String>,
    md_cache: egui_commonmark::CommonMarkCache,
    applied_theme: Option<Theme>,
    max_new_cap: Option<usize>,
}

impl ChatApp {
    /// The app over `engine`, with the settings and conversations of `opts.data_dir`.
    pub fn new(engine: Box<dyn Engine>, opts: AppOptions) -> crate::error::Result<ChatApp> {
        let (mut settings, settings_err) = Settings::load(&opts.data_dir);
        let store = Store::open(&opts.data_dir)?;
        let (mut convs, errors) = store.list();
        let mut notices: Vec<String> = settings_err.into_iter().chain(errors).collect();
        if let Some(l) = opts.lang {
            settings.language = l;
        }
        if let Some(t) = opts.theme {
            settings.theme = t;
        }
        if convs.is_empty() {
            convs.push(Conversation::new(tr(settings.language, Key::NewChat)));
        }
        let wanted = opts.conversation.as_ref().or(settings.conversation.as_ref());
        let current = match wanted.and_then(|id| convs.iter().position(|c| &c.id == id)) {
            Some(i) => i,
            None => {
                if let Some(id) = &opts.conversation {
                    notices.push(format!("conversation {id:?} not found"));
                }
                0
            }
        };
        let model_dir = if opts.no_model { None } else { opts.model.clone().or_else(|| settings.model.clone()) };
        let mut app = ChatApp {
            engine,
            data_dir: opts.data_dir,
            store,
            settings,
            convs,
            current,
            model: ModelState::None,
            input: String::new(),
            job: None,
            next_job: 1,
            conv_dirty: None,
            edit: None,
            renaming: None,
            confirm_delete: false,
            show_settings: false,
            model_input: model_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(),
            browser: None,
            notices,
            md_cache: Default::default(),
            applied_theme: None,
            max_new_cap: opts.max_new_tokens,
        };
        if let Some(dir) = model_dir {
            app.load_model(&dir);
        }
        Ok(app)
    }

    // ---- what tests and the scripted mode look at ----

    pub fn conversation(&self) -> &Conversation {
        &self.convs[self.current]
    }
    pub fn conversations(&self) -> &[Conversation] {
        &self.convs
    }
    pub fn model(&self) -> &ModelState {
        &self.model
    }
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    pub fn is_generating(&self) -> bool {
        self.job.is_some()
    }
    pub fn input(&self) -> &str {
        &self.input
    }
    /// Errors shown in the banner (load failures, failed replies, unreadable files).
    pub fn notices(&self) -> &[String] {
        &self.notices
    }
    pub fn lang(&self) -> Lang {
        self.settings.language
    }
    fn t(&self, k: Key) -> &'static str {
        tr(self.settings.language, k)
    }

    /// The sampling settings a new reply uses: the user's, else the model's defaults.
    pub fn params(&self) -> GenParams {
        let mut p = match (&self.settings.sampling, &self.model) {
            (Some(p), _) => p.clone(),
            (None, ModelState::Ready(m)) => m.defaults.clone(),
            (None, _) => GenParams::default(),
        };
        if let Some(n) = self.max_new_cap {
            p.max_new_tokens = p.max_new_tokens.min(n.max(1));
        }
        p
    }

    /// Context positions the current conversation uses and the model's total (0 without a model).
    pub fn context_use(&self) -> (usize, usize) {
        let total = match &self.model {
            ModelState::Ready(m) => m.ctx_len,
            _ => 0,
        };
        let conv = self.conversation();
        if let Some(j) = self.job.as_ref().filter(|j| j.conv == conv.id) {
            return (j.prompt_tokens + j.pieces, total);
        }
        let used = conv.turns.iter().rev().find_map(|t| t.stats.map(|s| s.ctx_used)).unwrap_or(0);
        (used, total)
    }

    // ---- actions ----

    pub fn set_input(&mut self, text: &str) {
        self.input = text.to_string();
    }

    pub fn load_model(&mut self, dir: &Path) {
        if let Some(j) = &self.job {
            j.cancel.store(true, Ordering::Relaxed);
        }
        self.model = ModelState::Loading { dir: dir.to_path_buf(), done: 0, total: 0 };
        self.model_input = dir.display().to_string();
        self.engine.send(Command::Load(dir.to_path_buf(), self.settings.load_options()));
    }

    fn can_generate(&self) -> bool {
        self.job.is_none() && matches!(self.model, ModelState::Ready(_))
    }

    /// Send the input box as the user's next turn.
    pub fn send(&mut self) {
        let text = self.input.trim().to_string();
        if text.is_empty() || !self.can_generate() {
            return;
        }
        self.input.clear();
        let conv = &mut self.convs[self.current];
        let untitled = [Lang::Zh, Lang::En].iter().any(|&l| conv.title == tr(l, Key::NewChat));
        if conv.turns.is_empty() && untitled {
            conv.title = text.chars().take(24).collect::<String>().replace('\n', " ");
        }
        conv.turns.push(Turn::user(text));
        conv.turns.push(Turn::assistant(""));
        let turn = conv.turns.len() - 1;
        self.start(turn);
    }

    /// Ask the engine for the assistant turn `turn` of the current conversation (the turns before
    /// it are the prompt).
    fn start(&mut self, turn: usize) {
        let params = self.params();
        let conv = &mut self.convs[self.current];
        conv.updated = now_secs();
        let messages = conv.messages(turn);
        let id = self.next_job;
        self.next_job += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        self.job = Some(Job { id, conv: conv.id.clone(), turn, cancel: cancel.clone(), prompt_tokens: 0, pieces: 0 });
        self.save_current();
        self.engine.send(Command::Generate { job: id, messages, params, cancel });
    }

    /// Cancel the reply being streamed (the engine stops after its current token).
    pub fn stop(&mut self) {
        if let Some(j) = &self.job {
            j.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the stop button was pressed for the running reply.
    pub fn stopping(&self) -> bool {
        self.job.as_ref().is_some_and(|j| j.cancel.load(Ordering::Relaxed))
    }

    /// Replace the last reply of the current conversation with a new one.
    pub fn regenerate(&mut self) {
        if !self.can_generate() {
            return;
        }
        let conv = &mut self.convs[self.current];
        match conv.turns.last() {
            Some(t) if !t.is_user() => {
                let last = conv.turns.len() - 1;
                conv.turns[last] = Turn::assistant("");
                self.start(last);
            }
            _ => {}
        }
    }

    /// Replace user turn `turn` with `text`, drop everything after it and answer again.
    pub fn edit_and_rerun(&mut self, turn: usize, text: &str) {
        let text = text.trim();
        if text.is_empty() || !self.can_generate() {
            return;
        }
        let conv = &mut self.convs[self.current];
        if !conv.turns.get(turn).is_some_and(Turn::is_user) {
            return;
        }
        conv.turns.truncate(turn + 1);
        conv.turns[turn].content = text.to_string();
        conv.turns.push(Turn::assistant(""));
        self.edit = None;
        self.start(turn + 1);
    }

    pub fn new_conversation(&mut self) {
        // An untouched empty conversation is reused rather than piling up.
        if let Some(i) = self.convs.iter().position(|c| c.turns.is_empty()) {
            self.select(i);
            return;
        }
        let mut c = Conversation::new(self.t(Key::NewChat));
        c.system = self.conversation().system.clone();
        self.convs.insert(0, c);
        self.current = 0;
        self.after_select();
        self.save_current();
    }

    pub fn select(&mut self, index: usize) {
        if index < self.convs.len() && index != self.current {
            self.flush_conversations();
            self.current = index;
            self.after_select();
        }
    }

    fn after_select(&mut self) {
        self.edit = None;
        self.renaming = None;
        self.confirm_delete = false;
        self.settings.conversation = Some(self.conversation().id.clone());
        self.save_settings();
    }

    pub fn rename_current(&mut self, title: &str) {
        let title = title.trim();
        if !title.is_empty() {
            self.convs[self.current].title = title.to_string();
            self.save_current();
        }
        self.renaming = None;
    }

    /// Delete the current conversation (its file too). A reply streaming into it is cancelled.
    pub fn delete_current(&mut self) {
        let id = self.conversation().id.clone();
        if let Some(j) = self.job.as_ref().filter(|j| j.conv == id) {
            j.cancel.store(true, Ordering::Relaxed);
        }
        if let Err(e) = self.store.delete(&id) {
            self.notices.push(e.to_string());
        }
        self.convs.remove(self.current);
        if self.convs.is_empty() {
            self.convs.push(Conversation::new(self.t(Key::NewChat)));
        }
        self.current = self.current.min(self.convs.len() - 1);
        self.after_select();
    }

    pub fn set_system_prompt(&mut self, text: &str) {
        self.convs[self.current].system = text.to_string();
        self.save_current();
    }

    pub fn set_sampling(&mut self, p: Option<GenParams>) {
        self.settings.sampling = p;
        self.save_settings();
    }

    /// The context length and KV-cache type of the next load (`Reload` applies them now).
    pub fn set_load_options(&mut self, ctx_len: Option<usize>, kv: crate::engine::KvFormat) {
        self.settings.ctx_len = ctx_len.filter(|&n| n > 0);
        self.settings.kv_type = kv;
        self.save_settings();
    }

    /// Load the current model again with the settings' options.
    pub fn reload_model(&mut self) {
        if let ModelState::Ready(m) = &self.model {
            let dir = m.dir.clone();
            self.load_model(&dir);
        }
    }

    pub fn set_language(&mut self, lang: Lang) {
        self.settings.language = lang;
        self.save_settings();
    }

    pub fn set_theme(&mut self, theme: Theme) {
        self.settings.theme = theme;
        self.save_settings();
    }

    // ---- persistence ----

    fn save_current(&mut self) {
        let c = &self.convs[self.current];
        if let Err(e) = self.store.save(c) {
            self.notices.push(e.to_string());
        }
    }

    fn save_conv(&mut self, id: &str) {
        if let Some(c) = self.convs.iter().find(|c| c.id == id) {
            if let Err(e) = self.store.save(c) {
                self.notices.push(e.to_string());
            }
        }
    }

    /// Write the streamed reply so far now (on close; otherwise at least every half second).
    pub fn flush(&mut self) {
        self.flush_conversations();
    }

    fn flush_conversations(&mut self) {
        if self.conv_dirty.take().is_some() {
            if let Some(id) = self.job.as_ref().map(|j| j.conv.clone()) {
                self.save_conv(&id);
            }
        }
    }

    /// Settings are small and change rarely: written at once.
    fn save_settings(&mut self) {
        if let Err(e) = self.settings.save(&self.data_dir) {
            self.notices.push(e.to_string());
        }
    }

    // ---- engine events ----

    /// Apply what the engine reported since the last frame.
    pub fn pump(&mut self) {
        for e in self.engine.poll() {
            self.apply(e);
        }
        if self.conv_dirty.is_some_and(|t| t.elapsed() >= SAVE_EVERY) {
            self.flush_conversations();
        }
    }

    fn job_turn(&mut self, job: u64) -> Option<&mut Turn> {
        let j = self.job.as_ref().filter(|j| j.id == job)?;
        let (conv, turn) = (j.conv.clone(), j.turn);
        self.convs.iter_mut().find(|c| c.id == conv)?.turns.get_mut(turn)
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::LoadProgress { done, total } => {
                if let ModelState::Loading { done: d, total: t, .. } = &mut self.model {
                    (*d, *t) = (done, total);
                }
            }
            Event::Loaded(info) => {
                self.settings.opened_model(&info.dir);
                self.save_settings();
                if let Some(n) = &info.note {
                    self.notices.push(n.clone());
                }
                self.model = ModelState::Ready(info);
            }
            Event::LoadFailed(error) => {
                let dir = match &self.model {
                    ModelState::Loading { dir, .. } => dir.clone(),
                    _ => PathBuf::new(),
                };
                self.notices.push(format!("{}: {error}", self.t(Key::LoadFailed)));
                self.model = ModelState::Failed { dir, error };
            }
            Event::Started { job, prompt_tokens } => {
                if let Some(j) = self.job.as_mut().filter(|j| j.id == job) {
                    j.prompt_tokens = prompt_tokens;
                }
            }
            Event::Token { job, text } => {
                if let Some(t) = self.job_turn(job) {
                    t.content.push_str(&text);
                    if let Some(j) = self.job.as_mut() {
                        j.pieces += 1;
                    }
                    self.conv_dirty.get_or_insert_with(Instant::now);
                }
            }
            // The job ends even when its conversation was deleted meanwhile.
            Event::Done { job, stop, stats } => {
                if let Some(t) = self.job_turn(job) {
                    t.stats = Some(stats);
                    t.stop = Some(stop);
                }
                self.finish(job);
            }
            Event::Failed { job, error } => {
                if let Some(t) = self.job_turn(job) {
                    t.stop = Some(format!("error: {error}"));
                }
                if self.job.as_ref().is_some_and(|j| j.id == job) {
                    self.notices.push(format!("{}: {error}", self.t(Key::Error)));
                }
                self.finish(job);
            }
        }
    }

    fn finish(&mut self, job: u64) {
        if self.job.as_ref().is_some_and(|j| j.id == job) {
            if let Some(j) = self.job.take() {
                self.conv_dirty = None;
                self.save_conv(&j.conv);
            }
        }
    }

    /// One frame: apply engine events, then draw.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        self.pump();
        self.draw(ui);
    }
}
