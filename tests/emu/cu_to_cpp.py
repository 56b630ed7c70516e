#!/usr/bin/env python3
"""cu_to_cpp.py - turns a CUDA source file (.cu or .cuh) into C++ for
tests/emu/cuda_emu.h.

Three things in CUDA source are not C++ a host compiler can run as CUDA
does:
- the launch `kernel<<<grid, block[, shared[, stream]]>>>(args)`: it becomes
  `cuda_emu::launch(kernel, grid, block[, shared[, stream]])(args)`;
- inline PTX, `asm [volatile]("opcode operands;" : outputs : inputs)`, one
  instruction per statement: it becomes a call of the emulator's
  `cuda_emu::ptx::<opcode with dots as underscores>(operands)`, the operands
  in the template's order (braces dropped), each %N replaced by the
  expression of constraint N, outputs ("=" / "+") passed as lvalues. An
  instruction the emulator lacks fails to compile; an asm statement this
  script cannot read (several instructions, no operands list) fails here;
- a function-local __shared__ declaration (indented, at the start of its
  line): a template kernel's statics escape the emulator's shared section,
  so each declared name gets a `cuda_emu::shared_touch` right after it (same
  line), which fills it with garbage when the block first passes there.
All keep their line count, and everything else is copied unchanged, after
a #line directive so that diagnostics and __FILE__ name the original file
and its lines. A converted header keeps its name: written next to the
converted .cu files, it is the one their #include "..." finds first.

usage: cu_to_cpp.py IN OUT
"""
import re
import sys

# a kernel name (possibly qualified or with template arguments), then <<<...>>>
LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>", re.S)
ASM = re.compile(r"\basm(?:\s+volatile|\s+__volatile__)?\s*\(")
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
SHARED = re.compile(r"^([ \t]+__shared__\b([^;]*);)", re.M)


def skip_string(text, i):
    """Index just past the string or character literal starting at text[i]."""
    quote, i = text[i], i + 1
    while text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def split_top(text, sep):
    """text split at each sep outside parentheses, brackets and literals."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            i = skip_string(text, i)
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i) and not text.startswith(sep * 2, i) \
                and not (i > 0 and text[i - 1] == sep):
            parts.append(text[start:i])
            start = i + len(sep)
        i += 1
    parts.append(text[start:])
    return parts


def asm_call(body):
    """The emulator call for the inside of asm( ... )."""
    sections = split_top(body, ":")
    if len(sections) < 2:
        raise ValueError("an asm statement without operands")
    template = "".join(STRING.findall(sections[0]))
    template = template.replace("\\n", " ").replace("\\t", " ").strip().rstrip(";").strip()
    if ";" in template:
        raise ValueError("an asm statement with several instructions: %r" % template)
    opcode, _, operand_text = template.partition(" ")
    exprs = []
    for section in sections[1:3]:
        for operand in split_top(section, ","):
            operand = operand.strip()
            if not operand:
                continue
            m = re.fullmatch(r'"[=+&]*\w+"\s*\((.*)\)', operand, re.S)
            if not m:
                raise ValueError("an asm operand this script does not read: %r" % operand)
            exprs.append(m.group(1).strip())
    args = []
    for token in operand_text.replace("{", " ").replace("}", " ").split(","):
        token = token.strip()
        m = re.fullmatch(r"%(\d+)", token)
        if not m or int(m.group(1)) >= len(exprs):
            raise ValueError("an asm operand this script does not read: %r" % token)
        args.append(exprs[int(m.group(1))])
    return "cuda_emu::ptx::%s(%s)" % (opcode.replace(".", "_"), ", ".join(args))


# a string literal (kept: it may hold "//") or a comment
COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|/\*.*?\*/', re.S)


def blank_comments(text):
    """text with its comments blanked out, newlines and offsets kept."""
    return COMMENT.sub(lambda m: m.group(0) if m.group(0).startswith('"')
                       else re.sub(r"[^\n]", " ", m.group(0)), text)


def convert_asm(text):
    out, pos, n = [], 0, 0
    for m in ASM.finditer(blank_comments(text)):
        if m.start() < pos:
            continue
        i, depth = m.end(), 1
        while depth:
            if text[i] in "\"'":
                i = skip_string(text, i)
                continue
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        call = asm_call(text[m.end():i - 1])
        out.append(text[pos:m.start()])
        out.append(call + "\n" * text.count("\n", m.start(), i))
        pos, n = i, n + 1
    out.append(text[pos:])
    return "".join(out), n


def shared_names(declaration):
    """The names a __shared__ declaration (without the keyword) declares."""
    names = []
    for declarator in split_top(declaration, ","):
        declarator = split_top(declarator, "=")[0]
        head = declarator.split("[", 1)[0]
        ids = re.findall(r"[A-Za-z_]\w*", head)
        if not ids:
            raise ValueError("a __shared__ declaration this script does not read: %r" % declaration)
        names.append(ids[-1])
    return names


def touch_shared(m):
    return m.group(1) + "".join(" cuda_emu::shared_touch cuda_emu_touch_%s(%s);" % (n, n)
                                for n in shared_names(m.group(2)))


def convert(text):
    out, n = LAUNCH.subn(lambda m: "cuda_emu::launch(%s, %s)" % (m.group(1), m.group(2)), text)
    if "<<<" in out or ">>>" in out:
        raise ValueError("a launch this script does not understand is left")
    out, n_asm = convert_asm(out)
    out = SHARED.sub(touch_shared, out)
    return out, n, n_asm


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    src, dst = argv[1], argv[2]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    try:
        body, n, n_asm = convert(text)
    except ValueError as e:
        sys.stderr.write("%s: %s\n" % (src, e))
        return 1
    with open(dst, "w", encoding="utf-8") as f:
        f.write("// generated from %s by cu_to_cpp.py (%d launch%s, %d asm statement%s rewritten)\n"
                % (src, n, "" if n == 1 else "es", n_asm, "" if n_asm == 1 else "s"))
        f.write('#line 1 "%s"\n' % src.replace("\\", "/"))
        f.write(body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
