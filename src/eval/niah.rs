//! Needle in a haystack: a grid of context lengths (tokens) × needle depths (0–100 %), in English
//! and Chinese, on any causal LM and KV type. Follows 360's value-retrieval variant
//! (`360k/niah/*.py`, research `long-context.md` §5.1): the needle is "The special magic {city}
//! number is: {7 digits}." (zh "{city}的神奇数字是：{n}。"), the question asks for it, the user message
//! is `haystack + needle … + "\n\n" + question`, sent in the reference chat format (make_context,
//! default system prompt), decoding is greedy, and a cell scores 1 when the answer contains the
//! number (exact substring).
//!
//! What differs from the reference, and why:
//! - The haystack is generated from a seed ([`Haystack::generate`]): sentences drawn from small
//!   built-in phrase pools, so nothing is downloaded or shipped (360's essays and `novel.json` are
//!   not redistributable).
//! - Lengths are exact: each sentence, the needle and the question are encoded on their own
//!   ([`SpecialMode::None`], as make_context encodes contents) and the haystack is cut at the token
//!   that makes the whole prompt — chat frame included — `length` tokens long. Encoding the
//!   content piecewise can differ from encoding it as one string only by BPE merges across a
//!   sentence boundary.
//! - The needle goes at the sentence boundary nearest to `depth %` of the haystack's tokens (360
//!   backs up to punctuation within 100 tokens), so it never splits a sentence.

use serde::Serialize;

use crate::engine::{generate, GenOptions, Lm};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{make_context, ContextBudget, Message, SpecialMode, Tokenizer, DEFAULT_SYSTEM};

/// The language of a haystack, needle and question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// `en`, `zh` or `both`.
    pub fn parse_list(s: &str) -> Result<Vec<Lang>> {
        match s.to_ascii_lowercase().as_str() {
            "en" => Ok(vec![Lang::En]),
            "zh" => Ok(vec![Lang::Zh]),
            "both" => Ok(vec![Lang::En, Lang::Zh]),
            _ => Err(Error::Input(format!("unknown language '{s}' (en, zh or both)"))),
        }
    }

    /// Salt mixed into the seed so the two languages draw different streams.
    fn salt(self) -> u64 {
        match self {
            Lang::En => 0x656e_0000_0000_0001,
            Lang::Zh => 0x7a68_0000_0000_0002,
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---- the haystack -------------------------------------------------------------------------------

// English sentences: "{subject} {verb phrase} {place} {time}." (16^4 = 65,536 sentences).
const EN_SUBJECTS: [&str; 16] = [
    "The old farmer",
    "A young painter",
    "The village baker",
    "My neighbour",
    "The ship's captain",
    "A quiet student",
    "The librarian",
    "Our gardener",
    "The night watchman",
    "A travelling musician",
    "The tailor",
    "An elderly teacher",
    "The river guide",
    "A curious child",
    "The shepherd",
    "The clockmaker",
];
const EN_VERBS: [&str; 16] = [
    "repaired the wooden fence",
    "counted the apples in the basket",
    "wrote a long letter to a friend",
    "swept the stone steps",
    "watched the clouds drift by",
    "planted a row of beans",
    "sang an old song",
    "sorted a box of buttons",
    "fed the hungry ducks",
    "mended a torn sail",
    "read a book about the stars",
    "carried water up the hill",
    "painted the door green",
    "tuned a battered violin",
    "baked bread for the market",
    "fixed a broken lantern",
];
const EN_PLACES: [&str; 16] = [
    "near the harbour",
    "beside the mill",
    "in the narrow lane",
    "under the chestnut tree",
    "at the edge of the forest",
    "on the village green",
    "behind the chapel",
    "by the frozen pond",
    "in the busy square",
    "on the hillside",
    "next to the old bridge",
    "inside the barn",
    "along the riverbank",
    "at the train station",
    "in the walled garden",
    "on the quiet beach",
];
const EN_TIMES: [&str; 16] = [
    "before sunrise",
    "after the rain",
    "on a windy afternoon",
    "late in the evening",
    "during the long winter",
    "every Sunday",
    "in early spring",
    "before the first snow",
    "at noon",
    "while the bells rang",
    "on market day",
    "after supper",
    "in the cool morning",
    "as the tide came in",
    "before the storm",
    "under a full moon",
];

// Chinese sentences: "{time}，{subject}{place}{verb}。" (16^4).
const ZH_TIMES: [&str; 16] = [
    "清晨",
    "雨后",
    "傍晚",
    "冬天里",
    "春天来时",
    "每个星期天",
    "中午",
    "深夜",
    "下雪以前",
    "赶集那天",
    "晚饭后",
    "起风的下午",
    "月圆之夜",
    "暴雨之前",
    "涨潮的时候",
    "钟声响起时",
];
const ZH_SUBJECTS: [&str; 16] = [
    "老农",
    "年轻的画家",
    "村里的面包师",
    "我的邻居",
    "船长",
    "安静的学生",
    "图书管理员",
    "园丁",
    "守夜人",
    "流浪乐手",
    "裁缝",
    "老教师",
    "河上的向导",
    "好奇的孩子",
    "牧羊人",
    "钟表匠",
];
const ZH_PLACES: [&str; 16] = [
    "在港口边",
    "在磨坊旁",
    "在小巷里",
    "在栗子树下",
    "在森林边上",
    "在村口的草地上",
    "在教堂后面",
    "在结冰的池塘边",
    "在热闹的广场上",
    "在山坡上",
    "在老桥旁",
    "在谷仓里",
    "在河岸上",
    "在火车站",
    "在花园里",
    "在安静的海滩上",
];
const ZH_VERBS: [&str; 16] = [
    "修好了木栅栏",
    "数了数篮子里的苹果",
    "给朋友写了一封长信",
    "扫干净了石阶",
    "看着云慢慢飘过",
    "种下了一排豆子",
    "唱起了一首老歌",
    "整理了一盒纽扣",
    "喂了饥饿的鸭子",
    "补好了破帆",
    "读了一本关于星星的书",
    "把水提上了山",
    "把门漆成了绿色",
    "调好了一把旧提琴",
    "为集市烤了面包",
    "修好了一盏坏灯笼",
];

const EN_CITIES: [&str; 20] = [
    "Paris", "London", "Tokyo", "Cairo", "Lima", "Oslo", "Madrid", "Berlin", "Sydney", "Toronto", "Nairobi", "Lisbon",
    "Vienna", "Dublin", "Seoul", "Mumbai", "Chicago", "Denver", "Prague", "Athens",
];
const ZH_CITIES: [&str; 20] = [
    "北京", "上海", "广州", "深圳", "杭州", "成都", "西安", "南京", "武汉", "重庆", "天津", "苏州", "长沙", "郑州",
    "青岛", "厦门", "昆明", "大连", "拉萨", "桂林",
];

fn pick<'a>(rng: &mut Rng, pool: &[&'a str]) -> &'a str {
    pool[rng.below(pool.len() as u32) as usize]
}

