/*
 * chat_template_builtins.c - what a chat template can call: jinja2's
 * filters and tests, the Python str/dict methods its sandbox allows, and
 * the globals transformers provides (range, namespace, dict,
 * raise_exception, strftime_now).
 *
 * Each behaves as its Python original does for the values a chat template
 * sees (strings, numbers, lists, dicts, Undefined), including Python's
 * Unicode whitespace for strip()/split()/|trim. Methods that mutate a list
 * or dict fail, as in jinja2's ImmutableSandboxedEnvironment. Case mapping
 * is ASCII-only unless utf8proc is available.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef HAVE_UTF8PROC
#include <utf8proc.h>
#endif

#include "chat_template_internal.h"

static enum es_status oom(struct ct_render *r)
{
    if (!r->status) r->status = ES_ENOMEM;
    return es_fail(r->err, ES_ENOMEM, "chat template: render memory limit exceeded");
}

/* Argument by position or keyword; false when not given. */
static bool arg(const struct ct_args *a, size_t pos, const char *kw, struct ct_val *out)
{
    if (kw)
        for (size_t i = 0; i < a->n_kw; i++)
            if (!strcmp(a->kw_names[i], kw)) {
                *out = a->kw[i];
                return true;
            }
    if (pos < a->n_pos) {
        *out = a->pos[pos];
        return true;
    }
    return false;
}

static bool arg_bool(const struct ct_args *a, size_t pos, const char *kw, bool def)
{
    struct ct_val v;
    return arg(a, pos, kw, &v) ? ct_truthy(v) : def;
}

static enum es_status need_str(struct ct_render *r, int line, struct ct_val v, const char *what)
{
    if (v.kind == CV_STR) return ES_OK;
    return ct_fail(r, line, ES_EINVAL, "%s must be a string, not %s", what, ct_type_name(v));
}

static struct ct_val mk_list(struct ct_list *l, enum ct_kind k)
{
    struct ct_val v = {.kind = k};
    v.u.list = l;
    return v;
}

/* ---- string helpers -------------------------------------------------- */

unsigned ct_next_cp(const char *s, size_t n, size_t *len)
{
    const unsigned char *p = (const unsigned char *)s;
    int l = utf8_char_len(p, n);
    if (l <= 1) {
        *len = 1;
        return p[0];
    }
    *len = (size_t)l;
    if (l == 2) return ((p[0] & 0x1fu) << 6) | (p[1] & 0x3fu);
    if (l == 3) return ((p[0] & 0x0fu) << 12) | ((p[1] & 0x3fu) << 6) | (p[2] & 0x3fu);
    return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3fu) << 12) | ((p[2] & 0x3fu) << 6) | (p[3] & 0x3fu);
}

/* Is the character at s one of the characters of set? */
static size_t in_set(const char *s, size_t n, struct ct_val set)
{
    size_t l;
    ct_next_cp(s, n, &l);
    for (size_t i = 0; i < set.u.s.n;) {
        size_t sl;
        ct_next_cp(set.u.s.p + i, set.u.s.n - i, &sl);
        if (sl == l && !memcmp(set.u.s.p + i, s, l)) return l;
        i += sl;
    }
    return 0;
}

/* Python str.strip/lstrip/rstrip; chars: CV_NONE/UNDEF for whitespace */
struct ct_val ct_strip(struct ct_val s, struct ct_val chars, bool left, bool right)
{
    const char *p = s.u.s.p;
    size_t n = s.u.s.n;
    bool ws = chars.kind != CV_STR;
    if (left) {
        size_t l;
        while (n && (l = ws ? ct_space_len(p, n) : in_set(p, n, chars)) > 0)
            p += l, n -= l;
    }
    if (right) {
        while (n) {
            size_t start = n - 1;
            while (start > 0 && ((unsigned char)p[start] & 0xc0) == 0x80 && n - start < 4)
                start--;
            size_t l =
                ws ? ct_space_len(p + start, n - start) : in_set(p + start, n - start, chars);
            if (l != n - start) break;
            n = start;
        }
    }
    return ct_str(p, n);
}

static unsigned map_case(unsigned cp, bool upper)
{
#ifdef HAVE_UTF8PROC
    return (unsigned)(upper ? utf8proc_toupper((utf8proc_int32_t)cp)
                            : utf8proc_tolower((utf8proc_int32_t)cp));
#else
    if (upper && cp >= 'a' && cp <= 'z') return cp - 32;
    if (!upper && cp >= 'A' && cp <= 'Z') return cp + 32;
    return cp;
#endif
}

static bool is_cased_letter(unsigned cp)
{
#ifdef HAVE_UTF8PROC
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT;
#else
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
#endif
}

enum es_status ct_change_case(struct ct_render *r, struct ct_val s, enum ct_case mode,
                              struct ct_val *out)
{
    struct strbuf sb = {0};
    bool prev_cased = false, word_start = true;
    size_t index = 0;
    for (size_t i = 0; i < s.u.s.n; index++) {
        size_t l;
        unsigned cp = ct_next_cp(s.u.s.p + i, s.u.s.n - i, &l);
        bool up;
        switch (mode) {
        case CASE_UPPER:
            up = true;
            break;
        case CASE_LOWER:
            up = false;
            break;
        case CASE_CAPITALIZE:
            up = index == 0;
            break;
        case CASE_TITLE:
            up = !prev_cased;
            break;
        default:
            up = word_start;
            break;
        }
        sb_put_utf8(&sb, map_case(cp, up));
        prev_cased = is_cased_letter(cp);
        /* jinja's |title starts a word after runs of -, whitespace, ( { [ < */
        word_start = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' ||
                     ct_space_len(s.u.s.p + i, s.u.s.n - i) > 0;
        i += l;
    }
    enum es_status st = ct_str_from_sb(r, &sb, out);
    sb_free(&sb);
    return st;
}

