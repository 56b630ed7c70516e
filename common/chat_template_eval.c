/*
 * chat_template_eval.c - the evaluator of the chat-template interpreter:
 * walks the tree from ct_parse with a render context and writes the text.
 *
 * Scoping follows jinja2: the context and top-level {% set %} live in the
 * global scope; each for-loop iteration and each macro call gets a fresh
 * child scope (assignments inside do not leak out, which is why templates
 * use namespace()); if-blocks share their parent's scope. Attribute access
 * follows jinja2's sandboxed getattr: a dict's methods win over its keys
 * for "obj.name", keys win for "obj['name']", a missing key or index is
 * Undefined, and using an Undefined (attribute, arithmetic, call,
 * ordering) is an error.
 *
 * Every loop iteration spends from a render-wide budget and every write is
 * checked against the output limit, so no template can hang the caller.
 * The evaluator never mutates the tree: one compiled template serves
 * concurrent renders.
 */
#include <math.h>
#include <string.h>

#include "chat_template_internal.h"

struct ct_scope {
    struct ct_scope *parent;
    const char **names;
    struct ct_val *vals;
    size_t n, cap;
};

enum flow { FLOW_NORMAL, FLOW_BREAK, FLOW_CONTINUE };

/* The filter chain of {% set x | f %} and {% filter f %} starts at a
 * placeholder node; while it is evaluated, that node yields the captured
 * text. Kept per render so the shared tree stays read-only. */
struct hole {
    const struct ct_node *node;
    struct ct_val val;
};
static _Thread_local struct hole current_hole;

static enum es_status oom(struct ct_render *r)
{
    if (!r->status) r->status = ES_ENOMEM;
    return es_fail(r->err, ES_ENOMEM, "chat template: render memory limit exceeded");
}

static struct ct_scope *scope_new(struct ct_render *r, struct ct_scope *parent)
{
    struct ct_scope *s = ct_alloc(&r->arena, sizeof(*s));
    if (s) s->parent = parent;
    return s;
}

