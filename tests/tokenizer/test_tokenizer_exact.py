"""Token-for-token exactness of the C tokenizer (through tools/evaltok)
against the Python `tokenizers` library, on the real tokenizers of shared/.

For each tokenizer: >= 20,000 generated strings (fixed seed, see corpus.py)
are encoded with and without special tokens, the ids must be identical;
decode must equal the reference decode for those ids and for random id
sequences (invalid UTF-8 included), and decode(encode(s)) == s wherever the
reference round-trips. evaltok runs once per mode with all the strings.
Separately, ten ~200 KB texts that are each one pre-tokenized piece (the
long-word merge path) must encode identically too, and every id's raw
bytes (evaltok --bytes, OpenAI's logprobs `bytes`) must be those a
reference built on `tokenizers` gives.
"""
import functools
import json
import os
import pathlib
import random
import re
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import corpus  # noqa: E402
from byte_alphabet import byte_to_char  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")

N_STRINGS = int(os.environ.get("TOK_EXACT_N", "20000"))
NAMES = ["llama3_1", "llama2", "qwen3"]


def evaltok(build, tokdir, args, values):
    exe = pathlib.Path(build) / "tools" / "evaltok"
    if not exe.exists():
        pytest.fail(f"{exe} not built")
    data = "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in values).encode()
    proc = subprocess.run([str(exe), "--tokenizer", str(tokdir), *args], input=data,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    out = proc.stdout.decode().split("\n")
    assert out[-1] == ""
    out = out[:-1]
    assert len(out) == len(values), (len(out), len(values))
    return [json.loads(line) for line in out]


def report(what, mismatches, total):
    lines = [f"{what}: {len(mismatches)} mismatches out of {total}"]
    for m in mismatches[:5]:
        lines.append("  " + repr(m)[:600])
    return "\n".join(lines)


def random_id_seqs(rng, vocab_size, byte_ids, n):
    seqs = []
    for _ in range(n):
        seq = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.5:
                seq.append(rng.randrange(vocab_size))
            else:
                seq.extend(rng.choice(byte_ids) for _ in range(rng.randint(1, 4)))
        seqs.append(seq)
    return seqs


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_exact(name, shared, build):
    tokdir = shared / "tokenizers" / name
    ref = tokenizers.Tokenizer.from_file(str(tokdir / "tokenizer.json"))
    texts = corpus.strings(N_STRINGS, seed=20240 + NAMES.index(name))

    failures = []
    ref_special = [e.ids for e in ref.encode_batch(texts, add_special_tokens=True)]
    ref_plain = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    ours_special = evaltok(build, tokdir, [], texts)
    ours_plain = evaltok(build, tokdir, ["--no-special"], texts)
    for label, ours, theirs in (("encode", ours_special, ref_special),
                                ("encode --no-special", ours_plain, ref_plain)):
        bad = [(t, o, r) for t, o, r in zip(texts, ours, theirs) if o != r]
        if bad:
            failures.append(report(f"{name} {label}", bad, len(texts)))

    # decode: the reference ids of both modes, plus random sequences
    vocab = ref.get_vocab_size(with_added_tokens=True)
    byte_ids = [i for i in range(vocab) if (tok := ref.id_to_token(i)) is not None and
                (len(tok) == 6 and tok.startswith("<0x") or len(tok) == 1)][:512]
    rng = random.Random(99)
    seqs = ref_plain + ref_special[: len(ref_special) // 4] + \
        random_id_seqs(rng, vocab, byte_ids, 3000)
    ref_dec = ref.decode_batch(seqs, skip_special_tokens=False)
    ours_dec = evaltok(build, tokdir, ["--decode"], seqs)
    bad = [(s, o, r) for s, o, r in zip(seqs, ours_dec, ref_dec) if o != r]
    if bad:
        failures.append(report(f"{name} decode", bad, len(seqs)))
    sub = seqs[len(ref_plain):]
    ref_skip = ref.decode_batch(sub, skip_special_tokens=True)
    ours_skip = evaltok(build, tokdir, ["--decode", "--skip-special"], sub)
    bad = [(s, o, r) for s, o, r in zip(sub, ours_skip, ref_skip) if o != r]
    if bad:
        failures.append(report(f"{name} decode --skip-special", bad, len(sub)))

    # round trip wherever the reference round-trips
    trips = [i for i, t in enumerate(texts) if ref_dec[i] == t]
    bad = [(texts[i], ours_dec[i]) for i in trips if ours_dec[i] != texts[i]]
    if bad:
        failures.append(report(f"{name} round trip", bad, len(trips)))
    print(f"{name}: {len(texts)} strings, {sum(map(len, ref_plain))} tokens, "
          f"{len(trips)} reference round trips, {len(seqs)} decoded sequences")
    assert len(trips) > len(texts) // 2, "the reference should round-trip most strings"
    assert not failures, "\n".join(failures)


@functools.lru_cache(maxsize=1)
def long_pieces(n=200_000):
    """Texts of ~n characters that pre-tokenize into one huge piece (or a few),
    so the BPE merge loop of both sides sees words of ~10^5 symbols: the
    heap path, its tie-breaking between equal ranks, and byte fallback."""
    lower = "abcdefghijklmnopqrstuvwxyz"
    accented = lower + "àáâäåæçèéêëìíîïñòóôöøùúûüýÿßœ"
    b64 = lower + lower.upper() + "0123456789+/"
    rng = random.Random(31)
    return {
        "random letters": "".join(rng.choice(lower) for _ in range(n)),
        "one letter repeated": "a" * n,
        "accented letters": "".join(rng.choice(accented) for _ in range(n)),
        "one CJK char repeated": "中" * (n // 3),
        "random CJK": "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(n // 3)),
        "emoji run": "".join(rng.choice(corpus.EMOJI) for _ in range(n // 8)),
        "digit run": "".join(rng.choice("0123456789") for _ in range(n)),
        "base64": "".join(rng.choice(b64) for _ in range(n)),
        "space run": " " * n + "x",
        "word repeated": "abracadabra" * (n // 11),
    }


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_long_pieces(name, shared, build):
    """One ~200 KB piece with no pre-token boundary, token for token against
    `tokenizers` (a regression test for the long-word merge path)."""
    tokdir = shared / "tokenizers" / name
    ref = tokenizers.Tokenizer.from_file(str(tokdir / "tokenizer.json"))
    cases = long_pieces()
    texts = list(cases.values())
    theirs = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    ours = evaltok(build, tokdir, ["--no-special"], texts)
    bad = []
    for label, o, r in zip(cases, ours, theirs):
        if o != r:
            at = next((i for i, (a, b) in enumerate(zip(o, r)) if a != b), min(len(o), len(r)))
            bad.append((label, f"{len(o)} vs {len(r)} ids, first difference at {at}",
                        o[at:at + 8], r[at:at + 8]))
    assert not bad, report(f"{name} long pieces", bad, len(texts))


def decoder_steps(tokdir):
    """tokenizer.json's decoder chain as a list of steps."""
    d = json.loads((tokdir / "tokenizer.json").read_text()).get("decoder") or {}
    if not d:
        return []
    return d["decoders"] if d["type"] == "Sequence" else [d]


def piece_bytes(piece, steps, byte_of_char):
    """The raw bytes of one vocabulary piece: the decoder's steps on it
    alone. ByteLevel maps the piece back (or keeps it, when a character is
    not in the alphabet, as the decoder does), Replace replaces, ByteFallback
    turns <0xNN> into its byte; Fuse and Strip join and trim whole texts."""
    b = piece.encode()
    for s in steps:
        if s["type"] == "ByteLevel":
            text = b.decode()
            if all(c in byte_of_char for c in text):
                b = bytes(byte_of_char[c] for c in text)
        elif s["type"] == "Replace":
            b = b.replace(s["pattern"]["String"].encode(), s["content"].encode())
        elif s["type"] == "ByteFallback":
            m = re.fullmatch(rb"<0x([0-9A-Fa-f]{2})>", b)
            if m:
                b = bytes([int(m.group(1), 16)])
    return b


def strip_text(text, steps):
    """What the decoder's Strip steps take off a text's ends."""
    for s in steps:
        if s["type"] == "Strip":
            c = s["content"]
            for _ in range(s["start"]):
                text = text[len(c):] if text.startswith(c) else text
            for _ in range(s["stop"]):
                text = text[:-len(c)] if c and text.endswith(c) else text
    return text


@pytest.mark.parametrize("name", NAMES)
def test_token_bytes(name, shared, build):
    """evaltok --bytes (tok_id_to_bytes) for every id: byte-level pieces
    mapped back through the GPT-2 alphabet, <0xNN> as its byte, U+2581 as a
    space, added tokens as their content. The reference is checked against
    `tokenizers` first: per id, its decoder on the piece alone is the
    reference bytes decoded with U+FFFD for partial characters (then
    stripped); and the bytes of encoded corpus texts join into their decode."""
    tokdir = shared / "tokenizers" / name
    ref = tokenizers.Tokenizer.from_file(str(tokdir / "tokenizer.json"))
    steps = decoder_steps(tokdir)
    alphabet = byte_to_char()
    assert sorted(alphabet.values()) == sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    byte_of_char = {c: b for b, c in alphabet.items()}
    added = {i: t.content for i, t in ref.get_added_tokens_decoder().items()}
    vocab = ref.get_vocab_size(with_added_tokens=True)
    want = {}
    for i in range(vocab):
        piece = ref.id_to_token(i)
        if piece is None:
            continue
        if i in added:
            want[i] = added[i].encode()
            assert ref.decode([i], skip_special_tokens=False) == added[i], i
            continue
        want[i] = piece_bytes(piece, steps, byte_of_char)
        hf = ref.decoder.decode([piece]) if ref.decoder else piece
        assert hf == strip_text(want[i].decode("utf-8", "replace"), steps), (i, piece, hf)
    partial = 0
    for i, b in want.items():
        try:
            b.decode()
        except UnicodeDecodeError:
            partial += 1
    assert partial >= 128, f"{name}: only {partial} ids are part of a character"
    for e in ref.encode_batch(corpus.strings(2000, seed=77), add_special_tokens=False):
        joined = b"".join(want[i] for i in e.ids).decode()
        assert strip_text(joined, steps) == ref.decode(e.ids, skip_special_tokens=False), e.ids

    ids = list(range(vocab))
    ours = evaltok(build, tokdir, ["--bytes"], ids)
    bad = [(i, ref.id_to_token(i), o, list(want[i]) if i in want else None)
           for i, o in zip(ids, ours)
           if (i in want and o != list(want[i])) or (i not in want and "error" not in o)]
    assert not bad, report(f"{name} token bytes", bad, len(ids))
    print(f"{name}: {len(want)} ids, {partial} of them part of a character")


def test_evaltok_errors(shared, build):
    tokdir = shared / "tokenizers" / "llama3_1"
    exe = pathlib.Path(build) / "tools" / "evaltok"
    lines = b'"ok"\n{bad json\n[1,2]\n"\\ud800"\n\n"fine"\n'
    proc = subprocess.run([str(exe), "--tokenizer", str(tokdir)], input=lines,
                          stdout=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0
    out = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert len(out) == 6
    assert isinstance(out[0], list) and isinstance(out[5], list)
    for i in (1, 2, 3, 4):
        assert isinstance(out[i], dict) and "error" in out[i], out[i]
    proc = subprocess.run([str(exe), "--tokenizer", str(tokdir), "--decode"],
                          input=b'[9906, 1917]\n[-1]\n[999999999]\n"x"\n[1.5]\n',
                          stdout=subprocess.PIPE, timeout=60)
    out = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert out[0] == "Hello world"
    assert all(isinstance(o, dict) and "error" in o for o in out[1:]), out
    proc = subprocess.run([str(exe), "--tokenizer", str(tokdir), "--bytes"],
                          input=b'1917\n-1\n999999999\n"x"\n1.5\n[1]\n',
                          stdout=subprocess.PIPE, timeout=60)
    out = [json.loads(x) for x in proc.stdout.decode().splitlines()]
    assert out[0] == list(b" world")
    assert len(out) == 6 and all(isinstance(o, dict) and "error" in o for o in out[1:]), out
    proc = subprocess.run([str(exe), "--tokenizer", "/nonexistent"], input=b"",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 1 and proc.stderr


def test_nfc_exhaustive(shared, build):
    """qwen3 declares NFC: every code point, and random base + mark runs
    (reordering and composition), normalize as `tokenizers` does."""
    tokdir = shared / "tokenizers" / "qwen3"
    ref = tokenizers.normalizers.NFC()
    cps = [c for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000]
    texts = ["".join(map(chr, cps[i:i + 2000])) for i in range(0, len(cps), 2000)]
    rng = random.Random(5)
    marks = [c for c in range(0x300, 0x20000) if not 0xD800 <= c < 0xE000 and tokenizers.normalizers.NFD().normalize_str(
        "a" + chr(c) + "\u0345") != "a" + chr(c) + "\u0345" or 0x300 <= c < 0x370][:4000]
    bases = [c for c in range(0x41, 0x3000) if not 0xD800 <= c < 0xE000] + \
        list(range(0x1100, 0x1200)) + list(range(0xAC00, 0xAC00 + 600))
    for _ in range(20000):
        s = "".join(chr(rng.choice(bases)) + "".join(chr(rng.choice(marks + bases[:50]))
                                                     for _ in range(rng.randint(0, 4)))
                    for _ in range(rng.randint(1, 4)))
        texts.append(s)
    ours = evaltok(build, tokdir, ["--normalize"], texts)
    bad = [(t, o) for t, o in zip(texts, ours) if o != ref.normalize_str(t)]
    assert not bad, report("NFC", [[hex(ord(c)) for c in t[:12]] for t, _ in bad], len(texts))


def test_evaltok_chat(shared, build):
    """--chat renders tokenizer_config.json's template (bos/eos from the
    config unless the input overrides them) as jinja2 does."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    convs = [
        {"messages": [{"role": "user", "content": "Hi there"}], "add_generation_prompt": True},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"},
                      {"role": "user", "content": " and 3+3? "}],
         "add_generation_prompt": False},
        {"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": True,
         "bos_token": "<B>"},
    ]
    for name in ("llama3_1", "qwen3"):
        tokdir = shared / "tokenizers" / name
        cfg = json.loads((tokdir / "tokenizer_config.json").read_text())
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        tmpl = env.from_string(cfg["chat_template"])
        ours = evaltok(build, tokdir, ["--chat"], convs)
        for conv, got in zip(convs, ours):
            ctx = {"bos_token": cfg.get("bos_token"), "eos_token": cfg.get("eos_token"), **conv}
            assert got == tmpl.render(**ctx), (name, conv, got)
    # llama2 ships no template: the built-in llama2 fallback answers
    got = evaltok(build, shared / "tokenizers" / "llama2", ["--chat"], convs[:1])
    assert isinstance(got[0], str) and "[INST]" in got[0] and "Hi there" in got[0], got
    bad = evaltok(build, shared / "tokenizers" / "qwen3", ["--chat"], [{"messages": 5}, [1]])
    assert all(isinstance(b, dict) and "error" in b for b in bad), bad


def test_tokenizer_variants(shared, build, tmp_path):
    """Parts of tokenizer.json that the three shared tokenizers do not use:
    added tokens with lstrip / rstrip / single_word / normalized, and a
    GPT-2 style ByteLevel pre-tokenizer (built-in regex, add_prefix_space).
    The variants are written with the `tokenizers` API itself."""
    from tokenizers import AddedToken, pre_tokenizers

    added = [AddedToken("<L>", lstrip=True, special=True),
             AddedToken("<R>", rstrip=True, special=False),
             AddedToken("<LR>", lstrip=True, rstrip=True, special=True),
             AddedToken("word", single_word=True, special=False),
             AddedToken("Hé", normalized=True, special=False),
             AddedToken("xy z", normalized=False, special=False),
             AddedToken(" sp", special=False),
             AddedToken("abc", single_word=True, lstrip=True, special=False)]
    pieces = ["<L>", "<R>", "<LR>", "word", "Hé", "He\u0301", "xy z", "abc", " sp", "  ", "\n",
              " ", "a", "words", "_word", "1word", "é", ".", "\u00a0", "\u3000", "Ωord"]
    rng = random.Random(3)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 10))) for _ in range(2000)]
    texts += corpus.strings(1000, seed=77)
    failures = []
    for name in NAMES + ["gpt2_style"]:
        src = "llama3_1" if name == "gpt2_style" else name
        tok = tokenizers.Tokenizer.from_file(str(shared / "tokenizers" / src / "tokenizer.json"))
        if name == "gpt2_style":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        else:
            tok.add_tokens(added)
        d = tmp_path / name
        d.mkdir()
        tok.save(str(d / "tokenizer.json"))
        ref = [e.ids for e in tok.encode_batch(texts)]
        ours = evaltok(build, d, [], texts)
        bad = [(t, o, r) for t, o, r in zip(texts, ours, ref) if o != r]
        if bad:
            failures.append(report(f"variant {name}", bad, len(texts)))
        ref_dec = tok.decode_batch(ref, skip_special_tokens=False)
        ours_dec = evaltok(build, d, ["--decode"], ref)
        bad = [(r, o) for r, o in zip(ref_dec, ours_dec) if o != r]
        if bad:
            failures.append(report(f"variant {name} decode", bad, len(texts)))
    assert not failures, "\n".join(failures)


def test_config_bos_policy(shared, build, tmp_path):
    """Without a post-processor, tokenizer_config.json's add_bos_token /
    add_eos_token decide (llama2's config: BOS yes, EOS no)."""
    src = shared / "tokenizers" / "llama2"
    data = json.loads((src / "tokenizer.json").read_text())
    data["post_processor"] = None
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    d = tmp_path / "llama2_nopost"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(data))
    texts = ["Hello world", "", "<s> x"]
    ref = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    plain = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    assert evaltok(build, d, [], texts) == plain  # no config: nothing added
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert cfg["add_bos_token"] and not cfg["add_eos_token"]
    assert evaltok(build, d, [], texts) == [[1] + p for p in plain]
    cfg["add_eos_token"] = True
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert evaltok(build, d, [], texts) == [[1] + p + [2] for p in plain]
    assert evaltok(build, d, ["--no-special"], texts) == plain