enum es_status ct_replace(struct ct_render *r, int line, struct ct_val s, struct ct_val old,
                          struct ct_val new, int64_t count, struct ct_val *out)
{
    struct strbuf sb = {0};
    size_t i = 0;
    int64_t done = 0;
    if (old.u.s.n == 0) { /* Python inserts new between every character */
        while ((count < 0 || done < count) && i <= s.u.s.n) {
            sb_append(&sb, new.u.s.p, new.u.s.n);
            done++;
            if (i == s.u.s.n) {
                i++;
                break;
            }
            size_t l;
            ct_next_cp(s.u.s.p + i, s.u.s.n - i, &l);
            sb_append(&sb, s.u.s.p + i, l);
            i += l;
        }
        if (i < s.u.s.n) sb_append(&sb, s.u.s.p + i, s.u.s.n - i);
    } else {
        while (count < 0 || done < count) {
            const char *hit = memmem(s.u.s.p + i, s.u.s.n - i, old.u.s.p, old.u.s.n);
            if (!hit) break;
            size_t at = (size_t)(hit - s.u.s.p);
            sb_append(&sb, s.u.s.p + i, at - i);
            sb_append(&sb, new.u.s.p, new.u.s.n);
            i = at + old.u.s.n;
            done++;
            if (sb.len > r->max_output_bytes) break;
        }
        sb_append(&sb, s.u.s.p + i, s.u.s.n - i);
    }
    enum es_status st = sb.len > r->max_output_bytes
                            ? ct_fail(r, line, ES_ERANGE, "string too long")
                            : ct_str_from_sb(r, &sb, out);
    sb_free(&sb);
    return st;
}

/* Python str.split(sep=None, maxsplit=-1) */
enum es_status ct_split(struct ct_render *r, struct ct_val s, struct ct_val sep, int64_t maxsplit,
                        struct ct_val *out)
{
    struct ct_list *l = ct_list_new(r, 0);
    if (!l) return oom(r);
    const char *p = s.u.s.p;
    size_t n = s.u.s.n, i = 0;
    if (sep.kind != CV_STR) {
        int64_t splits = 0;
        for (;;) {
            size_t sl;
            while (i < n && (sl = ct_space_len(p + i, n - i)) > 0)
                i += sl;
            if (i >= n) break;
            if (maxsplit >= 0 && splits >= maxsplit) { /* the remainder keeps its trailing space */
                if (ct_list_push(r, l, ct_str(p + i, n - i))) return ES_ENOMEM;
                break;
            }
            size_t start = i;
            while (i < n && ct_space_len(p + i, n - i) == 0) {
                size_t cl;
                ct_next_cp(p + i, n - i, &cl);
                i += cl;
            }
            if (ct_list_push(r, l, ct_str(p + start, i - start))) return ES_ENOMEM;
            splits++;
        }
    } else {
        int64_t splits = 0;
        for (;;) {
            const char *hit = (maxsplit < 0 || splits < maxsplit)
                                  ? memmem(p + i, n - i, sep.u.s.p, sep.u.s.n)
                                  : NULL;
            if (!hit) {
                if (ct_list_push(r, l, ct_str(p + i, n - i))) return ES_ENOMEM;
                break;
            }
            if (ct_list_push(r, l, ct_str(p + i, (size_t)(hit - (p + i))))) return ES_ENOMEM;
            i = (size_t)(hit - p) + sep.u.s.n;
            splits++;
        }
    }
    *out = mk_list(l, CV_LIST);
    return ES_OK;
}

bool ct_affix(struct ct_val s, struct ct_val x, bool end)
{
    if (x.kind != CV_STR || x.u.s.n > s.u.s.n) return false;
    const char *at = end ? s.u.s.p + s.u.s.n - x.u.s.n : s.u.s.p;
    return x.u.s.n == 0 || memcmp(at, x.u.s.p, x.u.s.n) == 0;
}

enum es_status ct_to_list(struct ct_render *r, int line, struct ct_val v, struct ct_list **out)
{
    struct ct_list *l = ct_list_new(r, 0);
    if (!l) return oom(r);
    switch (v.kind) {
    case CV_UNDEF:
        break;
    case CV_LIST:
    case CV_TUPLE:
        for (size_t i = 0; i < v.u.list->n; i++)
            if (ct_list_push(r, l, v.u.list->v[i])) return ES_ENOMEM;
        break;
    case CV_DICT:
    case CV_NS:
        for (size_t i = 0; i < v.u.dict->n; i++)
            if (ct_list_push(r, l, v.u.dict->keys[i])) return ES_ENOMEM;
        break;
    case CV_STR:
        for (size_t i = 0; i < v.u.s.n;) {
            size_t cl;
            ct_next_cp(v.u.s.p + i, v.u.s.n - i, &cl);
            if (ct_list_push(r, l, ct_str(v.u.s.p + i, cl))) return ES_ENOMEM;
            i += cl;
        }
        break;
    default:
        return ct_fail(r, line, ES_EINVAL, "'%s' object is not iterable", ct_type_name(v));
    }
    *out = l;
    return ES_OK;
}

/* jinja's environment.getattr(obj, "a.b") for map/selectattr/sort */
static enum es_status get_path(struct ct_render *r, int line, struct ct_val obj, struct ct_val attr,
                               struct ct_val *out)
{
    if (attr.kind == CV_INT) {
        if ((obj.kind == CV_LIST || obj.kind == CV_TUPLE) && attr.u.i >= 0 &&
            (size_t)attr.u.i < obj.u.list->n)
            *out = obj.u.list->v[attr.u.i];
        else
            *out = ct_undef(NULL);
        return ES_OK;
    }
    if (need_str(r, line, attr, "attribute")) return ES_EINVAL;
    const char *p = attr.u.s.p, *end = p + attr.u.s.n;
    *out = obj;
    while (p <= end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t len = dot ? (size_t)(dot - p) : (size_t)(end - p);
        if (out->kind == CV_UNDEF)
            return ct_fail(r, line, ES_EINVAL, "'%.*s' is undefined", (int)len, p);
        struct ct_val next = ct_undef(NULL);
        if (out->kind == CV_DICT || out->kind == CV_NS) {
            if (!ct_dict_get(out->u.dict, ct_str(p, len), &next)) next = ct_undef(NULL);
        } else if ((out->kind == CV_LIST || out->kind == CV_TUPLE) && len && p[0] >= '0' &&
                   p[0] <= '9') {
            size_t idx = (size_t)strtoul(p, NULL, 10);
            if (idx < out->u.list->n) next = out->u.list->v[idx];
        }
        *out = next;
        if (!dot) break;
        p = dot + 1;
    }
    return ES_OK;
}

/* ---- filters --------------------------------------------------------- */

static const char *const filter_names[] = {
    "abs",      "attr",   "capitalize", "center",     "count",      "d",         "default",
    "dictsort", "e",      "escape",     "first",      "float",      "format",    "indent",
    "int",      "items",  "join",       "last",       "length",     "list",      "lower",
    "map",      "max",    "min",        "reject",     "rejectattr", "replace",   "reverse",
    "round",    "safe",   "select",     "selectattr", "sort",       "string",    "sum",
    "title",    "tojson", "trim",       "unique",     "upper",      "wordcount", NULL};

