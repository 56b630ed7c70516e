/*
 * chat_template_value.c - run-time values of the chat-template interpreter
 * and their Python semantics: truthiness, equality, ordering, str() and
 * repr() as Python prints them (floats in shortest round-trip form, "None",
 * "True"), json.dumps as transformers' tojson calls it, and the conversion
 * of the cJSON render context into values.
 *
 * Values are small structs passed by copy; strings point into the context,
 * the compiled template or the render arena and are never written after
 * creation. Every allocation goes through the render arena, so a render
 * that builds too much fails with a limit error instead of exhausting
 * memory.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_internal.h"

enum es_status ct_fail(struct ct_render *r, int line, enum es_status st, const char *fmt, ...)
{
    char msg[440];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!r->status) r->status = st;
    return es_fail(r->err, st, "chat template line %d: %s", line, msg);
}

static enum es_status oom(struct ct_render *r)
{
    if (!r->status) r->status = ES_ENOMEM;
    return es_fail(r->err, ES_ENOMEM, "chat template: render memory limit exceeded");
}

/* ---- builders -------------------------------------------------------- */

struct ct_val ct_str(const char *p, size_t n)
{
    struct ct_val v = {.kind = CV_STR};
    v.u.s.p = p;
    v.u.s.n = n;
    return v;
}
struct ct_val ct_cstr(const char *s)
{
    return ct_str(s, strlen(s));
}
struct ct_val ct_int(int64_t i)
{
    struct ct_val v = {.kind = CV_INT};
    v.u.i = i;
    return v;
}
struct ct_val ct_bool(bool b)
{
    struct ct_val v = {.kind = CV_BOOL};
    v.u.b = b;
    return v;
}
struct ct_val ct_none(void)
{
    struct ct_val v = {.kind = CV_NONE};
    return v;
}
struct ct_val ct_undef(const char *name)
{
    struct ct_val v = {.kind = CV_UNDEF};
    v.u.s.p = name;
    v.u.s.n = name ? strlen(name) : 0;
    return v;
}

struct ct_list *ct_list_new(struct ct_render *r, size_t cap)
{
    struct ct_list *l = ct_alloc(&r->arena, sizeof(*l));
    if (!l) return NULL;
    if (cap) {
        l->v = ct_alloc(&r->arena, cap * sizeof(*l->v));
        if (!l->v) return NULL;
        l->cap = cap;
    }
    return l;
}

