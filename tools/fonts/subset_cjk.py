"""Build the app's bundled CJK fallback font: a subset of Noto Sans CJK SC (SIL OFL 1.1).

Kept: GB2312 rows 1-9 (CJK punctuation, full-width forms, kana, Greek, Cyrillic, box drawing) and
level 1 (the 3755 most common hanzi), plus every non-ASCII character written in the app's sources
, tests and sample conversation (its Chinese UI strings and test texts). The app installs it as a fallback *after* the
system fonts, so a machine without any CJK font still shows Chinese.

    pip install -r tools/fonts/requirements.txt
    python tools/fonts/subset_cjk.py /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc

(Debian: `apt-get download fonts-noto-cjk && dpkg -x fonts-noto-cjk_*.deb root` gives the .ttc without
installing it.) Writes assets/fonts/NotoSansSC-subset.otf.
"""

import pathlib
import sys

from fontTools import subset
from fontTools.ttLib import TTCollection

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "assets" / "fonts" / "NotoSansSC-subset.otf"


def gb2312_chars():
    chars = set()
    rows = list(range(0xA1, 0xAA)) + list(range(0xB0, 0xD8))  # symbols rows 1-9, level-1 hanzi rows 16-55
    for hi in rows:
        for lo in range(0xA1, 0xFF):
            try:
                chars.add(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:
                pass
    return chars


def source_chars():
    chars = set()
    for pattern in ["src/app/**/*.rs", "src/bin/zhinao-chat.rs", "tests/app/**/*.rs", "docs/app/*.json"]:
        for path in ROOT.glob(pattern):
            chars.update(c for c in path.read_text(encoding="utf-8") if ord(c) > 0x7F)
    return chars


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
    collection = TTCollection(src)
    index = next(i for i, f in enumerate(collection.fonts) if f["name"].getDebugName(4) == "Noto Sans CJK SC")
    font = collection.fonts[index]
    cmap = font.getBestCmap()
    wanted = gb2312_chars() | source_chars() | {" "}
    unicodes = sorted(ord(c) for c in wanted if ord(c) in cmap)
    options = subset.Options()
    options.layout_features = ["ccmp", "locl", "kern", "palt", "vert"]
    options.hinting = False
    options.desubroutinize = False
    options.name_IDs = ["*"]
    options.notdef_outline = True
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=unicodes)
    subsetter.subset(font)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    font.save(OUT)
    print(f"{OUT.relative_to(ROOT)}: {len(unicodes)} characters, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
