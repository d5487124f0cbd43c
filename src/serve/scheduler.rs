//! The engine thread and its bounded queue: the one place that decides what the GPU does next.
//!
//! HTTP handlers `submit` work and get a [`JobGuard`]; a full queue is refused at once (429), a closed
//! one (shutting down) with 503. The engine thread pops the oldest job. With a backend of
//! `parallel` 1, generations run one at a time; with more (`zhinao serve --parallel N`), up to N
//! generations share decode steps: each joins the running batch when it reaches the front of the
//! queue and the batch has room, and leaves at its end (continuous batching). An embedding or
//! rerank job takes along every queued job of the same kind and model that fits `batch_tokens`, and
//! the batch runs as one backend call (between two decode steps when generations are running).
//!
//! Cancellation: dropping a [`JobGuard`] (the handler future or the SSE stream, when the client goes
//! away) sets the job's cancel flag and takes it out of the queue if it has not started; a running
//! generation sees the flag between prefill chunks and before every decode step. An embedding or
//! rerank batch runs in backend calls of at most `batch_tokens` padded tokens (each row's length
//! rounded up to the encoders' ×32 shape bucket), and the rows of a job cancelled meanwhile are
//! dropped from the calls not yet made.
//!
//! Liveness: the engine thread stamps a [`Heartbeat`] around every backend call and at every token;
//! `/health` reads it (503 when the thread has exited, one call has run past the stall limit, or a
//! call reported the GPU device lost).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::api::Usage;
use super::backend::{Backend, BackendError, Catalog, EndReason, GenEnd, GenJob, Loader, Piece, RerankPair, StepEvent};
use super::error::ApiError;
use super::metrics::Metrics;
use super::stop::{Matched, StopMatcher};
use crate::embed::padded_len;

/// Why a finished generation stopped, as OpenAI names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What a generation sends back to its handler.
#[derive(Debug)]
pub enum GenEvent {
    /// New text (never empty, never a split character).
    Delta(String),
    /// The end, with the token counts.
    Done { finish: Finish, usage: Usage },
    /// The job failed (or the server shut down under it); nothing follows.
    Error(ApiError),
}

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;
/// Where a batched job's answer arrives.
pub type Answer<T> = oneshot::Receiver<Result<T, ApiError>>;
/// One embedding per input.
pub type Vectors = Vec<Vec<f32>>;

enum Work {
    Generate { job: GenJob, stops: Vec<String>, events: mpsc::UnboundedSender<GenEvent>, admitted: Instant },
    Embed { model: String, seqs: Vec<Vec<u32>>, reply: Reply<Vec<Vec<f32>>> },
    Rerank { model: String, pairs: Vec<RerankPair>, reply: Reply<Vec<f32>> },
}