enum es_status ct_list_push(struct ct_render *r, struct ct_list *l, struct ct_val v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        struct ct_val *nv = ct_alloc(&r->arena, cap * sizeof(*nv));
        if (!nv) return oom(r);
        if (l->n) memcpy(nv, l->v, l->n * sizeof(*nv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
    return ES_OK;
}

struct ct_dict *ct_dict_new(struct ct_render *r, size_t cap)
{
    struct ct_dict *d = ct_alloc(&r->arena, sizeof(*d));
    if (!d) return NULL;
    if (cap) {
        d->keys = ct_alloc(&r->arena, cap * sizeof(*d->keys));
        d->vals = ct_alloc(&r->arena, cap * sizeof(*d->vals));
        if (!d->keys || !d->vals) return NULL;
        d->cap = cap;
    }
    return d;
}

static bool key_eq(struct ct_val a, struct ct_val b)
{
    if (a.kind == CV_STR && b.kind == CV_STR)
        return a.u.s.n == b.u.s.n && (a.u.s.n == 0 || memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0);
    return ct_equal(a, b);
}

enum es_status ct_dict_set(struct ct_render *r, struct ct_dict *d, struct ct_val k, struct ct_val v)
{
    for (size_t i = 0; i < d->n; i++) {
        if (key_eq(d->keys[i], k)) {
            d->vals[i] = v;
            return ES_OK;
        }
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        struct ct_val *nk = ct_alloc(&r->arena, cap * sizeof(*nk));
        struct ct_val *nv = ct_alloc(&r->arena, cap * sizeof(*nv));
        if (!nk || !nv) return oom(r);
        if (d->n) {
            memcpy(nk, d->keys, d->n * sizeof(*nk));
            memcpy(nv, d->vals, d->n * sizeof(*nv));
        }
        d->keys = nk;
        d->vals = nv;
        d->cap = cap;
    }
    d->keys[d->n] = k;
    d->vals[d->n++] = v;
    return ES_OK;
}

bool ct_dict_get(const struct ct_dict *d, struct ct_val k, struct ct_val *out)
{
    for (size_t i = 0; i < d->n; i++) {
        if (key_eq(d->keys[i], k)) {
            *out = d->vals[i];
            return true;
        }
    }
    return false;
}

bool ct_dict_get_str(const struct ct_dict *d, const char *key, struct ct_val *out)
{
    return ct_dict_get(d, ct_cstr(key), out);
}

enum es_status ct_from_json(struct ct_render *r, const cJSON *j, int depth, struct ct_val *out)
{
    if (depth > 200) return es_fail(r->err, ES_EINVAL, "chat template: context nested too deeply");
    if (cJSON_IsNull(j) || !j) {
        *out = ct_none();
    } else if (cJSON_IsBool(j)) {
        *out = ct_bool(cJSON_IsTrue(j));
    } else if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9.2e18) {
            *out = ct_int((int64_t)d);
        } else {
            out->kind = CV_FLOAT;
            out->u.f = d;
        }
    } else if (cJSON_IsString(j)) {
        *out = ct_cstr(j->valuestring ? j->valuestring : "");
    } else if (cJSON_IsArray(j)) {
        struct ct_list *l = ct_list_new(r, (size_t)cJSON_GetArraySize(j));
        if (!l) return oom(r);
        for (const cJSON *c = j->child; c; c = c->next) {
            struct ct_val v;
            enum es_status st = ct_from_json(r, c, depth + 1, &v);
            if (st) return st;
            if (ct_list_push(r, l, v)) return ES_ENOMEM;
        }
        out->kind = CV_LIST;
        out->u.list = l;
    } else if (cJSON_IsObject(j)) {
        struct ct_dict *d = ct_dict_new(r, (size_t)cJSON_GetArraySize(j));
        if (!d) return oom(r);
        for (const cJSON *c = j->child; c; c = c->next) {
            struct ct_val v;
            enum es_status st = ct_from_json(r, c, depth + 1, &v);
            if (st) return st;
            if (ct_dict_set(r, d, ct_cstr(c->string ? c->string : ""), v)) return ES_ENOMEM;
        }
        out->kind = CV_DICT;
        out->u.dict = d;
    } else {
        *out = ct_none();
    }
    return ES_OK;
}

/* ---- Python semantics ------------------------------------------------ */

const char *ct_type_name(struct ct_val v)
{
    switch (v.kind) {
    case CV_UNDEF:
        return "Undefined";
    case CV_NONE:
        return "NoneType";
    case CV_BOOL:
        return "bool";
    case CV_INT:
        return "int";
    case CV_FLOAT:
        return "float";
    case CV_STR:
        return "str";
    case CV_LIST:
        return "list";
    case CV_TUPLE:
        return "tuple";
    case CV_DICT:
        return "dict";
    case CV_NS:
        return "Namespace";
    case CV_MACRO:
        return "Macro";
    case CV_FUNC:
        return "builtin_function_or_method";
    case CV_METHOD:
        return "method";
    }
    return "object";
}

bool ct_truthy(struct ct_val v)
{
    switch (v.kind) {
    case CV_UNDEF:
    case CV_NONE:
        return false;
    case CV_BOOL:
        return v.u.b;
    case CV_INT:
        return v.u.i != 0;
    case CV_FLOAT:
        return v.u.f != 0.0;
    case CV_STR:
        return v.u.s.n != 0;
    case CV_LIST:
    case CV_TUPLE:
        return v.u.list->n != 0;
    case CV_DICT:
        return v.u.dict->n != 0;
    default:
        return true;
    }
}

static bool is_num(struct ct_val v)
{
    return v.kind == CV_BOOL || v.kind == CV_INT || v.kind == CV_FLOAT;
}
static double num_d(struct ct_val v)
{
    return v.kind == CV_FLOAT ? v.u.f : v.kind == CV_BOOL ? (double)v.u.b : (double)v.u.i;
}
static int64_t num_i(struct ct_val v)
{
    return v.kind == CV_BOOL ? (int64_t)v.u.b : v.u.i;
}

