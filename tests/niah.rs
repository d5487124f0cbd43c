//! `zhinao::eval::niah` without a GPU: the seeded haystack, exact prompt lengths and needle
//! depths on the tiny checkpoint's tokenizer, the scorer, the grid checks, and the report's JSON
//! and SVG on a synthetic report. The CLI end to end is in tests/cli.rs.

use zhinao::eval::niah::*;
use zhinao::eval::niah_plot::{colour, svg, table};
use zhinao::tokenizer::{make_context, ContextBudget, Message, Tokenizer, DEFAULT_SYSTEM};

fn tok() -> Tokenizer {
    Tokenizer::from_model_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tiny-zhinao")).unwrap()
}

#[test]
fn haystack_is_deterministic_per_seed_and_extends() {
    let t = tok();
    for lang in [Lang::En, Lang::Zh] {
        let a = Haystack::generate(&t, lang, 7, 500).unwrap();
        let b = Haystack::generate(&t, lang, 7, 500).unwrap();
        assert_eq!((&a.ids, &a.starts), (&b.ids, &b.starts));
        assert!(a.ids.len() >= 500 && a.starts[0] == 0);
        let c = Haystack::generate(&t, lang, 8, 500).unwrap();
        assert_ne!(a.ids[..200], c.ids[..200], "another seed, another haystack");
        // A longer haystack of the same seed starts with the shorter one.
        let long = Haystack::generate(&t, lang, 7, 2000).unwrap();
        assert_eq!(long.ids[..a.ids.len()], a.ids[..]);
        // Not one sentence repeated: many distinct sentences.
        let sentences: std::collections::HashSet<&[u32]> = a.starts.windows(2).map(|w| &a.ids[w[0]..w[1]]).collect();
        assert!(sentences.len() + 1 >= a.starts.len() - 1, "{} of {}", sentences.len(), a.starts.len());
    }
    let en = Haystack::generate(&t, Lang::En, 1, 100).unwrap();
    assert!(t.decode(&en.ids, true).contains('.'));
    let zh = Haystack::generate(&t, Lang::Zh, 1, 100).unwrap();
    assert!(t.decode(&zh.ids, true).contains('。'));
}

#[test]
fn prompts_hit_the_exact_length_with_the_needle_at_its_depth() {
    let t = tok();
    let frame = make_context(
        &t,
        &[Message::new("user", "")],
        DEFAULT_SYSTEM,
        ContextBudget { model_max_length: 512, max_new_tokens: 0 },
    )
    .unwrap();
    let split = frame.iter().rposition(|&x| x == t.im_end()).unwrap();
    for lang in [Lang::En, Lang::Zh] {
        let hay = Haystack::generate(&t, lang, 12345, 4096).unwrap();
        let sentence = hay.max_sentence();
        for length in [128, 200, 511, 1000, 4096] {
            for depth in [0.0, 10.0, 25.0, 50.0, 77.7, 100.0] {
                let needle = Needle::for_cell(12345, lang, length, depth);
                let p = build_prompt(&t, &hay, &needle, length, depth).unwrap();
                assert_eq!(p.ids.len(), length, "{lang} {length} {depth}");
                // The chat frame around the user message is make_context's.
                assert_eq!(p.ids[..split], frame[..split]);
                assert_eq!(p.ids[length - (frame.len() - split)..], frame[split..]);
                assert_eq!(p.haystack_start, split);
                // The needle's tokens are where the prompt says, within one sentence of the depth.
                let needle_ids = t.encode(&needle.text, zhinao::tokenizer::SpecialMode::None).unwrap();
                assert_eq!(p.ids[p.needle_start..p.needle_start + p.needle_len], needle_ids[..]);
                let before = p.needle_start - p.haystack_start;
                let want = depth / 100.0 * p.haystack_len as f64;
                assert!(
                    (before as f64 - want).abs() <= sentence as f64,
                    "{lang} {length} {depth}: needle after {before} of {} tokens, sentences up to {sentence}",
                    p.haystack_len
                );
                assert!((p.depth_actual - 100.0 * before as f64 / p.haystack_len as f64).abs() < 1e-9);
                if depth == 0.0 {
                    assert_eq!(before, 0);
                }
                if depth == 100.0 {
                    assert_eq!(before, p.haystack_len, "at 100% the needle ends the haystack");
                }
                let text = t.decode(&p.ids, false);
                assert!(text.contains(needle.text.trim()) && text.contains(needle.question.trim()), "{text}");
                assert!(text.ends_with("<|im_start|>assistant\n"));
            }
        }
    }
}