bool ct_filter_known(const char *name)
{
    for (const char *const *f = filter_names; *f; f++)
        if (!strcmp(*f, name)) return true;
    return false;
}

static const char *const test_names[] = {
    "boolean", "callable", "defined",  "divisibleby", "eq",       "equalto",     "escaped",
    "even",    "false",    "filter",   "float",       "ge",       "greaterthan", "gt",
    "in",      "integer",  "iterable", "le",          "lessthan", "lower",       "lt",
    "mapping", "ne",       "none",     "number",      "odd",      "sameas",      "sequence",
    "string",  "test",     "true",     "undefined",   "upper",    NULL};

bool ct_test_known(const char *name)
{
    for (const char *const *t = test_names; *t; t++)
        if (!strcmp(*t, name)) return true;
    return false;
}

static enum es_status length_of(struct ct_render *r, int line, struct ct_val v, int64_t *n)
{
    switch (v.kind) {
    case CV_UNDEF:
        *n = 0;
        return ES_OK;
    case CV_STR:
        *n = (int64_t)ct_utf8_count(v.u.s.p, v.u.s.n);
        return ES_OK;
    case CV_LIST:
    case CV_TUPLE:
        *n = (int64_t)v.u.list->n;
        return ES_OK;
    case CV_DICT:
        *n = (int64_t)v.u.dict->n;
        return ES_OK;
    default:
        return ct_fail(r, line, ES_EINVAL, "object of type '%s' has no len()", ct_type_name(v));
    }
}

static enum es_status filter_tojson(struct ct_render *r, int line, struct ct_val v,
                                    const struct ct_args *a, struct ct_val *out)
{
    /* transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) */
    struct ct_json_opts o = {.item_sep = ", ", .key_sep = ": "};
    struct ct_val x;
    o.ensure_ascii = arg_bool(a, 0, "ensure_ascii", false);
    o.sort_keys = arg_bool(a, 3, "sort_keys", false);
    char spaces[64];
    if (arg(a, 1, "indent", &x) && x.kind != CV_NONE) {
        if (x.kind == CV_STR) {
            char *ind = ct_strndup(&r->arena, x.u.s.p, x.u.s.n);
            if (!ind) return oom(r);
            o.indent = ind;
        } else if (x.kind == CV_INT) {
            int64_t k = x.u.i < 0 ? 0 : x.u.i > 63 ? 63 : x.u.i;
            memset(spaces, ' ', (size_t)k);
            spaces[k] = '\0';
            o.indent = spaces;
        } else {
            return ct_fail(r, line, ES_EINVAL, "tojson: indent must be an int or a string");
        }
        o.item_sep = ",";
    }
    if (arg(a, 2, "separators", &x) && x.kind != CV_NONE) {
        if ((x.kind != CV_LIST && x.kind != CV_TUPLE) || x.u.list->n != 2 ||
            x.u.list->v[0].kind != CV_STR || x.u.list->v[1].kind != CV_STR)
            return ct_fail(r, line, ES_EINVAL, "tojson: separators must be a pair of strings");
        o.item_sep = ct_strndup(&r->arena, x.u.list->v[0].u.s.p, x.u.list->v[0].u.s.n);
        o.key_sep = ct_strndup(&r->arena, x.u.list->v[1].u.s.p, x.u.list->v[1].u.s.n);
        if (!o.item_sep || !o.key_sep) return oom(r);
    }
    struct strbuf sb = {0};
    enum es_status st = ct_append_json(r, line, &sb, v, &o, 0);
    if (!st) st = ct_str_from_sb(r, &sb, out);
    sb_free(&sb);
    return st;
}

/* Python int(str): optional sign, digits with single underscores, spaces around */
static bool parse_int(struct ct_val s, int64_t *out)
{
    struct ct_val t = ct_strip(s, ct_none(), true, true);
    char buf[64];
    size_t k = 0;
    for (size_t i = 0; i < t.u.s.n; i++) {
        char c = t.u.s.p[i];
        if (c == '_' && i > 0 && i + 1 < t.u.s.n && t.u.s.p[i - 1] >= '0' && t.u.s.p[i - 1] <= '9')
            continue;
        if (k + 1 >= sizeof buf) return false;
        buf[k++] = c;
    }
    buf[k] = '\0';
    if (!k) return false;
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (*end || errno || buf[0] == ' ' || buf[k - 1] == ' ') return false;
    *out = v;
    return true;
}

static bool parse_float(struct ct_val s, double *out)
{
    struct ct_val t = ct_strip(s, ct_none(), true, true);
    char buf[128];
    if (!t.u.s.n || t.u.s.n >= sizeof buf) return false;
    memcpy(buf, t.u.s.p, t.u.s.n);
    buf[t.u.s.n] = '\0';
    char *end;
    *out = strtod(buf, &end);
    return *end == '\0' && !(buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'X'));
}

static enum es_status apply_test_or_filter(struct ct_render *r, int line, bool is_test,
                                           struct ct_val name, struct ct_val item,
                                           const struct ct_args *rest, struct ct_val *out)
{
    char fname[32];
    if (need_str(r, line, name, is_test ? "test name" : "filter name")) return ES_EINVAL;
    snprintf(fname, sizeof fname, "%.*s", (int)name.u.s.n, name.u.s.p);
    if (is_test) {
        if (!ct_test_known(fname)) return ct_fail(r, line, ES_EINVAL, "no test named '%s'", fname);
        bool b;
        if (ct_apply_test(r, line, fname, item, rest, &b)) return ES_EINVAL;
        *out = ct_bool(b);
        return ES_OK;
    }
    if (!ct_filter_known(fname)) return ct_fail(r, line, ES_EINVAL, "no filter named '%s'", fname);
    return ct_apply_filter(r, line, fname, item, rest, out);
}