bool ct_equal(struct ct_val a, struct ct_val b)
{
    if (is_num(a) && is_num(b)) {
        if (a.kind != CV_FLOAT && b.kind != CV_FLOAT) return num_i(a) == num_i(b);
        return num_d(a) == num_d(b);
    }
    if (a.kind != b.kind) return false;
    switch (a.kind) {
    case CV_UNDEF:
    case CV_NONE:
        return true;
    case CV_STR:
        return a.u.s.n == b.u.s.n && (a.u.s.n == 0 || memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0);
    case CV_LIST:
    case CV_TUPLE:
        if (a.u.list->n != b.u.list->n) return false;
        for (size_t i = 0; i < a.u.list->n; i++)
            if (!ct_equal(a.u.list->v[i], b.u.list->v[i])) return false;
        return true;
    case CV_DICT:
        if (a.u.dict->n != b.u.dict->n) return false;
        for (size_t i = 0; i < a.u.dict->n; i++) {
            struct ct_val other;
            if (!ct_dict_get(b.u.dict, a.u.dict->keys[i], &other) ||
                !ct_equal(a.u.dict->vals[i], other))
                return false;
        }
        return true;
    case CV_NS:
        return a.u.dict == b.u.dict;
    case CV_MACRO:
        return a.u.macro == b.u.macro;
    case CV_FUNC:
        return a.u.func == b.u.func;
    case CV_METHOD:
        return a.u.method == b.u.method;
    default:
        return false;
    }
}

enum es_status ct_compare(struct ct_render *r, int line, struct ct_val a, struct ct_val b, int *cmp)
{
    if (a.kind == CV_UNDEF || b.kind == CV_UNDEF) {
        struct ct_val u = a.kind == CV_UNDEF ? a : b;
        return ct_fail(r, line, ES_EINVAL, "'%.*s' is undefined", (int)u.u.s.n,
                       u.u.s.p ? u.u.s.p : "");
    }
    if (is_num(a) && is_num(b)) {
        if (a.kind != CV_FLOAT && b.kind != CV_FLOAT)
            *cmp = (num_i(a) > num_i(b)) - (num_i(a) < num_i(b));
        else
            *cmp = (num_d(a) > num_d(b)) - (num_d(a) < num_d(b));
        return ES_OK;
    }
    if (a.kind == CV_STR && b.kind == CV_STR) {
        size_t n = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int c = n ? memcmp(a.u.s.p, b.u.s.p, n) : 0;
        *cmp = c ? (c > 0 ? 1 : -1) : (a.u.s.n > b.u.s.n) - (a.u.s.n < b.u.s.n);
        return ES_OK;
    }
    if (a.kind == b.kind && (a.kind == CV_LIST || a.kind == CV_TUPLE)) {
        size_t n = a.u.list->n < b.u.list->n ? a.u.list->n : b.u.list->n;
        for (size_t i = 0; i < n; i++) {
            if (ct_equal(a.u.list->v[i], b.u.list->v[i])) continue;
            return ct_compare(r, line, a.u.list->v[i], b.u.list->v[i], cmp);
        }
        *cmp = (a.u.list->n > b.u.list->n) - (a.u.list->n < b.u.list->n);
        return ES_OK;
    }
    return ct_fail(r, line, ES_EINVAL, "'<' not supported between instances of '%s' and '%s'",
                   ct_type_name(a), ct_type_name(b));
}

/* ---- printing -------------------------------------------------------- */

void ct_format_float(double f, char buf[40])
{
    if (isnan(f)) {
        strcpy(buf, "nan");
        return;
    }
    if (isinf(f)) {
        strcpy(buf, f < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f) break;
    }
    /* tmp: [-]d[.ddd]e[+-]xx -> digits and exponent */
    char digits[24];
    int nd = 0, exp10;
    const char *p = tmp;
    bool neg = *p == '-';
    if (neg) p++;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    char *o = buf;
    if (neg) *o++ = '-';
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 >= 0) {
            for (int i = 0; i <= exp10 || i < nd; i++) {
                if (i == exp10 + 1) *o++ = '.';
                *o++ = i < nd ? digits[i] : '0';
            }
            if (exp10 + 1 >= nd) {
                *o++ = '.';
                *o++ = '0';
            }
        } else {
            *o++ = '0';
            *o++ = '.';
            for (int i = 0; i < -exp10 - 1; i++)
                *o++ = '0';
            for (int i = 0; i < nd; i++)
                *o++ = digits[i];
        }
        *o = '\0';
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            for (int i = 1; i < nd; i++)
                *o++ = digits[i];
        }
        int e = exp10 < 0 ? -exp10 : exp10;
        *o++ = 'e';
        *o++ = exp10 < 0 ? '-' : '+';
        if (e >= 100) *o++ = (char)('0' + e / 100);
        *o++ = (char)('0' + e / 10 % 10);
        *o++ = (char)('0' + e % 10);
        *o = '\0';
    }
}

