/*
 * chat_template_methods.c - Python methods on template values ("s.strip()",
 * "d.get('k')", "d.items()") and the global functions a chat template can
 * call: range, namespace, dict, raise_exception and strftime_now (the last
 * two as transformers defines them).
 *
 * Methods that would mutate a list or a dict resolve (so "is defined"
 * behaves as in jinja2) but fail when called, as jinja2's
 * ImmutableSandboxedEnvironment makes them. range() is capped at 100000
 * items like jinja2's sandbox.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_template_internal.h"

#define CT_MAX_RANGE 100000

static enum es_status oom(struct ct_render *r)
{
    if (!r->status) r->status = ES_ENOMEM;
    return es_fail(r->err, ES_ENOMEM, "chat template: render memory limit exceeded");
}

static const char *const str_methods[] = {
    "strip",   "lstrip",  "rstrip",  "split",      "startswith", "endswith",
    "replace", "lower",   "upper",   "title",      "capitalize", "find",
    "rfind",   "count",   "join",    "splitlines", "isdigit",    "isalpha",
    "isalnum", "isspace", "isupper", "islower",    "format",     NULL};
static const char *const dict_methods[] = {"get",        "items", "keys",    "values",
                                           "copy",       "pop",   "popitem", "update",
                                           "setdefault", "clear", NULL};
static const char *const list_methods[] = {"index",   "count",  "copy",  "append",
                                           "extend",  "insert", "pop",   "remove",
                                           "reverse", "sort",   "clear", NULL};

static const char *find_name(const char *const *names, const char *name, size_t len)
{
    for (const char *const *n = names; *n; n++)
        if (strlen(*n) == len && !memcmp(*n, name, len)) return *n;
    return NULL;
}

bool ct_method_lookup(struct ct_render *r, struct ct_val self, const char *name, size_t len,
                      struct ct_val *out)
{
    const char *found = NULL;
    if (self.kind == CV_STR)
        found = find_name(str_methods, name, len);
    else if (self.kind == CV_DICT)
        found = find_name(dict_methods, name, len);
    else if (self.kind == CV_LIST || self.kind == CV_TUPLE)
        found = find_name(list_methods, name, len);
    if (!found) return false;
    struct ct_method *m = ct_alloc(&r->arena, sizeof(*m));
    if (!m) return false;
    m->self = self;
    m->name = found;
    out->kind = CV_METHOD;
    out->u.method = m;
    return true;
}

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

static bool is(const char *a, const char *b)
{
    return !strcmp(a, b);
}

/* str.format with "{}", "{0}", "{name}" fields and "{{"/"}}" escapes */
static enum es_status str_format(struct ct_render *r, int line, struct ct_val fmt,
                                 const struct ct_args *a, struct ct_val *out)
{
    struct strbuf sb = {0};
    enum es_status st = ES_OK;
    size_t auto_index = 0;
    const char *p = fmt.u.s.p;
    size_t n = fmt.u.s.n;
    for (size_t i = 0; i < n && !st; i++) {
        if (p[i] == '}' && i + 1 < n && p[i + 1] == '}') {
            sb_putc(&sb, '}');
            i++;
            continue;
        }
        if (p[i] != '{') {
            sb_putc(&sb, p[i]);
            continue;
        }
        if (i + 1 < n && p[i + 1] == '{') {
            sb_putc(&sb, '{');
            i++;
            continue;
        }
        const char *close = memchr(p + i, '}', n - i);
        if (!close) {
            st = ct_fail(r, line, ES_EINVAL, "single '{' encountered in format string");
            break;
        }
        const char *field = p + i + 1;
        size_t flen = (size_t)(close - field);
        struct ct_val v;
        bool ok;
        if (memchr(field, ':', flen) || memchr(field, '!', flen) || memchr(field, '.', flen) ||
            memchr(field, '[', flen)) {
            st = ct_fail(r, line, ES_EUNSUPPORTED, "unsupported format field '%.*s'", (int)flen,
                         field);
            break;
        }
        if (flen == 0)
            ok = arg(a, auto_index++, NULL, &v);
        else if (field[0] >= '0' && field[0] <= '9')
            ok = arg(a, (size_t)atoi(field), NULL, &v);
        else {
            char key[64];
            snprintf(key, sizeof key, "%.*s", (int)flen, field);
            ok = arg(a, (size_t)-1, key, &v);
        }
        if (!ok) {
            st = ct_fail(r, line, ES_EINVAL, "format: missing argument for '{%.*s}'", (int)flen,
                         field);
            break;
        }
        st = ct_append_str(r, line, &sb, v);
        i = (size_t)(close - p);
    }
    if (!st) st = ct_str_from_sb(r, &sb, out);
    sb_free(&sb);
    return st;
}

