/*
 * tokenizer_nfc.c - NFC / NFD exactly as the Rust `tokenizers` normalizers
 * compute them, from the generated tables of tokenizer_unicode.c.
 *
 * Why not utf8proc: the normalizers of `tokenizers` use Unicode tables of
 * their own age, and utf8proc differs from them on recently assigned marks
 * (combining classes, decompositions) and, in utf8proc 2.6, drops U+11A7
 * after a Hangul LV syllable. utf8proc remains in use for NFKC / NFKD.
 *
 * Text without any character that normalization can touch (a bitmap over
 * planes 0 and 1 answers that in one lookup) is copied unchanged; otherwise the
 * whole piece is decomposed, reordered and recomposed. Pure functions; the
 * bitmap is built once under pthread_once.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_int.h"

#define SBASE 0xAC00u
#define LBASE 0x1100u
#define VBASE 0x1161u
#define TBASE 0x11A7u
#define LCOUNT 19u
#define VCOUNT 21u
#define TCOUNT 28u
#define NCOUNT (VCOUNT * TCOUNT)
#define SCOUNT (LCOUNT * NCOUNT)

#define TOUCHY_LIMIT 0x20000u                /* the bitmap covers planes 0 and 1 */
static uint8_t bmp_touchy[TOUCHY_LIMIT / 8]; /* characters NFC may change or join */
static pthread_once_t bmp_once = PTHREAD_ONCE_INIT;

static int ccc_of(uint32_t cp)
{
    size_t lo = 0, hi = tk_n_ccc;
    if (cp < 0x300) return 0;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tk_ccc[mid].lo)
            hi = mid;
        else if (cp > tk_ccc[mid].hi)
            lo = mid + 1;
        else
            return tk_ccc[mid].ccc;
    }
    return 0;
}

static const struct tk_decomp *decomp_of(uint32_t cp)
{
    size_t lo = 0, hi = tk_n_decomp;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tk_decomp[mid].cp)
            hi = mid;
        else if (cp > tk_decomp[mid].cp)
            lo = mid + 1;
        else
            return &tk_decomp[mid];
    }
    return NULL;
}

static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE &&
        b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = tk_n_comp;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const struct tk_comp *c = &tk_comp[mid];
        if (a < c->a || (a == c->a && b < c->b))
            hi = mid;
        else if (a > c->a || b > c->b)
            lo = mid + 1;
        else
            return c->c;
    }
    return 0;
}

static void mark(uint32_t cp)
{
    if (cp < TOUCHY_LIMIT) bmp_touchy[cp >> 3] |= (uint8_t)(1u << (cp & 7));
}

static void build_bmp(void)
{
    for (size_t i = 0; i < tk_n_ccc; i++)
        for (uint32_t c = tk_ccc[i].lo; c <= tk_ccc[i].hi; c++)
            mark(c);
    for (size_t i = 0; i < tk_n_comp; i++)
        mark(tk_comp[i].b);
    for (size_t i = 0; i < tk_n_decomp; i++) {
        /* a decomposable character that is not its own composite changes */
        const struct tk_decomp *d = &tk_decomp[i];
        bool primary = false;
        for (size_t k = 0; k < tk_n_comp && !primary; k++)
            if (tk_comp[k].c == d->cp) primary = true;
        if (!primary) mark(d->cp);
    }
    for (uint32_t c = LBASE; c < 0x1200; c++)
        mark(c); /* conjoining jamo */
}

static bool touchy(uint32_t cp, bool compose)
{
    if (cp < 0xC0) return false;
    if (!compose) return ccc_of(cp) != 0 || (cp >= SBASE && cp < SBASE + SCOUNT) || decomp_of(cp);
    if (cp < TOUCHY_LIMIT) return bmp_touchy[cp >> 3] & (1u << (cp & 7));
    return ccc_of(cp) != 0 || decomp_of(cp) != NULL;
}

static uint32_t next_cp(const unsigned char *s, size_t n, size_t *i)
{
    int l = utf8_char_len(s + *i, n - *i);
    uint32_t c = s[*i];
    if (l <= 1) {
        *i += 1;
        return c;
    }
    c &= 0xFFu >> (l + 1);
    for (int k = 1; k < l; k++)
        c = (c << 6) | (s[*i + k] & 0x3F);
    *i += (size_t)l;
    return c;
}