static unsigned decode_cp(const char *p, size_t avail, size_t *len)
{
    const unsigned char *s = (const unsigned char *)p;
    int l = utf8_char_len(s, avail);
    if (l <= 1) {
        *len = 1;
        return s[0];
    }
    *len = (size_t)l;
    if (l == 2) return ((s[0] & 0x1fu) << 6) | (s[1] & 0x3fu);
    if (l == 3) return ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
    return ((s[0] & 0x07u) << 18) | ((s[1] & 0x3fu) << 12) | ((s[2] & 0x3fu) << 6) | (s[3] & 0x3fu);
}

/* Python's str.isprintable, approximated for the characters chat text holds */
static bool cp_printable(unsigned cp)
{
    if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa1) || cp == 0xad) return false;
    if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202f) ||
        (cp >= 0x205f && cp <= 0x206f) || cp == 0x3000 || cp == 0xfeff ||
        (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0xe000 && cp <= 0xf8ff) ||
        (cp >= 0xfff0 && cp <= 0xfffb))
        return false;
    return true;
}

static void repr_str(struct strbuf *sb, const char *s, size_t n)
{
    bool has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    sb_putc(sb, q);
    for (size_t i = 0; i < n;) {
        size_t l;
        unsigned cp = decode_cp(s + i, n - i, &l);
        if (cp == (unsigned char)q || cp == '\\') {
            sb_putc(sb, '\\');
            sb_putc(sb, (char)cp);
        } else if (cp == '\n') {
            sb_puts(sb, "\\n");
        } else if (cp == '\r') {
            sb_puts(sb, "\\r");
        } else if (cp == '\t') {
            sb_puts(sb, "\\t");
        } else if (!cp_printable(cp)) {
            if (cp < 0x100)
                sb_printf(sb, "\\x%02x", cp);
            else if (cp < 0x10000)
                sb_printf(sb, "\\u%04x", cp);
            else
                sb_printf(sb, "\\U%08x", cp);
        } else {
            sb_append(sb, s + i, l);
        }
        i += l;
    }
    sb_putc(sb, q);
}

static enum es_status append_val(struct ct_render *r, int line, struct strbuf *sb, struct ct_val v,
                                 bool repr, int depth)
{
    char buf[40];
    if (depth > 100) return ct_fail(r, line, ES_EINVAL, "value nested too deeply to print");
    switch (v.kind) {
    case CV_UNDEF:
        if (repr) sb_puts(sb, "Undefined");
        break;
    case CV_NONE:
        sb_puts(sb, "None");
        break;
    case CV_BOOL:
        sb_puts(sb, v.u.b ? "True" : "False");
        break;
    case CV_INT:
        sb_printf(sb, "%lld", (long long)v.u.i);
        break;
    case CV_FLOAT:
        ct_format_float(v.u.f, buf);
        sb_puts(sb, buf);
        break;
    case CV_STR:
        if (repr)
            repr_str(sb, v.u.s.p, v.u.s.n);
        else
            sb_append(sb, v.u.s.p, v.u.s.n);
        break;
    case CV_LIST:
    case CV_TUPLE:
        sb_putc(sb, v.kind == CV_LIST ? '[' : '(');
        for (size_t i = 0; i < v.u.list->n; i++) {
            if (i) sb_puts(sb, ", ");
            if (append_val(r, line, sb, v.u.list->v[i], true, depth + 1)) return ES_EINVAL;
        }
        if (v.kind == CV_TUPLE && v.u.list->n == 1) sb_putc(sb, ',');
        sb_putc(sb, v.kind == CV_LIST ? ']' : ')');
        break;
    case CV_DICT:
    case CV_NS:
        if (v.kind == CV_NS) sb_puts(sb, "<Namespace ");
        sb_putc(sb, '{');
        for (size_t i = 0; i < v.u.dict->n; i++) {
            if (i) sb_puts(sb, ", ");
            if (append_val(r, line, sb, v.u.dict->keys[i], true, depth + 1)) return ES_EINVAL;
            sb_puts(sb, ": ");
            if (append_val(r, line, sb, v.u.dict->vals[i], true, depth + 1)) return ES_EINVAL;
        }
        sb_putc(sb, '}');
        if (v.kind == CV_NS) sb_putc(sb, '>');
        break;
    case CV_MACRO:
        sb_printf(sb, "<Macro '%s'>", v.u.macro->node->name);
        break;
    case CV_FUNC:
        sb_puts(sb, "<built-in function>");
        break;
    case CV_METHOD:
        sb_printf(sb, "<built-in method %s>", v.u.method->name);
        break;
    }
    if (sb->len > r->max_output_bytes)
        return ct_fail(r, line, ES_ERANGE, "output size limit exceeded");
    return ES_OK;
}