impl Work {
    /// Padded tokens this job adds to an embedding/rerank batch.
    fn tokens(&self) -> usize {
        match self {
            Work::Generate { job, .. } => job.prompt.len(),
            _ => (0..self.rows()).map(|r| padded_len(self.row_len(r))).sum(),
        }
    }
    /// Embedding inputs or rerank pairs.
    fn rows(&self) -> usize {
        match self {
            Work::Generate { .. } => 0,
            Work::Embed { seqs, .. } => seqs.len(),
            Work::Rerank { pairs, .. } => pairs.len(),
        }
    }
    /// Tokens of row `r`.
    fn row_len(&self, r: usize) -> usize {
        match self {
            Work::Generate { .. } => 0,
            Work::Embed { seqs, .. } => seqs[r].len(),
            Work::Rerank { pairs, .. } => pairs[r].ids.len(),
        }
    }
    /// Whether `other` may run in one backend call with `self`.
    fn batches_with(&self, other: &Work) -> bool {
        match (self, other) {
            (Work::Embed { model: a, .. }, Work::Embed { model: b, .. }) => a == b,
            (Work::Rerank { model: a, .. }, Work::Rerank { model: b, .. }) => a == b,
            _ => false,
        }
    }
    /// Answer the job with an error.
    fn fail(self, e: ApiError) {
        match self {
            Work::Generate { events, .. } => {
                let _ = events.send(GenEvent::Error(e));
            }
            Work::Embed { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Work::Rerank { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

struct Entry {
    id: u64,
    cancel: Arc<AtomicBool>,
    work: Work,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Entry>,
    /// Cancel flags of the jobs running now.
    running: Vec<(u64, Arc<AtomicBool>)>,
    /// No new work (shutting down); the engine thread exits once the queue is empty.
    closed: bool,
}

/// The engine thread's pulse: when it last made progress, whether it is inside a backend call,
/// whether it has exited.
pub struct Heartbeat {
    base: Instant,
    /// Milliseconds after `base` of the last stamp.
    last_ms: AtomicU64,
    busy: AtomicBool,
    exited: AtomicBool,
    /// Set by a backend call that found the device lost.
    lost: OnceLock<String>,
}

impl Heartbeat {
    fn new() -> Heartbeat {
        Heartbeat {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            lost: OnceLock::new(),
        }
    }
    /// Remember a lost device from a backend call's error.
    fn note(&self, e: &BackendError) {
        if let BackendError::DeviceLost(m) = e {
            let _ = self.lost.set(m.clone());
        }
    }
    /// Progress now.
    pub fn beat(&self) {
        self.last_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    /// Entering (true) or leaving (false) a backend call.
    fn busy(&self, busy: bool) {
        self.beat();
        self.busy.store(busy, Ordering::SeqCst);
    }
    /// Ok while the engine thread lives and no backend call has gone `stall` without progress; the
    /// reason otherwise.
    pub fn check(&self, stall: Duration) -> Result<(), String> {
        if let Some(m) = self.lost.get() {
            return Err(format!("the GPU device was lost ({m}); the server must be restarted"));
        }
        if self.exited.load(Ordering::SeqCst) {
            return Err("the engine thread has stopped (see the server log)".into());
        }
        let since = self.base.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
        if self.busy.load(Ordering::SeqCst) && since > stall {
            return Err(format!(
                "the engine has made no progress for {:.1} s (stall limit {:.1} s): the device may be lost or hung",
                since.as_secs_f64(),
                stall.as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// Sets [`Heartbeat::exited`] when the engine thread ends, by return or by panic.
struct ExitMark(Arc<Scheduler>);

impl Drop for ExitMark {
    fn drop(&mut self) {
        self.0.heartbeat.exited.store(true, Ordering::SeqCst);
    }
}

/// The queue, the engine thread's loop, and the shutdown switches.
pub struct Scheduler {
    state: Mutex<State>,
    wake: Condvar,
    max_queue: usize,
    batch_tokens: usize,
    next_id: AtomicU64,
    /// Set when a shutdown cancels running jobs: they end with an error event, not `Done`.
    shutdown: AtomicBool,
    pub metrics: Arc<Metrics>,
    pub heartbeat: Heartbeat,
}

/// Held by whoever waits for a job; dropping it cancels the job.
pub struct JobGuard {
    id: u64,
    cancel: Arc<AtomicBool>,
    sched: Arc<Scheduler>,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        let mut st = self.sched.lock();
        if let Some(i) = st.queue.iter().position(|e| e.id == self.id) {
            st.queue.remove(i);
            self.sched.metrics.queue_depth.store(st.queue.len() as i64, Ordering::Relaxed);
            self.sched.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Scheduler {
    /// `max_queue` ≥ 1 jobs may wait; embedding/rerank batches hold up to `batch_tokens` tokens.
    pub fn new(max_queue: usize, batch_tokens: usize, metrics: Arc<Metrics>) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            max_queue: max_queue.max(1),
            batch_tokens: batch_tokens.max(1),
            next_id: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
            metrics,
            heartbeat: Heartbeat::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn submit(self: &Arc<Self>, work: Work) -> Result<JobGuard, ApiError> {
        let mut st = self.lock();
        if st.closed {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        if st.queue.len() >= self.max_queue {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::overloaded(format!(
                "the engine queue is full ({} waiting); retry later",
                st.queue.len()
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(AtomicBool::new(false));
        st.queue.push_back(Entry { id, cancel: cancel.clone(), work });
        self.metrics.queue_depth.store(st.queue.len() as i64, Ordering::Relaxed);
        drop(st);
        self.wake.notify_one();
        Ok(JobGuard { id, cancel, sched: self.clone() })
    }

    /// Queue a generation; its text, end and errors arrive on the returned receiver.
    pub fn generate(
        self: &Arc<Self>,
        job: GenJob,
        stops: Vec<String>,
    ) -> Result<(JobGuard, mpsc::UnboundedReceiver<GenEvent>), ApiError> {
        let (events, rx) = mpsc::unbounded_channel();
        let guard = self.submit(Work::Generate { job, stops, events, admitted: Instant::now() })?;
        Ok((guard, rx))
    }

    /// Queue an embedding job (batched with others of the same model).
    pub fn embed(
        self: &Arc<Self>,
        model: String,
        seqs: Vec<Vec<u32>>,
    ) -> Result<(JobGuard, Answer<Vectors>), ApiError> {
        let (reply, rx) = oneshot::channel();
        Ok((self.submit(Work::Embed { model, seqs, reply })?, rx))
    }

    /// Queue a rerank job (batched with others of the same model).
    pub fn rerank(
        self: &Arc<Self>,
        model: String,
        pairs: Vec<RerankPair>,
    ) -> Result<(JobGuard, Answer<Vec<f32>>), ApiError> {
        let (reply, rx) = oneshot::channel();
        Ok((self.submit(Work::Rerank { model, pairs, reply })?, rx))
    }

    /// Stop taking work: queued jobs are answered "shutting down", running ones go on (see
    /// [`Scheduler::cancel_running`]), and the engine thread exits when idle.
    pub fn close(&self) {
        let queued: Vec<Entry> = {
            let mut st = self.lock();
            st.closed = true;
            self.metrics.queue_depth.store(0, Ordering::Relaxed);
            st.queue.drain(..).collect()
        };
        for e in queued {
            e.work.fail(ApiError::unavailable("the server is shutting down"));
        }
        self.wake.notify_all();
    }

    /// Cancel the running jobs; their streams end with an error event.
    pub fn cancel_running(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for (_, c) in &self.lock().running {
            c.store(true, Ordering::SeqCst);
        }
    }

    /// Whether jobs are queued or running.
    pub fn busy(&self) -> bool {
        let st = self.lock();
        !st.queue.is_empty() || !st.running.is_empty()
    }

    /// Start the engine thread: `loader` loads the models there, `on_ready` receives the catalog, then
    /// the thread serves the queue until [`Scheduler::close`]. `on_fail` gets a load error.
    pub fn start(
        self: &Arc<Self>,
        loader: Loader,
        on_ready: Box<dyn FnOnce(Arc<dyn Catalog>) + Send>,
        on_fail: Box<dyn FnOnce(String) + Send>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let sched = self.clone();
        std::thread::Builder::new().name("zhinao-engine".into()).spawn(move || {
            let _exit = ExitMark(sched.clone());
            let mut on_ready = Some(on_ready);
            let mut served = false;
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                loader(&mut |catalog, backend| {
                    served = true;
                    if let Some(f) = on_ready.take() {
                        f(catalog);
                    }
                    sched.run(backend);
                })
            }));
            match r {
                Err(_) if served => on_fail("the engine thread panicked".into()),
                Err(_) => on_fail("the engine thread panicked while loading".into()),
                Ok(Err(e)) => on_fail(e),
                Ok(Ok(())) if !served => on_fail("the loader returned without serving".into()),
                Ok(Ok(())) => {}
            }
            // Whatever is still queued (a failed load) is answered.
            sched.close();
        })
    }

    /// The engine loop.
    fn run(&self, backend: &mut dyn Backend) {
        if backend.parallel() > 1 {
            return self.run_batched(backend);
        }
        while let Next::Work(batch) = self.next_batch(true, true) {
            self.run_entries(backend, &[], batch);
        }
    }

    /// Run one batch taken from the queue, its jobs counted as running beside the `live` batched
    /// generations. A panicking backend call drops its jobs' channels (their clients get an error)
    /// and the loop goes on, so nothing queued behind it hangs.
    fn run_entries(&self, backend: &mut dyn Backend, live: &[(u64, u64, Stream)], batch: Vec<Entry>) {
        self.set_running(live, &batch);
        self.heartbeat.busy(true);
        if std::panic::catch_unwind(AssertUnwindSafe(|| self.run_batch(backend, batch))).is_err() {
            eprintln!("zhinao serve: an engine job panicked; its request failed, the server goes on");
        }
        self.heartbeat.busy(false);
        self.set_running(live, &[]);
    }

    /// The oldest job, plus the queued jobs that batch with it; with `wait`, waits for one. A
    /// generation at the front is taken only when `generate_ok` (the batch has room), and the jobs
    /// behind it wait their turn. `Closed` once closed and empty.
    fn next_batch(&self, wait: bool, generate_ok: bool) -> Next {
        let mut st = self.lock();
        loop {
            // Jobs cancelled while queued were removed by their guards; skip any left by a race.
            while st.queue.front().is_some_and(|e| e.cancel.load(Ordering::SeqCst)) {
                st.queue.pop_front();
            }
            let blocked = st.queue.front().is_some_and(|e| matches!(e.work, Work::Generate { .. }) && !generate_ok);
            if blocked {
                return Next::Idle;
            }
            if let Some(first) = st.queue.pop_front() {
                let mut batch = vec![first];
                let mut tokens = batch[0].work.tokens();
                let mut i = 0;
                while i < st.queue.len() {
                    let e = &st.queue[i];
                    if batch[0].work.batches_with(&e.work) && tokens + e.work.tokens() <= self.batch_tokens {
                        tokens += e.work.tokens();
                        batch.extend(st.queue.remove(i));
                    } else {
                        i += 1;
                    }
                }
                self.metrics.queue_depth.store(st.queue.len() as i64, Ordering::Relaxed);
                return Next::Work(batch);
            }
            if st.closed {
                return Next::Closed;
            }
            if !wait {
                return Next::Idle;
            }
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn run_batch(&self, backend: &mut dyn Backend, batch: Vec<Entry>) {
        let live: Vec<Entry> = batch.into_iter().filter(|e| !e.cancel.load(Ordering::SeqCst)).collect();
        let Some(first) = live.first() else { return };
        match &first.work {
            Work::Generate { .. } => {
                for e in live {
                    self.run_generate(backend, e);
                }
            }
            Work::Embed { .. } | Work::Rerank { .. } => self.run_rows(backend, live),
        }
    }

    /// An embedding or rerank batch: its rows in backend calls of at most `batch_tokens` padded
    /// tokens (a longer row alone), each call made only for the rows of jobs not cancelled by then;
    /// then every job still waiting gets its results in order, or the error of a call it was in.
    fn run_rows(&self, backend: &mut dyn Backend, live: Vec<Entry>) {
        let rows: Vec<(usize, usize)> =
            live.iter().enumerate().flat_map(|(e, en)| (0..en.work.rows()).map(move |r| (e, r))).collect();
        let mut embeds: Vec<Vectors> = vec![Vec::new(); live.len()];
        let mut scores: Vec<Vec<f32>> = vec![Vec::new(); live.len()];
        let mut failed: Vec<Option<ApiError>> = vec![None; live.len()];
        let mut next = 0;
        while next < rows.len() {
            let mut call: Vec<(usize, usize)> = Vec::new();
            let mut cost = 0;
            while let Some(&(e, r)) = rows.get(next) {
                if live[e].cancel.load(Ordering::SeqCst) || failed[e].is_some() {
                    next += 1;
                    continue;
                }
                let c = padded_len(live[e].work.row_len(r));
                if !call.is_empty() && cost + c > self.batch_tokens {
                    break;
                }
                cost += c;
                call.push((e, r));
                next += 1;
            }
            if call.is_empty() {
                break;
            }
            self.heartbeat.beat();
            let tokens: usize = call.iter().map(|&(e, r)| live[e].work.row_len(r)).sum();
            let res = match &live[call[0].0].work {
                Work::Embed { model, .. } => {
                    let seqs: Vec<Vec<u32>> = call
                        .iter()
                        .map(|&(e, r)| match &live[e].work {
                            Work::Embed { seqs, .. } => seqs[r].clone(),
                            _ => Vec::new(),
                        })
                        .collect();
                    backend.embed(model, &seqs).map(|v| {
                        self.metrics.embedding_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
                        v.into_iter().map(RowOut::Vector).collect::<Vec<_>>()
                    })
                }
                Work::Rerank { model, .. } => {
                    let pairs: Vec<RerankPair> = call
                        .iter()
                        .filter_map(|&(e, r)| match &live[e].work {
                            Work::Rerank { pairs, .. } => Some(pairs[r].clone()),
                            _ => None,
                        })
                        .collect();
                    backend.rerank(model, &pairs).map(|v| {
                        self.metrics.rerank_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
                        v.into_iter().map(RowOut::Score).collect::<Vec<_>>()
                    })
                }
                Work::Generate { .. } => Ok(Vec::new()),
            };
            match res {
                Ok(out) if out.len() == call.len() => {
                    for (&(e, _), o) in call.iter().zip(out) {
                        match o {
                            RowOut::Vector(v) => embeds[e].push(v),
                            RowOut::Score(score) => scores[e].push(score),
                        }
                    }
                }
                Ok(out) => {
                    let err =
                        ApiError::internal(format!("the backend returned {} results for {}", out.len(), call.len()));
                    call.iter().for_each(|&(e, _)| failed[e] = Some(err.clone()));
                }
                Err(err) => {
                    self.heartbeat.note(&err);
                    let err = backend_error(err);
                    call.iter().for_each(|&(e, _)| failed[e] = Some(err.clone()));
                }
            }
        }
        for (i, (e, fail)) in live.into_iter().zip(failed).enumerate() {
            if e.cancel.load(Ordering::SeqCst) {
                continue; // its client is gone
            }
            match e.work {
                Work::Embed { reply, .. } => {
                    let _ = reply.send(fail.map_or(Ok(std::mem::take(&mut embeds[i])), Err));
                }
                Work::Rerank { reply, .. } => {
                    let _ = reply.send(fail.map_or(Ok(std::mem::take(&mut scores[i])), Err));
                }
                Work::Generate { .. } => {}
            }
        }
    }

    fn run_generate(&self, backend: &mut dyn Backend, e: Entry) {
        let Work::Generate { job, stops, events, admitted } = e.work else { return };
        let mut st = Stream::new(&self.metrics, &job, &stops, events, admitted, e.cancel.clone());
        let res = backend.generate(&job, &e.cancel, &mut |piece| {
            self.heartbeat.beat();
            st.piece(&self.metrics, &piece)
        });
        st.end(self, res);
    }

    /// The engine loop of a batching backend: generations join the running batch while it has room
    /// (in queue order), every loop runs one step for all of them, and embedding/rerank batches run
    /// between steps. A generation leaves at its end, a stop string, a cancel or a client gone.
    fn run_batched(&self, backend: &mut dyn Backend) {
        let mut live: Vec<(u64, u64, Stream)> = Vec::new(); // (backend id, job id, stream)
        loop {
            self.set_running(&live, &[]);
            let room = live.len() < backend.parallel();
            match self.next_batch(live.is_empty(), room) {
                Next::Closed if live.is_empty() => return,
                Next::Work(batch) if matches!(batch[0].work, Work::Generate { .. }) => {
                    for e in batch {
                        let Work::Generate { job, stops, events, admitted } = e.work else { continue };
                        let st = Stream::new(&self.metrics, &job, &stops, events, admitted, e.cancel.clone());
                        self.heartbeat.busy(true);
                        let started = backend.start(&job);
                        self.heartbeat.busy(false);
                        match started {
                            Ok(id) => live.push((id, e.id, st)),
                            Err(err) => st.end(self, Err(err)),
                        }
                    }
                }
                Next::Work(batch) => self.run_entries(backend, &live, batch),
                Next::Idle | Next::Closed => {}
            }
            self.set_running(&live, &[]);
            // Generations whose client left (or that were cancelled) leave before the step.
            for i in (0..live.len()).rev() {
                if live[i].2.stopped() {
                    let (id, _, st) = live.remove(i);
                    st.end(self, Ok(backend.stop(id)));
                }
            }
            if live.is_empty() {
                continue;
            }
            self.metrics.batch_steps.fetch_add(1, Ordering::Relaxed);
            self.heartbeat.busy(true);
            let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| backend.step()));
            self.heartbeat.busy(false);
            match stepped {
                Ok(Ok(events)) => {
                    for (id, ev) in events {
                        let Some(i) = live.iter().position(|l| l.0 == id) else { continue };
                        let end = match ev {
                            StepEvent::Piece(p) if live[i].2.piece(&self.metrics, &p) => continue,
                            StepEvent::Piece(_) => backend.stop(id),
                            StepEvent::End(end) => end,
                        };
                        live.remove(i).2.end(self, Ok(end));
                    }
                }
                failed => {
                    let err = match failed {
                        Ok(Err(e)) => e,
                        _ => BackendError::Internal("the engine panicked during a batched step".into()),
                    };
                    self.heartbeat.note(&err);
                    eprintln!("zhinao serve: a batched step failed ({err}); its {} generations failed", live.len());
                    for (id, _, st) in live.drain(..) {
                        backend.stop(id);
                        st.end(self, Err(err.clone()));
                    }
                }
            }
        }
    }

    /// The jobs running now (the batch's generations and an embedding/rerank batch), for the
    /// shutdown cancel and the `processing` metric.
    fn set_running(&self, live: &[(u64, u64, Stream)], batch: &[Entry]) {
        let mut st = self.lock();
        st.running = live.iter().map(|l| (l.1, l.2.cancel.clone())).collect();
        st.running.extend(batch.iter().map(|e| (e.id, e.cancel.clone())));
        self.metrics.processing.store(st.running.len() as i64, Ordering::Relaxed);
        if self.shutdown.load(Ordering::SeqCst) {
            st.running.iter().for_each(|(_, c)| c.store(true, Ordering::SeqCst));
        }
    }
}

/// One row's result in an embedding or rerank call.
enum RowOut {
    Vector(Vec<f32>),
    Score(f32),
}

enum Next {
    Work(Vec<Entry>),
    /// Nothing to take now (empty, or a generation waiting for room).
    Idle,
    Closed,
}

/// A generation streaming back to its handler: stop strings, timing metrics, the end event.
struct Stream {
    events: mpsc::UnboundedSender<GenEvent>,
    cancel: Arc<AtomicBool>,
    matcher: StopMatcher,
    admitted: Instant,
    last: Option<Instant>,
    hit_stop: bool,
    prompt_tokens: usize,
}

impl Stream {
    fn new(
        m: &Metrics,
        job: &GenJob,
        stops: &[String],
        events: mpsc::UnboundedSender<GenEvent>,
        admitted: Instant,
        cancel: Arc<AtomicBool>,
    ) -> Stream {
        m.prompt_tokens.fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
        Stream {
            events,
            cancel,
            matcher: StopMatcher::new(stops),
            admitted,
            last: None,
            hit_stop: false,
            prompt_tokens: job.prompt.len(),
        }
    }

    fn send(&self, text: String) {
        if !text.is_empty() {
            let _ = self.events.send(GenEvent::Delta(text));
        }
    }

    /// Whether the generation must end: cancelled, or its client gone.
    fn stopped(&self) -> bool {
        self.cancel.load(Ordering::SeqCst) || self.events.is_closed()
    }

    /// A new token's text; false when the generation must stop (a stop string, or [`Stream::stopped`]).
    fn piece(&mut self, m: &Metrics, piece: &Piece) -> bool {
        let now = Instant::now();
        match self.last {
            None => m.ttft.observe((now - self.admitted).as_secs_f64()),
            Some(t) => m.itl.observe((now - t).as_secs_f64()),
        }
        self.last = Some(now);
        m.generated_tokens.fetch_add(1, Ordering::Relaxed);
        match self.matcher.push(&piece.text) {
            Matched::Text(t) => self.send(t),
            Matched::Stop(t) => {
                self.send(t);
                self.hit_stop = true;
                return false;
            }
        }
        !self.stopped()
    }

    /// Send the end: the held-back text and `Done`, nothing more for a cancelled generation (an
    /// error at shutdown), or the backend's error.
    fn end(mut self, sched: &Scheduler, res: Result<GenEnd, BackendError>) {
        let end = match res {
            Ok(end) => end,
            Err(err) => {
                sched.heartbeat.note(&err);
                let _ = self.events.send(GenEvent::Error(backend_error(err)));
                return;
            }
        };
        let usage = Usage::new(self.prompt_tokens, end.completion_tokens).cached(end.cached_tokens);
        let finish = if self.hit_stop {
            Finish::Stop
        } else if self.stopped() {
            sched.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            if sched.shutdown.load(Ordering::SeqCst) {
                let _ = self.events.send(GenEvent::Error(ApiError::unavailable(
                    "the server shut down before this generation finished",
                )));
            }
            return;
        } else {
            match self.matcher.push(&end.tail) {
                Matched::Text(t) => {
                    self.send(t);
                    let rest = self.matcher.finish();
                    self.send(rest);
                }
                Matched::Stop(t) => {
                    self.send(t);
                    self.hit_stop = true;
                }
            }
            match end.reason {
                _ if self.hit_stop => Finish::Stop,
                EndReason::Eos => Finish::Stop,
                EndReason::Length | EndReason::Cancelled => Finish::Length,
            }
        };
        let _ = self.events.send(GenEvent::Done { finish, usage });
    }
}

fn backend_error(e: BackendError) -> ApiError {
    ApiError::from(e)
}