static enum es_status scope_set(struct ct_render *r, struct ct_scope *s, const char *name,
                                struct ct_val v)
{
    for (size_t i = 0; i < s->n; i++) {
        if (!strcmp(s->names[i], name)) {
            s->vals[i] = v;
            return ES_OK;
        }
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **nn = ct_alloc(&r->arena, cap * sizeof(*nn));
        struct ct_val *nv = ct_alloc(&r->arena, cap * sizeof(*nv));
        if (!nn || !nv) return oom(r);
        if (s->n) {
            memcpy(nn, s->names, s->n * sizeof(*nn));
            memcpy(nv, s->vals, s->n * sizeof(*nv));
        }
        s->names = nn;
        s->vals = nv;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->vals[s->n++] = v;
    return ES_OK;
}

static struct ct_val scope_get(struct ct_scope *s, const char *name, size_t len)
{
    for (; s; s = s->parent)
        for (size_t i = 0; i < s->n; i++)
            if (!strncmp(s->names[i], name, len) && s->names[i][len] == '\0') return s->vals[i];
    int f = ct_global_func(name, len);
    if (f >= 0) {
        struct ct_val v = {.kind = CV_FUNC};
        v.u.func = f;
        return v;
    }
    return ct_undef(name);
}

static enum es_status emit(struct ct_render *r, int line, const char *s, size_t n)
{
    if (r->out->len + n > r->max_output_bytes)
        return ct_fail(r, line, ES_ERANGE, "output size limit exceeded");
    if (sb_append(r->out, s, n)) return oom(r);
    return ES_OK;
}

static enum es_status undefined_error(struct ct_render *r, int line, struct ct_val u)
{
    return ct_fail(r, line, ES_EINVAL, "'%.*s' is undefined", (int)u.u.s.n,
                   u.u.s.p ? u.u.s.p : "value");
}

/* ---- expressions ----------------------------------------------------- */

static enum es_status eval(struct ct_render *r, struct ct_scope *sc, const struct ct_node *n,
                           struct ct_val *out);

static enum es_status eval_args(struct ct_render *r, struct ct_scope *sc, const struct ct_node *n,
                                struct ct_args *a)
{
    memset(a, 0, sizeof(*a));
    size_t np = n->items.n, nk = n->kw_vals.n;
    if (np && !(a->pos = ct_alloc(&r->arena, np * sizeof(*a->pos)))) return oom(r);
    if (nk && !(a->kw = ct_alloc(&r->arena, nk * sizeof(*a->kw)))) return oom(r);
    for (size_t i = 0; i < np; i++)
        if (eval(r, sc, n->items.v[i], &a->pos[i])) return ES_EINVAL;
    for (size_t i = 0; i < nk; i++)
        if (eval(r, sc, n->kw_vals.v[i], &a->kw[i])) return ES_EINVAL;
    a->n_pos = np;
    a->n_kw = nk;
    a->kw_names = n->kw_names;
    return ES_OK;
}

static bool is_intlike(struct ct_val v)
{
    return v.kind == CV_INT || v.kind == CV_BOOL;
}
static int64_t as_int(struct ct_val v)
{
    return v.kind == CV_BOOL ? (int64_t)v.u.b : v.u.i;
}

static enum es_status getattr_val(struct ct_render *r, int line, struct ct_val obj,
                                  const char *name, size_t len, struct ct_val *out)
{
    if (obj.kind == CV_UNDEF) return undefined_error(r, line, obj);
    if (obj.kind == CV_DICT && ct_method_lookup(r, obj, name, len, out)) return ES_OK;
    if (obj.kind == CV_DICT || obj.kind == CV_NS) {
        if (ct_dict_get(obj.u.dict, ct_str(name, len), out)) return ES_OK;
        *out = ct_undef(name);
        return ES_OK;
    }
    if (ct_method_lookup(r, obj, name, len, out)) return ES_OK;
    *out = ct_undef(name);
    return ES_OK;
}

static enum es_status getitem_val(struct ct_render *r, int line, struct ct_val obj,
                                  struct ct_val key, struct ct_val *out)
{
    if (obj.kind == CV_UNDEF) return undefined_error(r, line, obj);
    if (obj.kind == CV_DICT || obj.kind == CV_NS) {
        if (ct_dict_get(obj.u.dict, key, out)) return ES_OK;
    } else if ((obj.kind == CV_LIST || obj.kind == CV_TUPLE) && is_intlike(key)) {
        int64_t i = as_int(key), n = (int64_t)obj.u.list->n;
        if (i < 0) i += n;
        if (i >= 0 && i < n) {
            *out = obj.u.list->v[i];
            return ES_OK;
        }
    } else if (obj.kind == CV_STR && is_intlike(key)) {
        int64_t i = as_int(key), n = (int64_t)ct_utf8_count(obj.u.s.p, obj.u.s.n);
        if (i < 0) i += n;
        if (i >= 0 && i < n) {
            size_t a = ct_utf8_offset(obj.u.s.p, obj.u.s.n, (size_t)i);
            size_t b = ct_utf8_offset(obj.u.s.p, obj.u.s.n, (size_t)i + 1);
            *out = ct_str(obj.u.s.p + a, b - a);
            return ES_OK;
        }
    }
    if (key.kind == CV_STR && obj.kind != CV_NS) {
        char *name = ct_strndup(&r->arena, key.u.s.p, key.u.s.n);
        if (!name) return oom(r);
        if (ct_method_lookup(r, obj, name, key.u.s.n, out)) return ES_OK;
        *out = ct_undef(name);
        return ES_OK;
    }
    *out = ct_undef(NULL);
    return ES_OK;
}

/* Python slice semantics (PySlice_AdjustIndices) on list, tuple or str */
static enum es_status eval_slice(struct ct_render *r, struct ct_scope *sc, const struct ct_node *n,
                                 struct ct_val *out)
{
    struct ct_val obj, bound[3] = {{0}};
    if (eval(r, sc, n->a, &obj)) return ES_EINVAL;
    const struct ct_node *parts[3] = {n->b, n->c, n->d};
    for (int i = 0; i < 3; i++) {
        bound[i] = ct_none();
        if (parts[i] && eval(r, sc, parts[i], &bound[i])) return ES_EINVAL;
        if (bound[i].kind != CV_NONE && !is_intlike(bound[i]))
            return ct_fail(r, n->line, ES_EINVAL, "slice indices must be integers or None");
    }
    if (obj.kind == CV_UNDEF) return undefined_error(r, n->line, obj);
    bool is_str = obj.kind == CV_STR;
    /* jinja2 compiles slices to plain Python subscripts: no Undefined fallback */
    if (!is_str && obj.kind != CV_LIST && obj.kind != CV_TUPLE)
        return ct_fail(r, n->line, ES_EINVAL, "'%s' object is not subscriptable",
                       ct_type_name(obj));
    int64_t len = is_str ? (int64_t)ct_utf8_count(obj.u.s.p, obj.u.s.n) : (int64_t)obj.u.list->n;
    int64_t step = bound[2].kind == CV_NONE ? 1 : as_int(bound[2]);
    if (step == 0) return ct_fail(r, n->line, ES_EINVAL, "slice step cannot be zero");
    int64_t start, stop;
    if (bound[0].kind == CV_NONE)
        start = step < 0 ? len - 1 : 0;
    else {
        start = as_int(bound[0]);
        if (start < 0) start += len;
        if (start < 0)
            start = step < 0 ? -1 : 0;
        else if (start >= len)
            start = step < 0 ? len - 1 : len;
    }
    if (bound[1].kind == CV_NONE)
        stop = step < 0 ? -1 : len;
    else {
        stop = as_int(bound[1]);
        if (stop < 0) stop += len;
        if (stop < 0)
            stop = step < 0 ? -1 : 0;
        else if (stop >= len)
            stop = step < 0 ? len - 1 : len;
    }
    if (is_str) {
        bool ascii = ct_utf8_count(obj.u.s.p, obj.u.s.n) == obj.u.s.n;
        if (step == 1) {
            if (stop <= start) {
                *out = ct_str("", 0);
                return ES_OK;
            }
            size_t a = ascii ? (size_t)start : ct_utf8_offset(obj.u.s.p, obj.u.s.n, (size_t)start);
            size_t b = ascii ? (size_t)stop : ct_utf8_offset(obj.u.s.p, obj.u.s.n, (size_t)stop);
            *out = ct_str(obj.u.s.p + a, b - a);
            return ES_OK;
        }
        struct strbuf sb = {0};
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
            size_t a = ascii ? (size_t)i : ct_utf8_offset(obj.u.s.p, obj.u.s.n, (size_t)i);
            size_t b = ascii ? (size_t)i + 1 : ct_utf8_offset(obj.u.s.p, obj.u.s.n, (size_t)i + 1);
            sb_append(&sb, obj.u.s.p + a, b - a);
        }
        enum es_status st = ct_str_from_sb(r, &sb, out);
        sb_free(&sb);
        return st;
    }
    struct ct_list *l = ct_list_new(r, 0);
    if (!l) return oom(r);
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
        if (ct_list_push(r, l, obj.u.list->v[i])) return ES_ENOMEM;
    out->kind = obj.kind;
    out->u.list = l;
    return ES_OK;
}