/* select/reject/selectattr/rejectattr */
static enum es_status filter_select(struct ct_render *r, int line, struct ct_val v,
                                    const struct ct_args *a, bool by_attr, bool keep_when,
                                    struct ct_val *out)
{
    struct ct_list *items, *res = ct_list_new(r, 0);
    if (!res || ct_to_list(r, line, v, &items)) return ES_EINVAL;
    size_t first_arg = by_attr ? 1 : 0;
    struct ct_val attr = {0}, test;
    if (by_attr && !arg(a, 0, NULL, &attr))
        return ct_fail(r, line, ES_EINVAL, "selectattr needs an attribute");
    bool has_test = arg(a, first_arg, NULL, &test);
    struct ct_args rest = {0};
    if (a->n_pos > first_arg + 1) {
        rest.pos = a->pos + first_arg + 1;
        rest.n_pos = a->n_pos - first_arg - 1;
    }
    for (size_t i = 0; i < items->n; i++) {
        struct ct_val x = items->v[i], res_v;
        if (by_attr && get_path(r, line, x, attr, &x)) return ES_EINVAL;
        bool ok;
        if (has_test) {
            if (apply_test_or_filter(r, line, true, test, x, &rest, &res_v)) return ES_EINVAL;
            ok = res_v.u.b;
        } else {
            ok = ct_truthy(x);
        }
        if (ok == keep_when && ct_list_push(r, res, items->v[i])) return ES_ENOMEM;
    }
    *out = mk_list(res, CV_LIST);
    return ES_OK;
}

static enum es_status filter_map(struct ct_render *r, int line, struct ct_val v,
                                 const struct ct_args *a, struct ct_val *out)
{
    struct ct_list *items, *res = ct_list_new(r, 0);
    if (!res || ct_to_list(r, line, v, &items)) return ES_EINVAL;
    struct ct_val attr, def, fname;
    bool by_attr = arg(a, (size_t)-1, "attribute", &attr);
    bool has_def = arg(a, (size_t)-1, "default", &def);
    if (!by_attr && !arg(a, 0, NULL, &fname))
        return ct_fail(r, line, ES_EINVAL, "map needs a filter or attribute");
    struct ct_args rest = {0};
    if (!by_attr && a->n_pos > 1) {
        rest.pos = a->pos + 1;
        rest.n_pos = a->n_pos - 1;
    }
    for (size_t i = 0; i < items->n; i++) {
        struct ct_val x;
        if (by_attr) {
            if (get_path(r, line, items->v[i], attr, &x)) return ES_EINVAL;
            if (x.kind == CV_UNDEF && has_def) x = def;
        } else if (apply_test_or_filter(r, line, false, fname, items->v[i], &rest, &x)) {
            return ES_EINVAL;
        }
        if (ct_list_push(r, res, x)) return ES_ENOMEM;
    }
    *out = mk_list(res, CV_LIST);
    return ES_OK;
}

/* sort key: attribute, then lower-cased strings unless case-sensitive */
static enum es_status sort_key(struct ct_render *r, int line, struct ct_val x, bool has_attr,
                               struct ct_val attr, bool case_sensitive, struct ct_val *out)
{
    if (has_attr && get_path(r, line, x, attr, &x)) return ES_EINVAL;
    if (!case_sensitive && x.kind == CV_STR) return ct_change_case(r, x, CASE_LOWER, out);
    *out = x;
    return ES_OK;
}

/* Merges the sorted runs [lo, mid) and [mid, hi) of (keys, vals) into
 * (tk, tv). Ties take the left element first, so the sort is stable like
 * Python's, also when reversed. */
static enum es_status merge_runs(struct ct_render *r, int line, const struct ct_val *keys,
                                 const struct ct_val *vals, struct ct_val *tk, struct ct_val *tv,
                                 size_t lo, size_t mid, size_t hi, bool reverse)
{
    size_t i = lo, j = mid;
    for (size_t o = lo; o < hi; o++) {
        bool left = j >= hi;
        if (i < mid && j < hi) {
            int c;
            if (ct_compare(r, line, keys[i], keys[j], &c)) return ES_EINVAL;
            left = reverse ? c >= 0 : c <= 0;
        } else if (i < mid) {
            left = true;
        }
        size_t from = left ? i++ : j++;
        tk[o] = keys[from];
        tv[o] = vals[from];
    }
    return ES_OK;
}

/* Stable bottom-up merge sort of l by keys: O(n log n) comparisons, so a
 * template that sorts a long list or string cannot stall a render. */
static enum es_status sort_values(struct ct_render *r, int line, struct ct_list *l,
                                  struct ct_val *keys, bool reverse)
{
    size_t n = l->n;
    if (n < 2) return ES_OK;
    struct ct_val *tk = ct_alloc(&r->arena, n * sizeof(*tk));
    struct ct_val *tv = ct_alloc(&r->arena, n * sizeof(*tv));
    if (!tk || !tv) return oom(r);
    struct ct_val *sk = keys, *sv = l->v; /* source of this pass */
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n;
            size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            if (merge_runs(r, line, sk, sv, tk, tv, lo, mid, hi, reverse)) return ES_EINVAL;
        }
        struct ct_val *swap_k = sk, *swap_v = sv;
        sk = tk;
        sv = tv;
        tk = swap_k;
        tv = swap_v;
    }
    if (sv != l->v) {
        memcpy(l->v, sv, n * sizeof(*sv));
        memcpy(keys, sk, n * sizeof(*sk));
    }
    return ES_OK;
}

static enum es_status filter_sort(struct ct_render *r, int line, struct ct_val v,
                                  const struct ct_args *a, struct ct_val *out)
{
    struct ct_list *l;
    struct ct_val attr;
    bool reverse = arg_bool(a, 0, "reverse", false), cs = arg_bool(a, 1, "case_sensitive", false);
    bool has_attr = arg(a, 2, "attribute", &attr);
    if (ct_to_list(r, line, v, &l)) return ES_EINVAL;
    struct ct_val *keys = ct_alloc(&r->arena, (l->n + 1) * sizeof(*keys));
    if (!keys) return oom(r);
    for (size_t i = 0; i < l->n; i++)
        if (sort_key(r, line, l->v[i], has_attr, attr, cs, &keys[i])) return ES_EINVAL;
    if (sort_values(r, line, l, keys, reverse)) return ES_EINVAL;
    *out = mk_list(l, CV_LIST);
    return ES_OK;
}

static enum es_status html_escape(struct ct_render *r, int line, struct ct_val v,
                                  struct ct_val *out)
{
    struct ct_val s;
    if (ct_to_str(r, line, v, &s)) return ES_EINVAL;
    struct strbuf sb = {0};
    for (size_t i = 0; i < s.u.s.n; i++) {
        char c = s.u.s.p[i];
        if (c == '&')
            sb_puts(&sb, "&amp;");
        else if (c == '<')
            sb_puts(&sb, "&lt;");
        else if (c == '>')
            sb_puts(&sb, "&gt;");
        else if (c == '"')
            sb_puts(&sb, "&#34;");
        else if (c == '\'')
            sb_puts(&sb, "&#39;");
        else
            sb_putc(&sb, c);
    }
    enum es_status st = ct_str_from_sb(r, &sb, out);
    sb_free(&sb);
    return st;
}