/// One filler sentence (English ones after the first start with a space).
fn sentence(rng: &mut Rng, lang: Lang, first: bool) -> String {
    match lang {
        Lang::En => {
            let s = format!(
                "{} {} {} {}.",
                pick(rng, &EN_SUBJECTS),
                pick(rng, &EN_VERBS),
                pick(rng, &EN_PLACES),
                pick(rng, &EN_TIMES)
            );
            if first {
                s
            } else {
                format!(" {s}")
            }
        }
        Lang::Zh => {
            format!(
                "{}，{}{}{}。",
                pick(rng, &ZH_TIMES),
                pick(rng, &ZH_SUBJECTS),
                pick(rng, &ZH_PLACES),
                pick(rng, &ZH_VERBS)
            )
        }
    }
}

/// Filler tokens generated from a seed, with the token index where each sentence starts.
#[derive(Clone, Debug)]
pub struct Haystack {
    pub lang: Lang,
    /// Token ids (each sentence encoded on its own, [`SpecialMode::None`]).
    pub ids: Vec<u32>,
    /// Token index of each sentence's first token, ascending, starting at 0.
    pub starts: Vec<usize>,
}

impl Haystack {
    /// At least `min_tokens` tokens of `lang` filler, the same for the same (`seed`, `lang`): a
    /// longer haystack of the same seed extends a shorter one.
    pub fn generate(tokenizer: &Tokenizer, lang: Lang, seed: u64, min_tokens: usize) -> Result<Haystack> {
        let mut rng = Rng::new(seed ^ lang.salt());
        let (mut ids, mut starts) = (Vec::with_capacity(min_tokens + 64), Vec::new());
        while ids.len() < min_tokens {
            starts.push(ids.len());
            ids.extend(tokenizer.encode(&sentence(&mut rng, lang, starts.len() == 1), SpecialMode::None)?);
        }
        Ok(Haystack { lang, ids, starts })
    }