static enum es_status arith_error(struct ct_render *r, int line, const char *op, struct ct_val a,
                                  struct ct_val b)
{
    if (a.kind == CV_UNDEF) return undefined_error(r, line, a);
    if (b.kind == CV_UNDEF) return undefined_error(r, line, b);
    return ct_fail(r, line, ES_EINVAL, "unsupported operand type(s) for %s: '%s' and '%s'", op,
                   ct_type_name(a), ct_type_name(b));
}

static double floor_mod(double a, double b)
{
    double m = fmod(a, b);
    if (m != 0 && ((m < 0) != (b < 0))) m += b;
    return m;
}

static enum es_status repeat(struct ct_render *r, int line, struct ct_val seq, int64_t times,
                             struct ct_val *out)
{
    if (times < 0) times = 0;
    if (seq.kind == CV_STR) {
        if (seq.u.s.n && (uint64_t)times > r->max_output_bytes / seq.u.s.n)
            return ct_fail(r, line, ES_ERANGE, "string repetition exceeds the output size limit");
        struct strbuf sb = {0};
        for (int64_t i = 0; i < times; i++)
            sb_append(&sb, seq.u.s.p, seq.u.s.n);
        enum es_status st = ct_str_from_sb(r, &sb, out);
        sb_free(&sb);
        return st;
    }
    if (seq.u.list->n && (uint64_t)times > r->loop_budget / seq.u.list->n)
        return ct_fail(r, line, ES_ERANGE, "list repetition exceeds the loop limit");
    struct ct_list *l = ct_list_new(r, 0);
    if (!l) return oom(r);
    for (int64_t i = 0; i < times; i++)
        for (size_t k = 0; k < seq.u.list->n; k++)
            if (ct_list_push(r, l, seq.u.list->v[k])) return ES_ENOMEM;
    out->kind = seq.kind;
    out->u.list = l;
    return ES_OK;
}

