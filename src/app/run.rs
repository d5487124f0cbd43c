//! The native window: the app owns the winit event loop, creates the engine's GPU context on that
//! display, hands the same instance/adapter/device/queue to eframe (`WgpuSetup::Existing`) and
//! runs the engine on a worker thread. One device serves the UI and the engine; this is checked
//! at start and printed (`ui device shared with engine: true`).
//!
//! Scripted mode (`--prompt TEXT --screenshot FILE.png --exit-after-reply`, for tests and
//! screenshots): once the model is loaded, send the prompt, wait for the whole streamed reply,
//! save a PNG of the window and close; the result is an error on any failure (load, reply,
//! timeout, a blank screenshot, a renderer not on the engine's device).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::engine::Worker;
use super::fonts::{self, FontSource};
use super::store::DataDirLock;
use super::ui::{AppOptions, ChatApp, ModelState};
use crate::gpu::{self, Context, GpuOptions};

/// What `zhinao-chat` (and `zhinao chat --gui`) was asked to do.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub app: AppOptions,
    pub gpu: GpuOptions,
    /// Inner window size in points.
    pub size: Option<[f32; 2]>,
    pub script: Option<Script>,
}

/// The scripted mode's request.
#[derive(Clone, Debug)]
pub struct Script {
    pub prompt: String,
    pub screenshot: Option<PathBuf>,
    pub exit_after_reply: bool,
    /// Give up (and fail) after this long.
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    WaitModel,
    WaitReply,
    /// Frames drawn since the reply ended (the last text lays out, the view scrolls).
    Settle(u32),
    WaitShot,
    Finished,
}

type Outcome = Arc<Mutex<Option<Result<(), String>>>>;

struct NativeApp {
    chat: ChatApp,
    /// The shared device's context (for the UI's own device errors).
    gpu: Arc<Context>,
    script: Option<(Script, Stage)>,
    started: Instant,
    shot: Arc<Mutex<Option<Result<(), String>>>>,
    outcome: Outcome,
}

fn set(outcome: &Outcome, r: Result<(), String>) {
    if let Ok(mut o) = outcome.lock() {
        o.get_or_insert(r);
    }
}

impl NativeApp {
    fn fail(&mut self, ctx: &egui::Context, msg: String) {
        eprintln!("zhinao-chat: {msg}");
        set(&self.outcome, Err(msg));
        if let Some((_, stage)) = self.script.as_mut() {
            *stage = Stage::Finished;
        }
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }

    fn drive(&mut self, ctx: &egui::Context) {
        let Some((script, stage)) = self.script.clone() else { return };
        if stage == Stage::Finished {
            return;
        }
        ctx.request_repaint_after(Duration::from_millis(50));
        if self.started.elapsed() > script.timeout {
            return self.fail(ctx, format!("timed out after {:?} ({stage:?})", script.timeout));
        }
        let next = match stage {
            Stage::WaitModel => match self.chat.model() {
                ModelState::Ready(_) => {
                    self.chat.set_input(&script.prompt);
                    self.chat.send();
                    Stage::WaitReply
                }
                ModelState::Failed { error, .. } => {
                    let msg = format!("model failed to load: {error}");
                    return self.fail(ctx, msg);
                }
                ModelState::None => return self.fail(ctx, "no model given (--model DIR)".into()),
                ModelState::Loading { .. } => stage,
            },
            Stage::WaitReply if !self.chat.is_generating() => {
                let last = self.chat.conversation().turns.last();
                let stop = last.and_then(|t| t.stop.clone()).unwrap_or_default();
                if stop.starts_with("error") {
                    return self.fail(ctx, format!("reply failed: {stop}"));
                }
                let n = last.and_then(|t| t.stats).map(|s| s.new_tokens).unwrap_or(0);
                eprintln!("reply: {n} tokens, stop {stop}");
                Stage::Settle(0)
            }
            Stage::WaitReply => stage,
            Stage::Settle(n) if n < 5 => Stage::Settle(n + 1),
            Stage::Settle(_) => {
                if let Some(path) = script.screenshot.clone() {
                    let done = self.shot.clone();
                    let waker = ctx.clone();
                    ctx.request_screenshot(move |image| {
                        let r = save_png(&image, &path);
                        if let Ok(mut d) = done.lock() {
                            *d = Some(r);
                        }
                        waker.request_repaint();
                    });
                }
                Stage::WaitShot
            }
            Stage::WaitShot => {
                let r = match script.screenshot {
                    Some(_) => self.shot.lock().ok().and_then(|mut s| s.take()),
                    None => Some(Ok(())),
                };
                match r {
                    None => stage,
                    Some(Err(e)) => return self.fail(ctx, e),
                    Some(Ok(())) => {
                        set(&self.outcome, Ok(()));
                        if script.exit_after_reply {
                            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                        }
                        Stage::Finished
                    }
                }
            }
            Stage::Finished => stage,
        };
        if let Some((_, s)) = self.script.as_mut() {
            *s = next;
        }
    }
}

