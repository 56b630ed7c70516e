"""Chat-template exactness: our C interpreter (driven through the ct_render
test program) against Python jinja2 set up the way transformers'
apply_chat_template sets it up. Every case must render byte-identically, or
fail on both sides.

Covers the llama3_1 and qwen3 templates over generated conversations (fixed
seed), the built-in fallback templates, a corpus of small templates for the
Jinja semantics chat templates lean on, and the error paths (unsupported
syntax named by line, raise_exception, render limits).
"""
import functools
import json
import random
import subprocess
from datetime import datetime

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

N_CONVERSATIONS = 320  # per template


# --- the reference: jinja2 configured as transformers configures it -------

def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers' override: no HTML escaping, unicode kept
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = make_env()


@functools.lru_cache(maxsize=64)
def py_compile(template):
    return ENV.from_string(template)


def py_render(template, context):
    try:
        return ("text", py_compile(template).render(**context))
    except Exception as e:  # noqa: BLE001 - any failure counts as "error"
        return ("error", f"{type(e).__name__}: {e}")


def c_render(build, requests):
    exe = build / "tests" / "template" / "ct_render"
    if not exe.exists():
        pytest.skip(f"{exe} not built")
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in requests)
    proc = subprocess.run([str(exe)], input=data.encode(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    lines = proc.stdout.decode().split("\n")[:-1]  # not splitlines: U+2028 may appear raw
    assert len(lines) == len(requests)
    out = []
    for line in lines:
        obj = json.loads(line)
        out.append(("text", obj["text"]) if "text" in obj else ("error", obj["error"]))
    return out


def compare(build, cases):
    """cases: list of (template, context). Asserts C == jinja2 for each."""
    got = c_render(build, [{"template": t, "context": c} for t, c in cases])
    failures = []
    for (tpl, ctx), (ckind, ctext) in zip(cases, got):
        pkind, ptext = py_render(tpl, ctx)
        if pkind != ckind or (pkind == "text" and ptext != ctext):
            failures.append((tpl[:200], ctx, (pkind, ptext), (ckind, ctext)))
    for f in failures[:5]:
        print("TEMPLATE:", repr(f[0]))
        print("CONTEXT:", json.dumps(f[1], ensure_ascii=False)[:600])
        print("JINJA2:", repr(f[2])[:1500])
        print("C     :", repr(f[3])[:1500])
    assert not failures, f"{len(failures)} of {len(cases)} cases differ"


# --- conversation generator ------------------------------------------------

PIECES = [
    "Hello", "world", "What is 2+2?", "The answer is 4.", "naïve café", "日本語のテキスト", "emoji 😀🎉",
    "Ünïcödé ß", "Привет мир", "مرحبا", "שלום", "x\ny", "\n", "\n\n", "  ", "\t", "\u00a0", "\u3000",
    "'single'", '"double"', "back\\slash", "{{ x }}", "{% if true %}", "{# c #}", "{ braces }", "}}", "{%",
    "<|im_start|>", "<|eot_id|>", "</s>", "<tool_response>", "</tool_response>", "a" * 50, "end.",
    "\r\n", "\u2028", "tab\tsep", "%s %d", "1e10", "None", "True",
]


def random_text(rng, allow_empty=True):
    if allow_empty and rng.random() < 0.05:
        return ""
    parts = [rng.choice(PIECES) for _ in range(rng.randint(1, 8))]
    text = "".join(p + rng.choice(["", " ", "\n", ""]) for p in parts)
    if rng.random() < 0.25:
        text = rng.choice([" ", "\n", "  \n", "\t"]) + text
    if rng.random() < 0.25:
        text = text + rng.choice([" ", "\n", "\n\n", " \t "])
    return text


def random_reasoning_content(rng):
    think = random_text(rng)
    answer = random_text(rng)
    style = rng.randint(0, 3)
    if style == 0:
        return f"<think>\n{think}\n</think>\n\n{answer}"
    if style == 1:
        return f"<think>{think}</think>{answer}"
    if style == 2:
        return f"{rng.choice(['', 'pre '])}<think>\n{think}</think>\n{answer}</think>tail"
    return answer


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city — «quoted» ☀",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name, e.g. \"Zürich\""},
            "days": {"type": "integer", "minimum": 1, "maximum": 14}},
            "required": ["city"]}}},
    {"type": "function", "function": {"name": "noop", "description": "", "parameters": {}}},
]


