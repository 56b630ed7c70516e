#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/.

The seeds are small and our own: valid safetensors images built here with
struct, configs of the four supported architectures, JSON request shapes,
text in many scripts, small templates and step-wire messages. Each seed is named after a hash
of its bytes, so rerunning the script is idempotent. Only the standard
library is used.

Usage: python3 tests/fuzz/make_seeds.py [corpus-dir]
"""
import hashlib
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def write(root, target, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- fuzz_json: byte 0 picks max_depth (< 128: the default) -------------

JSON_SAMPLES = [
    {"model": "m", "prompt": "Hello", "max_tokens": 16, "temperature": 0.7, "stream": True},
    {"model": "m", "messages": [{"role": "user", "content": "héllo 世界 🎉"}],
     "logit_bias": {"50256": -100}, "stop": ["\n", "###"], "n": 2, "seed": 9223372036854775807},
    {"prompt": [[1, 2, 3], [4, 5]], "logprobs": 5, "top_p": 1e-308, "echo": False},
    [1, -1, 0.5, 1e308, -0.0, 4294967296, 18446744073709551616, None, True, False],
    {"a": {"b": {"c": {"d": [[[[]]]]}}}, "": "", "dup": 1},
]
JSON_RAW = [
    '{"dup": 1, "dup": "two"}',
    '"\\ud83d\\ude00 \\u00e9 \\u0000 \\n\\t\\"\\\\"',
    '"\\ud800"',
    '{"x": 1e400, "y": -1e400, "z": 1.5e-400}',
    "[" * 200 + "]" * 200,
    '  {"trailing": 1}  x',
    '{"n": 12345678901234567890123}',
]


def json_seeds(root):
    for s in JSON_SAMPLES:
        text = json.dumps(s, ensure_ascii=False)
        write(root, "fuzz_json", b"\x00" + text.encode())
        write(root, "fuzz_json", b"\x83" + text.encode())  # max_depth 4
    for s in JSON_RAW:
        write(root, "fuzz_json", b"\x00" + s.encode())
    write(root, "fuzz_json", b"\x00\"\xff\xfe bad utf8\"")


# ---- fuzz_safetensors ----------------------------------------------------

DT = {"F32": ("<f", 4), "F16": ("<e", 2), "BF16": (None, 2)}


def st_image(tensors, metadata=None, pad_to=8):
    """tensors: list of (name, dtype, shape, values)."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, values in tensors:
        fmt, size = DT[dtype]
        if dtype == "BF16":
            raw = b"".join(struct.pack("<f", v)[2:] for v in values)
        else:
            raw = b"".join(struct.pack(fmt, v) for v in values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % pad_to)  # keeps the data section aligned, as writers do
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def safetensors_seeds(root):
    w = "fuzz_safetensors"
    write(root, w, st_image([]))
    write(root, w, st_image([], metadata={"format": "pt"}))
    write(root, w, st_image([("w", "F32", [2, 2], [1.0, -2.5, 0.0, float("inf")])]))
    write(root, w, st_image([("b", "F16", [3], [0.5, -0.0, 65504.0]),
                             ("a", "BF16", [1, 2], [1.0, -3.0])], metadata={"k": "v"}))
    write(root, w, st_image([("scalar", "F32", [], [7.0]), ("empty", "F16", [0, 4], [])]))
    write(root, w, st_image([("model.layers.0.self_attn.q_proj.weight", "BF16", [2, 4],
                              [float(i) for i in range(8)]),
                             ("model.norm.weight", "F32", [2], [1.0, 1.0])]))
    # a few near misses: wrong end offset, unknown dtype, unsupported dtype
    h = b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}'
    write(root, w, struct.pack("<Q", len(h)) + h + b"\0" * 4)
    h = b'{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}'
    write(root, w, struct.pack("<Q", len(h)) + h + b"\0" * 8)


# ---- fuzz_model_config: config text, optionally NUL + generation config ---

