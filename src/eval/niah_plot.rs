//! The NIAH report as a text table and an SVG heatmap like the published plots (gkamradt's and
//! 360's `360k/plot/plot.py`): context length on x, depth on y (0 % at the top), one square per
//! cell coloured red → yellow → green by score (the same three colours), one panel per language.
//! Plain string building: no plotting dependency.

use std::fmt::Write as _;

use super::niah::{Lang, NiahReport};

/// 360's colour map: score 0 → red, 0.5 → yellow, 1 → green.
const STOPS: [(u8, u8, u8); 3] = [(0xF0, 0x49, 0x6E), (0xEB, 0xB8, 0x39), (0x0C, 0xD7, 0x9F)];

/// The fill for `score` in [0, 1] (clamped), as `#rrggbb`.
pub fn colour(score: f64) -> String {
    let s = if score.is_finite() { score.clamp(0.0, 1.0) } else { 0.0 };
    let (a, b, t) = if s <= 0.5 { (STOPS[0], STOPS[1], s * 2.0) } else { (STOPS[1], STOPS[2], s * 2.0 - 1.0) };
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * t).round() as u8;
    format!("#{:02x}{:02x}{:02x}", mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// `text` safe inside SVG/XML text and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 (tabs and newlines are).
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A length as a tick label: 512, 4K, 40.9K.
fn length_label(l: usize) -> String {
    if l < 1000 {
        l.to_string()
    } else if l.is_multiple_of(1000) || l >= 100_000 {
        format!("{}K", (l as f64 / 1000.0).round())
    } else {
        format!("{:.1}K", l as f64 / 1000.0)
    }
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "English",
        Lang::Zh => "Chinese",
    }
}

/// The heatmap: one `<rect class="cell">` per grid cell (with a `<title>` tooltip holding the
/// answer), axis labels, a title naming the model and KV type, and a colour bar.
pub fn svg(r: &NiahReport) -> String {
    let (nl, nd) = (r.lengths.len().max(1), r.depths.len().max(1));
    let cw = (640 / nl).clamp(28, 120) as f64;
    let ch = (360 / nd).clamp(12, 40) as f64;
    let (left, top, gap) = (80.0, 70.0, 80.0);
    let (pw, ph) = (cw * nl as f64, ch * nd as f64);
    let width = (left + pw + 110.0).max(520.0);
    let height = top + r.langs.len().max(1) as f64 * (ph + gap) - gap + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect class="background" width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="24" font-size="16" text-anchor="middle">Needle in a haystack: {} (KV {})</text>"#,
        width / 2.0,
        escape(&r.model),
        escape(&kv_name(r))
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="44" text-anchor="middle">overall {:.1}% over {} cells, seed {}, greedy, {} new tokens</text>"#,
        width / 2.0,
        100.0 * r.summary.overall,
        r.cells.len(),
        r.seed,
        r.max_new
    );
    for (i, &lang) in r.langs.iter().enumerate() {
        let y0 = top + i as f64 * (ph + gap);
        let lang_mean = r.summary.per_lang.iter().find(|m| m.lang == lang).map_or(0.0, |m| m.mean);
        let _ = writeln!(
            s,
            r#"<text x="{left:.1}" y="{:.1}" font-weight="bold">{} ({:.1}%)</text>"#,
            y0 - 6.0,
            lang_name(lang),
            100.0 * lang_mean
        );
        for (j, &length) in r.lengths.iter().enumerate() {
            for (k, &depth) in r.depths.iter().enumerate() {
                let (x, y) = (left + j as f64 * cw, y0 + k as f64 * ch);
                let Some(c) = r.cell(lang, length, depth) else { continue };
                let _ = writeln!(
                    s,
                    r#"<rect class="cell" x="{x:.1}" y="{y:.1}" width="{cw:.1}" height="{ch:.1}" fill="{}" stroke="white" stroke-width="1"><title>{} tokens, depth {}%: score {} (answer: {})</title></rect>"#,
                    colour(c.score),
                    length,
                    depth,
                    c.score,
                    escape(&c.answer)
                );
            }
        }
        // Depth ticks (left) and the y axis title.
        for (k, &depth) in r.depths.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" dominant-baseline="middle">{depth}</text>"#,
                left - 6.0,
                y0 + (k as f64 + 0.5) * ch
            );
        }
        let (yx, yy) = (left - 50.0, y0 + ph / 2.0);
        let _ = writeln!(
            s,
            r#"<text x="{yx:.1}" y="{yy:.1}" text-anchor="middle" transform="rotate(-90 {yx:.1} {yy:.1})">Depth (%)</text>"#
        );
        // Length ticks (below) and the x axis title.
        for (j, &length) in r.lengths.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                left + (j as f64 + 0.5) * cw,
                y0 + ph + 16.0,
                length_label(length)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">Context length (tokens)</text>"#,
            left + pw / 2.0,
            y0 + ph + 36.0
        );
    }
    // Colour bar: green (1) at the top, red (0) at the bottom.
    let (bx, by, bh) = (left + pw + 30.0, top, ph.max(60.0));
    let _ = writeln!(
        s,
        r#"<defs><linearGradient id="scale" x1="0" y1="1" x2="0" y2="0"><stop offset="0" stop-color="{}"/><stop offset="0.5" stop-color="{}"/><stop offset="1" stop-color="{}"/></linearGradient></defs>"#,
        colour(0.0),
        colour(0.5),
        colour(1.0)
    );
    let _ =
        writeln!(s, r#"<rect class="legend" x="{bx:.1}" y="{by:.1}" width="16" height="{bh:.1}" fill="url(#scale)"/>"#);
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" dominant-baseline="middle">1</text>"#, bx + 22.0, by + 4.0);
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" dominant-baseline="middle">0</text>"#, bx + 22.0, by + bh - 4.0);
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">score</text>"#, bx - 4.0, by + bh + 16.0);
    s.push_str("</svg>\n");
    s
}