static enum es_status binary(struct ct_render *r, int line, enum ct_op op, struct ct_val a,
                             struct ct_val b, struct ct_val *out)
{
    static const char *names[] = {
        [OP_ADD] = "+",       [OP_SUB] = "-", [OP_MUL] = "*", [OP_DIV] = "/",
        [OP_FLOORDIV] = "//", [OP_MOD] = "%", [OP_POW] = "**"};
    if (op == OP_TILDE) {
        struct strbuf sb = {0};
        enum es_status st = ct_append_str(r, line, &sb, a);
        if (!st) st = ct_append_str(r, line, &sb, b);
        if (!st) st = ct_str_from_sb(r, &sb, out);
        sb_free(&sb);
        return st;
    }
    bool an = a.kind == CV_INT || a.kind == CV_BOOL || a.kind == CV_FLOAT;
    bool bn = b.kind == CV_INT || b.kind == CV_BOOL || b.kind == CV_FLOAT;
    if (op == OP_ADD && a.kind == CV_STR && b.kind == CV_STR) {
        if (a.u.s.n + b.u.s.n > r->max_output_bytes)
            return ct_fail(r, line, ES_ERANGE, "string too long");
        char *p = ct_alloc(&r->arena, a.u.s.n + b.u.s.n + 1);
        if (!p) return oom(r);
        if (a.u.s.n) memcpy(p, a.u.s.p, a.u.s.n);
        if (b.u.s.n) memcpy(p + a.u.s.n, b.u.s.p, b.u.s.n);
        *out = ct_str(p, a.u.s.n + b.u.s.n);
        return ES_OK;
    }
    if (op == OP_ADD && a.kind == b.kind && (a.kind == CV_LIST || a.kind == CV_TUPLE)) {
        struct ct_list *l = ct_list_new(r, a.u.list->n + b.u.list->n);
        if (!l) return oom(r);
        for (size_t i = 0; i < a.u.list->n; i++)
            l->v[l->n++] = a.u.list->v[i];
        for (size_t i = 0; i < b.u.list->n; i++)
            l->v[l->n++] = b.u.list->v[i];
        out->kind = a.kind;
        out->u.list = l;
        return ES_OK;
    }
    if (op == OP_MUL && (a.kind == CV_STR || a.kind == CV_LIST || a.kind == CV_TUPLE) &&
        is_intlike(b))
        return repeat(r, line, a, as_int(b), out);
    if (op == OP_MUL && (b.kind == CV_STR || b.kind == CV_LIST || b.kind == CV_TUPLE) &&
        is_intlike(a))
        return repeat(r, line, b, as_int(a), out);
    if (!an || !bn) return arith_error(r, line, names[op], a, b);
    bool fl = a.kind == CV_FLOAT || b.kind == CV_FLOAT;
    double x = a.kind == CV_FLOAT ? a.u.f : (double)as_int(a),
           y = b.kind == CV_FLOAT ? b.u.f : (double)as_int(b);
    int64_t i = fl ? 0 : as_int(a), j = fl ? 0 : as_int(b);
    out->kind = fl ? CV_FLOAT : CV_INT;
    switch (op) {
    case OP_ADD:
        if (fl)
            out->u.f = x + y;
        else if (__builtin_add_overflow(i, j, &out->u.i))
            goto overflow;
        return ES_OK;
    case OP_SUB:
        if (fl)
            out->u.f = x - y;
        else if (__builtin_sub_overflow(i, j, &out->u.i))
            goto overflow;
        return ES_OK;
    case OP_MUL:
        if (fl)
            out->u.f = x * y;
        else if (__builtin_mul_overflow(i, j, &out->u.i))
            goto overflow;
        return ES_OK;
    case OP_DIV:
        if (y == 0) return ct_fail(r, line, ES_EINVAL, "division by zero");
        out->kind = CV_FLOAT;
        out->u.f = x / y;
        return ES_OK;
    case OP_FLOORDIV:
    case OP_MOD:
        if (y == 0) return ct_fail(r, line, ES_EINVAL, "integer division or modulo by zero");
        if (fl) {
            out->u.f = op == OP_MOD ? floor_mod(x, y) : floor(x / y);
        } else {
            if (i == INT64_MIN && j == -1) goto overflow;
            int64_t q = i / j, m = i % j;
            if (m != 0 && ((m < 0) != (j < 0))) {
                q--;
                m += j;
            }
            out->u.i = op == OP_MOD ? m : q;
        }
        return ES_OK;
    case OP_POW:
        if (!fl && j >= 0) {
            int64_t acc = 1;
            for (int64_t k = 0; k < j; k++) {
                if (__builtin_mul_overflow(acc, i, &acc)) goto overflow;
                if (acc == 0 || acc == 1) break;
            }
            out->u.i = acc;
        } else {
            out->kind = CV_FLOAT;
            out->u.f = pow(x, y);
        }
        return ES_OK;
    default:
        break;
    }
    return ct_fail(r, line, ES_EINVAL, "unsupported operator");
overflow:
    return ct_fail(r, line, ES_ERANGE, "integer overflow");
}

static enum es_status contains(struct ct_render *r, int line, struct ct_val item, struct ct_val seq,
                               bool *out)
{
    switch (seq.kind) {
    case CV_UNDEF:
        *out = false;
        return ES_OK;
    case CV_STR:
        if (item.kind != CV_STR)
            return ct_fail(r, line, ES_EINVAL,
                           "'in <string>' requires string as left operand, not %s",
                           ct_type_name(item));
        *out = item.u.s.n == 0 || memmem(seq.u.s.p, seq.u.s.n, item.u.s.p, item.u.s.n) != NULL;
        return ES_OK;
    case CV_LIST:
    case CV_TUPLE:
        *out = false;
        for (size_t i = 0; i < seq.u.list->n && !*out; i++)
            *out = ct_equal(item, seq.u.list->v[i]);
        return ES_OK;
    case CV_DICT:
    case CV_NS: {
        struct ct_val ignored;
        *out = ct_dict_get(seq.u.dict, item, &ignored);
        return ES_OK;
    }
    default:
        return ct_fail(r, line, ES_EINVAL, "argument of type '%s' is not iterable",
                       ct_type_name(seq));
    }
}