/* str.isdigit and friends over every character; false for "" */
static bool str_all(struct ct_val s, const char *kind)
{
    if (!s.u.s.n) return false;
    for (size_t i = 0; i < s.u.s.n;) {
        size_t l;
        unsigned cp = ct_next_cp(s.u.s.p + i, s.u.s.n - i, &l);
        bool digit = cp >= '0' && cp <= '9';
        bool alpha = (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp >= 0x80;
        bool ok = is(kind, "isdigit")   ? digit
                  : is(kind, "isalpha") ? alpha
                  : is(kind, "isalnum") ? (alpha || digit)
                                        : ct_space_len(s.u.s.p + i, s.u.s.n - i) > 0;
        if (!ok) return false;
        i += l;
    }
    return true;
}

static enum es_status call_str_method(struct ct_render *r, int line, const char *name,
                                      struct ct_val s, const struct ct_args *a, struct ct_val *out)
{
    struct ct_val x, y, z;
    if (is(name, "strip") || is(name, "lstrip") || is(name, "rstrip")) {
        if (!arg(a, 0, NULL, &x)) x = ct_none();
        if (x.kind != CV_NONE && x.kind != CV_STR)
            return ct_fail(r, line, ES_EINVAL, "%s arg must be None or str", name);
        *out = ct_strip(s, x, name[0] != 'r', name[0] != 'l');
        return ES_OK;
    }
    if (is(name, "split")) {
        if (!arg(a, 0, "sep", &x)) x = ct_none();
        int64_t maxsplit = arg(a, 1, "maxsplit", &y) && y.kind == CV_INT ? y.u.i : -1;
        if (x.kind == CV_STR && x.u.s.n == 0) return ct_fail(r, line, ES_EINVAL, "empty separator");
        if (x.kind != CV_STR && x.kind != CV_NONE)
            return ct_fail(r, line, ES_EINVAL, "must be str or None");
        return ct_split(r, s, x, maxsplit, out);
    }
    if (is(name, "startswith") || is(name, "endswith")) {
        if (!arg(a, 0, NULL, &x)) return ct_fail(r, line, ES_EINVAL, "%s needs an argument", name);
        bool end = name[0] == 'e', res = false;
        if (x.kind == CV_TUPLE) {
            for (size_t i = 0; i < x.u.list->n && !res; i++) {
                if (x.u.list->v[i].kind != CV_STR)
                    return ct_fail(r, line, ES_EINVAL, "%s tuple must hold strings", name);
                res = ct_affix(s, x.u.list->v[i], end);
            }
        } else if (x.kind == CV_STR) {
            res = ct_affix(s, x, end);
        } else {
            return ct_fail(r, line, ES_EINVAL, "%s first arg must be str or a tuple of str, not %s",
                           name, ct_type_name(x));
        }
        *out = ct_bool(res);
        return ES_OK;
    }
    if (is(name, "replace")) {
        if (!arg(a, 0, NULL, &x) || !arg(a, 1, NULL, &y) || x.kind != CV_STR || y.kind != CV_STR)
            return ct_fail(r, line, ES_EINVAL, "replace needs two strings");
        int64_t count = arg(a, 2, "count", &z) && z.kind == CV_INT ? z.u.i : -1;
        return ct_replace(r, line, s, x, y, count, out);
    }
    if (is(name, "lower")) return ct_change_case(r, s, CASE_LOWER, out);
    if (is(name, "upper")) return ct_change_case(r, s, CASE_UPPER, out);
    if (is(name, "title")) return ct_change_case(r, s, CASE_TITLE, out);
    if (is(name, "capitalize")) {
        if (ct_change_case(r, s, CASE_LOWER, &x)) return ES_EINVAL;
        return ct_change_case(r, x, CASE_CAPITALIZE, out);
    }
    if (is(name, "find") || is(name, "rfind") || is(name, "count")) {
        if (!arg(a, 0, NULL, &x) || x.kind != CV_STR)
            return ct_fail(r, line, ES_EINVAL, "%s needs a string", name);
        if (is(name, "count")) {
            int64_t c = 0;
            if (x.u.s.n == 0)
                c = (int64_t)ct_utf8_count(s.u.s.p, s.u.s.n) + 1;
            else
                for (const char *p = s.u.s.p;
                     (p = memmem(p, (size_t)(s.u.s.p + s.u.s.n - p), x.u.s.p, x.u.s.n));
                     p += x.u.s.n)
                    c++;
            *out = ct_int(c);
            return ES_OK;
        }
        const char *hit = NULL;
        if (name[0] == 'f')
            hit = memmem(s.u.s.p, s.u.s.n, x.u.s.p, x.u.s.n);
        else
            for (const char *p = s.u.s.p;
                 (p = memmem(p, (size_t)(s.u.s.p + s.u.s.n - p), x.u.s.p, x.u.s.n)); p++) {
                hit = p;
                if (p == s.u.s.p + s.u.s.n) break;
            }
        *out = ct_int(hit ? (int64_t)ct_utf8_count(s.u.s.p, (size_t)(hit - s.u.s.p)) : -1);
        return ES_OK;
    }
    if (is(name, "join")) {
        struct ct_list *l;
        if (!arg(a, 0, NULL, &x))
            return ct_fail(r, line, ES_EINVAL, "str.join() takes exactly one argument");
        if (ct_to_list(r, line, x, &l)) return ES_EINVAL;
        for (size_t i = 0; i < l->n; i++)
            if (l->v[i].kind != CV_STR)
                return ct_fail(r, line, ES_EINVAL,
                               "sequence item %zu: expected str instance, %s found", i,
                               ct_type_name(l->v[i]));
        return ct_join(r, line, l, s, out);
    }
    if (is(name, "splitlines")) {
        struct ct_list *l;
        if (ct_splitlines(r, s, &l)) return ES_EINVAL;
        out->kind = CV_LIST;
        out->u.list = l;
        return ES_OK;
    }
    if (is(name, "isupper") || is(name, "islower")) {
        struct ct_val t = ct_none();
        if (ct_change_case(r, s, name[2] == 'u' ? CASE_UPPER : CASE_LOWER, &t)) return ES_EINVAL;
        struct ct_val other;
        if (ct_change_case(r, s, name[2] == 'u' ? CASE_LOWER : CASE_UPPER, &other))
            return ES_EINVAL;
        /* cased characters present, and none of the wrong case */
        *out = ct_bool(ct_equal(t, s) && !ct_equal(other, s));
        return ES_OK;
    }
    if (is(name, "isdigit") || is(name, "isalpha") || is(name, "isalnum") || is(name, "isspace")) {
        *out = ct_bool(str_all(s, name));
        return ES_OK;
    }
    if (is(name, "format")) return str_format(r, line, s, a, out);
    return ct_fail(r, line, ES_EUNSUPPORTED, "unsupported method str.%s", name);
}

enum es_status ct_call_method(struct ct_render *r, int line, const struct ct_method *m,
                              const struct ct_args *a, struct ct_val *out)
{
    struct ct_val self = m->self, x;
    const char *name = m->name;
    if (self.kind == CV_STR) return call_str_method(r, line, name, self, a, out);
    if (self.kind == CV_DICT) {
        const struct ct_dict *d = self.u.dict;
        if (is(name, "get")) {
            if (!arg(a, 0, NULL, &x))
                return ct_fail(r, line, ES_EINVAL, "get expected at least 1 argument");
            if (!ct_dict_get(d, x, out) && !arg(a, 1, NULL, out)) *out = ct_none();
            return ES_OK;
        }
        if (is(name, "items") || is(name, "keys") || is(name, "values")) {
            struct ct_list *l = ct_list_new(r, d->n);
            if (!l) return oom(r);
            for (size_t i = 0; i < d->n; i++) {
                if (name[0] == 'i') {
                    struct ct_list *pair = ct_list_new(r, 2);
                    if (!pair) return oom(r);
                    pair->v[0] = d->keys[i];
                    pair->v[1] = d->vals[i];
                    pair->n = 2;
                    l->v[i].kind = CV_TUPLE;
                    l->v[i].u.list = pair;
                } else {
                    l->v[i] = name[0] == 'k' ? d->keys[i] : d->vals[i];
                }
            }
            l->n = d->n;
            out->kind = CV_LIST;
            out->u.list = l;
            return ES_OK;
        }
        if (is(name, "copy")) {
            struct ct_dict *c = ct_dict_new(r, d->n);
            if (!c) return oom(r);
            for (size_t i = 0; i < d->n; i++)
                if (ct_dict_set(r, c, d->keys[i], d->vals[i])) return ES_ENOMEM;
            out->kind = CV_DICT;
            out->u.dict = c;
            return ES_OK;
        }
    }
    if (self.kind == CV_LIST || self.kind == CV_TUPLE) {
        const struct ct_list *l = self.u.list;
        if (is(name, "index") || is(name, "count")) {
            if (!arg(a, 0, NULL, &x))
                return ct_fail(r, line, ES_EINVAL, "%s needs an argument", name);
            int64_t c = 0;
            for (size_t i = 0; i < l->n; i++) {
                if (!ct_equal(l->v[i], x)) continue;
                if (name[0] == 'i') {
                    *out = ct_int((int64_t)i);
                    return ES_OK;
                }
                c++;
            }
            if (name[0] == 'i') return ct_fail(r, line, ES_EINVAL, "value is not in list");
            *out = ct_int(c);
            return ES_OK;
        }
        if (is(name, "copy")) {
            struct ct_list *c = ct_list_new(r, l->n);
            if (!c) return oom(r);
            for (size_t i = 0; i < l->n; i++)
                c->v[c->n++] = l->v[i];
            out->kind = self.kind;
            out->u.list = c;
            return ES_OK;
        }
    }
    return ct_fail(r, line, ES_EINVAL, "access to attribute '%s' of '%s' object is unsafe", name,
                   ct_type_name(self));
}

/* ---- globals --------------------------------------------------------- */

enum { G_RANGE, G_NAMESPACE, G_DICT, G_RAISE, G_STRFTIME };
static const char *const global_names[] = {"range",           "namespace",    "dict",
                                           "raise_exception", "strftime_now", NULL};

int ct_global_func(const char *name, size_t len)
{
    for (int i = 0; global_names[i]; i++)
        if (strlen(global_names[i]) == len && !memcmp(global_names[i], name, len)) return i;
    return -1;
}

static enum es_status make_dict(struct ct_render *r, int line, const struct ct_args *a,
                                enum ct_kind kind, struct ct_val *out)
{
    struct ct_dict *d = ct_dict_new(r, a->n_kw);
    if (!d) return oom(r);
    for (size_t i = 0; i < a->n_pos; i++) { /* namespace({'a': 1}) / dict(other) */
        struct ct_val p = a->pos[i];
        if (p.kind != CV_DICT && p.kind != CV_NS)
            return ct_fail(r, line, ES_EINVAL, "%s() positional argument must be a mapping",
                           kind == CV_NS ? "namespace" : "dict");
        for (size_t k = 0; k < p.u.dict->n; k++)
            if (ct_dict_set(r, d, p.u.dict->keys[k], p.u.dict->vals[k])) return ES_ENOMEM;
    }
    for (size_t i = 0; i < a->n_kw; i++)
        if (ct_dict_set(r, d, ct_cstr(a->kw_names[i]), a->kw[i])) return ES_ENOMEM;
    out->kind = kind;
    out->u.dict = d;
    return ES_OK;
}

enum es_status ct_call_global(struct ct_render *r, int line, int func, const struct ct_args *a,
                              struct ct_val *out)
{
    struct ct_val x;
    switch (func) {
    case G_RANGE: {
        int64_t v[3] = {0, 0, 1};
        if (a->n_pos < 1 || a->n_pos > 3 || a->n_kw)
            return ct_fail(r, line, ES_EINVAL, "range expects 1 to 3 integers");
        for (size_t i = 0; i < a->n_pos; i++) {
            if (a->pos[i].kind != CV_INT && a->pos[i].kind != CV_BOOL)
                return ct_fail(r, line, ES_EINVAL,
                               "range: '%s' object cannot be interpreted as an integer",
                               ct_type_name(a->pos[i]));
        }
        if (a->n_pos == 1)
            v[1] = a->pos[0].u.i;
        else
            for (size_t i = 0; i < a->n_pos; i++)
                v[i] = a->pos[i].kind == CV_BOOL ? a->pos[i].u.b : a->pos[i].u.i;
        if (v[2] == 0) return ct_fail(r, line, ES_EINVAL, "range() arg 3 must not be zero");
        int64_t count = v[2] > 0 ? (v[1] > v[0] ? (v[1] - v[0] + v[2] - 1) / v[2] : 0)
                                 : (v[0] > v[1] ? (v[0] - v[1] - v[2] - 1) / -v[2] : 0);
        if (count > CT_MAX_RANGE)
            return ct_fail(r, line, ES_ERANGE, "range too big, maximum size for range is %d",
                           CT_MAX_RANGE);
        struct ct_list *l = ct_list_new(r, (size_t)count);
        if (!l) return oom(r);
        for (int64_t i = 0; i < count; i++)
            l->v[l->n++] = ct_int(v[0] + i * v[2]);
        out->kind = CV_LIST;
        out->u.list = l;
        return ES_OK;
    }
    case G_NAMESPACE:
        return make_dict(r, line, a, CV_NS, out);
    case G_DICT:
        return make_dict(r, line, a, CV_DICT, out);
    case G_RAISE: {
        struct strbuf sb = {0};
        if (arg(a, 0, "message", &x)) ct_append_str(r, line, &sb, x);
        enum es_status st = ct_fail(r, line, ES_EINVAL, "%s", sb_cstr(&sb));
        sb_free(&sb);
        return st;
    }
    case G_STRFTIME: {
        if (!arg(a, 0, "format", &x) || x.kind != CV_STR)
            return ct_fail(r, line, ES_EINVAL, "strftime_now needs a format string");
        char fmt[256], buf[512];
        snprintf(fmt, sizeof fmt, "%.*s", (int)x.u.s.n, x.u.s.p);
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t n = strftime(buf, sizeof buf, fmt, &tm);
        char *p = ct_strndup(&r->arena, buf, n);
        if (!p) return oom(r);
        *out = ct_str(p, n);
        return ES_OK;
    }
    default:
        return ct_fail(r, line, ES_ERR, "internal error: unknown global");
    }
}