def random_conversation(rng, qwen):
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": random_text(rng)})
    turns = rng.randint(1, 10)
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        if role == "assistant":
            content = random_reasoning_content(rng) if qwen else random_text(rng)
            msg = {"role": role, "content": content}
            if qwen and rng.random() < 0.15:
                msg["reasoning_content"] = random_text(rng)
            if qwen and rng.random() < 0.1:
                msg["reasoning_content"] = None
            msgs.append(msg)
        else:
            content = random_text(rng)
            if qwen and rng.random() < 0.1:
                content = "<tool_response>" + content + "</tool_response>"
            msgs.append({"role": role, "content": content})
    return msgs


def tool_conversation(rng):
    args = rng.choice([{"city": "Zürich", "days": 3}, '{"city": "Paris"}', {}])
    call = {"type": "function", "function": {"name": "get_weather", "arguments": args}}
    if rng.random() < 0.3:
        call = {"name": "get_weather", "arguments": args}
    msgs = [{"role": "user", "content": random_text(rng)},
            {"role": "assistant", "content": rng.choice(["", random_text(rng)]),
             "tool_calls": [call] * rng.randint(1, 2)},
            {"role": "tool", "content": random_text(rng)}]
    if rng.random() < 0.5:
        msgs.append({"role": "tool", "content": random_text(rng)})
    if rng.random() < 0.5:
        msgs.append({"role": "assistant", "content": random_reasoning_content(rng)})
    if rng.random() < 0.5:
        msgs.insert(0, {"role": "system", "content": random_text(rng)})
    return msgs


def load_config(shared, name):
    return json.loads((shared / "tokenizers" / name / "tokenizer_config.json").read_text())


def base_context(cfg):
    return {"bos_token": cfg.get("bos_token"), "eos_token": cfg.get("eos_token")}


# --- the tests ---------------------------------------------------------------

def test_llama3_1_conversations(build, shared):
    cfg = load_config(shared, "llama3_1")
    rng = random.Random(1234)
    cases = []
    for i in range(N_CONVERSATIONS):
        ctx = base_context(cfg)
        ctx.update(messages=random_conversation(rng, qwen=False), add_generation_prompt=bool(i % 2),
                   tools=None)
        if i % 10 == 0:
            ctx.update(tools=TOOLS, date_string="26 Jul 2024")
        cases.append((cfg["chat_template"], ctx))
    compare(build, cases)


def test_qwen3_conversations(build, shared):
    cfg = load_config(shared, "qwen3")
    rng = random.Random(5678)
    cases = []
    for i in range(N_CONVERSATIONS):
        ctx = base_context(cfg)
        ctx.update(messages=random_conversation(rng, qwen=True), add_generation_prompt=bool(i % 2),
                   tools=None)
        if i % 3 == 1:
            ctx["enable_thinking"] = bool(i % 2)
        cases.append((cfg["chat_template"], ctx))
    for i in range(60):  # tools, tool calls and tool results
        ctx = base_context(cfg)
        ctx.update(messages=tool_conversation(rng), add_generation_prompt=bool(i % 2),
                   tools=TOOLS if i % 4 else None)
        cases.append((cfg["chat_template"], ctx))
    compare(build, cases)


@pytest.mark.parametrize("name", ["chatml", "llama3", "llama2", "plain"])
def test_builtin_templates(build, name):
    (kind, source), = c_render(build, [{"source_of": name}])
    assert kind == "text" and "messages" in source
    rng = random.Random(99)
    cases = []
    for i in range(40):
        msgs = random_conversation(rng, qwen=False)
        if name == "llama2" and i % 7 == 3:
            msgs.append(dict(msgs[-1]))  # broken alternation: must fail on both sides
        cases.append((source, {"messages": msgs, "add_generation_prompt": bool(i % 2),
                               "bos_token": "<s>", "eos_token": "</s>"}))
    compare(build, cases)


def meta_llama2_prompt(msgs, bos="<s>", eos="</s>"):
    """The Llama-2 chat format as Meta's reference code lays it out: the
    system prompt joins the first user turn between <<SYS>> markers, and
    each user turn and answer is stripped as a whole."""
    if msgs and msgs[0]["role"] == "system":
        first = "<<SYS>>\n" + msgs[0]["content"] + "\n<</SYS>>\n\n"
        msgs = msgs[1:]
        if msgs:
            msgs = [dict(msgs[0], content=first + msgs[0]["content"])] + msgs[1:]
    out = ""
    for m in msgs:
        if m["role"] == "user":
            out += bos + "[INST] " + m["content"].strip() + " [/INST]"
        else:
            out += " " + m["content"].strip() + " " + eos
    return out