static enum es_status eval_compare(struct ct_render *r, struct ct_scope *sc,
                                   const struct ct_node *n, struct ct_val *out)
{
    struct ct_val left;
    if (eval(r, sc, n->a, &left)) return ES_EINVAL;
    bool result = true;
    for (size_t k = 0; k < n->items.n && result; k++) {
        struct ct_val right;
        if (eval(r, sc, n->items.v[k], &right)) return ES_EINVAL;
        int c;
        switch (n->ops[k]) {
        case OP_EQ:
            result = ct_equal(left, right);
            break;
        case OP_NE:
            result = !ct_equal(left, right);
            break;
        case OP_IN:
        case OP_NOTIN:
            if (contains(r, n->line, left, right, &result)) return ES_EINVAL;
            if (n->ops[k] == OP_NOTIN) result = !result;
            break;
        default:
            if (ct_compare(r, n->line, left, right, &c)) return ES_EINVAL;
            result = n->ops[k] == OP_LT   ? c < 0
                     : n->ops[k] == OP_LE ? c <= 0
                     : n->ops[k] == OP_GT ? c > 0
                                          : c >= 0;
        }
        left = right;
    }
    *out = ct_bool(result);
    return ES_OK;
}

static enum es_status call_value(struct ct_render *r, int line, struct ct_val fn,
                                 const struct ct_args *a, struct ct_val *out)
{
    switch (fn.kind) {
    case CV_MACRO:
        return ct_call_macro(r, line, fn.u.macro, a, out);
    case CV_FUNC:
        return ct_call_global(r, line, fn.u.func, a, out);
    case CV_METHOD:
        return ct_call_method(r, line, fn.u.method, a, out);
    case CV_UNDEF:
        return undefined_error(r, line, fn);
    default:
        return ct_fail(r, line, ES_EINVAL, "'%s' object is not callable", ct_type_name(fn));
    }
}

static enum es_status eval_inner(struct ct_render *r, struct ct_scope *sc, const struct ct_node *n,
                                 struct ct_val *out)
{
    struct ct_val a, b;
    struct ct_args args;
    switch (n->kind) {
    case ND_LIT:
        *out = n == current_hole.node ? current_hole.val : n->lit;
        return ES_OK;
    case ND_NAME:
        *out = scope_get(sc, n->name, n->name_len);
        return ES_OK;
    case ND_GETATTR:
        if (eval(r, sc, n->a, &a)) return ES_EINVAL;
        return getattr_val(r, n->line, a, n->name, n->name_len, out);
    case ND_GETITEM:
        if (eval(r, sc, n->a, &a) || eval(r, sc, n->b, &b)) return ES_EINVAL;
        return getitem_val(r, n->line, a, b, out);
    case ND_SLICE:
        return eval_slice(r, sc, n, out);
    case ND_CALL:
        if (eval(r, sc, n->a, &a) || eval_args(r, sc, n, &args)) return ES_EINVAL;
        return call_value(r, n->line, a, &args, out);
    case ND_FILTER:
        if (eval(r, sc, n->a, &a) || eval_args(r, sc, n, &args)) return ES_EINVAL;
        return ct_apply_filter(r, n->line, n->name, a, &args, out);
    case ND_TEST: {
        bool res;
        if (eval(r, sc, n->a, &a) || eval_args(r, sc, n, &args)) return ES_EINVAL;
        if (ct_apply_test(r, n->line, n->name, a, &args, &res)) return ES_EINVAL;
        *out = ct_bool(n->negated ? !res : res);
        return ES_OK;
    }
    case ND_UNARY:
        if (eval(r, sc, n->a, &a)) return ES_EINVAL;
        if (a.kind == CV_FLOAT) {
            *out = a;
            if (n->op == OP_NEG) out->u.f = -a.u.f;
            return ES_OK;
        }
        if (!is_intlike(a)) {
            if (a.kind == CV_UNDEF) return undefined_error(r, n->line, a);
            return ct_fail(r, n->line, ES_EINVAL, "bad operand type for unary %s: '%s'",
                           n->op == OP_NEG ? "-" : "+", ct_type_name(a));
        }
        if (n->op == OP_NEG && as_int(a) == INT64_MIN)
            return ct_fail(r, n->line, ES_ERANGE, "integer overflow");
        *out = ct_int(n->op == OP_NEG ? -as_int(a) : as_int(a));
        return ES_OK;
    case ND_BINARY:
        if (eval(r, sc, n->a, &a) || eval(r, sc, n->b, &b)) return ES_EINVAL;
        return binary(r, n->line, n->op, a, b, out);
    case ND_COMPARE:
        return eval_compare(r, sc, n, out);
    case ND_AND:
    case ND_OR:
        if (eval(r, sc, n->a, &a)) return ES_EINVAL;
        if (ct_truthy(a) == (n->kind == ND_OR)) {
            *out = a;
            return ES_OK;
        }
        return eval(r, sc, n->b, out);
    case ND_NOT:
        if (eval(r, sc, n->a, &a)) return ES_EINVAL;
        *out = ct_bool(!ct_truthy(a));
        return ES_OK;
    case ND_COND:
        if (eval(r, sc, n->a, &a)) return ES_EINVAL;
        if (ct_truthy(a)) return eval(r, sc, n->b, out);
        if (n->c) return eval(r, sc, n->c, out);
        *out = ct_undef(NULL);
        return ES_OK;
    case ND_LIST:
    case ND_TUPLE: {
        struct ct_list *l = ct_list_new(r, n->items.n);
        if (!l) return oom(r);
        for (size_t i = 0; i < n->items.n; i++)
            if (eval(r, sc, n->items.v[i], &l->v[l->n++])) return ES_EINVAL;
        out->kind = n->kind == ND_LIST ? CV_LIST : CV_TUPLE;
        out->u.list = l;
        return ES_OK;
    }
    case ND_DICT: {
        struct ct_dict *d = ct_dict_new(r, n->items.n);
        if (!d) return oom(r);
        for (size_t i = 0; i < n->items.n; i++) {
            if (eval(r, sc, n->items.v[i], &a) || eval(r, sc, n->kw_vals.v[i], &b))
                return ES_EINVAL;
            if (ct_dict_set(r, d, a, b)) return ES_ENOMEM;
        }
        out->kind = CV_DICT;
        out->u.dict = d;
        return ES_OK;
    }
    default:
        return ct_fail(r, n->line, ES_ERR, "internal error: statement used as expression");
    }
}

