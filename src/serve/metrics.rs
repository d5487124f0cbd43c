//! Prometheus text exposition (`GET /metrics`), written by hand: request counts by route and status,
//! tokens in and out, the queue depth and running jobs, rejections and cancellations, and histograms of
//! time to first token and inter-token latency.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// A cumulative histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>, // per-bucket counts, sum, count
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, inner: Mutex::new((vec![0; bounds.len()], 0.0, 0)) }
    }
    pub fn observe(&self, v: f64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            g.0[i] += 1;
        }
        g.1 += v;
        g.2 += 1;
    }
    pub fn count(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).2
    }
    fn render(&self, name: &str, help: &str, out: &mut String) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut acc = 0;
        for (b, n) in self.bounds.iter().zip(&g.0) {
            acc += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", g.2, g.1, g.2);
    }
}

const TTFT_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const ITL_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Every metric the server keeps.
pub struct Metrics {
    /// (route, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub embedding_tokens: AtomicU64,
    pub rerank_tokens: AtomicU64,
    /// Engine jobs waiting in the queue.
    pub queue_depth: AtomicI64,
    /// Engine jobs running now.
    pub processing: AtomicI64,
    /// API requests admitted and not finished (streams included).
    pub in_flight: AtomicI64,
    pub rejected: AtomicU64,
    /// Jobs stopped because their client went away (or the server shut down).
    pub cancelled: AtomicU64,
    /// Batched steps run (`--parallel` > 1): each decodes every running generation at once.
    pub batch_steps: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            embedding_tokens: AtomicU64::new(0),
            rerank_tokens: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            processing: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            batch_steps: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            itl: Histogram::new(ITL_BOUNDS),
        }
    }
}

impl Metrics {
    /// Count one answered request; `route` is the route pattern (never the raw path).
    pub fn request(&self, route: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((route.to_string(), status)).or_insert(0) += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP zhinao_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE zhinao_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "zhinao_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        let counters = [
            ("zhinao_prompt_tokens_total", "Prompt tokens prefilled by generation requests.", &self.prompt_tokens),
            ("zhinao_generated_tokens_total", "Tokens generated.", &self.generated_tokens),
            ("zhinao_embedding_tokens_total", "Tokens embedded.", &self.embedding_tokens),
            ("zhinao_rerank_tokens_total", "Tokens scored by the reranker.", &self.rerank_tokens),
            (
                "zhinao_rejected_total",
                "Requests answered 429 because the queue or the server was full.",
                &self.rejected,
            ),
            ("zhinao_cancelled_total", "Engine jobs stopped early because the client went away.", &self.cancelled),
            (
                "zhinao_batch_steps_total",
                "Batched steps run (--parallel > 1), each for every running generation.",
                &self.batch_steps,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        }
        let gauges = [
            ("zhinao_queue_depth", "Engine jobs waiting in the queue.", &self.queue_depth),
            ("zhinao_requests_processing", "Engine jobs running.", &self.processing),
            ("zhinao_requests_in_flight", "API requests admitted and not yet finished.", &self.in_flight),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}", v.load(Ordering::Relaxed));
        }
        self.ttft.render(
            "zhinao_time_to_first_token_seconds",
            "From admission to the first generated token.",
            &mut out,
        );
        self.itl.render("zhinao_inter_token_latency_seconds", "Between consecutive generated tokens.", &mut out);
        out
    }
}
