//! The data directory and the engine worker under failure: concurrent saves of one conversation
//! never leave a torn file, a second app on one data directory is refused (the library lock and
//! the `zhinao-chat` binary, which exits non-zero before opening a window), and a job that panics
//! ends its reply with an error while the worker goes on serving (no GPU needed: a test backend).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zhinao::app::engine::{Backend, Command, Engine, Event, GenParams, LoadOptions, ModelInfo, Worker};
use zhinao::app::i18n::Lang;
use zhinao::app::store::{Conversation, DataDirLock, Store, Turn};
use zhinao::app::{ChatApp, ModelState};
use zhinao::tokenizer::Message;

use super::common::{options, tmp_dir};

/// Four threads save versions of one conversation while a fifth reads it: every read is a whole
/// version and every save succeeds (0.5.0 shared one `<id>.json.tmp`: a writer renamed another's
/// half-written file or found its own gone).
#[test]
fn concurrent_saves_of_one_conversation_are_never_torn() {
    let dir = tmp_dir("torn");
    let store = Arc::new(Store::open(&dir).unwrap());
    let mut base = Conversation::new("race");
    base.turns.push(Turn::user("x".repeat(64 * 1024))); // big enough that a write is not one syscall
    store.save(&base).unwrap();
    let path = store.dir().join(format!("{}.json", base.id));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, stop, id) = (path.clone(), stop.clone(), base.id.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let bytes = std::fs::read(&path).expect("the file is always there");
                let c: Conversation = serde_json::from_slice(&bytes).expect("a whole conversation");
                assert_eq!(c.id, id);
                reads += 1;
            }
            reads
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, mut c) = (store.clone(), base.clone());
            std::thread::spawn(move || {
                for i in 0..100 {
                    c.title = format!("writer {w} save {i}");
                    store.save(&c).expect("save");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    // No temporary file is left behind, and the store lists exactly the one conversation.
    let names: Vec<String> = std::fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [format!("{}.json", base.id)]);
    let (convs, errors) = store.list();
    assert!(errors.is_empty() && convs.len() == 1 && convs[0].title.starts_with("writer "), "{errors:?}");
}

/// The lock is exclusive while held (a second holder is refused with a message naming the
/// directory and the holder), released on drop; `zhinao-chat` on a held directory exits non-zero
/// with that message before it opens a window.
#[test]
fn second_app_on_one_data_directory_is_refused() {
    let dir = tmp_dir("lock");
    let first = DataDirLock::acquire(&dir).unwrap();
    let e = DataDirLock::acquire(&dir).unwrap_err().to_string();
    assert!(e.contains("in use by another zhinao-chat") && e.contains(&dir.display().to_string()), "{e}");
    assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_zhinao-chat"))
        .args(["--data-dir", dir.to_str().unwrap(), "--lang", "en"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("zhinao-chat on a locked data directory did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("in use by another zhinao-chat"), "{stderr}");

    drop(first);
    let again = DataDirLock::acquire(&dir).unwrap();
    drop(again);
}

/// A backend whose first reply panics (as a device or kernel bug would) and whose load panics on
/// a directory named `boom`; later replies answer "ok".
struct Panicky {
    replies: Arc<AtomicUsize>,
    resets: Arc<AtomicUsize>,
}

fn info(dir: &Path) -> ModelInfo {
    ModelInfo {
        name: "panicky".into(),
        dir: dir.to_path_buf(),
        format: "bf16".into(),
        ctx_len: 512,
        options: LoadOptions::default(),
        defaults: GenParams::default(),
        device: "none".into(),
        note: None,
    }
}

impl Backend for Panicky {
    fn load(&mut self, dir: &Path, _: LoadOptions, _: &dyn Fn(Event)) -> zhinao::Result<ModelInfo> {
        if dir.ends_with("boom") {
            panic!("load exploded");
        }
        Ok(info(dir))
    }
    fn generate(
        &mut self,
        job: u64,
        _: &[Message],
        _: &GenParams,
        _: &AtomicBool,
        send: &dyn Fn(Event),
    ) -> zhinao::Result<()> {
        if self.replies.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("kernel exploded");
        }
        send(Event::Started { job, prompt_tokens: 3 });
        send(Event::Token { job, text: "ok".into() });
        send(Event::Done { job, stop: "eos".into(), stats: Default::default() });
        Ok(())
    }
    fn reset(&mut self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
}

/// A worker over `Panicky` and the channel its waker signals.
fn panicky_worker() -> (Worker, Receiver<()>, Arc<AtomicUsize>) {
    let (woke, wakes) = channel();
    let resets = Arc::new(AtomicUsize::new(0));
    let backend = Panicky { replies: Arc::new(AtomicUsize::new(0)), resets: resets.clone() };
    let worker = Worker::with_backend(
        backend,
        Box::new(move || {
            let _ = woke.send(());
        }),
    );
    (worker, wakes, resets)
}

/// Events until `done` holds for one of them (woken by the worker; 60 s at most).
fn events_until(w: &mut Worker, wakes: &Receiver<()>, done: impl Fn(&Event) -> bool) -> Vec<Event> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        for e in w.poll() {
            let last = done(&e);
            seen.push(e);
            if last {
                return seen;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no final event; saw {seen:?}");
        let _ = wakes.recv_timeout(Duration::from_millis(200));
    }
}

#[test]
fn engine_worker_survives_a_panicking_job() {
    let (mut w, wakes, resets) = panicky_worker();
    let generate = |job| Command::Generate {
        job,
        messages: vec![Message::new("user", "hi")],
        params: GenParams::default(),
        cancel: Arc::new(AtomicBool::new(false)),
    };
    w.send(generate(1));
    let ev = events_until(&mut w, &wakes, |e| matches!(e, Event::Failed { .. } | Event::Done { .. }));
    match ev.last() {
        Some(Event::Failed { job: 1, error }) => assert!(error.contains("kernel exploded"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(resets.load(Ordering::SeqCst), 1, "the session is reset after a panic");
    // The same worker answers the next job, and a load that panics fails as a load.
    w.send(generate(2));
    let ev = events_until(&mut w, &wakes, |e| matches!(e, Event::Failed { .. } | Event::Done { .. }));
    assert!(matches!(ev.last(), Some(Event::Done { job: 2, .. })), "{ev:?}");
    w.send(Command::Load("boom".into(), LoadOptions::default()));
    let ev = events_until(&mut w, &wakes, |e| matches!(e, Event::LoadFailed(_) | Event::Loaded(_)));
    assert!(matches!(ev.last(), Some(Event::LoadFailed(e)) if e.contains("load exploded")), "{ev:?}");
}

/// In the app: the reply whose job panicked ends (not "generating" forever) and says why; the
/// next message is answered.
#[test]
fn reply_of_a_panicking_job_ends_with_an_error_in_the_app() {
    let (w, wakes, _) = panicky_worker();
    let dir = tmp_dir("panic-app");
    let mut app = ChatApp::new(Box::new(w), options(&dir, Lang::En)).unwrap();
    let wait = |app: &mut ChatApp, what: &str, done: &dyn Fn(&ChatApp) -> bool| {
        let t0 = Instant::now();
        while {
            app.pump();
            !done(app)
        } {
            assert!(t0.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
            let _ = wakes.recv_timeout(Duration::from_millis(200));
        }
    };
    wait(&mut app, "the model", &|a| matches!(a.model(), ModelState::Ready(_)));
    app.set_input("hi");
    app.send();
    assert!(app.is_generating());
    wait(&mut app, "the failed reply to end", &|a| !a.is_generating());
    let last = app.conversation().turns.last().unwrap().clone();
    assert!(last.stop.as_deref().is_some_and(|s| s.starts_with("error:") && s.contains("kernel exploded")), "{last:?}");
    app.set_input("again");
    app.send();
    wait(&mut app, "the second reply", &|a| !a.is_generating());
    let last = app.conversation().turns.last().unwrap();
    assert_eq!((last.content.as_str(), last.stop.as_deref()), ("ok", Some("eos")));
}
