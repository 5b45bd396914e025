"""Deterministic tokenizer test corpus: hand-written tricky cases plus seeded generated text.

build_corpus(paraphrase_path) returns the same list of strings on every run and machine. The
corpus uses only code points assigned by Unicode 14 (PCRE2 10.42's version; the generated part
even only ones from Unicode 6 or earlier), so that every regex engine involved (PCRE2, Python
`regex`, Oniguruma in HF tokenizers) agrees on their properties: a disagreement on a newer
character would test Unicode versions, not our code.
"""

import random

SEED = 20240611

# Special-token strings of the default model (SmolLM2) and near misses.
SPECIAL_CASES = [
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text",
    "<|im_start|><|im_end|><|endoftext|>",
    "<|im_start|",
    "<|im_sta rt|> <im_start> |im_start|",
    "<<|im_start|>>",
    "a<|im_end|>b<|im_end|",
    " <|im_start|> spaced <|im_end|> ",
    "<repo_name>x<file_sep>y<filename>z<gh_stars>10",
    "<jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<|IM_START|> is not special",
    "<s></s><unk><|eot_id|><|begin_of_text|>",
]

HAND_WRITTEN = [
    "",
    " ",
    "  ",
    "\n",
    "\t",
    "Hello world!",
    "Hello, world! How are you today?",
    "hello world",
    " Hello world",
    "HELLO WORLD",
    "The quick brown fox jumps over the lazy dog.",
    # Contractions in every case the regexes distinguish.
    "don't won't can't I'm you're he's she'll we'd they've",
    "DON'T WON'T I'M YOU'RE HE'S SHE'LL WE'D THEY'VE",
    "Don'T I'm You'Re He'S She'Ll We'D They'Ve",
    "it's it'S IT's 'tis 're 've 'm 'll 'd 's 't",
    "'s's's 'S'S ''s '''",
    "rock'n'roll o'clock y'all ma'am",
    "l'homme c'est qu'il n'a pas",
    "'ſ 'ſt 'K 'ﬀ",
    "’s ’t ‘quoted’ “double”",
    # Numbers.
    "1",
    "12",
    "123",
    "1234",
    "12345678901234567890",
    "3.14159265358979323846264338327950288419716939937510",
    "1,000,000 and 1.000.000 and 1 000 000",
    "x=1+2*3-4/5^6",
    "in 2024, 99% of 1st-2nd 3rd 4th",
    "٠١٢٣٤٥٦٧٨٩ ०१२३४५६७८९ ０１２３４５６７８９",
    "² ³ ¹ ½ ¼ Ⅻ ⅷ ① ⑩",
    "a1b2c3 1a2b3c 0x1F 0b1010 1e-10",
    "    1234    ",
    "a  1",
    "a \t1",
    "phone: +1 (555) 123-4567",
    # Whitespace.
    "a\tb\tc",
    "a\nb\nc",
    "a\r\nb\r\nc",
    "line1\n\nline2\n\n\nline3",
    "   leading",
    "trailing   ",
    "multiple    spaces     here",
    "\t\t\tindented\n\t\tless\n\tleast",
    "nbsp\u00a0between\u00a0words",
    "ideographic\u3000space",
    "thin\u2009space and\u2002en\u2003em",
    "zero\u200bwidth\u200cnon\u200djoiner",
    "line\u2028sep\u2029para",
    "vt\x0bff\x0cfs\x1cgs\x1d",
    "nel\x85here",
    "mongolian\u180evowel separator",
    "\r\n\r\n",
    " \n \n ",
    "\n\n\n\n\n\n\n\n",
    "        \n        \n",
    "word \n\n word",
    "tab\t \t space",
    # Punctuation and symbols.
    "!!!???...,,,;;;:::",
    "Hello!!! Really??? Yes...",
    "--- === *** ### ~~~ ``` '''",
    "(parens) [brackets] {braces} <angles>",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    "C:\\Users\\name\\file.txt",
    "$100 €50 £30 ¥1000 ₹500 ₿0.1",
    "a+b=c; d-e=f; g*h=i; j/k=l",
    "«guillemets» „Anführungszeichen“ 「括弧」 『二重』",
    "…—–‐‑‒―",
    "©®™℠ §¶†‡•",
    "→←↑↓↔ ∀∃∅∇∈∉ ≤≥≠≈∞ ∑∏∫",
    # Code.
    "def f(x):\n    return x * 2\n",
    "int main() {\n  printf(\"hi\\n\");\n  return 0;\n}\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "if x == 1 and y != 2 or not z:\n\tpass",
    "const f = (a, b) => a ?? b;",
    "SELECT * FROM users WHERE id = 42;",
    "<div class=\"x\"><p>Hi</p></div>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))",
    "x_y_z __init__ camelCase PascalCase SCREAMING_CASE kebab-case",
    "    # comment\n    x = 1  # inline",
    "$ ls -la | grep foo > out.txt 2>&1",
    # Scripts.
    "Größe Maß Straße ÄÖÜ äöü",
    "café naïve résumé façade",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "שלום עולם",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "こんにちは世界",
    "カタカナとひらがな",
    "你好，世界！",
    "中文标点：“你好”（测试）。",
    "안녕하세요 세계",
    "สวัสดีชาวโลก",
    "გამარჯობა მსოფლიო",
    "Բարեւ աշխարհ",
    "ሰላም ለዓለም",
    "வணக்கம் உலகம்",
    "e\u0301 a\u0300 o\u0308 n\u0303",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    "ﬁ ﬂ ﬀ ﬃ",
    "ＦＵＬＬ　ＷＩＤＴＨ",
    # Emoji.
    "🎉",
    "Hello 👋 world 🌍!",
    "👨‍👩‍👧‍👦 family",
    "👍🏻👍🏼👍🏽👍🏾👍🏿",
    "🏳️‍🌈 🏴‍☠️",
    "🇺🇸🇬🇧🇯🇵",
    "❤️ ☺️ ✌️",
    "😀😃😄😁😆😅😂🤣",
    "🧑‍💻 👩‍🔬 👨‍🚀",
    "1️⃣ 2️⃣ #️⃣",
    "emoji🎉inside🎉words",
    # Mixed.
    "The price is $5.99 (about €5.50) — cheap!",
    "Dr. Smith's 3rd patient (age 45) said: \"I'm fine.\"",
    "Mix: English, русский, 中文, العربية, 日本語, 한국어, हिन्दी 🎉",
    "a" * 300,
    "ab" * 150,
    " " * 100 + "x",
    "\n" * 50 + "y",
    "9" * 200,
    "!" * 150,
    "🎉" * 60,
    "中" * 120,
]