/// The scores as text: per language, depths down and lengths across (100 = found, 0 = not), then
/// the mean per length and overall.
pub fn table(r: &NiahReport) -> String {
    let mut s = String::new();
    let w = r.lengths.iter().map(|&l| length_label(l).len()).max().unwrap_or(3).max(5) + 2;
    for &lang in &r.langs {
        let _ = write!(s, "{:<12}", format!("{} depth", lang));
        for &l in &r.lengths {
            let _ = write!(s, "{:>w$}", length_label(l));
        }
        s.push('\n');
        for &d in &r.depths {
            let _ = write!(s, "{:<12}", format!("{d}%"));
            for &l in &r.lengths {
                let v = r.cell(lang, l, d).map_or("-".to_string(), |c| format!("{:.0}", 100.0 * c.score));
                let _ = write!(s, "{v:>w$}");
            }
            s.push('\n');
        }
        let _ = write!(s, "{:<12}", "mean");
        for &l in &r.lengths {
            let cells: Vec<f64> =
                r.cells.iter().filter(|c| c.lang == lang && c.length == l).map(|c| 100.0 * c.score).collect();
            let m = cells.iter().sum::<f64>() / cells.len().max(1) as f64;
            let _ = write!(s, "{m:>w$.1}");
        }
        s.push_str("\n\n");
    }
    let _ = writeln!(
        s,
        "overall {:.1}% ({} cells; model {}, KV {})",
        100.0 * r.summary.overall,
        r.cells.len(),
        r.model,
        kv_name(r)
    );
    s
}

/// The KV type as titles show it: "q4, first 16 positions f16".
fn kv_name(r: &NiahReport) -> String {
    if r.kv_sink > 0 {
        format!("{}, first {} positions f16", r.kv_type, r.kv_sink)
    } else {
        r.kv_type.clone()
    }
}
