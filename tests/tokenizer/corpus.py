"""Deterministic text generators for the tokenizer exactness test and the
tokenizer speed benchmark.

Everything comes from random.Random(seed): the same seed gives the same
strings on every machine. The strings aim at the places where a tokenizer
reimplementation tends to disagree with `tokenizers`: Unicode categories
(\\s, \\p{L}, \\p{N}), case-insensitive contractions, NFC, byte fallback,
added-token matching, whitespace runs and long inputs.
"""
import random

WORDS = """the of and to in is you that it he was for on are as with his they at be this
have from or one had by word but not what all were we when your can said there use an each
which she do how their if will up other about out many then them these so some her would make
like him into time has look two more write go see number no way could people my than first
water been call who oil its now find long down day did get come made may part over new sound
take only little work know place year live me back give most very after thing our just name
good sentence man think say great where help through much before line right too mean old any
same tell boy follow came want show also around form three small set put end does another well
large must big even such because turn here why ask went men read need land different home us
move try kind hand picture again change off play spell air away animal house point page letter
mother answer found study still learn should America world Hello OpenAI GPT tokenizer Llama Qwen
naïve café résumé coöperate façade jalapeño Zürich Straße""".split()

CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'rE",
                "'M", "'LL", "'Ll", "'lL", "'D", "'ſ", "'\u212a", "'ﬅ", "’s", "'x", "''s", "'"]

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|reserved_special_token_5|>", "<|python_tag|>",
            "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>",
            "<think>", "</think>", "<|fim_prefix|>", "<|vision_pad|>", "<s>", "</s>", "<unk>",
            "<|im_start", "im_end|>", "<<s>>", "<s><s>", "</s >", "< s>", "<|eot_id|><|eot_id|>",
            "<|begin_of_text|", "<0x0A>", "<0xFF>", "▁", "▁▁hello"]

SPACES = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "\u00a0", "\u1680", "\u2000", "\u2002",
          "\u2007", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
          "\u180e", "\u200b", "\u200c", "\u200d", "\ufeff", "\u0085", "\x0b", "\x0c", "\x1c",
          "\x1f", " \n ", "\t\t", "    ", "\n    ", " \u00a0 "]

# (first, last) code point ranges of scripts, letters and marks
SCRIPTS = [
    (0x0041, 0x007A), (0x00C0, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x0530, 0x058F),
    (0x0590, 0x05FF), (0x0600, 0x06FF), (0x0900, 0x097F), (0x0980, 0x09FF), (0x0B80, 0x0BFF),
    (0x0E00, 0x0E7F), (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x1200, 0x137F), (0x1E00, 0x1EFF),
    (0x3040, 0x309F), (0x30A0, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF),
    (0x20000, 0x2A6DF), (0x1D400, 0x1D7FF), (0x10400, 0x1044F), (0x0300, 0x036F),
    (0x1AB0, 0x1AFF), (0x20D0, 0x20FF), (0x2150, 0x218F), (0x2460, 0x24FF), (0x0660, 0x0669),
    (0x06F0, 0x06F9), (0x0966, 0x096F), (0xFF10, 0xFF19), (0x1F100, 0x1F10C),
]

EMOJI = ["😀", "😂", "🥲", "👍", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "❤", "🇫🇷", "🇯🇵",
         "1️⃣", "#️⃣", "🧑🏿‍🚀", "🐈‍⬛", "✌🏻", "☕", "🫠", "🦄", "🤷‍♀️", "👁️‍🗨️", "\U0001FAE8"]

NFC_CASES = ["e\u0301", "a\u0308", "A\u030a", "\u212b", "\u2126", "\u1100\u1161\u11a8",
             "o\u0302\u0301", "\u0041\u0323\u0302", "s\u0323\u0307", "\u00e9\u0301", "ﬁ", "Ⅻ",
             "\u0958", "\u2000", "\u1e9b\u0323", "\u0344", "\u0f73", "\u30ab\u3099", "\uac00\u11a8"]

CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}\n",
    "if __name__ == '__main__':\n    main()\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }\n",
    "const x = {a: 1, 'b': [2, 3]};\nconsole.log(x?.a ?? 0);\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n",
    "<div class=\"row\"><span>&nbsp;</span></div>\n",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }\n",
    "x = [i*i for i in range(10) if i % 2]\n",
    "    \n        \n\t\n",
    "$ ls -la | grep '^d' && echo \"done\" >> log.txt\n",
    "{\"key\": \"value\", \"n\": 1.5e-10, \"list\": [true, null]}\n",
    "a+=1;b-=2;c*=3;d/=4;e%=5;f<<=1;g>>=2;h&&=i||j\n",
    "// TODO: fix this!!!\n/* multi\n * line */\n",
]


