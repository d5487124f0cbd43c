//! Fonts: egui's Latin and monospace faces first; then, for any character they lack, the system's
//! fonts (CJK, color emoji, …; Simplified Chinese glyph variants preferred); then the bundled
//! fallbacks, so a machine without CJK or emoji fonts still shows Chinese and emoji: a subset of
//! Noto Sans CJK SC (`assets/fonts/NotoSansSC-subset.otf`, SIL OFL 1.1: GB2312 punctuation, kana
//! and level-1 hanzi plus the app's own strings), Noto Emoji (monochrome) and egui's emoji icons.

use std::sync::Arc;

use egui::epaint::text::{FallbackRequest, FontInsert, FontPriority, InsertFontFamily};
use egui::{FontData, FontDefinitions};

/// The bundled CJK fallback (about 1.6 MB; made by `tools/fonts/subset_cjk.py`).
pub static CJK_FALLBACK: &[u8] = include_bytes!("../../assets/fonts/NotoSansSC-subset.otf");

/// Emoji faces egui bundles (feature `monochrome_emoji_fonts`), moved behind the system fonts so a
/// system color emoji font wins when there is one.
const EMOJI_FONTS: [&str; 2] = ["NotoEmoji-Regular", "emoji-icon-font"];

/// Which fonts to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FontSource {
    /// System fonts, then the bundled fallbacks (the app).
    SystemThenBundled,
    /// Only egui's and the bundled fonts: the same pixels on every machine (snapshot tests), and
    /// proof that the fallbacks alone cover the text.
    BundledOnly,
}

/// A provider that offers one font for any character it has (epaint checks the glyph and asks
/// the next provider when it is missing).
fn fallback(name: &'static str, data: FontData) -> impl Fn(&FallbackRequest<'_>) -> Option<FontInsert> + Send + Sync {
    move |req: &FallbackRequest<'_>| {
        Some(FontInsert {
            name: name.to_string(),
            data: data.clone(),
            families: vec![InsertFontFamily { family: req.family.clone(), priority: FontPriority::Lowest }],
        })
    }
}

/// Install the fonts on `ctx` (before its first frame).
pub fn install(ctx: &egui::Context, source: FontSource) {
    let mut defs = FontDefinitions::default();
    let emoji: Vec<(&'static str, FontData)> =
        EMOJI_FONTS.iter().filter_map(|n| defs.font_data.remove(*n).map(|d| (*n, Arc::unwrap_or_clone(d)))).collect();
    for family in defs.families.values_mut() {
        family.retain(|n| !EMOJI_FONTS.contains(&n.as_str()));
    }
    ctx.set_fonts(defs);
    if source == FontSource::SystemThenBundled {
        // The model family is Chinese: prefer Simplified Chinese faces for Han characters whatever
        // the UI language or the system locale (CI runs with LANG=C).
        let system = egui_system_font_provider::SystemFontProvider::new().with_locale(Some("zh-Hans"));
        ctx.add_font_provider(Arc::new(system));
    }
    ctx.add_font_provider(Arc::new(fallback("zhinao-cjk-fallback", FontData::from_static(CJK_FALLBACK))));
    for (name, data) in emoji {
        ctx.add_font_provider(Arc::new(fallback(name, data)));
    }
}
