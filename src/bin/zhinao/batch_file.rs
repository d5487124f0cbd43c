//! `zhinao generate --batch-file prompts.jsonl`: generate for many prompts at once with continuous
//! batching (`engine::batch`), writing one JSON line per prompt in input order — the offline
//! counterpart of the server for scoring pipelines.
//!
//! Each input line is an object with one of `prompt` (text; wrapped in the chat template with
//! `--chat`), `messages` (a chat: `[{"role", "content"}]`, always templated) or `prompt_ids` (token
//! ids), and optionally `id` (echoed back), `max_tokens`, `temperature`, `top_k`, `top_p` and `seed`
//! (the command's flags are the defaults). Blank lines are skipped. A line that cannot run (bad JSON,
//! a prompt longer than `--ctx`) gets an output line with `error`, and the others go on.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use zhinao::engine::{generate_batch, Batch, BatchJob, BatchOptions, KvFormat, Lm};
use zhinao::sampling::SamplingParams;
use zhinao::tokenizer::{Message, SpecialMode};

use super::lm::GenerateArgs;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: Option<Value>,
    prompt: Option<String>,
    messages: Option<Vec<Msg>>,
    prompt_ids: Option<Vec<u32>>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: Option<u64>,
}

#[derive(Deserialize)]
struct Msg {
    role: String,
    content: String,
}

/// One input line made ready: the job, or why it cannot run.
struct Parsed {
    id: Value,
    job: std::result::Result<BatchJob, String>,
}

fn parse(l: &Lm, a: &GenerateArgs, defaults: &SamplingParams, max_new: usize, text: &str) -> Parsed {
    let line: Line = match serde_json::from_str(text) {
        Ok(line) => line,
        Err(e) => return Parsed { id: Value::Null, job: Err(format!("bad JSON line: {e}")) },
    };
    let id = line.id.clone().unwrap_or(Value::Null);
    let max_new = line.max_tokens.unwrap_or(max_new);
    let prompt = match (&line.prompt, &line.messages, &line.prompt_ids) {
        (Some(p), None, None) if a.chat => {
            let mut msgs: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
            msgs.push(Message::new("user", p));
            l.chat_prompt(&msgs, max_new)
        }
        (Some(p), None, None) => l.tokenizer.encode(p, SpecialMode::All),
        (None, Some(m), None) => {
            let msgs: Vec<Message> = m.iter().map(|m| Message::new(&m.role, &m.content)).collect();
            l.chat_prompt(&msgs, max_new)
        }
        (None, None, Some(ids)) => Ok(ids.clone()),
        _ => return Parsed { id, job: Err("give exactly one of prompt, messages, prompt_ids".into()) },
    };
    let mut params = defaults.clone();
    params.temperature = line.temperature.unwrap_or(params.temperature);
    params.top_k = line.top_k.unwrap_or(params.top_k);
    params.top_p = line.top_p.unwrap_or(params.top_p);
    params.seed = line.seed.unwrap_or(params.seed);
    let job = prompt.map(|prompt| BatchJob { prompt, params, max_new }).map_err(|e| e.to_string());
    Parsed { id, job }
}

pub fn run(a: &GenerateArgs, l: &Lm, path: &Path, max_new: usize, defaults: &SamplingParams) -> Result<()> {
    if a.model.kv_type != KvFormat::F16 {
        bail!("--batch-file decodes with an f16 KV cache (one slot per sequence); drop --kv-type");
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut parsed = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {} line {}", path.display(), n + 1))?;
        if !line.trim().is_empty() {
            parsed.push(parse(l, a, defaults, max_new, &line));
        }
    }
    // Jobs that can run go to the batch; the rest answer with their error in place.
    let runnable: Vec<usize> = (0..parsed.len()).filter(|&i| parsed[i].job.is_ok()).collect();
    let jobs: Vec<BatchJob> = runnable.iter().filter_map(|&i| parsed[i].job.as_ref().ok().cloned()).collect();
    let opts = BatchOptions { parallel: a.parallel.max(1), ctx_len: l.ctx_len, chunk: a.model.chunk };
    let mut batch = Batch::new(l.model.clone(), opts)?;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    // Lines are written in input order as soon as every earlier one is done.
    let mut ready: BTreeMap<usize, Value> = BTreeMap::new();
    let mut next = 0;
    let mut flush = |ready: &mut BTreeMap<usize, Value>, next: &mut usize| -> Result<()> {
        while let Some(v) = ready.remove(next) {
            writeln!(out, "{v}")?;
            *next += 1;
        }
        out.flush()?;
        Ok(())
    };
    for (i, p) in parsed.iter().enumerate() {
        if let Err(e) = &p.job {
            ready.insert(i, json!({ "index": i, "id": p.id, "error": e }));
        }
    }
    flush(&mut ready, &mut next)?;
    let t0 = Instant::now();
    let mut generated = 0;
    let mut err = None;
    generate_batch(&mut batch, &jobs, l.stop_ids(), None, &mut |j, o| {
        let i = runnable[j];
        generated += o.output_ids.len();
        let v = match &o.error {
            Some(e) => json!({ "index": i, "id": parsed[i].id, "error": e }),
            None => json!({
                "index": i,
                "id": parsed[i].id,
                "text": l.tokenizer.decode(&o.output_ids, true),
                "output_ids": o.output_ids,
                "prompt_tokens": jobs[j].prompt.len(),
                "stop_reason": o.stop_reason.as_str(),
            }),
        };
        ready.insert(i, v);
        if let Err(e) = flush(&mut ready, &mut next) {
            err.get_or_insert(e);
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "[{} prompts, {} new tokens in {:.2} s: {:.1} tok/s; {} batched steps, --parallel {}]",
        parsed.len(),
        generated,
        secs,
        generated as f64 / secs.max(1e-9),
        batch.steps(),
        opts.parallel
    );
    Ok(())
}