def test_llama2_builtin_is_meta_format(build):
    (_, source), = c_render(build, [{"source_of": "llama2"}])
    rng = random.Random(7)
    cases = []
    for i in range(60):
        msgs = random_conversation(rng, qwen=False)
        if msgs[0]["role"] == "system" or i % 3 == 0:
            pad = rng.choice([" ", "\n", "  \t", ""])
            sys_msg = {"role": "system", "content": pad + random_text(rng, allow_empty=False) + pad}
            msgs = [sys_msg] + [m for m in msgs if m["role"] != "system"]
        cases.append(msgs)
    got = c_render(build, [{"template": source, "context": {
        "messages": m, "add_generation_prompt": True, "bos_token": "<s>", "eos_token": "</s>"}}
        for m in cases])
    for msgs, (kind, text) in zip(cases, got):
        assert kind == "text", text
        assert text == meta_llama2_prompt(msgs), json.dumps(msgs)


# Small templates for the Jinja semantics chat templates rely on.
SEMANTICS = [
    ("{{ x }}|{{ u }}|{{ n }}|{{ t }}|{{ f }}|{{ i }}|{{ fl }}", {}),
    ("{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }} {{ 3 / 2 }} {{ 7 // -2 }} {{ -7 % 3 }} {{ 2 ** 10 }}", {}),
    ("{{ 10 / 4 }} {{ 1 / 3 }} {{ 2.5 * 2 }} {{ 100000000000000000.0 }} {{ -0.0 }} {{ 1.5e300 * 1e10 }}", {}),
    ("{{ [1, 'a', none, true, {'k': 'v'}] }} {{ (1,) }} {{ ('a', 2) }} {{ {'a': [1, 2]} }}", {}),
    ("{{ \"it's\" }} {{ ['it\\'s', \"q\\\"\", 'a\\nb', 'é', '\\u3000'] }}", {}),
    ("{{ x ~ 1 ~ none ~ u }}|{{ 'a' + 'b' }}|{{ [1] + [2] }}|{{ 'ab' * 3 }}", {"x": "s"}),
    ("{{ u + 'a' }}", {}),
    ("{{ 1 + 'a' }}", {}),
    ("{{ u.attr }}", {}),
    ("{{ d.missing }}|{{ d['missing'] }}|{{ l[10] }}|{{ none.x }}|{{ 's'.nope }}", {"d": {}, "l": [1]}),
    ("{{ d.items is defined }}{{ d.items is callable }}", {"d": {"items": 1}}),
    ("{{ d['items'] }}|{{ d.get('items') }}|{{ d.get('zz', 'dflt') }}|{{ d.get('zz') }}", {"d": {"items": 1}}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
     {"d": {"b": 1, "a": 2}}),
    ("{{ d.keys() | list }}{{ d.values() | list }}{{ d | length }}", {"d": {"b": 1, "a": 2}}),
    ("{% for m in ms %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
     "{{ loop.revindex }}{{ loop.revindex0 }}[{{ loop.previtem }}|{{ loop.nextitem }}]\n{% endfor %}",
     {"ms": ["a", "b", "c"]}),
    ("{% for m in ms if m != 'b' %}{{ m }}{{ loop.index }}/{{ loop.length }} {% else %}empty{% endfor %}",
     {"ms": ["a", "b", "c"]}),
    ("{% for m in ms %}{{ m }}{% else %}empty{% endfor %}", {"ms": []}),
    ("{% for m in u %}{{ m }}{% else %}undef-empty{% endfor %}", {}),
    ("{% for c in 'héllo' %}{{ c }}.{% endfor %}", {}),
    ("{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 5 %}{% break %}{% endif %}"
     "{{ i }}{% endfor %}", {}),
    ("{% for i in range(2, 11, 3) %}{{ i }},{% endfor %}{{ range(3) | list }}", {}),
    ("{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}", {}),
    ("{% set x = 1 %}{% if true %}{% set x = 3 %}{% endif %}{{ x }}", {}),
    ("{% set ns = namespace(a=1, b=[]) %}{% for i in [1, 2, 3] %}{% set ns.a = ns.a + i %}{% endfor %}"
     "{{ ns.a }}{{ ns.b }}{{ ns.zz is defined }}", {}),
    ("{% set y %}block {{ 1 + 1 }}\n{% endset %}[{{ y }}]", {}),
    ("{% set a, b = [1, 2] %}{{ b }}{{ a }}{% set t = 1, 2 %}{{ t }}", {}),
    ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{{ g }}{% endmacro %}{% set g = 'G' %}"
     "{{ greet('Bob') }}|{{ greet('Al', punct='?') }}|{{ greet(punct='.', name='Z') }}", {}),
    ("{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}{{ a }}", {}),
    ("{% filter upper %}shout {{ x }}{% endfilter %}", {"x": "it"}),
    ("{{ x is defined }}{{ u is defined }}{{ u is undefined }}{{ n is none }}{{ x is string }}"
     "{{ d is mapping }}{{ l is iterable }}{{ l is sequence }}{{ d is sequence }}{{ i is number }}"
     "{{ i is integer }}{{ fl is float }}{{ t is boolean }}{{ t is true }}{{ f is false }}{{ x is not none }}"
     "{{ u is iterable }}{{ u is sequence }}{{ u is mapping }}{{ i is odd }}{{ i is even }}"
     "{{ i is divisibleby 3 }}{{ i is divisibleby(2) }}{{ x is lower }}{{ x is upper }}{{ l is string }}",
     {}),
    ("{{ 1 in [1, 2] }}{{ 'a' in 'cat' }}{{ 'k' in d }}{{ 3 not in [1] }}{{ 'x' in u }}{{ 1 < 2 < 3 }}"
     "{{ 1 < 3 < 2 }}{{ 'a' < 'b' }}{{ [1, 2] < [1, 3] }}{{ 1 == 1.0 }}{{ true == 1 }}{{ u == u }}"
     "{{ none == none }}{{ 'a' != 'a' }}", {"d": {"k": 1}}),
    ("{{ 1 < 'a' }}", {}),
    ("{{ u < 1 }}", {}),
    ("{{ x and 1 }}|{{ '' or 'fb' }}|{{ 0 or none }}|{{ not x }}|{{ not u }}|{{ x if t else 'no' }}|"
     "{{ 'yes' if f }}|{{ 'a' if f else 'b' if t else 'c' }}", {}),
    ("{{ s | trim }}|{{ s | length }}|{{ s | upper }}|{{ s | lower }}|{{ s | title }}|{{ s | capitalize }}|"
     "{{ s | reverse }}|{{ s | replace('a', 'X') }}|{{ s | replace('a', 'X', 1) }}|{{ s | replace('', '-') }}",
     {"s": " \u3000 \tbanana Split-here (yes) ÉTÉ ça\n\u00a0"}),
    ("{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip('ab ') }}|{{ s.split() }}|"
     "{{ s.split(' ') }}|{{ s.split('a', 1) }}|{{ s.split(maxsplit=1) }}|{{ s.startswith(' ') }}|"
     "{{ s.endswith(('x', ' ')) }}|{{ s.replace(' ', '_') }}|{{ s.upper() }}|{{ s.lower() }}|"
     "{{ s.title() }}|{{ s.find('n') }}|{{ s.rfind('n') }}|{{ s.count('a') }}|{{ s.capitalize() }}",
     {"s": " ab banana  xan \u00e9 they're "}),
    ("{{ '-'.join(['a', 'b']) }}|{{ 'x\\ny\\r\\nz'.splitlines() }}|{{ '{} and {}'.format(1, 'b') }}|"
     "{{ '{a}-{0}'.format(5, a='A') }}|{{ '12'.isdigit() }}|{{ 'ab'.isalpha() }}|{{ ' '.isspace() }}", {}),
    ("{{ s[0] }}|{{ s[-1] }}|{{ s[1:3] }}|{{ s[::-1] }}|{{ s[:2] }}|{{ s[2:] }}|{{ s[::2] }}|{{ s[-3:-1] }}|"
     "{{ l[1:] }}|{{ l[::-1] }}|{{ l[-2] }}|{{ l[5:1:-2] }}", {"s": "héllo wörld", "l": [1, 2, 3, 4, 5, 6]}),
    ("{{ l | join(', ') }}|{{ l | first }}|{{ l | last }}|{{ l | length }}|{{ l | reverse | list }}|"
     "{{ l | sort }}|{{ l | sort(reverse=true) }}|{{ l | unique | list }}|{{ l | sum }}|{{ l | min }}|"
     "{{ l | max }}|{{ l | list | count }}|{{ [] | first }}|{{ 'abc' | list }}|{{ 'abc' | first }}",
     {"l": [3, 1, 2, 3]}),
    ("{{ ms | map(attribute='role') | join(',') }}|{{ ms | selectattr('role', 'equalto', 'user') | list }}|"
     "{{ ms | rejectattr('role', 'eq', 'user') | map(attribute='content') | list }}|"
     "{{ ms | selectattr('content') | list | length }}|{{ ms | map(attribute='nope', default='D') | list }}|"
     "{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2, 3] | reject('even') | list }}|"
     "{{ ['a', 'B'] | map('upper') | list }}|{{ ms | sort(attribute='role') | map(attribute='role') | list }}",
     {"ms": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""},
             {"role": "user", "content": "y"}]}),
    # sort is stable (ties keep their order, reversed too) and O(n log n) on long input
    ("{{ ms | sort(attribute='k') | map(attribute='c') | join }}|"
     "{{ ms | sort(attribute='k', reverse=true) | map(attribute='c') | join }}|"
     "{{ w | sort | join(',') }}|{{ w | sort(case_sensitive=true) | join(',') }}|"
     "{{ w | sort(reverse=true) | join(',') }}|{{ (long | sort | join)[:40] }}|"
     "{{ (long | sort(reverse=true) | join)[-40:] }}",
     {"ms": [{"k": (i * 7) % 5, "c": chr(65 + i)} for i in range(23)],
      "w": ["b", "B", "a", "A", "b", "c", "C", "a"],
      "long": "".join(chr(33 + (i * 7919) % 90) for i in range(20000))}),
    ("{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ d | tojson(sort_keys=true) }}|"
     "{{ d | tojson(separators=(',', ':')) }}|{{ 'é\"<>&\\n' | tojson }}|{{ 'é' | tojson(true) }}|"
     "{{ [1.5, none, true] | tojson }}|{{ {} | tojson(indent=4) }}|{{ d | tojson(indent='\\t') }}",
     {"d": {"z": [1, {"y": None}], "a": "ünï \"q\" \u2028 \x01 😀", "e": [], "f": {}, "n": 2.5}}),
    ("{{ u | tojson }}", {}),
    ("{{ u | default('dv') }}|{{ '' | default('dv') }}|{{ '' | default('dv', true) }}|{{ n | d('x') }}|"
     "{{ u | length }}|{{ u | trim }}|{{ u | list }}|{{ u | join }}|{{ u | upper }}|{{ u | string }}", {}),
    ("{{ '42' | int }}|{{ ' -7 ' | int }}|{{ '3.9' | int }}|{{ 'x' | int }}|{{ 'x' | int(5) }}|{{ 3.9 | int }}|"
     "{{ '2.5' | float }}|{{ 4 | float }}|{{ 'no' | float }}|{{ -3 | abs }}|{{ 2.567 | round(2) }}|"
     "{{ 42 | string }}|{{ none | string }}|{{ [1] | string }}", {}),
    ("{{ d | items | list }}|{{ d | dictsort }}|{{ d | dictsort(reverse=true) }}|{{ u | items | list }}",
     {"d": {"b": 1, "A": 2, "c": 0}}),
    ("{{ text | indent(2) }}|{{ text | indent(2, true) }}|{{ text | indent(first=true, blank=true) }}|"
     "{{ '<a href=\"x\">&\\'' | e }}|{{ '%s=%d' | format('k', 3) }}|{{ 'a b  c' | wordcount }}|"
     "{{ 'ab' | center(6) }}|", {"text": "l1\n\nl3\n"}),
    ("{{ {'a': 1, 'b': 2} }}{{ {'a': 1}['a'] }}{{ [[1, 2], [3]][0][1] }}{{ ms[0]['role'] }}{{ ms[0].role }}"
     "{{ ms.0.role }}", {"ms": [{"role": "r"}]}),
    ("a\n  {% if true %}\n  b\n  {% endif %}\n  c {# comment #}\n{# own line #}\nd", {}),
    ("  {%- if true -%}  x  {%- endif -%}  \n{{- ' y ' -}}\n  {{ 'z' }}  {%+ if true %}k{% endif +%}\nq", {}),
    ("{% if a %}A{% elif b %}B{% elif c %}C{% else %}D{% endif %}", {"b": 0, "c": "yes"}),
    ("line1\r\nline2\rline3\n", {}),
    ("{{ 'tab\\tnew\\nquote\\'dq\\\"bs\\\\uni\\u00e9\\x41' }}|{{ 'unknown \\q escape' }}", {}),
    ("{{ 'a' 'b' }}{{ \"c\" ~ 'd' }}{{ (1 + 2) * 3 }}{{ -2 ** 2 }}{{ 2 * -1 }}{{ 10 - 2 - 3 }}", {}),
    ("{{ raise_exception('custom failure') }}", {}),
    ("{{ strftime_now('%Y') | length }}", {}),
    ("{% for m in messages %}{{ m['role'] | upper }}{% if not loop.last %}, {% endif %}{% endfor %}",
     {"messages": [{"role": "user"}, {"role": "assistant"}]}),
    ("{{ messages[0]['content'][0]['text'] if messages[0]['content'] is not string else 'str' }}",
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "multi"}]}]}),
    ("{{ x.y.z }}", {"x": {}}),
    ("{{ l.append(1) }}", {"l": []}),
    ("{{ d.update({}) }}", {"d": {}}),
    ("{% set x = [1, 2, 3] %}{{ x | length > 2 and x[0] == 1 }}{{ (x | length) - 1 }}{{ x|length - 1 }}", {}),
    ("{{ 'a' is in 'cat' }}{{ 2 is in [1, 2] }}{{ 'x' is sameas 'x' }}{{ none is sameas none }}"
     "{{ 3 is gt 2 }}{{ 3 is lessthan 2 }}{{ 'upper' is filter }}{{ 'nope' is test }}", {}),
]