#[test]
fn prompt_reads_as_make_context_of_its_text() {
    // The content is encoded piecewise (sentences, needle, question), so its text is what
    // make_context would frame; the ids differ from encoding that text whole only by BPE merges
    // across piece boundaries (".\n" is one piece in a whole encoding).
    let t = tok();
    for lang in [Lang::En, Lang::Zh] {
        let hay = Haystack::generate(&t, lang, 3, 600).unwrap();
        let needle = Needle::for_cell(3, lang, 600, 40.0);
        let p = build_prompt(&t, &hay, &needle, 600, 40.0).unwrap();
        let text = t.decode(&p.ids, false);
        let user = text.split("<|im_start|>user\n").nth(1).unwrap().split("<|im_end|>").next().unwrap();
        let whole = make_context(
            &t,
            &[Message::new("user", user)],
            DEFAULT_SYSTEM,
            ContextBudget { model_max_length: 4096, max_new_tokens: 0 },
        )
        .unwrap();
        assert_eq!(t.decode(&whole, false), text, "{lang}");
        let diff = whole.len().abs_diff(p.ids.len());
        assert!(diff <= 8, "{lang}: {} whole vs {} piecewise", whole.len(), p.ids.len());
    }
}

#[test]
fn too_short_lengths_and_bad_grids_are_clear_errors() {
    let t = tok();
    let hay = Haystack::generate(&t, Lang::Zh, 1, 100).unwrap();
    let e = build_prompt(&t, &hay, &Needle::for_cell(1, Lang::Zh, 64, 0.0), 64, 0.0).unwrap_err().to_string();
    assert!(e.contains("no room for a haystack") && e.contains("64"), "{e}");
    let e = check_grid(&[128, 1024], &[0.0], 512).unwrap_err().to_string();
    assert!(e.contains("1024") && e.contains("maximum context") && e.contains("512"), "{e}");
    assert!(check_grid(&[0], &[0.0], 512).is_err());
    assert!(check_grid(&[128], &[101.0], 512).unwrap_err().to_string().contains("101"));
    assert!(check_grid(&[], &[0.0], 512).is_err());
    assert!(check_grid(&[512], &[0.0, 100.0], 512).is_ok());
    assert!(Lang::parse_list("fr").is_err());
    assert_eq!(Lang::parse_list("both").unwrap(), vec![Lang::En, Lang::Zh]);
}

#[test]
fn scorer_and_needles() {
    assert_eq!(score("The special magic Paris number is 1234567.", "1234567"), 1.0);
    assert_eq!(score("1234567", "1234567"), 1.0);
    assert_eq!(score("123456", "1234567"), 0.0);
    assert_eq!(score("1 234 567", "1234567"), 0.0);
    assert_eq!(score("anything", ""), 0.0);
    let a = Needle::for_cell(5, Lang::En, 1024, 50.0);
    assert_eq!(a, Needle::for_cell(5, Lang::En, 1024, 50.0));
    assert_eq!(a.value.len(), 7);
    assert!(a.value.bytes().all(|b| b.is_ascii_digit()) && !a.value.starts_with('0'));
    assert!(a.text.contains(&a.value) && a.text.contains(&a.key) && a.question.contains(&a.key));
    let cells: std::collections::HashSet<String> = (0..20)
        .flat_map(|d| [128usize, 256].map(move |l| Needle::for_cell(5, Lang::Zh, l, d as f64 * 5.0).value))
        .collect();
    assert!(cells.len() >= 38, "needles differ between cells");
    assert_eq!(default_depths(11), vec![0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]);
    assert_eq!(default_depths(21)[1], 5.0);
    let l = default_lengths(360_000, 128);
    assert_eq!((l.len(), l[0], l[9]), (10, 1024, 359_872));
    assert!(default_lengths(512, 32).iter().all(|&x| x <= 480));
}