def _chars(start: int, end: int) -> list[str]:
    return [chr(c) for c in range(start, end + 1)]


# (name, characters) of the scripts the generator draws words from; all assigned <= Unicode 6.
SCRIPTS = [
    ("latin", _chars(0x61, 0x7A) + _chars(0x41, 0x5A)),
    ("latin1", _chars(0xC0, 0xD6) + _chars(0xD8, 0xF6) + _chars(0xF8, 0xFF)),
    ("latin_ext", _chars(0x100, 0x17F)),
    ("greek", _chars(0x3B1, 0x3C9) + _chars(0x391, 0x3A1)),
    ("cyrillic", _chars(0x430, 0x44F) + _chars(0x410, 0x42F)),
    ("armenian", _chars(0x561, 0x586)),
    ("hebrew", _chars(0x5D0, 0x5EA)),
    ("arabic", _chars(0x627, 0x64A)),
    ("devanagari", _chars(0x905, 0x939) + _chars(0x93E, 0x94C)),
    ("bengali", _chars(0x985, 0x98C) + _chars(0x995, 0x9A8)),
    ("thai", _chars(0xE01, 0xE2E) + _chars(0xE30, 0xE39)),
    ("georgian", _chars(0x10D0, 0x10FA)),
    ("ethiopic", _chars(0x1200, 0x1248)),
    ("hangul", _chars(0xAC00, 0xD7A3)),
    ("hiragana", _chars(0x3041, 0x3096)),
    ("katakana", _chars(0x30A1, 0x30FA)),
    ("cjk", _chars(0x4E00, 0x9FA5)),
    ("tamil", _chars(0xB85, 0xB8A) + _chars(0xB95, 0xBB9)),
]
DIGITS = (_chars(0x30, 0x39) + _chars(0x660, 0x669) + _chars(0x966, 0x96F) + _chars(0xFF10, 0xFF19)
          + ["²", "³", "½", "Ⅻ", "①"])
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + list("¡¿«»—–…“”‘’·•°§¶†‡")
WHITESPACE = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000", "\u2009", "   \n"]
EMOJI_BASE = _chars(0x1F600, 0x1F64F) + _chars(0x1F300, 0x1F320) + _chars(0x1F680, 0x1F6C5)
SKIN_TONES = _chars(0x1F3FB, 0x1F3FF)
ZWJ_SEQUENCES = ["👨‍👩‍👧", "👩‍❤️‍👨", "🧑‍🤝‍🧑", "👁️‍🗨️", "🐻‍❄️", "🏳️‍⚧️", "👨🏽‍💻"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL", "'D",
                "'M", "'rE"]