def model_config_seeds(root):
    w = "fuzz_model_config"
    llama = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "vocab_size": 256, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5,
             "rope_theta": 500000.0, "bos_token_id": 1, "eos_token_id": [2, 3],
             "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192},
             "tie_word_embeddings": True, "torch_dtype": "bfloat16", "hidden_act": "silu"}
    mistral = {"architectures": ["MistralForCausalLM"], "hidden_size": 32,
               "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
               "num_key_value_heads": 1, "vocab_size": 100, "sliding_window": None,
               "head_dim": 16, "torch_dtype": "float16"}
    qwen2 = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 48, "intermediate_size": 96,
             "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 2,
             "vocab_size": 300, "use_sliding_window": False, "rope_theta": 1000000.0,
             "eos_token_id": 299, "torch_dtype": "float32"}
    qwen3 = {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 192,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
             "head_dim": 32, "vocab_size": 512, "dtype": "bfloat16",
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}
    qwen3_t5 = dict(qwen3, rope_parameters={"full_attention": {"rope_type": "linear",
                                                               "factor": 2.0}})
    gen = {"bos_token_id": 1, "eos_token_id": [2, 7, 9], "do_sample": True}
    for cfg in (llama, mistral, qwen2, qwen3, qwen3_t5):
        text = json.dumps(cfg, indent=2)
        write(root, w, text)
        write(root, w, text + "\0" + json.dumps(gen))
    write(root, w, json.dumps(dict(llama, architectures=["GPT2LMHeadModel"])))


# ---- fuzz_tokenizer: byte 0 = tokenizer (bits 0-1) | add_special (4) |
#      skip_special (8) | ids mode (16) -------------------------------------

TEXTS = [
    "Hello, world! It's a test; we'll see.",
    "  leading spaces and\ttabs\n\nnewlines\r\n",
    "Grüße aus Köln – naïve café, Ångström",
    "Съешь же ещё этих мягких французских булок",
    "Τη γλώσσα μου έδωσαν ελληνική",
    "שלום עולם, مرحبا بالعالم",
    "नमस्ते दुनिया, வணக்கம் உலகம்",
    "こんにちは世界。今日は良い天気ですね",
    "你好，世界！2024年10月1日",
    "안녕하세요 세계",
    "สวัสดีชาวโลก ລາວ ၿမန်မာ",
    "emoji 🎉👍🏽 👨‍👩‍👧 🇩🇪 and math ∑∫√ ≤ ≥",
    "e\u0301 A\u030a combining vs é Å precomposed; ﬁ ligature, Ｆｕｌｌ width",
    "numbers 1234567890 3.14159 -42 1e10 0x1F",
    "code: def f(x):\n    return x ** 2  # comment\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<|im_start|>user\nhello<|im_end|>\n<think>\n</think>",
    "<s>[INST] <<SYS>> sys <</SYS>> hi [/INST] </s>",
    "a\u0000b NUL inside",
    "\u200b\u200d\ufeff zero width and BOM",
]


def tokenizer_seeds(root):
    w = "fuzz_tokenizer"
    for i, t in enumerate(TEXTS):
        tk = i % 3
        write(root, w, bytes([tk]) + t.encode())
        write(root, w, bytes([((i + 1) % 3) | 4 | 8]) + t.encode())
    write(root, w, b"\x00abc\xff\xfe invalid utf8")
    write(root, w, b"\x01\xe4\xbd")  # truncated character
    for tk in range(3):
        ids = [1, 2, 3, 200, 1000, 5000, 30000, 0xFFFFFF]
        write(root, w, bytes([tk | 16]) + b"".join(struct.pack("<I", x)[:3] for x in ids))
        write(root, w, bytes([tk | 16 | 8]) + bytes(range(0, 96)))


# ---- fuzz_chat_template: byte 0 bit 0 = messages mode ---------------------

