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
//! Shutdown (SIGTERM, Ctrl-C, or the future given to [`serve`]): stop accepting, answer queued jobs
//! 503, let running generations finish for `shutdown_grace`, then end them with an error event.

pub mod api;
pub mod backend;
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
pub async fn serve(
    cfg: ServeConfig,
    listener: tokio::net::TcpListener,
    loader: Loader,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&[ModelCard]) + Send + 'static,
) -> Result<(), String> {
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
    let served = axum::serve(listener, router(app.clone())).with_graceful_shutdown(signal).await;
    app.sched.close();
    app.sched.cancel_running();
    let _ = tokio::task::spawn_blocking(move || engine.join()).await;
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
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("zhinao serve: listening on http://{local} (loading models; /health answers 503 until ready)");
        let on_ready = move |cards: &[ModelCard]| {
            let list: Vec<String> =
                cards.iter().map(|c| format!("{} ({}, n_ctx {})", c.id, c.kind.as_str(), c.n_ctx)).collect();
            println!("zhinao serve: ready on http://{local}: {}", list.join(", "));
        };
        serve(cfg, listener, loader, shutdown_signal(), on_ready).await
    })
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("zhinao serve: shutting down (no new requests; running generations get the grace period)");
}