def _word(rng):
    w = rng.choice(WORDS)
    r = rng.random()
    if r < 0.1:
        return w.upper()
    if r < 0.2:
        return w.capitalize()
    return w


def english(rng):
    n = rng.randint(1, 30)
    out = []
    for i in range(n):
        w = _word(rng)
        if rng.random() < 0.08:
            w += rng.choice(CONTRACTIONS)
        out.append(w)
        if rng.random() < 0.1:
            out[-1] += rng.choice([",", ".", "!", "?", ";", ":", "...", " -", "\"", ")"])
    s = " ".join(out)
    return s if rng.random() < 0.7 else " " + s


def script_text(rng):
    lo, hi = rng.choice(SCRIPTS)
    k = rng.randint(1, 12)
    chars = "".join(chr(rng.randint(lo, hi)) for _ in range(k))
    return chars if rng.random() < 0.5 else chars + " " + "".join(
        chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6)))


def digits(rng):
    n = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 33])
    s = "".join(rng.choice("0123456789") for _ in range(n))
    r = rng.random()
    if r < 0.2:
        s = s[: n // 2] + rng.choice([".", ",", " ", "_", "-", "e", "x"]) + s[n // 2:]
    elif r < 0.3:
        s = "".join(chr(0xFF10 + int(c)) for c in s) if rng.random() < 0.5 else \
            "".join(chr(0x0660 + int(c)) for c in s)
    return s


def spaces(rng):
    return "".join(rng.choice(SPACES) for _ in range(rng.randint(1, 6)))


def contraction(rng):
    return rng.choice(["", " ", "x", "I", "it", "we"]) + rng.choice(CONTRACTIONS) + \
        rng.choice(["", " ", "s", "ll", "x", "\n", "'", "123"])


def random_codepoints(rng):
    out = []
    for _ in range(rng.randint(1, 10)):
        r = rng.random()
        if r < 0.4:
            cp = rng.randint(1, 0xFFFF)
        elif r < 0.7:
            cp = rng.randint(0x10000, 0x10FFFF)
        else:
            cp = rng.randint(0x80, 0x7FF)
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0xFFFD
        out.append(chr(cp))
    return "".join(out)


def fragment(rng):
    r = rng.random()
    if r < 0.22:
        return english(rng)
    if r < 0.32:
        return rng.choice(CODE)
    if r < 0.45:
        return script_text(rng)
    if r < 0.52:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
    if r < 0.58:
        return rng.choice(NFC_CASES) + rng.choice(["", "x", " ", "\u0301"])
    if r < 0.66:
        return spaces(rng)
    if r < 0.74:
        return digits(rng)
    if r < 0.82:
        return contraction(rng)
    if r < 0.90:
        return rng.choice(SPECIALS)
    return random_codepoints(rng)


def one_string(rng):
    if rng.random() < 0.005:  # long input, 5-20 KB
        target = rng.randint(5000, 20000)
        parts, size = [], 0
        while size < target:
            f = fragment(rng) + rng.choice(["", " ", "\n", ". "])
            parts.append(f)
            size += len(f.encode())
        return "".join(parts)
    return "".join(fragment(rng) for _ in range(rng.randint(1, 6)))


def strings(n, seed):
    rng = random.Random(seed)
    return [one_string(rng) for _ in range(n)]


def bench_text(size_bytes, seed=7):
    """A deterministic mixed document set (~size_bytes of UTF-8) for the
    speed benchmark: mostly English prose and code, some other scripts."""
    rng = random.Random(seed)
    docs, total = [], 0
    while total < size_bytes:
        parts, size = [], 0
        target = rng.randint(500, 8000)
        while size < target:
            r = rng.random()
            if r < 0.6:
                f = english(rng) + rng.choice([". ", ".\n", "\n\n", ", "])
            elif r < 0.8:
                f = rng.choice(CODE)
            elif r < 0.9:
                f = script_text(rng) + " "
            elif r < 0.95:
                f = digits(rng) + " "
            else:
                f = rng.choice(EMOJI) + " "
            parts.append(f)
            size += len(f.encode())
        doc = "".join(parts)
        docs.append(doc)
        total += size
    return docs