TEMPLATES = [
    "{{ messages[0]['content'] }}",
    "{% for m in messages %}{{ loop.index }}:{{ m.role|upper }} {{ m.content }}\n{% endfor %}",
    "{%- set ns = namespace(n=0) %}{% for m in messages if m.role != 'tool' %}"
    "{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
    "{% macro f(x, y=2) %}[{{ x ~ y }}]{% endmacro %}{{ f(1) }}{{ f('a', y='b') }}",
    "{{ obj | tojson }} {{ obj.b | length }} {{ 'x' * n }} {{ pi | round }} {{ 7 // 2 }}",
    "{% if flag is false and tools is none %}ok{% elif n > 2 %}big{% else %}no{% endif %}",
    "{{ 'Hello World'.split(' ')[-1].lower() }} {{ '  pad '.strip() }} {{ 'abc'[::-1] }}",
    "{{ messages[1].content[2:5] }}|{{ messages[1].content | length }}",
    "{% for k, v in obj.items() %}{{ k }}={{ v }};{% endfor %}{{ obj | dictsort }}",
    "{{ raise_exception('boom') }}",
    "{{ strftime_now('%Y') | length }} {{ range(3) | list }} {{ [3,1,2] | sort | join(',') }}",
    "{% raw %}{{ not evaluated }}{% endraw %}{# comment #}",
    "{{ undefined_var is defined }}{{ x.y.z }}",
    "{% for m in messages %}{% if loop.first %}<s>{% endif %}{{ m['role'] }}{% if not loop.last "
    "%},{% endif %}{% endfor %}",
]


def msg_record(role, kind, content, extra=0):
    b = content.encode()[:255]
    return bytes([role | (kind << 3) | extra, len(b)]) + b


def chat_template_seeds(root):
    w = "fuzz_chat_template"
    for t in TEMPLATES:
        write(root, w, b"\x00" + t.encode())
    conv = (msg_record(0, 0, "You are helpful.") + msg_record(1, 0, "Hi there, 世界")
            + msg_record(2, 0, "<think>\nplan\n</think>\n\nHello!") + msg_record(1, 0, "Bye"))
    tools = msg_record(1, 0, "weather?") + msg_record(2, 0, "", 32) + msg_record(3, 0, "sunny") \
        + msg_record(2, 0, "ok", 32 | 64)
    for which in range(6):
        for flags in (0, 1, 3, 5, 9):
            head = which | (flags << 3)
            write(root, w, b"\x01" + bytes([head]) + conv)
        write(root, w, b"\x01" + bytes([which | (9 << 3)]) + tools)
        write(root, w, b"\x01" + bytes([which]) + msg_record(1, 2, "parts") +
              msg_record(2, 1, "") + msg_record(6, 3, "x", 128))


# ---- fuzz_openai_request: byte 0 bit 0 = chat; the rest is the body ------

COMPLETIONS = [
    {"model": "fuzz-model", "prompt": "Hello", "max_tokens": 8},
    {"prompt": ["a", "b c"], "n": 2, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
     "stop": ["\n", "END"], "stop_token_ids": [128001], "seed": 42, "logprobs": 5,
     "echo": True, "stream": True, "stream_options": {"include_usage": True}},
    {"prompt": [1, 2, 3, 128000], "max_tokens": 0, "logprobs": 0, "echo": True,
     "add_special_tokens": False},
    {"prompt": [[1, 2], [3]], "logit_bias": {"13": -100, "198": 5.5}, "min_tokens": 1,
     "ignore_eos": True, "repetition_penalty": 1.1, "presence_penalty": -2,
     "frequency_penalty": 2, "min_p": 0.05, "include_stop_str_in_output": True,
     "skip_special_tokens": False, "return_tokens_as_token_ids": True},
    {"prompt": "x", "model": "other"},
    {"prompt": "x", "n": 1000, "logprobs": 99, "temperature": -1, "seed": 1.5},
]
CHATS = [
    {"model": "fuzz-model", "messages": [{"role": "user", "content": "Hi"}]},
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "ok"}],
     "logprobs": True, "top_logprobs": 3, "max_completion_tokens": 5, "stream": True},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
     "continue_final_message": True, "add_generation_prompt": False,
     "chat_template_kwargs": {"enable_thinking": False}},
    {"messages": [{"role": "tool", "content": "r", "tool_call_id": "1"}], "tools": [],
     "add_special_tokens": True, "echo": True},
    {"messages": [], "max_tokens": 0},
    {"messages": [{"role": "wizard", "content": 5}]},
]


