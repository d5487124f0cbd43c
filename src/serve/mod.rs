//! `zhinao serve`: an OpenAI-compatible HTTP server for chat, completions, embeddings and reranking
//! (axum + tokio). This module holds no GPU code: it talks to the engine through the traits in
//! [`backend`], implemented over the engine library by [`engine`] and by a scripted fake in [`fake`].
//!
//! What the server does with a request, in order ([`http`] then [`routes`]):
//! 1. CORS (when origins are configured), then one middleware: the API key (every route but
//!    `/health` and `/v1/models`), admission (`max_concurrent` requests in flight, else 429), the
//!    request log line and metrics, and a last net that turns any non-JSON error into OpenAI's shape.
//! 2. The handler parses the body itself (syntax 400, shape 422, size 413), resolves the model (503
//!    while loading), validates, tokenises on the CPU, checks the context (400 with `n_prompt_tokens`
//!    and `n_ctx`), and queues one job ([`scheduler`]: bounded, 429 at once when full).
//! 3. The engine thread runs it; text comes back through a channel, stop strings are cut there, and
//!    the handler answers with JSON or a stream of server-sent events ([`sse`]).
//!
//! Transport ([`conn`]): the accept loop is ours (hyper's HTTP/1 connection with a timer), so a
//! client gets `header_timeout` to send its request head and `body_timeout` to send its body (408),
//! a response or stream that the client stops reading fails after `write_timeout` (its job is
//! cancelled), and at most `max_connections` are open (the rest wait in the kernel's backlog).
//!
//! Shutdown (SIGTERM, Ctrl-C, or the future given to [`serve`]): stop accepting, answer queued jobs
//! 503, let running generations finish for `shutdown_grace`, then end them with an error event;
//! connections still open shortly after that are closed, and [`serve`] returns. [`run`] exits at
//! once on a second signal.

pub mod api;
pub mod backend;
mod conn;
pub mod engine;
pub mod error;
pub mod fake;
mod http;
pub mod metrics;
mod routes;
pub mod scheduler;
pub mod sse;
pub mod stop;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use backend::{Backend, Catalog, Loader, ModelCard, ModelKind};
pub use error::ApiError;
pub use http::{router, App};

/// Server settings (the CLI's flags).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Required as `Authorization: Bearer KEY` or `X-Api-Key: KEY` on every route but `/health` and
    /// `/v1/models`.
    pub api_key: Option<String>,
    /// API requests admitted at once (queued, running or streaming); more get 429.
    pub max_concurrent: usize,
    /// Engine jobs that may wait behind the running one; more get 429.
    pub max_queue: usize,
    /// Most tokens in one batch of embedding or rerank requests.
    pub batch_tokens: usize,
    /// Largest request body in bytes (413 beyond).
    pub body_limit: usize,
    /// Origins allowed by CORS (`*` for any); none: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Interval of `: keep-alive` comments on a quiet stream.
    pub keep_alive: Duration,
    /// How long running generations may go on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// One line per request on stderr.
    pub log_requests: bool,
    /// Most tokens one request may generate (`--max-tokens`); a request asking more is clamped to it.
    pub max_tokens: Option<usize>,
    /// `Host` names accepted besides the loopback ones (`localhost`, 127.0.0.0/8, `[::1]`, any
    /// port) when [`ServeConfig::host_check`] is on.
    pub allowed_hosts: Vec<String>,
    /// Answer 403 to a `Host` that is neither loopback nor in `allowed_hosts` (DNS rebinding). Set by
    /// [`serve`]: on for a loopback bind or when `allowed_hosts` is given.
    pub host_check: bool,
    /// Time a client has to send a request head (hyper's header read timeout); also how long an
    /// idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Time a client has to send a whole request body once its head has arrived (408 beyond).
    pub body_timeout: Duration,
    /// How long a write to a client may stay blocked (a client that stops reading a stream) before
    /// the connection is dropped and its job cancelled.
    pub write_timeout: Duration,
    /// Open connections at most; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// `/health` answers 503 once one engine step (a prefill, a token, a batch) has run this long.
    pub stall_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            api_key: None,
            max_concurrent: 64,
            max_queue: 32,
            batch_tokens: 8192,
            body_limit: 2 << 20,
            cors_origins: Vec::new(),
            keep_alive: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            log_requests: true,
            max_tokens: None,
            allowed_hosts: Vec::new(),
            host_check: false,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 512,
            stall_timeout: Duration::from_secs(300),
        }
    }
}