impl eframe::App for NativeApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        for e in self.gpu.take_ui_errors() {
            eprintln!("zhinao-chat: UI device error (the engine is unaffected): {e}");
        }
        self.chat.ui(ui);
        let ctx = ui.ctx().clone();
        self.drive(&ctx);
    }

    fn on_exit(&mut self) {
        self.chat.stop();
        self.chat.flush();
    }
}

/// Save a screenshot as PNG; an image of (nearly) one colour is an error ("blank").
fn save_png(image: &egui::ColorImage, path: &std::path::Path) -> Result<(), String> {
    let [w, h] = image.size;
    let colors = distinct_colors(image, 64);
    if colors < 8 {
        return Err(format!("the screenshot is blank ({w}×{h}, {colors} distinct colours)"));
    }
    let bytes: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_srgba_unmultiplied()).collect();
    let img = image::RgbaImage::from_raw(w as u32, h as u32, bytes).ok_or("screenshot buffer size")?;
    img.save(path).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("screenshot: {} ({w}×{h}, {colors}+ distinct colours)", path.display());
    Ok(())
}

/// Distinct colours in `image`, counting up to `cap`.
pub fn distinct_colors(image: &egui::ColorImage, cap: usize) -> usize {
    let mut seen = std::collections::HashSet::new();
    for p in &image.pixels {
        seen.insert(*p);
        if seen.len() >= cap {
            break;
        }
    }
    seen.len()
}

/// Open the window and run until it closes. In scripted mode the result says whether the script
/// succeeded; otherwise it is `Ok` unless the window or the GPU could not be set up.
pub fn run(opts: RunOptions) -> Result<(), String> {
    // One app per data directory, checked before any window opens; held until the app returns.
    let _lock = DataDirLock::acquire(&opts.app.data_dir).map_err(|e| e.to_string())?;
    let event_loop = winit::event_loop::EventLoop::<eframe::UserEvent>::with_user_event()
        .build()
        .map_err(|e| format!("cannot open a window: {e}"))?;
    let ctx =
        Context::with_display(&opts.gpu, Box::new(event_loop.owned_display_handle())).map_err(|e| e.to_string())?;
    eprintln!("device: {}", ctx.describe());

    let size = opts.size.unwrap_or([1100.0, 720.0]);
    let mut native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Zhinao Chat · 智脑对话")
            .with_app_id("zhinao-chat")
            .with_inner_size(size)
            .with_min_inner_size([640.0, 400.0]),
        // Fonts are ours: system fonts with zh-Hans preferred, then the bundled fallbacks.
        system_font_fallback: false,
        ..Default::default()
    };
    native.wgpu_options.wgpu_setup = gpu::ui::wgpu_setup(&ctx);

    let outcome: Outcome = Arc::new(Mutex::new(None));
    let out = outcome.clone();
    let scripted = opts.script.is_some();
    let creator: eframe::AppCreator<'_> = Box::new(move |cc| {
        fonts::install(&cc.egui_ctx, FontSource::SystemThenBundled);
        let shared = cc.wgpu_render_state.as_ref().map(|rs| (gpu::ui::shares_device(&ctx, rs), rs));
        match shared {
            Some((true, rs)) => eprintln!("ui device shared with engine: true ({})", gpu::ui::describe_renderer(rs)),
            Some((false, rs)) => {
                let msg = format!("ui renderer is not on the engine's device ({})", gpu::ui::describe_renderer(rs));
                set(&out, Err(msg.clone()));
                return Err(msg.into());
            }
            None => {
                set(&out, Err("eframe did not start its wgpu renderer".into()));
                return Err("no wgpu renderer".into());
            }
        }
        let waker = cc.egui_ctx.clone();
        let worker = Worker::spawn(ctx.clone(), Box::new(move || waker.request_repaint()));
        let chat = ChatApp::new(Box::new(worker), opts.app.clone()).map_err(|e| e.to_string())?;
        Ok(Box::new(NativeApp {
            chat,
            gpu: ctx.clone(),
            script: opts.script.clone().map(|s| (s, Stage::WaitModel)),
            started: Instant::now(),
            shot: Arc::new(Mutex::new(None)),
            outcome: out,
        }))
    });
    let mut app = eframe::create_native("zhinao-chat", native, creator, &event_loop);
    event_loop.run_app(&mut app).map_err(|e| format!("event loop: {e}"))?;
    drop(app);
    let result = outcome.lock().ok().and_then(|mut o| o.take());
    match result {
        Some(r) => r,
        None if scripted => Err("the window closed before the script finished".into()),
        None => Ok(()),
    }
}