static enum es_status eval(struct ct_render *r, struct ct_scope *sc, const struct ct_node *n,
                           struct ct_val *out)
{
    if (++r->depth > r->max_depth)
        return ct_fail(r, n->line, ES_ERANGE, "recursion limit exceeded");
    enum es_status st = eval_inner(r, sc, n, out);
    r->depth--;
    return st;
}

/* ---- statements ------------------------------------------------------ */

static enum es_status exec_body(struct ct_render *r, struct ct_scope *sc,
                                const struct ct_node *body, enum flow *flow);

/* Assigns v to the names (unpacking when there are several). */
static enum es_status assign(struct ct_render *r, int line, struct ct_scope *sc,
                             const char *const *names, size_t n_names, struct ct_val v)
{
    if (n_names == 1) return scope_set(r, sc, names[0], v);
    if ((v.kind != CV_LIST && v.kind != CV_TUPLE) || v.u.list->n != n_names) {
        if (v.kind == CV_LIST || v.kind == CV_TUPLE)
            return ct_fail(r, line, ES_EINVAL, "cannot unpack %zu values into %zu names",
                           v.u.list->n, n_names);
        return ct_fail(r, line, ES_EINVAL, "cannot unpack non-sequence %s", ct_type_name(v));
    }
    for (size_t i = 0; i < n_names; i++)
        if (scope_set(r, sc, names[i], v.u.list->v[i])) return ES_ENOMEM;
    return ES_OK;
}

/* The items a for loop walks: list/tuple items, dict keys, characters. */
static enum es_status iter_items(struct ct_render *r, int line, struct ct_val v,
                                 struct ct_list **out)
{
    struct ct_list *l;
    switch (v.kind) {
    case CV_UNDEF:
        *out = ct_list_new(r, 0);
        return *out ? ES_OK : oom(r);
    case CV_LIST:
    case CV_TUPLE:
        *out = v.u.list;
        return ES_OK;
    case CV_DICT:
    case CV_NS:
        if (!(l = ct_list_new(r, v.u.dict->n))) return oom(r);
        for (size_t i = 0; i < v.u.dict->n; i++)
            l->v[l->n++] = v.u.dict->keys[i];
        *out = l;
        return ES_OK;
    case CV_STR:
        if (!(l = ct_list_new(r, 0))) return oom(r);
        for (size_t i = 0; i < v.u.s.n;) {
            int cl = utf8_char_len((const unsigned char *)v.u.s.p + i, v.u.s.n - i);
            size_t len = cl > 0 ? (size_t)cl : 1;
            if (ct_list_push(r, l, ct_str(v.u.s.p + i, len))) return ES_ENOMEM;
            i += len;
        }
        *out = l;
        return ES_OK;
    default:
        return ct_fail(r, line, ES_EINVAL, "'%s' object is not iterable", ct_type_name(v));
    }
}

static enum es_status spend_iteration(struct ct_render *r, int line)
{
    if (r->loop_budget == 0) return ct_fail(r, line, ES_ERANGE, "loop iteration limit exceeded");
    r->loop_budget--;
    return ES_OK;
}