/// Tokens of one request, for its log line.
#[derive(Default, Debug)]
pub struct TokenCount {
    prompt: AtomicUsize,
    completion: AtomicUsize,
}

impl TokenCount {
    pub fn set(&self, prompt: usize, completion: usize) {
        self.prompt.store(prompt, Ordering::Relaxed);
        self.completion.store(completion, Ordering::Relaxed);
    }
    pub fn get(&self) -> (usize, usize) {
        (self.prompt.load(Ordering::Relaxed), self.completion.load(Ordering::Relaxed))
    }
}

/// Run the server on `listener` until `shutdown` resolves (or the models fail to load), then shut
/// down gracefully. `on_ready` is called once the models are loaded. Returns the load error, if any.
///
/// Returns at the latest about `shutdown_grace` + 2 s after the signal, whatever the clients do; an
/// engine thread stuck in a step is left behind (the process exits without it).
pub async fn serve(
    mut cfg: ServeConfig,
    listener: tokio::net::TcpListener,
    loader: Loader,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&[ModelCard]) + Send + 'static,
) -> Result<(), String> {
    let local = listener.local_addr().map_err(|e| format!("server: {e}"))?;
    cfg.host_check = local.ip().is_loopback() || !cfg.allowed_hosts.is_empty();
    if !local.ip().is_loopback() && cfg.api_key.is_none() {
        eprintln!(
            "zhinao serve: warning: listening on {local} without an API key: anyone who can reach this \
             address can use the models (set ZHINAO_API_KEY or --api-key)"
        );
    }
    let app = App::new(cfg.clone());
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let fail_slot = failure.clone();
    let engine = app
        .start(loader, on_ready, move |e| {
            *fail_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            let _ = failed_tx.send(());
        })
        .map_err(|e| format!("starting the engine thread: {e}"))?;
    let sched = app.sched.clone();
    let grace = cfg.shutdown_grace;
    let signal = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = failed_rx => {}
        }
        sched.close();
        // Running generations get `grace`, then end with an error event.
        let s = sched.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            s.cancel_running();
        });
    };
    let served = conn::accept_loop(&cfg, listener, router(app.clone()), signal).await;
    app.sched.close();
    app.sched.cancel_running();
    // Wait for the engine thread on a plain thread (a blocking task would hold the runtime's
    // shutdown), a bounded time: a thread stuck in a GPU call is left behind.
    let (joined_tx, joined_rx) = tokio::sync::oneshot::channel::<()>();
    let _ = std::thread::Builder::new().name("zhinao-engine-join".into()).spawn(move || {
        let _ = engine.join();
        let _ = joined_tx.send(());
    });
    if tokio::time::timeout(Duration::from_secs(2), joined_rx).await.is_err() {
        eprintln!("zhinao serve: the engine thread did not stop within 2 s; exiting without it");
    }
    served.map_err(|e| format!("server: {e}"))?;
    let failed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What `zhinao serve` runs: a tokio runtime, the listener on `addr`, Ctrl-C and SIGTERM as the
/// shutdown signal; prints the address when listening and again when ready.
pub fn run(cfg: ServeConfig, addr: SocketAddr, loader: Loader) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let served = rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("zhinao serve: listening on http://{local} (loading models; /health answers 503 until ready)");
        let on_ready = move |cards: &[ModelCard]| {
            let list: Vec<String> =
                cards.iter().map(|c| format!("{} ({}, n_ctx {})", c.id, c.kind.as_str(), c.n_ctx)).collect();
            println!("zhinao serve: ready on http://{local}: {}", list.join(", "));
        };
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(signals(first_tx));
        let shutdown = async move {
            let _ = first_rx.await;
        };
        serve(cfg, listener, loader, shutdown, on_ready).await
    });
    // Blocking tasks still running (a tokenizer call) must not hold the exit.
    rt.shutdown_timeout(Duration::from_millis(500));
    served
}

/// Ctrl-C, or SIGTERM on Unix: the first one starts the graceful shutdown (through `first`), a
/// second one exits the process at once (status 130).
async fn signals(first: tokio::sync::oneshot::Sender<()>) {
    let mut first = Some(first);
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            _ => return std::future::pending().await,
        }
    };
    loop {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        match first.take() {
            Some(tx) => {
                eprintln!(
                    "zhinao serve: shutting down (no new requests; running generations get the grace \
                     period; a second signal exits at once)"
                );
                let _ = tx.send(());
            }
            None => {
                eprintln!("zhinao serve: second signal: exiting now");
                std::process::exit(130);
            }
        }
    }
}