/* Python's str.splitlines line breaks */
static size_t line_break_len(const char *p, size_t n)
{
    unsigned char c = (unsigned char)p[0];
    if (c == '\r') return (n > 1 && p[1] == '\n') ? 2 : 1;
    if (c == '\n' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e)) return 1;
    if (n >= 2 && c == 0xc2 && (unsigned char)p[1] == 0x85) return 2;
    if (n >= 3 && c == 0xe2 && (unsigned char)p[1] == 0x80 &&
        ((unsigned char)p[2] == 0xa8 || (unsigned char)p[2] == 0xa9))
        return 3;
    return 0;
}

enum es_status ct_splitlines(struct ct_render *r, struct ct_val s, struct ct_list **out)
{
    struct ct_list *l = ct_list_new(r, 0);
    if (!l) return oom(r);
    size_t start = 0, i = 0;
    while (i < s.u.s.n) {
        size_t bl = line_break_len(s.u.s.p + i, s.u.s.n - i);
        if (!bl) {
            i++;
            continue;
        }
        if (ct_list_push(r, l, ct_str(s.u.s.p + start, i - start))) return ES_ENOMEM;
        i += bl;
        start = i;
    }
    if (start < s.u.s.n && ct_list_push(r, l, ct_str(s.u.s.p + start, s.u.s.n - start)))
        return ES_ENOMEM;
    *out = l;
    return ES_OK;
}

static enum es_status filter_indent(struct ct_render *r, int line, struct ct_val v,
                                    const struct ct_args *a, struct ct_val *out)
{
    struct ct_val s, w, ind;
    if (ct_to_str(r, line, v, &s)) return ES_EINVAL;
    char spaces[256];
    if (!arg(a, 0, "width", &w)) w = ct_int(4);
    if (w.kind == CV_STR)
        ind = w;
    else {
        int64_t k = w.kind == CV_INT ? w.u.i : 4;
        k = k < 0 ? 0 : k > 255 ? 255 : k;
        memset(spaces, ' ', (size_t)k);
        ind = ct_str(spaces, (size_t)k);
    }
    bool first = arg_bool(a, 1, "first", false), blank = arg_bool(a, 2, "blank", false);
    struct strbuf tmp = {0}, sb = {0};
    sb_append(&tmp, s.u.s.p, s.u.s.n);
    sb_putc(&tmp, '\n');
    struct ct_list *lines;
    enum es_status st = ct_splitlines(r, ct_str(sb_cstr(&tmp), tmp.len), &lines);
    if (st) goto out;
    if (first) sb_append(&sb, ind.u.s.p, ind.u.s.n);
    for (size_t i = 0; i < lines->n; i++) {
        struct ct_val ln = lines->v[i];
        if (i) {
            sb_putc(&sb, '\n');
            if (blank || ln.u.s.n) sb_append(&sb, ind.u.s.p, ind.u.s.n);
        }
        sb_append(&sb, ln.u.s.p, ln.u.s.n);
    }
    st = ct_str_from_sb(r, &sb, out);
out:
    sb_free(&tmp);
    sb_free(&sb);
    return st;
}

/* "%s" % args with %s, %d, %i, %r and %% */
static enum es_status percent_format(struct ct_render *r, int line, struct ct_val fmt,
                                     const struct ct_val *args, size_t n_args, struct ct_val *out)
{
    struct strbuf sb = {0};
    size_t k = 0;
    enum es_status st = ES_OK;
    for (size_t i = 0; i < fmt.u.s.n && !st; i++) {
        char c = fmt.u.s.p[i];
        if (c != '%') {
            sb_putc(&sb, c);
            continue;
        }
        char spec = i + 1 < fmt.u.s.n ? fmt.u.s.p[++i] : '\0';
        if (spec == '%') {
            sb_putc(&sb, '%');
        } else if ((spec == 's' || spec == 'r' || spec == 'd' || spec == 'i') && k < n_args) {
            struct ct_val x = args[k++];
            if (spec == 'r')
                st = ct_append_repr(r, line, &sb, x);
            else if (spec == 's')
                st = ct_append_str(r, line, &sb, x);
            else if (x.kind == CV_INT || x.kind == CV_BOOL)
                sb_printf(&sb, "%lld", (long long)(x.kind == CV_BOOL ? x.u.b : x.u.i));
            else if (x.kind == CV_FLOAT)
                sb_printf(&sb, "%lld", (long long)x.u.f);
            else
                st = ct_fail(r, line, ES_EINVAL, "%%d format: a number is required, not %s",
                             ct_type_name(x));
        } else {
            st = ct_fail(r, line, ES_EUNSUPPORTED, "unsupported format string");
        }
    }
    if (!st && k != n_args)
        st = ct_fail(r, line, ES_EINVAL, "not all arguments converted during string formatting");
    if (!st) st = ct_str_from_sb(r, &sb, out);
    sb_free(&sb);
    return st;
}

enum es_status ct_join(struct ct_render *r, int line, struct ct_list *items, struct ct_val sep,
                       struct ct_val *out)
{
    struct strbuf sb = {0};
    enum es_status st = ES_OK;
    for (size_t i = 0; i < items->n && !st; i++) {
        if (i) sb_append(&sb, sep.u.s.p, sep.u.s.n);
        st = ct_append_str(r, line, &sb, items->v[i]);
    }
    if (!st) st = ct_str_from_sb(r, &sb, out);
    sb_free(&sb);
    return st;
}

