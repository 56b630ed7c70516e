#!/usr/bin/env python3
"""cu_to_cpp.py - turns a CUDA source file into C++ for tests/emu/cuda_emu.h.

The only CUDA syntax a C++ compiler cannot parse is the launch
`kernel<<<grid, block[, shared[, stream]]>>>(args)`: it becomes
`cuda_emu::launch(kernel, grid, block[, shared[, stream]])(args)`, on the
same line. Everything else is copied unchanged, after a #line directive so
that diagnostics and __FILE__ name the original file and its lines.

usage: cu_to_cpp.py IN.cu OUT.cpp
"""
import re
import sys

# a kernel name (possibly qualified or with template arguments), then <<<...>>>
LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>", re.S)


def convert(text):
    out, n = LAUNCH.subn(lambda m: "cuda_emu::launch(%s, %s)" % (m.group(1), m.group(2)), text)
    if "<<<" in out or ">>>" in out:
        raise ValueError("a launch this script does not understand is left")
    return out, n


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    src, dst = argv[1], argv[2]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    try:
        body, n = convert(text)
    except ValueError as e:
        sys.stderr.write("%s: %s\n" % (src, e))
        return 1
    with open(dst, "w", encoding="utf-8") as f:
        f.write("// generated from %s by cu_to_cpp.py (%d launch%s rewritten)\n"
                % (src, n, "" if n == 1 else "es"))
        f.write('#line 1 "%s"\n' % src.replace("\\", "/"))
        f.write(body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
