"""Regenerates common/tokenizer_unicode.c, the Unicode data the tokenizer
needs to agree with `tokenizers` (Rust) rather than with the system
libraries, whose Unicode tables are older:

- tk_extra_L / tk_extra_N: code points that Oniguruma (the regex engine of
  `tokenizers`) puts in \\p{L} / \\p{N} but the system PCRE2 does not;
- canonical combining classes, canonical decompositions and primary
  composites, as `tokenizers`' NFC/NFD apply them (probed through
  tokenizers.normalizers; class values of reference marks from unicodedata).

Usage: python tests/tokenizer/gen_unicode_tables.py > common/tokenizer_unicode.c
(needs the `tokenizers` package and libpcre2-8; takes about a minute).
"""
import ctypes
import ctypes.util
import unicodedata

from tokenizers import Regex, normalizers, pre_tokenizers

ALL = [c for c in range(2, 0x110000) if not 0xD800 <= c < 0xE000]
SEP = "\x01"
NFD = normalizers.NFD()
NFC = normalizers.NFC()


def onig_members(pat):
    sp = pre_tokenizers.Split(Regex(pat), behavior="removed")
    res = set()
    for i in range(0, len(ALL), 50000):
        chunk = ALL[i:i + 50000]
        kept = set()
        for _piece, (a, b) in sp.pre_tokenize_str("".join(map(chr, chunk))):
            kept.update(range(a, b))
        res.update(chunk[j] for j in range(len(chunk)) if j not in kept)
    return res


def pcre2_members(pat):
    lib = ctypes.CDLL(ctypes.util.find_library("pcre2-8"))
    lib.pcre2_compile_8.restype = ctypes.c_void_p
    lib.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32,
                                    ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t),
                                    ctypes.c_void_p]
    lib.pcre2_match_data_create_8.restype = ctypes.c_void_p
    lib.pcre2_match_data_create_8.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
    lib.pcre2_match_8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                  ctypes.c_size_t, ctypes.c_uint32, ctypes.c_void_p,
                                  ctypes.c_void_p]
    err, off = ctypes.c_int(), ctypes.c_size_t()
    p = pat.encode()
    code = lib.pcre2_compile_8(p, len(p), 0x00080000 | 0x00020000, ctypes.byref(err),
                               ctypes.byref(off), None)  # PCRE2_UTF | PCRE2_UCP
    md = lib.pcre2_match_data_create_8(2, None)
    res = set()
    for c in ALL:
        b = chr(c).encode()
        if lib.pcre2_match_8(code, b, len(b), 0, 0x80000000, md, None) >= 0:  # ANCHORED
            res.add(c)
    return res


def ranges(cps):
    out = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def rust_nfd_each(cps):
    out = {}
    for i in range(0, len(cps), 20000):
        ch = cps[i:i + 20000]
        parts = NFD.normalize_str(SEP.join(map(chr, ch))).split(SEP)
        assert len(parts) == len(ch)
        out.update(zip(ch, parts))
    return out


def reorders(cands, r, x_first):
    """For each x: does NFD reorder 'a' x r (x_first) or 'a' r x?"""
    res = {}
    for i in range(0, len(cands), 20000):
        ch = cands[i:i + 20000]
        units = [("a" + chr(x) + r) if x_first else ("a" + r + chr(x)) for x in ch]
        out = NFD.normalize_str("".join(units))
        assert len(out) == 3 * len(ch)
        for j, x in enumerate(ch):
            res[x] = out[3 * j:3 * j + 3] != units[j]
    return res


def combining_classes(nfd):
    cand = [c for c in ALL if nfd[c] == chr(c) and not 0xAC00 <= c <= 0xD7A3
            and c not in (0x334, 0x345)]
    p1 = reorders(cand, "\u0345", False)  # 240 then x: reorders iff 0 < ccc < 240
    p2 = reorders(cand, "\u0334", True)   # x then 1: reorders iff ccc > 1
    p3 = reorders(cand, "\u0345", True)   # x then 240: reorders iff ccc > 240
    nonzero = [x for x in cand if p1[x] or p2[x] or p3[x]]
    refs = {}
    nonzero_set = set(nonzero)
    for c in range(0x300, 0x20000):
        # reference marks from Unicode 3.2, which every table knows
        cc = unicodedata.ucd_3_2_0.combining(chr(c))
        if cc and cc not in refs and nfd.get(c) == chr(c) and c in nonzero_set:
            refs[cc] = c
    vals = sorted(refs)
    ccc = {0x334: 1, 0x345: 240}
    for x in nonzero:
        lo = 0
        for v in vals:  # largest class v with v < ccc(x)
            if refs[v] != x and reorders([x], chr(refs[v]), True)[x]:
                lo = v
            else:
                break
        nxt = [v for v in vals if v > lo]
        ccc[x] = nxt[0] if nxt else 255
    return ccc