    /// The sentence boundary (a sentence start, or `n` itself: the end of a haystack cut to `n`
    /// tokens) nearest to token `p` within the first `n` tokens.
    pub fn boundary_near(&self, p: usize, n: usize) -> usize {
        let mut best = n;
        for &b in self.starts.iter().take_while(|&&b| b <= n) {
            if b.abs_diff(p) < best.abs_diff(p) {
                best = b;
            }
        }
        best
    }

    /// The longest sentence, in tokens (how far a needle can land from its exact depth is half this).
    pub fn max_sentence(&self) -> usize {
        let mut ends = self.starts[1..].to_vec();
        ends.push(self.ids.len());
        self.starts.iter().zip(&ends).map(|(s, e)| e - s).max().unwrap_or(0)
    }
}

// ---- the needle, the prompt and the score -------------------------------------------------------

/// The fact hidden in the haystack and the question that asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Needle {
    /// The city the number belongs to.
    pub key: String,
    /// The 7-digit number the answer must contain.
    pub value: String,
    /// The sentence inserted into the haystack (with its surrounding newlines).
    pub text: String,
    /// What follows the haystack in the user message: "\n\n" + question + instruction.
    pub question: String,
}

impl Needle {
    /// A random city and 7-digit number from `rng`.
    pub fn random(rng: &mut Rng, lang: Lang) -> Needle {
        let value = (1_000_000 + rng.below(9_000_000)).to_string();
        match lang {
            Lang::En => {
                let key = pick(rng, &EN_CITIES).to_string();
                Needle {
                    text: format!("\nThe special magic {key} number is: {value}.\n"),
                    question: format!(
                        "\n\nWhat is the special magic {key} number? Don't give information outside the document or repeat your findings. Keep your response short and direct."
                    ),
                    key,
                    value,
                }
            }
            Lang::Zh => {
                let key = pick(rng, &ZH_CITIES).to_string();
                Needle {
                    text: format!("\n{key}的神奇数字是：{value}。\n"),
                    question: format!("\n\n{key}的神奇数字是多少？请简短回答。"),
                    key,
                    value,
                }
            }
        }
    }

    /// The needle of one grid cell: a function of (seed, lang, length, depth) only.
    pub fn for_cell(seed: u64, lang: Lang, length: usize, depth: f64) -> Needle {
        let mut rng = Rng::new(seed ^ lang.salt());
        let (a, b) = (rng.next_u64(), rng.next_u64());
        let mut rng = Rng::new(a ^ (length as u64).wrapping_mul(b | 1) ^ depth.to_bits().rotate_left(17));
        Needle::random(&mut rng, lang)
    }
}

/// A cell's prompt: exactly `length` tokens in the chat format.
#[derive(Clone, Debug)]
pub struct NiahPrompt {
    pub ids: Vec<u32>,
    /// Index in `ids` of the haystack's first token (after the chat frame's user header).
    pub haystack_start: usize,
    /// Haystack tokens (the needle excluded).
    pub haystack_len: usize,
    /// Index in `ids` of the needle's first token.
    pub needle_start: usize,
    pub needle_len: usize,
    /// Where the needle landed: haystack tokens before it, in % of the haystack.
    pub depth_actual: f64,
}