static enum es_status exec_for(struct ct_render *r, struct ct_scope *sc, const struct ct_node *n)
{
    struct ct_val seq;
    struct ct_list *items;
    if (eval(r, sc, n->a, &seq) || iter_items(r, n->line, seq, &items)) return ES_EINVAL;
    if (n->b) { /* {% for x in xs if cond %}: filter first, so loop.length counts kept items */
        struct ct_list *kept = ct_list_new(r, items->n);
        if (!kept) return oom(r);
        for (size_t i = 0; i < items->n; i++) {
            struct ct_scope *it = scope_new(r, sc);
            struct ct_val keep;
            if (!it) return oom(r);
            if (spend_iteration(r, n->line) ||
                assign(r, n->line, it, n->kw_names, n->n_kw_names, items->v[i]) ||
                eval(r, it, n->b, &keep))
                return ES_EINVAL;
            if (ct_truthy(keep)) kept->v[kept->n++] = items->v[i];
        }
        items = kept;
    }
    if (items->n == 0) {
        if (!n->else_body) return ES_OK;
        enum flow f = FLOW_NORMAL;
        return exec_body(r, sc, n->else_body, &f);
    }
    static const char *const keys[] = {"index",    "index0", "revindex", "revindex0",
                                       "first",    "last",   "length",   "previtem",
                                       "nextitem", "depth",  "depth0"};
    struct ct_dict *loop = ct_dict_new(r, 11);
    if (!loop) return oom(r);
    for (size_t k = 0; k < 11; k++) {
        loop->keys[k] = ct_cstr(keys[k]);
        loop->vals[k] = ct_undef(keys[k]);
    }
    loop->n = 11;
    struct ct_val loop_val = {.kind = CV_DICT};
    loop_val.u.dict = loop;
    int64_t len = (int64_t)items->n;
    for (int64_t i = 0; i < len; i++) {
        if (spend_iteration(r, n->line)) return ES_EINVAL;
        loop->vals[0] = ct_int(i + 1);
        loop->vals[1] = ct_int(i);
        loop->vals[2] = ct_int(len - i);
        loop->vals[3] = ct_int(len - i - 1);
        loop->vals[4] = ct_bool(i == 0);
        loop->vals[5] = ct_bool(i == len - 1);
        loop->vals[6] = ct_int(len);
        loop->vals[7] = i > 0 ? items->v[i - 1] : ct_undef("previtem");
        loop->vals[8] = i < len - 1 ? items->v[i + 1] : ct_undef("nextitem");
        loop->vals[9] = ct_int(1);
        loop->vals[10] = ct_int(0);
        struct ct_scope *it = scope_new(r, sc);
        if (!it) return oom(r);
        if (scope_set(r, it, "loop", loop_val) ||
            assign(r, n->line, it, n->kw_names, n->n_kw_names, items->v[i]))
            return ES_EINVAL;
        enum flow f = FLOW_NORMAL;
        if (exec_body(r, it, n->body, &f)) return ES_EINVAL;
        if (f == FLOW_BREAK) break;
    }
    return ES_OK;
}

/* Runs body with output captured, returns the text as a value. */
static enum es_status capture(struct ct_render *r, struct ct_scope *sc, const struct ct_node *body,
                              struct ct_val *out)
{
    struct strbuf buf = {0}, *saved = r->out;
    r->out = &buf;
    enum flow f = FLOW_NORMAL;
    enum es_status st = exec_body(r, sc, body, &f);
    r->out = saved;
    if (!st) st = ct_str_from_sb(r, &buf, out);
    sb_free(&buf);
    return st;
}

/* Evaluates a filter chain whose innermost operand is the placeholder. */
static enum es_status apply_chain(struct ct_render *r, struct ct_scope *sc, const struct ct_node *n,
                                  struct ct_val in, struct ct_val *out)
{
    struct hole saved = current_hole;
    current_hole.node = n->b;
    current_hole.val = in;
    enum es_status st = eval(r, sc, n->a, out);
    current_hole = saved;
    return st;
}

enum es_status ct_call_macro(struct ct_render *r, int line, const struct ct_macro *m,
                             const struct ct_args *a, struct ct_val *out)
{
    const struct ct_node *n = m->node;
    if (a->n_pos > n->n_kw_names)
        return ct_fail(r, line, ES_EINVAL, "macro '%s' takes not more than %zu argument(s)",
                       n->name, n->n_kw_names);
    struct ct_scope *sc = scope_new(r, m->closure);
    if (!sc) return oom(r);
    for (size_t k = 0; k < a->n_kw; k++) {
        bool found = false;
        for (size_t i = 0; i < n->n_kw_names && !found; i++)
            found = !strcmp(n->kw_names[i], a->kw_names[k]);
        if (!found)
            return ct_fail(r, line, ES_EINVAL, "macro '%s' has no parameter '%s'", n->name,
                           a->kw_names[k]);
    }
    for (size_t i = 0; i < n->n_kw_names; i++) {
        struct ct_val v = ct_undef(n->kw_names[i]);
        bool given = false;
        if (i < a->n_pos) {
            v = a->pos[i];
            given = true;
        }
        for (size_t k = 0; k < a->n_kw; k++) {
            if (!strcmp(n->kw_names[i], a->kw_names[k])) {
                if (given)
                    return ct_fail(r, line, ES_EINVAL, "macro '%s' got multiple values for '%s'",
                                   n->name, a->kw_names[k]);
                v = a->kw[k];
                given = true;
            }
        }
        if (!given && n->items.v[i] && eval(r, sc, n->items.v[i], &v)) return ES_EINVAL;
        if (scope_set(r, sc, n->kw_names[i], v)) return ES_ENOMEM;
    }
    if (++r->depth > r->max_depth) return ct_fail(r, line, ES_ERANGE, "recursion limit exceeded");
    enum es_status st = capture(r, sc, n->body, out);
    r->depth--;
    return st;
}