def composites(nfd):
    comp = []
    for c in ALL:
        d = nfd[c]
        if d == chr(c) or 0xAC00 <= c <= 0xD7A3 or NFC.normalize_str(d) != chr(c):
            continue
        raw = unicodedata.decomposition(chr(c))
        if raw and not raw.startswith("<"):
            parts = [int(x, 16) for x in raw.split()]
        else:
            first = NFC.normalize_str(d[:-1])
            parts = [ord(first), ord(d[-1])] if len(first) == 1 else []
        if len(parts) == 2:
            comp.append((parts[0], parts[1], c))
    return sorted(comp)


def main():
    p = print
    p("/*\n * tokenizer_unicode.c - GENERATED by tests/tokenizer/gen_unicode_tables.py; do not edit.\n"
      " *\n * Unicode data as the Rust `tokenizers` library applies it (its tables are\n"
      " * newer than the system PCRE2 and utf8proc): extra \\p{L} / \\p{N} members\n"
      " * for the Split regexes, and the canonical combining classes,\n"
      " * decompositions and composites that tokenizer_nfc.c uses for NFC.\n */")
    p('#include "tokenizer_int.h"\n')
    for name in ("L", "N"):
        extra = onig_members(r"\p{%s}" % name) - pcre2_members(r"\p{%s}" % name)
        items = ["\\\\x{%X}-\\\\x{%X}" % (a, b) if a != b else "\\\\x{%X}" % a
                 for a, b in ranges(extra)]
        p("const char tk_extra_%s[] =" % name)
        for i in range(0, len(items), 4):
            p('    "%s"' % "".join(items[i:i + 4]))
        p("    \"\";\n")
    nfd = rust_nfd_each(ALL)
    ccc = combining_classes(nfd)
    runs = []
    for c in sorted(ccc):
        if runs and runs[-1][1] == c - 1 and runs[-1][2] == ccc[c]:
            runs[-1][1] = c
        else:
            runs.append([c, c, ccc[c]])
    p("const struct tk_ccc_range tk_ccc[] = {")
    for i in range(0, len(runs), 3):
        p("    " + " ".join("{0x%X, 0x%X, %d}," % tuple(r) for r in runs[i:i + 3]))
    p("};\nconst size_t tk_n_ccc = sizeof(tk_ccc) / sizeof(tk_ccc[0]);\n")
    dec = [(c, nfd[c]) for c in ALL if nfd[c] != chr(c) and not 0xAC00 <= c <= 0xD7A3]
    data, entries = [], []
    for c, d in dec:
        entries.append((c, len(data), len(d)))
        data.extend(ord(x) for x in d)
    p("const uint32_t tk_decomp_data[] = {")
    for i in range(0, len(data), 10):
        p("    " + " ".join("0x%X," % x for x in data[i:i + 10]))
    p("};\nconst struct tk_decomp tk_decomp[] = {")
    for i in range(0, len(entries), 4):
        p("    " + " ".join("{0x%X, %d, %d}," % e for e in entries[i:i + 4]))
    p("};\nconst size_t tk_n_decomp = sizeof(tk_decomp) / sizeof(tk_decomp[0]);\n")
    comp = composites(nfd)
    p("const struct tk_comp tk_comp[] = {")
    for i in range(0, len(comp), 3):
        p("    " + " ".join("{0x%X, 0x%X, 0x%X}," % e for e in comp[i:i + 3]))
    p("};\nconst size_t tk_n_comp = sizeof(tk_comp) / sizeof(tk_comp[0]);")


if __name__ == "__main__":
    main()