/// The prompt for `needle` at `depth` % of a haystack cut so that the whole prompt is `length`
/// tokens: make_context's frame (default system prompt) around the user message
/// `haystack[..p] + needle + haystack[p..n] + question`.
pub fn build_prompt(
    tokenizer: &Tokenizer,
    hay: &Haystack,
    needle: &Needle,
    length: usize,
    depth: f64,
) -> Result<NiahPrompt> {
    if !(0.0..=100.0).contains(&depth) {
        return Err(Error::Input(format!("depth {depth} is outside 0..=100 (%)")));
    }
    let budget = ContextBudget { model_max_length: length, max_new_tokens: 0 };
    let frame = make_context(tokenizer, &[Message::new("user", "")], DEFAULT_SYSTEM, budget)?;
    // The user turn's im_end is the frame's last one (the assistant header has none).
    let Some(split) = frame.iter().rposition(|&t| t == tokenizer.im_end()) else {
        return Err(Error::Input("the chat frame has no <|im_end|>".into()));
    };
    let needle_ids = tokenizer.encode(&needle.text, SpecialMode::None)?;
    let question_ids = tokenizer.encode(&needle.question, SpecialMode::None)?;
    let fixed = frame.len() + needle_ids.len() + question_ids.len();
    if length <= fixed {
        return Err(Error::Input(format!(
            "a length of {length} tokens leaves no room for a haystack in {}: the chat frame, needle and question take {fixed}",
            hay.lang
        )));
    }
    let n = length - fixed;
    if hay.ids.len() < n {
        return Err(Error::Input(format!("the haystack has {} tokens, {n} are needed", hay.ids.len())));
    }
    let p = hay.boundary_near((depth / 100.0 * n as f64).round() as usize, n);
    let mut ids = Vec::with_capacity(length);
    ids.extend(&frame[..split]);
    let haystack_start = ids.len();
    ids.extend(&hay.ids[..p]);
    let needle_start = ids.len();
    ids.extend(&needle_ids);
    ids.extend(&hay.ids[p..n]);
    ids.extend(&question_ids);
    ids.extend(&frame[split..]);
    debug_assert_eq!(ids.len(), length);
    Ok(NiahPrompt {
        ids,
        haystack_start,
        haystack_len: n,
        needle_start,
        needle_len: needle_ids.len(),
        depth_actual: 100.0 * p as f64 / n as f64,
    })
}

/// 1 when `answer` contains the needle's value (exact substring), else 0.
pub fn score(answer: &str, value: &str) -> f64 {
    if !value.is_empty() && answer.contains(value) {
        1.0
    } else {
        0.0
    }
}

// ---- the grid -----------------------------------------------------------------------------------

/// What to run.
#[derive(Clone, Debug)]
pub struct NiahOptions {
    /// Prompt lengths in tokens (chat frame, haystack, needle and question together).
    pub lengths: Vec<usize>,
    /// Needle depths in % of the haystack.
    pub depths: Vec<f64>,
    pub langs: Vec<Lang>,
    pub seed: u64,
    /// Tokens generated per answer (greedy).
    pub max_new: usize,
}

/// `count` depths evenly spaced over 0..=100 %.
pub fn default_depths(count: usize) -> Vec<f64> {
    let k = count.max(2) - 1;
    (0..=k).map(|i| (1000.0 * i as f64 / k as f64).round() / 10.0).collect()
}

/// 360's lengths, `round(linspace(1024, max, 10))`, for a context of `ctx` positions of which
/// `max_new` are kept for the answer (from `ctx / 10` when the context is small).
pub fn default_lengths(ctx: usize, max_new: usize) -> Vec<usize> {
    let hi = ctx.saturating_sub(max_new).max(1) as f64;
    let lo = 1024f64.min(hi / 10.0);
    let mut v: Vec<usize> = (0..10).map(|i| (lo + (hi - lo) * i as f64 / 9.0).round() as usize).collect();
    v.dedup();
    v
}

/// Refuses an empty grid, lengths of 0 or above `max_ctx` (the context the model was loaded
/// with), and depths outside 0..=100.
pub fn check_grid(lengths: &[usize], depths: &[f64], max_ctx: usize) -> Result<()> {
    if lengths.is_empty() || depths.is_empty() {
        return Err(Error::Input("give at least one length and one depth".into()));
    }
    if let Some(&l) = lengths.iter().find(|&&l| l == 0 || l > max_ctx) {
        return Err(Error::Input(format!(
            "a context length of {l} tokens is outside 1..={max_ctx}, the model's maximum context (lower --lengths)"
        )));
    }
    if let Some(d) = depths.iter().find(|d| !(0.0..=100.0).contains(*d)) {
        return Err(Error::Input(format!("depth {d} is outside 0..=100 (%)")));
    }
    Ok(())
}