enum es_status ct_apply_filter(struct ct_render *r, int line, const char *name, struct ct_val v,
                               const struct ct_args *a, struct ct_val *out)
{
    struct ct_val x, y, s;
    struct ct_list *l;
    int64_t n = 0;
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        if (!arg(a, 0, "default_value", &x)) x = ct_str("", 0);
        bool boolean = arg_bool(a, 1, "boolean", false);
        *out = (v.kind == CV_UNDEF || (boolean && !ct_truthy(v))) ? x : v;
        return ES_OK;
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        if (length_of(r, line, v, &n)) return ES_EINVAL;
        *out = ct_int(n);
        return ES_OK;
    }
    if (!strcmp(name, "tojson")) return filter_tojson(r, line, v, a, out);
    if (!strcmp(name, "safe")) {
        *out = v;
        return ES_OK;
    }
    if (!strcmp(name, "string")) return ct_to_str(r, line, v, out);
    if (!strcmp(name, "trim")) {
        if (ct_to_str(r, line, v, &s)) return ES_EINVAL;
        if (!arg(a, 0, "chars", &x)) x = ct_none();
        *out = ct_strip(s, x, true, true);
        return ES_OK;
    }
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "title") ||
        !strcmp(name, "capitalize")) {
        if (ct_to_str(r, line, v, &s)) return ES_EINVAL;
        enum ct_case m = name[0] == 'u'   ? CASE_UPPER
                         : name[0] == 'l' ? CASE_LOWER
                         : name[0] == 't' ? CASE_JINJA_TITLE
                                          : CASE_CAPITALIZE;
        if (m == CASE_CAPITALIZE) { /* s[0].upper() + s[1:].lower() */
            struct ct_val lower;
            if (ct_change_case(r, s, CASE_LOWER, &lower)) return ES_EINVAL;
            s = lower;
        }
        return ct_change_case(r, s, m, out);
    }
    if (!strcmp(name, "replace")) {
        struct ct_val old, new, cnt;
        if (ct_to_str(r, line, v, &s) || !arg(a, 0, "old", &old) || !arg(a, 1, "new", &new))
            return ct_fail(r, line, ES_EINVAL, "replace needs old and new");
        if (ct_to_str(r, line, old, &old) || ct_to_str(r, line, new, &new)) return ES_EINVAL;
        int64_t count = arg(a, 2, "count", &cnt) && cnt.kind == CV_INT ? cnt.u.i : -1;
        return ct_replace(r, line, s, old, new, count, out);
    }
    if (!strcmp(name, "join")) {
        if (!arg(a, 0, "d", &x)) x = ct_str("", 0);
        if (ct_to_str(r, line, x, &x) || ct_to_list(r, line, v, &l)) return ES_EINVAL;
        if (arg(a, 1, "attribute", &y))
            for (size_t i = 0; i < l->n; i++)
                if (get_path(r, line, l->v[i], y, &l->v[i])) return ES_EINVAL;
        return ct_join(r, line, l, x, out);
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        if (v.kind == CV_UNDEF) {
            *out = ct_undef(NULL);
            return ES_OK;
        }
        if (ct_to_list(r, line, v, &l)) return ES_EINVAL;
        *out = l->n ? l->v[name[0] == 'f' ? 0 : l->n - 1] : ct_undef(NULL);
        return ES_OK;
    }
    if (!strcmp(name, "list")) {
        if (ct_to_list(r, line, v, &l)) return ES_EINVAL;
        *out = mk_list(l, CV_LIST);
        return ES_OK;
    }
    if (!strcmp(name, "reverse")) {
        if (v.kind == CV_STR) {
            struct strbuf sb = {0};
            if (ct_to_list(r, line, v, &l)) return ES_EINVAL;
            for (size_t i = l->n; i-- > 0;)
                sb_append(&sb, l->v[i].u.s.p, l->v[i].u.s.n);
            enum es_status st = ct_str_from_sb(r, &sb, out);
            sb_free(&sb);
            return st;
        }
        if (ct_to_list(r, line, v, &l)) return ES_EINVAL;
        for (size_t i = 0; i < l->n / 2; i++) {
            struct ct_val t = l->v[i];
            l->v[i] = l->v[l->n - 1 - i];
            l->v[l->n - 1 - i] = t;
        }
        *out = mk_list(l, CV_LIST);
        return ES_OK;
    }
    if (!strcmp(name, "items")) {
        if (v.kind == CV_UNDEF) {
            *out = mk_list(ct_list_new(r, 0), CV_LIST);
            return out->u.list ? ES_OK : oom(r);
        }
        if (v.kind != CV_DICT)
            return ct_fail(r, line, ES_EINVAL, "items filter needs a mapping, got %s",
                           ct_type_name(v));
        struct ct_method m = {.self = v, .name = "items"};
        struct ct_args none = {0};
        return ct_call_method(r, line, &m, &none, out);
    }
    if (!strcmp(name, "int") || !strcmp(name, "float")) {
        bool want_int = name[0] == 'i';
        struct ct_val def;
        if (!arg(a, 0, "default", &def)) {
            def = ct_int(0);
            if (!want_int) {
                def.kind = CV_FLOAT;
                def.u.f = 0.0;
            }
        }
        double d;
        int64_t i;
        if (v.kind == CV_INT || v.kind == CV_BOOL) {
            i = v.kind == CV_BOOL ? v.u.b : v.u.i;
            d = (double)i;
        } else if (v.kind == CV_FLOAT) {
            d = v.u.f;
            if (want_int && !isfinite(d)) {
                *out = def;
                return ES_OK;
            }
            i = (int64_t)d;
        } else if (v.kind == CV_STR && want_int && parse_int(v, &i)) {
            d = (double)i;
        } else if (v.kind == CV_STR && parse_float(v, &d)) {
            i = (int64_t)d;
        } else {
            *out = def;
            return ES_OK;
        }
        if (want_int)
            *out = ct_int(i);
        else {
            out->kind = CV_FLOAT;
            out->u.f = d;
        }
        return ES_OK;
    }
    if (!strcmp(name, "abs")) {
        if (v.kind == CV_INT)
            *out = ct_int(v.u.i < 0 ? -v.u.i : v.u.i);
        else if (v.kind == CV_FLOAT)
            *out = v, out->u.f = fabs(v.u.f);
        else if (v.kind == CV_BOOL)
            *out = ct_int(v.u.b);
        else
            return ct_fail(r, line, ES_EINVAL, "bad operand type for abs(): '%s'", ct_type_name(v));
        return ES_OK;
    }
    if (!strcmp(name, "round")) {
        struct ct_val prec, method;
        int64_t p = arg(a, 0, "precision", &prec) && prec.kind == CV_INT ? prec.u.i : 0;
        const char *m =
            arg(a, 1, "method", &method) && method.kind == CV_STR ? method.u.s.p : "common";
        double d = v.kind == CV_FLOAT  ? v.u.f
                   : v.kind == CV_INT  ? (double)v.u.i
                   : v.kind == CV_BOOL ? v.u.b
                                       : NAN;
        if (isnan(d) && v.kind != CV_FLOAT)
            return ct_fail(r, line, ES_EINVAL, "round needs a number");
        double scale = pow(10.0, (double)p);
        double t = d * scale;
        t = !strncmp(m, "ceil", 4) ? ceil(t) : !strncmp(m, "floor", 5) ? floor(t) : nearbyint(t);
        out->kind = CV_FLOAT;
        out->u.f = t / scale;
        return ES_OK;
    }
    if (!strcmp(name, "select") || !strcmp(name, "reject"))
        return filter_select(r, line, v, a, false, name[0] == 's', out);
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr"))
        return filter_select(r, line, v, a, true, name[0] == 's', out);
    if (!strcmp(name, "map")) return filter_map(r, line, v, a, out);
    if (!strcmp(name, "attr")) {
        if (!arg(a, 0, "name", &x))
            return ct_fail(r, line, ES_EINVAL, "attr() needs an attribute name");
        if (need_str(r, line, x, "attribute name")) return ES_EINVAL;
        char *an = ct_strndup(&r->arena, x.u.s.p, x.u.s.n);
        if (!an) return oom(r);
        if (v.kind == CV_UNDEF) return ct_fail(r, line, ES_EINVAL, "'%s' is undefined", an);
        if (ct_method_lookup(r, v, an, x.u.s.n, out)) return ES_OK;
        if (v.kind == CV_NS && ct_dict_get(v.u.dict, x, out)) return ES_OK;
        *out = ct_undef(an);
        return ES_OK;
    }
    if (!strcmp(name, "sort")) return filter_sort(r, line, v, a, out);
    if (!strcmp(name, "dictsort")) {
        if (v.kind != CV_DICT) return ct_fail(r, line, ES_EINVAL, "dictsort needs a mapping");
        bool cs = arg_bool(a, 0, "case_sensitive", false),
             reverse = arg_bool(a, 2, "reverse", false);
        bool by_value =
            arg(a, 1, "by", &x) && x.kind == CV_STR && x.u.s.n == 5 && !memcmp(x.u.s.p, "value", 5);
        struct ct_method m = {.self = v, .name = "items"};
        struct ct_args none = {0};
        if (ct_call_method(r, line, &m, &none, &y)) return ES_EINVAL;
        l = y.u.list;
        struct ct_val *keys = ct_alloc(&r->arena, (l->n + 1) * sizeof(*keys));
        if (!keys) return oom(r);
        for (size_t i = 0; i < l->n; i++)
            if (sort_key(r, line, l->v[i].u.list->v[by_value ? 1 : 0], false, x, cs, &keys[i]))
                return ES_EINVAL;
        if (sort_values(r, line, l, keys, reverse)) return ES_EINVAL;
        *out = y;
        return ES_OK;
    }
    if (!strcmp(name, "unique")) {
        struct ct_list *res = ct_list_new(r, 0), *seen = ct_list_new(r, 0);
        bool cs = arg_bool(a, 0, "case_sensitive", false);
        bool has_attr = arg(a, 1, "attribute", &x);
        if (!res || !seen || ct_to_list(r, line, v, &l)) return ES_EINVAL;
        for (size_t i = 0; i < l->n; i++) {
            struct ct_val k;
            bool dup = false;
            if (sort_key(r, line, l->v[i], has_attr, x, cs, &k)) return ES_EINVAL;
            for (size_t j = 0; j < seen->n && !dup; j++)
                dup = ct_equal(seen->v[j], k);
            if (!dup && (ct_list_push(r, seen, k) || ct_list_push(r, res, l->v[i])))
                return ES_ENOMEM;
        }
        *out = mk_list(res, CV_LIST);
        return ES_OK;
    }
    if (!strcmp(name, "min") || !strcmp(name, "max")) {
        bool cs = arg_bool(a, 0, "case_sensitive", false), has_attr = arg(a, 1, "attribute", &x);
        if (ct_to_list(r, line, v, &l)) return ES_EINVAL;
        if (!l->n) {
            *out = ct_undef(NULL);
            return ES_OK;
        }
        struct ct_val best = l->v[0], best_key;
        if (sort_key(r, line, best, has_attr, x, cs, &best_key)) return ES_EINVAL;
        for (size_t i = 1; i < l->n; i++) {
            struct ct_val k;
            int c;
            if (sort_key(r, line, l->v[i], has_attr, x, cs, &k) ||
                ct_compare(r, line, k, best_key, &c))
                return ES_EINVAL;
            if (name[1] == 'i' ? c < 0 : c > 0) best = l->v[i], best_key = k;
        }
        *out = best;
        return ES_OK;
    }
    if (!strcmp(name, "sum")) {
        struct ct_val acc;
        bool has_attr = arg(a, 0, "attribute", &x);
        if (!arg(a, 1, "start", &acc)) acc = ct_int(0);
        if (ct_to_list(r, line, v, &l)) return ES_EINVAL;
        for (size_t i = 0; i < l->n; i++) {
            struct ct_val item = l->v[i];
            if (has_attr && get_path(r, line, item, x, &item)) return ES_EINVAL;
            bool num = item.kind == CV_INT || item.kind == CV_FLOAT || item.kind == CV_BOOL;
            if (!num)
                return ct_fail(r, line, ES_EINVAL, "sum: unsupported operand type '%s'",
                               ct_type_name(item));
            if (acc.kind == CV_FLOAT || item.kind == CV_FLOAT) {
                double s1 = acc.kind == CV_FLOAT
                                ? acc.u.f
                                : (double)(acc.kind == CV_BOOL ? acc.u.b : acc.u.i);
                double s2 = item.kind == CV_FLOAT
                                ? item.u.f
                                : (double)(item.kind == CV_BOOL ? item.u.b : item.u.i);
                acc.kind = CV_FLOAT;
                acc.u.f = s1 + s2;
            } else {
                acc = ct_int((acc.kind == CV_BOOL ? acc.u.b : acc.u.i) +
                             (item.kind == CV_BOOL ? item.u.b : item.u.i));
            }
        }
        *out = acc;
        return ES_OK;
    }
    if (!strcmp(name, "e") || !strcmp(name, "escape")) return html_escape(r, line, v, out);
    if (!strcmp(name, "indent")) return filter_indent(r, line, v, a, out);
    if (!strcmp(name, "format")) {
        if (need_str(r, line, v, "format string")) return ES_EINVAL;
        return percent_format(r, line, v, a->pos, a->n_pos, out);
    }
    if (!strcmp(name, "wordcount")) {
        if (ct_to_str(r, line, v, &s) || ct_split(r, s, ct_none(), -1, &x)) return ES_EINVAL;
        *out = ct_int((int64_t)x.u.list->n);
        return ES_OK;
    }
    if (!strcmp(name, "center")) {
        if (ct_to_str(r, line, v, &s)) return ES_EINVAL;
        int64_t width = arg(a, 0, "width", &x) && x.kind == CV_INT ? x.u.i : 80;
        int64_t len = (int64_t)ct_utf8_count(s.u.s.p, s.u.s.n);
        if (width <= len || width > 100000) {
            *out = s;
            return ES_OK;
        }
        int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
        struct strbuf sb = {0};
        for (int64_t i = 0; i < left; i++)
            sb_putc(&sb, ' ');
        sb_append(&sb, s.u.s.p, s.u.s.n);
        for (int64_t i = 0; i < pad - left; i++)
            sb_putc(&sb, ' ');
        enum es_status st = ct_str_from_sb(r, &sb, out);
        sb_free(&sb);
        return st;
    }
    return ct_fail(r, line, ES_EUNSUPPORTED, "unsupported filter '%s'", name);
}