CODE_SNIPPETS = ["x = 1", "foo(bar)", "a[i] = b[j];", "if (a && b) {", "}", "return None",
                 "def g(*args, **kw):", "// TODO", "/* c */", "i++", "x->y", "a::b", "=>", "!=",
                 "<<=", "0xFF", "\\n", "`code`"]
SPECIALS_IN_TEXT = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\n",
                    "<|im_end|>\n", "<file_sep>", "<|im_start", "im_end|>"]


def _word(rng: random.Random) -> str:
    _, chars = rng.choice(SCRIPTS)
    return "".join(rng.choice(chars) for _ in range(rng.randint(1, 9)))


def _fragment(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.40:
        word = _word(rng)
        return word.capitalize() if rng.random() < 0.3 else word
    if kind < 0.52:
        return "".join(rng.choice(DIGITS[:10]) for _ in range(rng.randint(1, 14)))
    if kind < 0.56:
        return "".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 5)))
    if kind < 0.66:
        return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 6)))
    if kind < 0.74:
        e = rng.choice(EMOJI_BASE)
        if rng.random() < 0.4:
            e += rng.choice(SKIN_TONES)
        return e
    if kind < 0.78:
        return rng.choice(ZWJ_SEQUENCES)
    if kind < 0.86:
        return _word(rng) + rng.choice(CONTRACTIONS)
    if kind < 0.94:
        return rng.choice(CODE_SNIPPETS)
    return rng.choice(SPECIALS_IN_TEXT)


def _generated(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 14)):
            parts.append(_fragment(rng))
            parts.append(rng.choice(WHITESPACE) if rng.random() < 0.75 else "")
        if rng.random() < 0.2:
            parts.insert(0, rng.choice(WHITESPACE))
        out.append("".join(parts))
    return out


def _whitespace_runs(rng: random.Random, n: int) -> list[str]:
    pool = [" ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\x0b", "\x0c", "\u2028"]
    out = []
    for _ in range(n):
        s = ""
        for _ in range(rng.randint(1, 6)):
            s += "".join(rng.choice(pool) for _ in range(rng.randint(1, 5)))
            s += rng.choice(["a", "1", "!", "é", "中", "🎉", "'s", ""])
        out.append(s)
    return out


def _paraphrase_sentences(path, every: int = 5, limit: int = 160) -> list[str]:
    sentences = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.read().split("\r\n")
    for i, line in enumerate(lines[1:]):
        if not line or i % every:
            continue
        cols = line.split("\t")
        sentences.extend([cols[3], cols[4]])
    return sentences[:limit]


def build_corpus(paraphrase_path) -> list[str]:
    rng = random.Random(SEED)
    corpus = list(HAND_WRITTEN) + list(SPECIAL_CASES)
    corpus += _paraphrase_sentences(paraphrase_path)
    corpus += _generated(rng, 320)
    corpus += _whitespace_runs(rng, 60)
    # A few long mixtures (several hundred tokens each) exercise long inputs end to end.
    for _ in range(4):
        corpus.append(" ".join(_generated(rng, 40)))
    return corpus