static enum es_status put_cp(struct strbuf *out, uint32_t c)
{
    char b[4];
    size_t n;
    if (c < 0x80)
        b[0] = (char)c, n = 1;
    else if (c < 0x800)
        b[0] = (char)(0xC0 | (c >> 6)), b[1] = (char)(0x80 | (c & 63)), n = 2;
    else if (c < 0x10000)
        b[0] = (char)(0xE0 | (c >> 12)), b[1] = (char)(0x80 | ((c >> 6) & 63)),
        b[2] = (char)(0x80 | (c & 63)), n = 3;
    else
        b[0] = (char)(0xF0 | (c >> 18)), b[1] = (char)(0x80 | ((c >> 12) & 63)),
        b[2] = (char)(0x80 | ((c >> 6) & 63)), b[3] = (char)(0x80 | (c & 63)), n = 4;
    return sb_append(out, b, n);
}

/* Normalizes one region (starting at a starter) into out. cp is scratch of
 * at least 4 * n + 8 entries. */
static enum es_status normalize_region(const unsigned char *u, size_t n, bool compose, uint32_t *cp,
                                       struct strbuf *out)
{
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c = next_cp(u, n, &i);
        const struct tk_decomp *d;
        if (c >= SBASE && c < SBASE + SCOUNT) {
            uint32_t si = c - SBASE;
            cp[m++] = LBASE + si / NCOUNT;
            cp[m++] = VBASE + (si % NCOUNT) / TCOUNT;
            if (si % TCOUNT) cp[m++] = TBASE + si % TCOUNT;
        } else if (c >= 0xC0 && (d = decomp_of(c)) != NULL) {
            for (int k = 0; k < d->len; k++)
                cp[m++] = tk_decomp_data[d->off + k];
        } else {
            cp[m++] = c;
        }
    }
    /* canonical ordering: stable insertion sort of each run of non-starters */
    for (size_t i = 1; i < m; i++) {
        int ci = ccc_of(cp[i]);
        if (ci == 0) continue;
        size_t j = i;
        uint32_t c = cp[i];
        while (j > 0) {
            int cj = ccc_of(cp[j - 1]);
            if (cj == 0 || cj <= ci) break;
            cp[j] = cp[j - 1];
            j--;
        }
        cp[j] = c;
    }
    /* canonical composition */
    if (compose && m > 0) {
        size_t w = 0, starter = SIZE_MAX;
        int last_ccc = -1; /* class of the last uncomposed char after the starter */
        for (size_t i = 0; i < m; i++) {
            uint32_t c = cp[i];
            int cc = ccc_of(c);
            if (starter != SIZE_MAX && (last_ccc == -1 || (last_ccc != 0 && last_ccc < cc))) {
                uint32_t r = compose_pair(cp[starter], c);
                if (r) {
                    cp[starter] = r;
                    continue;
                }
            }
            if (cc == 0) {
                starter = w;
                last_ccc = -1;
            } else {
                last_ccc = cc;
            }
            cp[w++] = c;
        }
        m = w;
    }
    enum es_status st = sb_reserve(out, m * 4);
    for (size_t i = 0; i < m && st == ES_OK; i++)
        st = put_cp(out, cp[i]);
    return st;
}

enum es_status tkn_canonical(const char *s, size_t n, bool compose, struct strbuf *out)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t *cp = NULL;
    size_t cp_cap = 0, copied = 0, last_plain = 0, i = 0;
    enum es_status st = ES_OK;
    pthread_once(&bmp_once, build_bmp);
    /* Only regions around characters that normalization can touch are
     * rewritten: from the last untouchable character (a starter that
     * nothing before it composes with) to the next one. */
    while (i < n && st == ES_OK) {
        size_t at = i;
        if (u[i] < 0xC3) { /* below U+00C0: one byte, or 0xC2 and one more */
            last_plain = i;
            i += u[i] < 0x80 ? 1 : 2;
            continue;
        }
        if (!touchy(next_cp(u, n, &i), compose)) {
            last_plain = at;
            continue;
        }
        size_t rs = last_plain > copied ? last_plain : copied;
        if (rs > at) rs = at;
        size_t re = i;
        while (re < n) {
            size_t nx = re;
            if (!touchy(next_cp(u, n, &nx), compose)) break;
            re = nx;
        }
        if (4 * (re - rs) + 8 > cp_cap) {
            free(cp);
            cp_cap = 4 * (re - rs) + 8;
            cp = malloc(cp_cap * sizeof(uint32_t));
            if (!cp) return ES_ENOMEM;
        }
        st = sb_append(out, s + copied, rs - copied);
        if (st == ES_OK) st = normalize_region(u + rs, re - rs, compose, cp, out);
        copied = re;
        i = re;
        last_plain = re;
    }
    if (st == ES_OK) st = sb_append(out, s + copied, n - copied);
    free(cp);
    return st;
}