/// A report with every cell of a 2 × 3 × 2 grid, scores varying, answers with XML specials.
fn synthetic() -> NiahReport {
    let opts = NiahOptions {
        lengths: vec![128, 40_910],
        depths: vec![0.0, 50.0, 100.0],
        langs: vec![Lang::En, Lang::Zh],
        seed: 9,
        max_new: 8,
    };
    let mut cells = Vec::new();
    for &lang in &opts.langs {
        for &length in &opts.lengths {
            for (k, &depth) in opts.depths.iter().enumerate() {
                let n = Needle::for_cell(9, lang, length, depth);
                let hit = (k + (length > 1000) as usize + (lang == Lang::Zh) as usize).is_multiple_of(2);
                let answer = if hit { format!("<b>{}</b> & \"so\"\u{1}", n.value) } else { "no idea <".into() };
                cells.push(NiahCell {
                    lang,
                    length,
                    depth,
                    prompt_tokens: length,
                    needle_token: 14,
                    needle_depth: depth,
                    score: score(&answer, &n.value),
                    key: n.key,
                    value: n.value,
                    answer,
                    answer_tokens: 4,
                    stop_reason: "eos".into(),
                });
            }
        }
    }
    NiahReport::new("tiny <model> & co", ("q4", 16), &opts, cells)
}

/// Every tag opened is closed in order; self-closing tags stand alone; text has no bare '<'.
fn well_formed(s: &str) -> bool {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        let Some(j) = rest[i..].find('>') else { return false };
        let tag = &rest[i + 1..i + j];
        if tag.contains('<') {
            return false;
        }
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop().as_deref() != Some(name.trim()) {
                return false;
            }
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
        }
        rest = &rest[i + j + 1..];
    }
    stack.is_empty()
}

#[test]
fn svg_heatmap_is_well_formed_with_one_rect_per_cell() {
    let r = synthetic();
    let s = svg(&r);
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
    assert!(well_formed(&s), "{s}");
    assert_eq!(s.matches("<rect class=\"cell\"").count(), 12);
    assert!(
        s.contains("tiny &lt;model&gt; &amp; co") && s.contains("KV q4, first 16 positions f16"),
        "title names model, KV type and sink"
    );
    assert!(s.contains("Context length (tokens)") && s.contains("Depth (%)") && s.contains("40.9K"));
    assert!(!s.contains('\u{1}'), "control characters are not XML");
    assert!(s.contains(&format!("fill=\"{}\"", colour(1.0))) && s.contains(&format!("fill=\"{}\"", colour(0.0))));
    assert_eq!((colour(0.0).as_str(), colour(0.5).as_str(), colour(1.0).as_str()), ("#f0496e", "#ebb839", "#0cd79f"));
    assert!(well_formed("<a><b/></a>") && !well_formed("<a><b></a>") && !well_formed("<a>"));
}

#[test]
fn json_has_every_cell_and_the_means() {
    let r = synthetic();
    let v = serde_json::to_value(&r).unwrap();
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 12);
    for lang in ["en", "zh"] {
        for length in [128, 40_910] {
            for depth in [0.0, 50.0, 100.0] {
                let n = cells
                    .iter()
                    .filter(|c| c["lang"] == lang && c["length"] == length && c["depth"].as_f64() == Some(depth))
                    .count();
                assert_eq!(n, 1, "{lang} {length} {depth}");
            }
        }
    }
    for c in cells {
        for key in ["score", "answer", "prompt_tokens", "value", "needle_token", "needle_depth", "stop_reason"] {
            assert!(!c[key].is_null(), "{key}");
        }
    }
    // Hits at (k + long + zh) even: en 128 → 2 of 3, en 40910 → 1, zh 128 → 1, zh 40910 → 2.
    let s = &v["summary"];
    assert_eq!(s["per_length"][0]["length"], 128);
    assert!((s["per_length"][0]["mean"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert!((s["per_lang"][0]["mean"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert!((s["overall"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert_eq!(v["kv_type"], "q4");
    assert_eq!(v["kv_sink"], 16);
    let text = table(&r);
    assert!(text.contains("en depth") && text.contains("zh depth") && text.contains("overall 50.0%"), "{text}");
}