/// One grid cell's result.
#[derive(Clone, Debug, Serialize)]
pub struct NiahCell {
    pub lang: Lang,
    /// Requested length (tokens) and depth (%).
    pub length: usize,
    pub depth: f64,
    /// The prompt's length in tokens (equals `length`).
    pub prompt_tokens: usize,
    /// Index of the needle's first token in the prompt, and its depth in % of the haystack.
    pub needle_token: usize,
    pub needle_depth: f64,
    pub key: String,
    pub value: String,
    /// The decoded answer (greedy, at most `max_new` tokens).
    pub answer: String,
    pub answer_tokens: usize,
    pub stop_reason: String,
    /// 1 if `answer` contains `value`, else 0.
    pub score: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LengthMean {
    pub length: usize,
    pub mean: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LangMean {
    pub lang: Lang,
    pub mean: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct NiahSummary {
    /// Mean score per length over every depth and language.
    pub per_length: Vec<LengthMean>,
    pub per_lang: Vec<LangMean>,
    pub overall: f64,
}

/// The whole run: what was asked, every cell, and the means.
#[derive(Clone, Debug, Serialize)]
pub struct NiahReport {
    pub model: String,
    pub kv_type: String,
    /// Positions the cache held in f16 at its start (quantized KV types).
    pub kv_sink: usize,
    pub seed: u64,
    pub max_new: usize,
    pub lengths: Vec<usize>,
    pub depths: Vec<f64>,
    pub langs: Vec<Lang>,
    pub cells: Vec<NiahCell>,
    pub summary: NiahSummary,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

impl NiahReport {
    /// A report over `cells` (the means are computed here).
    pub fn new(model: &str, kv: (&str, usize), opts: &NiahOptions, cells: Vec<NiahCell>) -> NiahReport {
        let per_length = opts
            .lengths
            .iter()
            .map(|&l| LengthMean { length: l, mean: mean(cells.iter().filter(|c| c.length == l).map(|c| c.score)) })
            .collect();
        let per_lang = opts
            .langs
            .iter()
            .map(|&g| LangMean { lang: g, mean: mean(cells.iter().filter(|c| c.lang == g).map(|c| c.score)) })
            .collect();
        let overall = mean(cells.iter().map(|c| c.score));
        NiahReport {
            model: model.to_string(),
            kv_type: kv.0.to_string(),
            kv_sink: kv.1,
            seed: opts.seed,
            max_new: opts.max_new,
            lengths: opts.lengths.clone(),
            depths: opts.depths.clone(),
            langs: opts.langs.clone(),
            cells,
            summary: NiahSummary { per_length, per_lang, overall },
        }
    }

    /// The cell at (lang, length, depth), if it was run.
    pub fn cell(&self, lang: Lang, length: usize, depth: f64) -> Option<&NiahCell> {
        self.cells.iter().find(|c| c.lang == lang && c.length == length && c.depth == depth)
    }
}

/// Run the grid on `lm` (its KV type, its context): one session, reset between cells; greedy
/// answers of at most `opts.max_new` tokens. Every prompt is built (and checked) before the first
/// cell runs. `on_cell` sees each result as it comes (progress).
pub fn run(lm: &Lm, model: &str, opts: &NiahOptions, on_cell: &mut dyn FnMut(&NiahCell)) -> Result<NiahReport> {
    check_grid(&opts.lengths, &opts.depths, lm.ctx_len)?;
    let tok = &lm.tokenizer;
    let longest = opts.lengths.iter().copied().max().unwrap_or(0);
    let mut grid = Vec::new();
    for &lang in &opts.langs {
        let hay = Haystack::generate(tok, lang, opts.seed, longest)?;
        for &length in &opts.lengths {
            for &depth in &opts.depths {
                // Built once to check, again when run (keeps one prompt in memory at a time).
                build_prompt(tok, &hay, &Needle::for_cell(opts.seed, lang, length, depth), length, depth)?;
            }
        }
        grid.push(hay);
    }
    let mut session = lm.session()?;
    let mut cells = Vec::new();
    for hay in &grid {
        for &length in &opts.lengths {
            for &depth in &opts.depths {
                let needle = Needle::for_cell(opts.seed, hay.lang, length, depth);
                let p = build_prompt(tok, hay, &needle, length, depth)?;
                session.reset();
                let mut sampler = Sampler::new(SamplingParams::greedy());
                let g = generate(
                    &mut session,
                    &p.ids,
                    &GenOptions { max_new: opts.max_new, stop_ids: lm.stop_ids(), cancel: None },
                    &mut sampler,
                    &mut |_| true,
                )?;
                let answer = tok.decode(&g.output_ids, true);
                let cell = NiahCell {
                    lang: hay.lang,
                    length,
                    depth,
                    prompt_tokens: p.ids.len(),
                    needle_token: p.needle_start,
                    needle_depth: p.depth_actual,
                    score: score(&answer, &needle.value),
                    key: needle.key,
                    value: needle.value,
                    answer,
                    answer_tokens: g.output_ids.len(),
                    stop_reason: g.stop_reason.as_str().to_string(),
                };
                on_cell(&cell);
                cells.push(cell);
            }
        }
    }
    Ok(NiahReport::new(model, (lm.kv.name(), lm.kv_sink), opts, cells))
}