enum es_status ct_append_str(struct ct_render *r, int line, struct strbuf *sb, struct ct_val v)
{
    return append_val(r, line, sb, v, false, 0);
}

enum es_status ct_append_repr(struct ct_render *r, int line, struct strbuf *sb, struct ct_val v)
{
    return append_val(r, line, sb, v, true, 0);
}

enum es_status ct_str_from_sb(struct ct_render *r, struct strbuf *sb, struct ct_val *out)
{
    char *p = ct_strndup(&r->arena, sb_cstr(sb), sb->len);
    size_t n = sb->len;
    sb_clear(sb);
    if (!p) return oom(r);
    *out = ct_str(p, n);
    return ES_OK;
}

enum es_status ct_to_str(struct ct_render *r, int line, struct ct_val v, struct ct_val *out)
{
    if (v.kind == CV_STR) {
        *out = v;
        return ES_OK;
    }
    struct strbuf sb = {0};
    enum es_status st = ct_append_str(r, line, &sb, v);
    if (!st) st = ct_str_from_sb(r, &sb, out);
    sb_free(&sb);
    return st;
}

/* ---- json.dumps ------------------------------------------------------ */

static void json_str(struct strbuf *sb, const char *s, size_t n, bool ensure_ascii)
{
    sb_putc(sb, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char ubuf[16];
        if (c >= 0x80 && ensure_ascii) {
            size_t l;
            unsigned cp = decode_cp(s + i, n - i, &l);
            sb_append(sb, s + run, i - run);
            if (cp >= 0x10000)
                sb_printf(sb, "\\u%04x\\u%04x", 0xd800 + ((cp - 0x10000) >> 10),
                          0xdc00 + ((cp - 0x10000) & 0x3ff));
            else
                sb_printf(sb, "\\u%04x", cp);
            i += l - 1;
            run = i + 1;
            continue;
        }
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c == '\b')
            esc = "\\b";
        else if (c == '\f')
            esc = "\\f";
        else if (c < 0x20) {
            snprintf(ubuf, sizeof ubuf, "\\u%04x", c);
            esc = ubuf;
        }
        if (esc) {
            sb_append(sb, s + run, i - run);
            sb_puts(sb, esc);
            run = i + 1;
        }
    }
    sb_append(sb, s + run, n - run);
    sb_putc(sb, '"');
}

static void json_newline(struct strbuf *sb, const struct ct_json_opts *o, int level)
{
    sb_putc(sb, '\n');
    for (int i = 0; i < level; i++)
        sb_puts(sb, o->indent);
}

static enum es_status json_key(struct ct_render *r, int line, struct strbuf *sb, struct ct_val k)
{
    char buf[40];
    switch (k.kind) {
    case CV_STR:
        json_str(sb, k.u.s.p, k.u.s.n, false);
        return ES_OK;
    case CV_INT:
        sb_printf(sb, "\"%lld\"", (long long)k.u.i);
        return ES_OK;
    case CV_BOOL:
        sb_puts(sb, k.u.b ? "\"true\"" : "\"false\"");
        return ES_OK;
    case CV_NONE:
        sb_puts(sb, "\"null\"");
        return ES_OK;
    case CV_FLOAT:
        ct_format_float(k.u.f, buf);
        sb_printf(sb, "\"%s\"", buf);
        return ES_OK;
    default:
        return ct_fail(r, line, ES_EINVAL, "keys must be str, int, float, bool or None, not %s",
                       ct_type_name(k));
    }
}