static enum es_status exec_stmt(struct ct_render *r, struct ct_scope *sc, const struct ct_node *n,
                                enum flow *flow)
{
    struct ct_val v;
    switch (n->kind) {
    case ND_TEXT:
        return emit(r, n->line, n->name, n->name_len);
    case ND_OUTPUT: {
        if (eval(r, sc, n->a, &v)) return ES_EINVAL;
        if (v.kind == CV_STR) return emit(r, n->line, v.u.s.p, v.u.s.n);
        enum es_status st = ct_append_str(r, n->line, r->out, v);
        if (!st && r->out->len > r->max_output_bytes)
            st = ct_fail(r, n->line, ES_ERANGE, "output size limit exceeded");
        return st;
    }
    case ND_IF:
        if (eval(r, sc, n->a, &v)) return ES_EINVAL;
        if (ct_truthy(v)) return exec_body(r, sc, n->body, flow);
        return n->else_body ? exec_body(r, sc, n->else_body, flow) : ES_OK;
    case ND_FOR:
        return exec_for(r, sc, n);
    case ND_SET:
        if (eval(r, sc, n->a, &v)) return ES_EINVAL;
        return assign(r, n->line, sc, n->kw_names, n->n_kw_names, v);
    case ND_SET_ATTR: {
        struct ct_val ns = scope_get(sc, n->name, strlen(n->name));
        if (ns.kind != CV_NS)
            return ct_fail(r, n->line, ES_EINVAL,
                           "cannot assign attribute on non-namespace object");
        if (eval(r, sc, n->a, &v)) return ES_EINVAL;
        return ct_dict_set(r, ns.u.dict, ct_cstr(n->kw_names[0]), v);
    }
    case ND_SET_BLOCK:
        if (capture(r, sc, n->body, &v)) return ES_EINVAL;
        if (n->a && apply_chain(r, sc, n, v, &v)) return ES_EINVAL;
        return scope_set(r, sc, n->kw_names[0], v);
    case ND_FILTER_BLOCK:
        if (capture(r, sc, n->body, &v) || apply_chain(r, sc, n, v, &v)) return ES_EINVAL;
        if (v.kind == CV_STR) return emit(r, n->line, v.u.s.p, v.u.s.n);
        return ct_append_str(r, n->line, r->out, v);
    case ND_MACRO: {
        struct ct_macro *m = ct_alloc(&r->arena, sizeof(*m));
        if (!m) return oom(r);
        m->node = n;
        m->closure = sc;
        v.kind = CV_MACRO;
        v.u.macro = m;
        return scope_set(r, sc, n->name, v);
    }
    case ND_WITH: {
        struct ct_scope *inner = scope_new(r, sc);
        if (!inner) return oom(r);
        for (size_t i = 0; i < n->kw_vals.n; i++) {
            if (eval(r, sc, n->kw_vals.v[i], &v) || scope_set(r, inner, n->kw_names[i], v))
                return ES_EINVAL;
        }
        return exec_body(r, inner, n->body, flow);
    }
    case ND_BREAK:
        *flow = FLOW_BREAK;
        return ES_OK;
    case ND_CONTINUE:
        *flow = FLOW_CONTINUE;
        return ES_OK;
    case ND_BODY:
        return exec_body(r, sc, n, flow);
    default:
        return ct_fail(r, n->line, ES_ERR, "internal error: expression used as statement");
    }
}

static enum es_status exec_body(struct ct_render *r, struct ct_scope *sc,
                                const struct ct_node *body, enum flow *flow)
{
    if (++r->depth > r->max_depth)
        return ct_fail(r, body->line, ES_ERANGE, "recursion limit exceeded");
    enum es_status st = ES_OK;
    for (size_t i = 0; i < body->items.n && *flow == FLOW_NORMAL; i++)
        if ((st = exec_stmt(r, sc, body->items.v[i], flow)) != ES_OK) break;
    r->depth--;
    return st;
}

enum es_status ct_exec(struct ct_render *r, const struct ct_node *root, const cJSON *context)
{
    struct ct_scope *g = scope_new(r, NULL);
    if (!g) return oom(r);
    r->globals = g;
    if (context && !cJSON_IsObject(context))
        return es_fail(r->err, ES_EINVAL,
                       "chat template: the render context must be a JSON object");
    for (const cJSON *c = context ? context->child : NULL; c; c = c->next) {
        struct ct_val v;
        if (ct_from_json(r, c, 0, &v)) return ES_EINVAL;
        if (scope_set(r, g, c->string, v)) return ES_ENOMEM;
    }
    enum flow f = FLOW_NORMAL;
    return exec_body(r, g, root, &f);
}