def openai_request_seeds(root):
    for body in COMPLETIONS:
        write(root, "fuzz_openai_request", b"\x00" + json.dumps(body).encode())
    for body in CHATS:
        write(root, "fuzz_openai_request", b"\x01" + json.dumps(body).encode())


# ---- fuzz_client_sse: byte 0 = stream | status << 1 | chunked << 3,
#      byte 1 = chunk size - 1, rest = the reply body -----------------------

def sse(*events):
    return "".join("data: %s\n\n" % (e if isinstance(e, str) else json.dumps(e))
                   for e in events).encode()


def client_sse_seeds(root):
    w = "fuzz_client_sse"
    chat = sse({"id": "c", "system_fingerprint": "fp_1", "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}}]},
               {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
               {"choices": [{"index": 0, "delta": {"content": "lo ✓"}, "finish_reason": "stop"}]},
               {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
               "[DONE]")
    comp = sse({"choices": [{"text": "a", "index": 0}]},
               {"choices": [{"text": "b", "finish_reason": "length"}]}, "[DONE]")
    err = sse({"error": {"message": "engine failed", "type": "server_error"}}, "[DONE]")
    crlf = chat.replace(b"\n", b"\r\n")
    for body in (chat, comp, err, crlf, b": comment\n\nevent: x\ndata:{}\n\n"):
        write(root, w, b"\x01\x00" + body)
        write(root, w, b"\x09\x06" + body)  # chunked, 7-byte chunks
    plain = {"id": "cmpl-1", "object": "text_completion", "system_fingerprint": "fp",
             "choices": [{"text": "hi", "index": 0, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    write(root, w, b"\x00\x00" + json.dumps(plain).encode())
    write(root, w, b"\x08\x10" + json.dumps(plain).encode())
    write(root, w, b"\x04\x00" + b'{"error": {"message": "boom", "type": "server_error"}}')
    write(root, w, b"\x06\x00" + b"not found")


# ---- fuzz_step_wire: byte 0 = keep checksum (bit 0) | trim block size
#      (bits 1-2: none, 1, 16, 5); rest = the byte stream one end of the
#      node channel reads (node 0's commands or a stage node's answers) ----
#
# Written here from the format in server/backend/step_wire.h (an encoder
# independent of step_wire.c): the seeds with bit 0 set keep this
# checksum, so they only decode if both sides read the format alike.

SW_MAGIC, SW_VERSION = 0x57535345, 3
SW_FORWARD, SW_COPY_BLOCKS, SW_STOP, SW_HEARTBEAT = 1, 2, 3, 4
SW_READY, SW_HIDDEN, SW_DONE, SW_ERROR = 5, 6, 7, 8
ES_ERR, ES_EINVAL, ES_ENOMEM, ES_EDEVICE = -1, -2, -3, -10  # enum es_status


M64 = (1 << 64) - 1
K1, K2 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F


def rotl64(v, r):
    return ((v << r) | (v >> (64 - r))) & M64


def lane_mix(h, w):
    h ^= (w * K2) & M64
    return (rotl64(h, 31) * K1) & M64


def sw_checksum(head, body):
    """The header's checksum as step_wire.h describes it: four lanes over
    the body's little-endian 8-byte words (word i to lane i mod 4, the last
    one zero-padded), lane 0 seeded by the 8 header bytes, folded to 32."""
    lanes = [lane_mix(K1, int.from_bytes(head, "little")), K2, K1 ^ 1, K2 ^ 1]
    padded = body + b"\0" * (-len(body) % 8)
    for i in range(0, len(padded), 8):
        word = i // 8
        lanes[word % 4] = lane_mix(lanes[word % 4], int.from_bytes(padded[i:i + 8], "little"))
    h = lanes[0] ^ rotl64(lanes[1], 7) ^ rotl64(lanes[2], 13) ^ rotl64(lanes[3], 19)
    h ^= (len(body) * K2) & M64
    h ^= h >> 33
    h = (h * K1) & M64
    h ^= h >> 29
    return (h ^ (h >> 32)) & 0xFFFFFFFF


def sw_message(kind, body):
    head = struct.pack("<IHH", SW_MAGIC, SW_VERSION, kind)
    rest = head + struct.pack("<I", sw_checksum(head, body)) + body
    return struct.pack("<I", len(rest)) + rest


def i32s(values):
    return struct.pack("<%di" % len(values), *values)


def f32s(values):
    """IEEE-754 single bits, little-endian; an int is taken as raw bits
    (NaN payloads, which struct would not keep)."""
    return b"".join(struct.pack("<I", v) if isinstance(v, int) else struct.pack("<f", v)
                    for v in values)


def stream(n_tokens, hidden, seed=0):
    """n_tokens x hidden floats with a few special values among them."""
    special = [-0.0, float("inf"), float("-inf"), 0x7FC00000, 0x7FA00001, 0xFFC00123,
               1e-45, 3.4028234663852886e38]
    values = [(seed + i) * 0.37 - 11.0 for i in range(n_tokens * hidden)]
    for i in range(0, len(values), 3):
        values[i] = special[(seed + i // 3) % len(special)]
    return values


def sw_forward(seqs, stride, rows, decode_only=False, hidden=0, hidden_in=None,
               want_hidden=False):
    """seqs: list of (token_ids, first position, context length, table
    entries sent); rows: list of (token_index, target_id, n_top, sample,
    rng_counter); hidden_in: n_tokens x hidden floats coming in (flag bit
    1), want_hidden: ask for the stream going out (flag bit 2); with
    either, the width hidden follows the rows."""
    ids, pos, slots, starts, ctx, tables = [], [], [], [0], [], b""
    for s, (tokens, first, context, table) in enumerate(seqs):
        ids += tokens
        pos += range(first, first + len(tokens))
        slots += [100 * s + first + i for i in range(len(tokens))]
        starts.append(len(ids))
        ctx.append(context)
        tables += i32s([len(table)] + table)
    flags = int(decode_only) | (2 if hidden_in is not None else 0) | (4 if want_hidden else 0)
    body = i32s([len(ids), len(seqs), stride, len(rows)]) + struct.pack("<I", flags)
    body += i32s(ids) + i32s(pos) + i32s(slots) + i32s(starts) + i32s(ctx) + tables
    for token_index, target_id, n_top, sample, counter in rows:
        body += i32s([token_index, target_id, n_top]) + struct.pack("<IQ", int(sample), counter)
    if flags & 6:
        body += i32s([hidden])
    if hidden_in is not None:
        assert len(hidden_in) == len(ids) * hidden
        body += f32s(hidden_in)
    return sw_message(SW_FORWARD, body)


def sw_hidden(n_tokens, hidden, values):
    return sw_message(SW_HIDDEN, i32s([n_tokens, hidden]) + f32s(values))


def sw_error(status, text):
    return sw_message(SW_ERROR, struct.pack("<iI", status, len(text)) + text)


def step_wire_seeds(root):
    w = "fuzz_step_wire"
    prefill = sw_forward([([128000, 9906, 11, 1917, 0], 0, 5, [7])], 4, [(4, -1, 5, True, 0)])
    mixed = sw_forward([([42], 20, 21, [3, 9]), ([1, 2, 3], 13, 16, [5]), ([], 0, 0, [])], 3,
                       [(0, -1, -1, True, 7), (3, 17, 20, False, 2**63 + 5)])
    decode = sw_forward([([5], 31, 32, [1, 2]), ([6], 0, 1, [4, 0])], 2,
                        [(0, -1, 0, True, 1), (1, -1, 2, True, 0)], decode_only=True)
    empty = sw_message(SW_FORWARD, i32s([0, 0, 0, 0, 0, 0]))
    copies = sw_message(SW_COPY_BLOCKS, i32s([3, 1, 2, 40000, 9, 8, -1]))
    no_copies = sw_message(SW_COPY_BLOCKS, i32s([0]))
    stop, heartbeat = sw_message(SW_STOP, b""), sw_message(SW_HEARTBEAT, b"")
    # pipeline stages: a middle stage gets the stream and sends its own
    # back, the first stage only sends one back; bit 1 alone and a FORWARD
    # of no tokens with both bits are valid too
    middle = sw_forward([([42], 20, 21, [3, 9]), ([1, 2, 3], 13, 16, [5])], 3,
                        [(0, -1, -1, True, 7)], hidden=4, hidden_in=stream(4, 4),
                        want_hidden=True)
    first = sw_forward([([128000, 9906, 11], 0, 3, [7])], 2, [(2, -1, 5, True, 0)],
                       hidden=4096, want_hidden=True)
    last = sw_forward([([5], 31, 32, [1, 2]), ([6], 0, 1, [4])], 2, [(0, -1, 0, True, 1)],
                      decode_only=True, hidden=3, hidden_in=stream(2, 3, seed=5))
    empty_stage = sw_forward([], 0, [], hidden=8, hidden_in=[], want_hidden=True)
    # the answers
    ready = sw_message(SW_READY, i32s([4096, 16]))
    hidden = sw_hidden(4, 4, stream(4, 4, seed=1))
    no_hidden = sw_hidden(0, 8, [])
    done = sw_message(SW_DONE, b"")
    error = sw_error(ES_EDEVICE, b"stage 1: CUDA error: out of memory")
    error_empty = sw_error(ES_EINVAL, b"")
    answers = (ready, hidden, no_hidden, done, error, error_empty)
    for msg in (prefill, mixed, decode, empty, copies, no_copies, stop, heartbeat,
                middle, first, last, empty_stage) + answers:
        write(root, w, b"\x01" + msg)  # checksum as written here
        write(root, w, b"\x04" + msg)  # resealed by the harness, trimmed at 16
    write(root, w, b"\x02" + mixed)  # trimmed at 1
    write(root, w, b"\x02" + middle)
    write(root, w, b"\x06" + decode)  # trimmed at 5
    write(root, w, b"\x06" + last)
    write(root, w, b"\x05" + copies + decode + heartbeat + stop)  # a stream
    write(root, w, b"\x01" + ready + hidden + done + heartbeat)  # a stage node's answers
    write(root, w, b"\x00" + prefill[:-6])  # cut short by the connection
    write(root, w, b"\x00" + middle[:-10])  # cut inside the stream
    # ERRORs that decode but do not re-encode to the same bytes: a status
    # this side does not know, 0, a NUL inside the message; then the
    # longest message (SW_ERROR_MSG_MAX bytes)
    write(root, w, b"\x01" + sw_error(-77, b"from a newer node"))
    write(root, w, b"\x01" + sw_error(0, b"ok?"))
    write(root, w, b"\x01" + sw_error(ES_ENOMEM, b"cut\x00here"))
    write(root, w, b"\x01" + sw_error(ES_ERR, b"x" * 400))


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    json_seeds(root)
    safetensors_seeds(root)
    model_config_seeds(root)
    tokenizer_seeds(root)
    chat_template_seeds(root)
    openai_request_seeds(root)
    client_sse_seeds(root)
    step_wire_seeds(root)


if __name__ == "__main__":
    main()