enum es_status ct_append_json(struct ct_render *r, int line, struct strbuf *sb, struct ct_val v,
                              const struct ct_json_opts *o, int level)
{
    char buf[40];
    if (level > 100) return ct_fail(r, line, ES_EINVAL, "value nested too deeply for tojson");
    switch (v.kind) {
    case CV_NONE:
        sb_puts(sb, "null");
        break;
    case CV_BOOL:
        sb_puts(sb, v.u.b ? "true" : "false");
        break;
    case CV_INT:
        sb_printf(sb, "%lld", (long long)v.u.i);
        break;
    case CV_FLOAT:
        if (isnan(v.u.f))
            sb_puts(sb, "NaN");
        else if (isinf(v.u.f))
            sb_puts(sb, v.u.f < 0 ? "-Infinity" : "Infinity");
        else {
            ct_format_float(v.u.f, buf);
            sb_puts(sb, buf);
        }
        break;
    case CV_STR:
        json_str(sb, v.u.s.p, v.u.s.n, o->ensure_ascii);
        break;
    case CV_LIST:
    case CV_TUPLE:
        if (v.u.list->n == 0) {
            sb_puts(sb, "[]");
            break;
        }
        sb_putc(sb, '[');
        for (size_t i = 0; i < v.u.list->n; i++) {
            if (i) sb_puts(sb, o->item_sep);
            if (o->indent) json_newline(sb, o, level + 1);
            enum es_status st = ct_append_json(r, line, sb, v.u.list->v[i], o, level + 1);
            if (st) return st;
        }
        if (o->indent) json_newline(sb, o, level);
        sb_putc(sb, ']');
        break;
    case CV_DICT: {
        const struct ct_dict *d = v.u.dict;
        if (d->n == 0) {
            sb_puts(sb, "{}");
            break;
        }
        size_t *order = ct_alloc(&r->arena, d->n * sizeof(*order));
        if (!order) return oom(r);
        for (size_t i = 0; i < d->n; i++)
            order[i] = i;
        if (o->sort_keys) { /* insertion sort: stable, dicts here are small */
            for (size_t i = 1; i < d->n; i++) {
                for (size_t j = i; j > 0; j--) {
                    int c;
                    enum es_status st =
                        ct_compare(r, line, d->keys[order[j - 1]], d->keys[order[j]], &c);
                    if (st) return st;
                    if (c <= 0) break;
                    size_t t = order[j];
                    order[j] = order[j - 1];
                    order[j - 1] = t;
                }
            }
        }
        sb_putc(sb, '{');
        for (size_t i = 0; i < d->n; i++) {
            if (i) sb_puts(sb, o->item_sep);
            if (o->indent) json_newline(sb, o, level + 1);
            enum es_status st = json_key(r, line, sb, d->keys[order[i]]);
            if (st) return st;
            sb_puts(sb, o->key_sep);
            st = ct_append_json(r, line, sb, d->vals[order[i]], o, level + 1);
            if (st) return st;
        }
        if (o->indent) json_newline(sb, o, level);
        sb_putc(sb, '}');
        break;
    }
    default:
        return ct_fail(r, line, ES_EINVAL, "Object of type %s is not JSON serializable",
                       ct_type_name(v));
    }
    if (sb->len > r->max_output_bytes)
        return ct_fail(r, line, ES_ERANGE, "output size limit exceeded");
    return ES_OK;
}

/* ---- UTF-8 positions ------------------------------------------------- */

size_t ct_utf8_count(const char *p, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)p[i] & 0xc0) != 0x80) count++;
    return count;
}

size_t ct_utf8_offset(const char *p, size_t n, size_t index)
{
    size_t i = 0, k = 0;
    while (i < n) {
        if (((unsigned char)p[i] & 0xc0) != 0x80) {
            if (k == index) return i;
            k++;
        }
        i++;
    }
    return n;
}