/* ---- tests ----------------------------------------------------------- */

static bool str_has_case(struct ct_val s, bool upper)
{
    bool cased = false;
    for (size_t i = 0; i < s.u.s.n;) {
        size_t l;
        unsigned cp = ct_next_cp(s.u.s.p + i, s.u.s.n - i, &l);
        if (is_cased_letter(cp)) {
            if (map_case(cp, !upper) == cp && map_case(cp, upper) != cp) return false;
            cased = true;
        }
        i += l;
    }
    return cased;
}

enum es_status ct_apply_test(struct ct_render *r, int line, const char *name, struct ct_val v,
                             const struct ct_args *a, bool *out)
{
    struct ct_val x;
    bool has = arg(a, 0, NULL, &x);
    int c;
    static const char *const unary[] = {
        "defined", "undefined", "none",    "boolean",  "true",     "false",    "integer", "float",
        "number",  "string",    "mapping", "iterable", "sequence", "callable", "escaped", "lower",
        "upper",   "odd",       "even",    "filter",   "test",     NULL};
    for (const char *const *u = unary; *u && (a->n_pos || a->n_kw); u++)
        if (!strcmp(*u, name))
            return ct_fail(r, line, ES_EINVAL, "test '%s' takes no arguments", name);
    if (!strcmp(name, "defined"))
        *out = v.kind != CV_UNDEF;
    else if (!strcmp(name, "undefined"))
        *out = v.kind == CV_UNDEF;
    else if (!strcmp(name, "none"))
        *out = v.kind == CV_NONE;
    else if (!strcmp(name, "boolean"))
        *out = v.kind == CV_BOOL;
    else if (!strcmp(name, "true"))
        *out = v.kind == CV_BOOL && v.u.b;
    else if (!strcmp(name, "false"))
        *out = v.kind == CV_BOOL && !v.u.b;
    else if (!strcmp(name, "integer"))
        *out = v.kind == CV_INT;
    else if (!strcmp(name, "float"))
        *out = v.kind == CV_FLOAT;
    else if (!strcmp(name, "number"))
        *out = v.kind == CV_INT || v.kind == CV_FLOAT || v.kind == CV_BOOL;
    else if (!strcmp(name, "string"))
        *out = v.kind == CV_STR;
    else if (!strcmp(name, "mapping"))
        *out = v.kind == CV_DICT;
    else if (!strcmp(name, "iterable") || !strcmp(name, "sequence"))
        *out = v.kind == CV_STR || v.kind == CV_LIST || v.kind == CV_TUPLE || v.kind == CV_DICT ||
               v.kind == CV_UNDEF;
    else if (!strcmp(name, "callable"))
        *out = v.kind == CV_MACRO || v.kind == CV_FUNC || v.kind == CV_METHOD;
    else if (!strcmp(name, "escaped"))
        *out = false;
    else if (!strcmp(name, "lower") || !strcmp(name, "upper"))
        *out = v.kind == CV_STR && str_has_case(v, name[0] == 'u');
    else if (!strcmp(name, "odd") || !strcmp(name, "even") || !strcmp(name, "divisibleby")) {
        if (v.kind != CV_INT && v.kind != CV_BOOL)
            return ct_fail(r, line, ES_EINVAL, "test '%s' needs an integer, got %s", name,
                           ct_type_name(v));
        int64_t i = v.kind == CV_BOOL ? v.u.b : v.u.i;
        if (name[0] == 'o')
            *out = i % 2 != 0;
        else if (name[0] == 'e')
            *out = i % 2 == 0;
        else {
            if (!has || x.kind != CV_INT || x.u.i == 0)
                return ct_fail(r, line, ES_EINVAL, "divisibleby needs a non-zero integer");
            *out = i % x.u.i == 0;
        }
    } else if (!strcmp(name, "filter") || !strcmp(name, "test")) {
        if (v.kind != CV_STR)
            *out = false;
        else {
            char buf[32];
            snprintf(buf, sizeof buf, "%.*s", (int)v.u.s.n, v.u.s.p);
            *out = name[0] == 'f' ? ct_filter_known(buf) : ct_test_known(buf);
        }
    } else {
        if (!has) return ct_fail(r, line, ES_EINVAL, "test '%s' needs an argument", name);
        if (!strcmp(name, "eq") || !strcmp(name, "equalto"))
            *out = ct_equal(v, x);
        else if (!strcmp(name, "ne"))
            *out = !ct_equal(v, x);
        else if (!strcmp(name, "sameas"))
            /* identity: containers by reference; scalars (interned or small in
             * CPython) by value */
            *out = v.kind == x.kind && ct_equal(v, x) &&
                   (v.kind != CV_LIST && v.kind != CV_TUPLE && v.kind != CV_DICT
                        ? true
                        : v.u.list == x.u.list);
        else if (!strcmp(name, "in")) {
            struct ct_list *l;
            if (x.kind == CV_STR) {
                if (v.kind != CV_STR)
                    return ct_fail(r, line, ES_EINVAL,
                                   "'in <string>' requires string as left operand");
                *out = v.u.s.n == 0 || memmem(x.u.s.p, x.u.s.n, v.u.s.p, v.u.s.n) != NULL;
            } else {
                if (ct_to_list(r, line, x, &l)) return ES_EINVAL;
                *out = false;
                for (size_t i = 0; i < l->n && !*out; i++)
                    *out = ct_equal(v, l->v[i]);
            }
        } else {
            if (ct_compare(r, line, v, x, &c)) return ES_EINVAL;
            if (!strcmp(name, "lt") || !strcmp(name, "lessthan"))
                *out = c < 0;
            else if (!strcmp(name, "le"))
                *out = c <= 0;
            else if (!strcmp(name, "gt") || !strcmp(name, "greaterthan"))
                *out = c > 0;
            else
                *out = c >= 0;
        }
    }
    return ES_OK;
}