COMMON_VARS = {"x": "hello", "n": None, "t": True, "f": False, "i": 3, "fl": 2.5, "d": {"k": "v"},
               "l": [1, 2]}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the deliberate "\\q" escape
def test_semantics_corpus(build):
    cases = []
    for tpl, ctx in SEMANTICS:
        full = dict(COMMON_VARS)
        full.update(ctx)
        cases.append((tpl, full))
    compare(build, cases)


# --- errors and limits -------------------------------------------------------

def render_one(build, template, context=None, limits=None):
    req = {"template": template, "context": context or {}}
    if limits:
        req["limits"] = limits
    return c_render(build, [req])[0]


# (template, line, message part, does jinja2 reject it too?). Tags jinja2
# has but we do not (raw, recursive loops, include) must still fail loudly.
@pytest.mark.parametrize("template,line,needle,ref_fails", [
    ("a\nb\n{% include 'x.j2' %}", 3, "unsupported tag 'include'", True),
    ("{% extends 'base' %}", 1, "unsupported tag 'extends'", True),
    ("\n\n\n{% for x in y %}\n{{ x }}", 4, "endfor", True),
    ("{{ x | nosuchfilter }}", 1, "unsupported filter 'nosuchfilter'", True),
    ("line\n{{ x is nosuchtest }}", 2, "unsupported test 'nosuchtest'", True),
    ("{% if x %}\n{% endfor %}", 2, "unexpected 'endfor'", True),
    ("{{ x ", 1, "unclosed", True),
    ("{% raw %}x{% endraw %}", 1, "unsupported tag 'raw'", False),
    ("{% for x in y recursive %}{% endfor %}", 1, "recursive", False),
    ("{% break %}", 1, "outside a for loop", True),
    ("{{ 'unterminated }}", 1, "unterminated string", True),
])
def test_compile_errors_name_the_line(build, template, line, needle, ref_fails):
    kind, msg = render_one(build, template)
    assert kind == "error"
    assert f"line {line}:" in msg and needle in msg, msg
    if ref_fails:  # jinja2 rejects it as well (at load or at render)
        with pytest.raises(Exception):
            ENV.from_string(template).render(y=[], x=1)


def test_raise_exception_propagates_message(build):
    kind, msg = render_one(build, "ok\n{% if messages | length == 0 %}{{ raise_exception('No messages given!') }}"
                           "{% endif %}", {"messages": []})
    assert kind == "error" and "No messages given!" in msg and "line 2" in msg


def test_loop_limit(build):
    tpl = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    kind, msg = render_one(build, tpl)
    assert kind == "error" and "loop iteration limit" in msg


def test_output_limit(build):
    tpl = "{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}"
    kind, msg = render_one(build, tpl, limits={"max_output_bytes": 100000})
    assert kind == "error" and "output size limit" in msg
    kind, text = render_one(build, tpl)
    assert kind == "text" and len(text) == 1000 * 1000


def test_recursion_limit(build):
    tpl = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
    kind, msg = render_one(build, tpl)
    assert kind == "error" and "recursion limit" in msg
    kind, msg = render_one(build, "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")
    assert kind == "error" and "nested too deeply" in msg
