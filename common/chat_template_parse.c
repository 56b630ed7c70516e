/*
 * chat_template_parse.c - the parser of the chat-template interpreter:
 * tokens from ct_lex into a tree of struct ct_node, following jinja2's
 * grammar and operator precedence (conditional expression < or < and <
 * not < comparison < + - < ~ < * / // % < ** < unary < postfix/filters).
 *
 * It accepts the statement tags chat templates use (if/elif/else, for with
 * else/filter, set including block set and namespace attributes, macro,
 * break/continue, with, filter, generation) and rejects everything else
 * with the line number, so an unsupported template fails at load time
 * rather than rendering a wrong prompt. Nesting depth is bounded so no
 * input can exhaust the stack.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "chat_template_internal.h"

#define CT_MAX_PARSE_DEPTH 200

struct parser {
    const struct ct_tokens *t;
    size_t pos;
    struct ct_arena *arena;
    struct es_err *err;
    int depth;
    int loop_depth; /* for break/continue */
};

static enum es_status perr(struct parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum es_status perr(struct parser *p, int line, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return es_fail(p->err, ES_EINVAL, "chat template line %d: %s", line, msg);
}

static enum es_status oom(struct parser *p)
{
    return es_fail(p->err, ES_ENOMEM, "chat template: out of memory");
}

static const struct ct_token *cur(const struct parser *p)
{
    return &p->t->v[p->pos];
}
static const struct ct_token *peek(const struct parser *p, size_t k)
{
    size_t i = p->pos + k;
    return i < p->t->n ? &p->t->v[i] : &p->t->v[p->t->n - 1];
}
static void next(struct parser *p)
{
    if (p->pos + 1 < p->t->n) p->pos++;
}
static bool is_op(const struct ct_token *t, enum ct_op op)
{
    return t->kind == TK_OP && t->op == op;
}
static bool is_name(const struct ct_token *t, const char *s)
{
    return t->kind == TK_NAME && strcmp(t->text, s) == 0;
}
static bool skip_op(struct parser *p, enum ct_op op)
{
    if (!is_op(cur(p), op)) return false;
    next(p);
    return true;
}
static bool skip_name(struct parser *p, const char *s)
{
    if (!is_name(cur(p), s)) return false;
    next(p);
    return true;
}

static const char *tok_desc(const struct ct_token *t)
{
    switch (t->kind) {
    case TK_EOF:
        return "end of template";
    case TK_DATA:
        return "text";
    case TK_BLOCK_BEGIN:
        return "'{%'";
    case TK_BLOCK_END:
        return "'%}'";
    case TK_VAR_BEGIN:
        return "'{{'";
    case TK_VAR_END:
        return "'}}'";
    case TK_NAME:
        return t->text;
    case TK_STRING:
        return "string";
    case TK_INT:
        return "integer";
    case TK_FLOAT:
        return "float";
    case TK_OP:
        return "operator";
    }
    return "token";
}

static enum es_status expect_op(struct parser *p, enum ct_op op, const char *what)
{
    if (skip_op(p, op)) return ES_OK;
    return perr(p, cur(p)->line, "expected '%s', got %s", what, tok_desc(cur(p)));
}

static struct ct_node *node(struct parser *p, enum ct_node_kind kind, int line)
{
    struct ct_node *n = ct_alloc(p->arena, sizeof(*n));
    if (n) {
        n->kind = kind;
        n->line = line;
    }
    return n;
}

static enum es_status nodes_push(struct parser *p, struct ct_nodes *ns, struct ct_node *n)
{
    if (ns->n == ns->cap) {
        size_t cap = ns->cap ? ns->cap * 2 : 4;
        struct ct_node **v = ct_alloc(p->arena, cap * sizeof(*v));
        if (!v) return oom(p);
        if (ns->n) memcpy(v, ns->v, ns->n * sizeof(*v));
        ns->v = v;
        ns->cap = cap;
    }
    ns->v[ns->n++] = n;
    return ES_OK;
}

static enum es_status names_push(struct parser *p, struct ct_node *n, const char *name)
{
    const char **v = ct_alloc(p->arena, (n->n_kw_names + 1) * sizeof(*v));
    if (!v) return oom(p);
    if (n->n_kw_names) memcpy(v, n->kw_names, n->n_kw_names * sizeof(*v));
    v[n->n_kw_names++] = name;
    n->kw_names = v;
    return ES_OK;
}

/* ---- expressions ----------------------------------------------------- */

static enum es_status parse_expr(struct parser *p, bool with_cond, struct ct_node **out);
static enum es_status parse_unary(struct parser *p, bool with_filter, struct ct_node **out);
static enum es_status parse_or(struct parser *p, struct ct_node **out);

/* "(" args ")" into n->items / n->kw_names + n->kw_vals; cursor on "(" */
static enum es_status parse_call_args(struct parser *p, struct ct_node *n)
{
    next(p);
    while (!is_op(cur(p), OP_RPAREN)) {
        if (n->items.n + n->kw_vals.n > 0 && expect_op(p, OP_COMMA, ",")) return ES_EINVAL;
        if (is_op(cur(p), OP_RPAREN)) break;
        if (is_op(cur(p), OP_MUL) || is_op(cur(p), OP_POW))
            return perr(p, cur(p)->line, "unsupported '*args'/'**kwargs' in a call");
        struct ct_node *arg;
        if (cur(p)->kind == TK_NAME && is_op(peek(p, 1), OP_ASSIGN)) {
            const char *kw = cur(p)->text;
            next(p);
            next(p);
            if (parse_expr(p, true, &arg)) return ES_EINVAL;
            if (names_push(p, n, kw) || nodes_push(p, &n->kw_vals, arg)) return ES_ENOMEM;
        } else {
            if (n->kw_vals.n)
                return perr(p, cur(p)->line, "positional argument after keyword argument");
            if (parse_expr(p, true, &arg)) return ES_EINVAL;
            if (nodes_push(p, &n->items, arg)) return ES_ENOMEM;
        }
    }
    next(p);
    return ES_OK;
}

/* A parenthesised expression or tuple; cursor after "(". */
static enum es_status parse_paren(struct parser *p, int line, struct ct_node **out)
{
    if (skip_op(p, OP_RPAREN)) {
        *out = node(p, ND_TUPLE, line);
        return *out ? ES_OK : oom(p);
    }
    struct ct_node *first;
    if (parse_expr(p, true, &first)) return ES_EINVAL;
    if (skip_op(p, OP_RPAREN)) {
        *out = first;
        return ES_OK;
    }
    struct ct_node *t = node(p, ND_TUPLE, line);
    if (!t || nodes_push(p, &t->items, first)) return oom(p);
    while (skip_op(p, OP_COMMA)) {
        if (is_op(cur(p), OP_RPAREN)) break;
        struct ct_node *e;
        if (parse_expr(p, true, &e)) return ES_EINVAL;
        if (nodes_push(p, &t->items, e)) return ES_ENOMEM;
    }
    if (expect_op(p, OP_RPAREN, ")")) return ES_EINVAL;
    *out = t;
    return ES_OK;
}

static enum es_status parse_primary(struct parser *p, struct ct_node **out)
{
    const struct ct_token *t = cur(p);
    int line = t->line;
    struct ct_node *n = NULL;
    if (++p->depth > CT_MAX_PARSE_DEPTH) return perr(p, line, "expression nested too deeply");
    enum es_status st = ES_OK;
    switch (t->kind) {
    case TK_NAME:
        n = node(p, ND_LIT, line);
        if (!n) return oom(p);
        if (!strcmp(t->text, "true") || !strcmp(t->text, "True"))
            n->lit = ct_bool(true);
        else if (!strcmp(t->text, "false") || !strcmp(t->text, "False"))
            n->lit = ct_bool(false);
        else if (!strcmp(t->text, "none") || !strcmp(t->text, "None"))
            n->lit = ct_none();
        else {
            n->kind = ND_NAME;
            n->name = t->text;
            n->name_len = t->len;
        }
        next(p);
        break;
    case TK_STRING: {
        struct strbuf sb = {0};
        while (cur(p)->kind == TK_STRING) {
            sb_append(&sb, cur(p)->text, cur(p)->len);
            next(p);
        }
        n = node(p, ND_LIT, line);
        const char *s = ct_strndup(p->arena, sb_cstr(&sb), sb.len);
        size_t len = sb.len;
        sb_free(&sb);
        if (!n || !s) return oom(p);
        n->lit = ct_str(s, len);
        break;
    }
    case TK_INT:
    case TK_FLOAT:
        n = node(p, ND_LIT, line);
        if (!n) return oom(p);
        if (t->kind == TK_INT) {
            n->lit = ct_int(t->ival);
        } else {
            n->lit.kind = CV_FLOAT;
            n->lit.u.f = t->fval;
        }
        next(p);
        break;
    case TK_OP:
        if (t->op == OP_LPAREN) {
            next(p);
            st = parse_paren(p, line, &n);
        } else if (t->op == OP_LBRACKET) {
            next(p);
            n = node(p, ND_LIST, line);
            if (!n) return oom(p);
            while (!is_op(cur(p), OP_RBRACKET)) {
                if (n->items.n && expect_op(p, OP_COMMA, ",")) return ES_EINVAL;
                if (is_op(cur(p), OP_RBRACKET)) break;
                struct ct_node *e;
                if (parse_expr(p, true, &e)) return ES_EINVAL;
                if (nodes_push(p, &n->items, e)) return ES_ENOMEM;
            }
            next(p);
        } else if (t->op == OP_LBRACE) {
            next(p);
            n = node(p, ND_DICT, line);
            if (!n) return oom(p);
            while (!is_op(cur(p), OP_RBRACE)) {
                if (n->items.n && expect_op(p, OP_COMMA, ",")) return ES_EINVAL;
                if (is_op(cur(p), OP_RBRACE)) break;
                struct ct_node *k, *v;
                if (parse_expr(p, true, &k) || expect_op(p, OP_COLON, ":") ||
                    parse_expr(p, true, &v))
                    return ES_EINVAL;
                if (nodes_push(p, &n->items, k) || nodes_push(p, &n->kw_vals, v)) return ES_ENOMEM;
            }
            next(p);
        } else {
            return perr(p, line, "unexpected operator in expression");
        }
        break;
    default:
        return perr(p, line, "unexpected %s in expression", tok_desc(t));
    }
    p->depth--;
    *out = n;
    return st;
}

static enum es_status parse_subscript(struct parser *p, struct ct_node *obj, struct ct_node **out)
{
    int line = cur(p)->line;
    if (skip_op(p, OP_DOT)) {
        const struct ct_token *t = cur(p);
        struct ct_node *n = node(p, t->kind == TK_INT ? ND_GETITEM : ND_GETATTR, line);
        if (!n) return oom(p);
        n->a = obj;
        if (t->kind == TK_NAME) {
            n->name = t->text;
            n->name_len = t->len;
        } else if (t->kind == TK_INT) {
            if (!(n->b = node(p, ND_LIT, line))) return oom(p);
            n->b->lit = ct_int(t->ival);
        } else {
            return perr(p, line, "expected an attribute name after '.'");
        }
        next(p);
        *out = n;
        return ES_OK;
    }
    next(p); /* [ */
    struct ct_node *start = NULL, *stop = NULL, *step = NULL;
    if (!is_op(cur(p), OP_COLON) && parse_expr(p, true, &start)) return ES_EINVAL;
    if (!is_op(cur(p), OP_COLON)) {
        if (expect_op(p, OP_RBRACKET, "]")) return ES_EINVAL;
        struct ct_node *n = node(p, ND_GETITEM, line);
        if (!n) return oom(p);
        n->a = obj;
        n->b = start;
        *out = n;
        return ES_OK;
    }
    next(p);
    if (!is_op(cur(p), OP_RBRACKET) && !is_op(cur(p), OP_COLON) && parse_expr(p, true, &stop))
        return ES_EINVAL;
    if (skip_op(p, OP_COLON) && !is_op(cur(p), OP_RBRACKET) && parse_expr(p, true, &step))
        return ES_EINVAL;
    if (expect_op(p, OP_RBRACKET, "]")) return ES_EINVAL;
    struct ct_node *n = node(p, ND_SLICE, line);
    if (!n) return oom(p);
    n->a = obj;
    n->b = start;
    n->c = stop;
    n->d = step;
    *out = n;
    return ES_OK;
}

static enum es_status parse_call(struct parser *p, struct ct_node *callee, struct ct_node **out)
{
    struct ct_node *n = node(p, ND_CALL, cur(p)->line);
    if (!n) return oom(p);
    n->a = callee;
    if (parse_call_args(p, n)) return ES_EINVAL;
    *out = n;
    return ES_OK;
}

static enum es_status parse_postfix(struct parser *p, struct ct_node **n)
{
    for (;;) {
        if (is_op(cur(p), OP_DOT) || is_op(cur(p), OP_LBRACKET)) {
            if (parse_subscript(p, *n, n)) return ES_EINVAL;
        } else if (is_op(cur(p), OP_LPAREN)) {
            if (parse_call(p, *n, n)) return ES_EINVAL;
        } else {
            return ES_OK;
        }
    }
}

static enum es_status parse_dotted_name(struct parser *p, const char **name)
{
    if (cur(p)->kind != TK_NAME)
        return perr(p, cur(p)->line, "expected a name, got %s", tok_desc(cur(p)));
    *name = cur(p)->text;
    next(p);
    if (is_op(cur(p), OP_DOT))
        return perr(p, cur(p)->line, "unsupported dotted filter or test name");
    return ES_OK;
}

/* name [ "(" args ")" ] after a "|": wraps *n in a filter node */
static enum es_status parse_filter_call(struct parser *p, int line, struct ct_node **n)
{
    struct ct_node *f = node(p, ND_FILTER, line);
    if (!f) return oom(p);
    if (parse_dotted_name(p, &f->name)) return ES_EINVAL;
    if (!ct_filter_known(f->name)) return perr(p, line, "unsupported filter '%s'", f->name);
    f->a = *n;
    if (is_op(cur(p), OP_LPAREN) && parse_call_args(p, f)) return ES_EINVAL;
    *n = f;
    return ES_OK;
}

static enum es_status parse_filter_expr(struct parser *p, struct ct_node **n)
{
    for (;;) {
        int line = cur(p)->line;
        if (skip_op(p, OP_PIPE)) {
            if (parse_filter_call(p, line, n)) return ES_EINVAL;
        } else if (skip_name(p, "is")) {
            struct ct_node *t = node(p, ND_TEST, line);
            if (!t) return oom(p);
            t->negated = skip_name(p, "not");
            if (parse_dotted_name(p, &t->name)) return ES_EINVAL;
            if (!ct_test_known(t->name)) return perr(p, line, "unsupported test '%s'", t->name);
            t->a = *n;
            const struct ct_token *c = cur(p);
            if (is_op(c, OP_LPAREN)) {
                if (parse_call_args(p, t)) return ES_EINVAL;
            } else if ((c->kind == TK_NAME || c->kind == TK_STRING || c->kind == TK_INT ||
                        c->kind == TK_FLOAT || is_op(c, OP_LBRACKET) || is_op(c, OP_LBRACE)) &&
                       !is_name(c, "else") && !is_name(c, "or") && !is_name(c, "and")) {
                if (is_name(c, "is")) return perr(p, line, "cannot chain multiple tests with 'is'");
                struct ct_node *arg;
                if (parse_primary(p, &arg) || parse_postfix(p, &arg)) return ES_EINVAL;
                if (nodes_push(p, &t->items, arg)) return ES_ENOMEM;
            }
            *n = t;
        } else if (is_op(cur(p), OP_LPAREN)) {
            if (parse_call(p, *n, n)) return ES_EINVAL;
        } else {
            return ES_OK;
        }
    }
}

static enum es_status parse_unary(struct parser *p, bool with_filter, struct ct_node **out)
{
    const struct ct_token *t = cur(p);
    int line = t->line;
    if (++p->depth > CT_MAX_PARSE_DEPTH) return perr(p, line, "expression nested too deeply");
    struct ct_node *n;
    if (is_op(t, OP_SUB) || is_op(t, OP_ADD)) {
        next(p);
        n = node(p, ND_UNARY, line);
        if (!n) return oom(p);
        n->op = t->op == OP_SUB ? OP_NEG : OP_POS;
        if (parse_unary(p, false, &n->a)) return ES_EINVAL;
    } else if (parse_primary(p, &n)) {
        return ES_EINVAL;
    }
    if (parse_postfix(p, &n)) return ES_EINVAL;
    if (with_filter && parse_filter_expr(p, &n)) return ES_EINVAL;
    p->depth--;
    *out = n;
    return ES_OK;
}

/* One binary precedence level: operand (op operand)* */
typedef enum es_status (*level_fn)(struct parser *p, struct ct_node **out);

static enum es_status parse_binary(struct parser *p, level_fn sub, const enum ct_op *ops,
                                   size_t n_ops, struct ct_node **out)
{
    struct ct_node *left;
    if (sub(p, &left)) return ES_EINVAL;
    for (;;) {
        const struct ct_token *t = cur(p);
        enum ct_op op = OP_NONE;
        for (size_t i = 0; i < n_ops; i++)
            if (is_op(t, ops[i])) op = ops[i];
        if (op == OP_NONE) break;
        next(p);
        struct ct_node *n = node(p, ND_BINARY, t->line);
        if (!n) return oom(p);
        n->op = op;
        n->a = left;
        if (sub(p, &n->b)) return ES_EINVAL;
        left = n;
    }
    *out = left;
    return ES_OK;
}

static enum es_status parse_unary_f(struct parser *p, struct ct_node **out)
{
    return parse_unary(p, true, out);
}
static enum es_status parse_pow(struct parser *p, struct ct_node **out)
{
    static const enum ct_op ops[] = {OP_POW};
    return parse_binary(p, parse_unary_f, ops, 1, out);
}
static enum es_status parse_math2(struct parser *p, struct ct_node **out)
{
    static const enum ct_op ops[] = {OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD};
    return parse_binary(p, parse_pow, ops, 4, out);
}
static enum es_status parse_concat(struct parser *p, struct ct_node **out)
{
    static const enum ct_op ops[] = {OP_TILDE};
    return parse_binary(p, parse_math2, ops, 1, out);
}
static enum es_status parse_math1(struct parser *p, struct ct_node **out)
{
    static const enum ct_op ops[] = {OP_ADD, OP_SUB};
    return parse_binary(p, parse_concat, ops, 2, out);
}

static enum es_status parse_compare(struct parser *p, struct ct_node **out)
{
    struct ct_node *first;
    if (parse_math1(p, &first)) return ES_EINVAL;
    struct ct_node *cmp = NULL;
    enum ct_op opv[64];
    for (;;) {
        const struct ct_token *t = cur(p);
        enum ct_op op = OP_NONE;
        if (t->kind == TK_OP && (t->op == OP_EQ || t->op == OP_NE || t->op == OP_LT ||
                                 t->op == OP_LE || t->op == OP_GT || t->op == OP_GE)) {
            op = t->op;
            next(p);
        } else if (is_name(t, "in")) {
            op = OP_IN;
            next(p);
        } else if (is_name(t, "not") && is_name(peek(p, 1), "in")) {
            op = OP_NOTIN;
            next(p);
            next(p);
        } else {
            break;
        }
        if (!cmp) {
            if (!(cmp = node(p, ND_COMPARE, t->line))) return oom(p);
            cmp->a = first;
        }
        if (cmp->items.n >= 64) return perr(p, t->line, "comparison chain too long");
        opv[cmp->items.n] = op;
        struct ct_node *rhs;
        if (parse_math1(p, &rhs) || nodes_push(p, &cmp->items, rhs)) return ES_EINVAL;
    }
    if (!cmp) {
        *out = first;
        return ES_OK;
    }
    cmp->ops = ct_alloc(p->arena, cmp->items.n * sizeof(*cmp->ops));
    if (!cmp->ops) return oom(p);
    memcpy(cmp->ops, opv, cmp->items.n * sizeof(*cmp->ops));
    *out = cmp;
    return ES_OK;
}

static enum es_status parse_not(struct parser *p, struct ct_node **out)
{
    if (is_name(cur(p), "not")) {
        int line = cur(p)->line;
        next(p);
        if (++p->depth > CT_MAX_PARSE_DEPTH) return perr(p, line, "expression nested too deeply");
        struct ct_node *n = node(p, ND_NOT, line);
        if (!n) return oom(p);
        if (parse_not(p, &n->a)) return ES_EINVAL;
        p->depth--;
        *out = n;
        return ES_OK;
    }
    return parse_compare(p, out);
}

static enum es_status parse_logic(struct parser *p, bool is_or, struct ct_node **out)
{
    struct ct_node *left;
    if (is_or ? parse_logic(p, false, &left) : parse_not(p, &left)) return ES_EINVAL;
    while (is_name(cur(p), is_or ? "or" : "and")) {
        struct ct_node *n = node(p, is_or ? ND_OR : ND_AND, cur(p)->line);
        if (!n) return oom(p);
        next(p);
        n->a = left;
        if (is_or ? parse_logic(p, false, &n->b) : parse_not(p, &n->b)) return ES_EINVAL;
        left = n;
    }
    *out = left;
    return ES_OK;
}

static enum es_status parse_or(struct parser *p, struct ct_node **out)
{
    return parse_logic(p, true, out);
}

static enum es_status parse_expr(struct parser *p, bool with_cond, struct ct_node **out)
{
    if (++p->depth > CT_MAX_PARSE_DEPTH)
        return perr(p, cur(p)->line, "expression nested too deeply");
    struct ct_node *e = NULL;
    if (parse_or(p, &e)) return ES_EINVAL;
    while (with_cond && is_name(cur(p), "if")) {
        struct ct_node *c = node(p, ND_COND, cur(p)->line);
        if (!c) return oom(p);
        next(p);
        c->b = e;
        if (parse_or(p, &c->a)) return ES_EINVAL;
        if (skip_name(p, "else") && parse_expr(p, true, &c->c)) return ES_EINVAL;
        e = c;
    }
    p->depth--;
    *out = e;
    return ES_OK;
}

/* expr ("," expr)* as a tuple when a comma appears */
static enum es_status parse_tuple(struct parser *p, bool with_cond, struct ct_node **out)
{
    int line = cur(p)->line;
    struct ct_node *first;
    if (parse_expr(p, with_cond, &first)) return ES_EINVAL;
    if (!is_op(cur(p), OP_COMMA)) {
        *out = first;
        return ES_OK;
    }
    struct ct_node *t = node(p, ND_TUPLE, line);
    if (!t || nodes_push(p, &t->items, first)) return oom(p);
    while (skip_op(p, OP_COMMA)) {
        const struct ct_token *c = cur(p);
        if (c->kind == TK_BLOCK_END || c->kind == TK_VAR_END || is_name(c, "if") ||
            is_name(c, "recursive"))
            break;
        struct ct_node *e;
        if (parse_expr(p, with_cond, &e) || nodes_push(p, &t->items, e)) return ES_EINVAL;
    }
    *out = t;
    return ES_OK;
}

/* ---- statements ------------------------------------------------------ */

static enum es_status parse_body(struct parser *p, const char *const *ends, struct ct_node **body,
                                 const char **end_tag);

static enum es_status expect_block_end(struct parser *p)
{
    if (cur(p)->kind == TK_BLOCK_END) {
        next(p);
        return ES_OK;
    }
    return perr(p, cur(p)->line, "expected '%%}', got %s", tok_desc(cur(p)));
}

/* name ("," name)* for for-loop and set targets */
static enum es_status parse_targets(struct parser *p, struct ct_node *n)
{
    bool paren = skip_op(p, OP_LPAREN);
    do {
        if (cur(p)->kind != TK_NAME) return perr(p, cur(p)->line, "expected a variable name");
        if (names_push(p, n, cur(p)->text)) return ES_ENOMEM;
        next(p);
    } while (skip_op(p, OP_COMMA) && cur(p)->kind == TK_NAME);
    if (paren && expect_op(p, OP_RPAREN, ")")) return ES_EINVAL;
    return ES_OK;
}

static enum es_status parse_for(struct parser *p, struct ct_node *n)
{
    static const char *const ends1[] = {"endfor", "else", NULL};
    static const char *const ends2[] = {"endfor", NULL};
    if (parse_targets(p, n)) return ES_EINVAL;
    if (!skip_name(p, "in")) return perr(p, cur(p)->line, "expected 'in' in for loop");
    if (parse_tuple(p, false, &n->a)) return ES_EINVAL;
    if (skip_name(p, "if") && parse_expr(p, true, &n->b)) return ES_EINVAL;
    if (is_name(cur(p), "recursive"))
        return perr(p, cur(p)->line, "unsupported recursive for loop");
    if (expect_block_end(p)) return ES_EINVAL;
    const char *end;
    p->loop_depth++;
    if (parse_body(p, ends1, &n->body, &end)) return ES_EINVAL;
    p->loop_depth--;
    if (!strcmp(end, "else")) {
        if (expect_block_end(p) || parse_body(p, ends2, &n->else_body, &end)) return ES_EINVAL;
    }
    return expect_block_end(p);
}

static enum es_status parse_if(struct parser *p, struct ct_node *n)
{
    static const char *const ends1[] = {"elif", "else", "endif", NULL};
    static const char *const ends2[] = {"endif", NULL};
    if (parse_tuple(p, true, &n->a) || expect_block_end(p)) return ES_EINVAL;
    const char *end;
    if (parse_body(p, ends1, &n->body, &end)) return ES_EINVAL;
    if (!strcmp(end, "elif")) {
        struct ct_node *elif = node(p, ND_IF, cur(p)->line);
        struct ct_node *wrap = node(p, ND_BODY, cur(p)->line);
        if (!elif || !wrap || nodes_push(p, &wrap->items, elif)) return oom(p);
        n->else_body = wrap;
        return parse_if(p, elif);
    }
    if (!strcmp(end, "else")) {
        if (expect_block_end(p) || parse_body(p, ends2, &n->else_body, &end)) return ES_EINVAL;
    }
    return expect_block_end(p);
}

static enum es_status parse_set(struct parser *p, struct ct_node *n)
{
    static const char *const ends[] = {"endset", NULL};
    if (cur(p)->kind == TK_NAME && is_op(peek(p, 1), OP_DOT) && peek(p, 2)->kind == TK_NAME) {
        n->kind = ND_SET_ATTR;
        n->name = cur(p)->text;
        next(p);
        next(p);
        if (names_push(p, n, cur(p)->text)) return ES_ENOMEM;
        next(p);
        if (expect_op(p, OP_ASSIGN, "=") || parse_tuple(p, true, &n->a)) return ES_EINVAL;
        return expect_block_end(p);
    }
    if (parse_targets(p, n)) return ES_EINVAL;
    if (skip_op(p, OP_ASSIGN)) {
        if (parse_tuple(p, true, &n->a)) return ES_EINVAL;
        return expect_block_end(p);
    }
    if (n->n_kw_names != 1) return perr(p, n->line, "block set needs exactly one target");
    n->kind = ND_SET_BLOCK;
    /* optional filters: {% set x | trim %} */
    struct ct_node *marker = node(p, ND_LIT, n->line);
    if (!marker) return oom(p);
    marker->lit = ct_undef(NULL);
    struct ct_node *f = marker;
    if (parse_filter_expr(p, &f)) return ES_EINVAL;
    n->a = f == marker ? NULL : f;
    n->b = marker; /* the evaluator puts the captured text here */
    const char *end;
    if (expect_block_end(p) || parse_body(p, ends, &n->body, &end)) return ES_EINVAL;
    return expect_block_end(p);
}

static enum es_status parse_macro(struct parser *p, struct ct_node *n)
{
    static const char *const ends[] = {"endmacro", NULL};
    if (cur(p)->kind != TK_NAME) return perr(p, cur(p)->line, "expected a macro name");
    n->name = cur(p)->text;
    next(p);
    if (expect_op(p, OP_LPAREN, "(")) return ES_EINVAL;
    while (!skip_op(p, OP_RPAREN)) {
        if (n->n_kw_names && expect_op(p, OP_COMMA, ",")) return ES_EINVAL;
        if (skip_op(p, OP_RPAREN)) break;
        if (cur(p)->kind != TK_NAME) return perr(p, cur(p)->line, "expected a parameter name");
        if (names_push(p, n, cur(p)->text)) return ES_ENOMEM;
        next(p);
        struct ct_node *def = NULL;
        if (skip_op(p, OP_ASSIGN) && parse_expr(p, true, &def)) return ES_EINVAL;
        if (nodes_push(p, &n->items, def)) return ES_ENOMEM;
    }
    if (expect_block_end(p)) return ES_EINVAL;
    int saved = p->loop_depth;
    p->loop_depth = 0;
    const char *end;
    if (parse_body(p, ends, &n->body, &end)) return ES_EINVAL;
    p->loop_depth = saved;
    if (cur(p)->kind == TK_NAME) next(p); /* {% endmacro name %} */
    return expect_block_end(p);
}

static enum es_status parse_with(struct parser *p, struct ct_node *n)
{
    static const char *const ends[] = {"endwith", NULL};
    while (cur(p)->kind != TK_BLOCK_END) {
        if (n->n_kw_names && expect_op(p, OP_COMMA, ",")) return ES_EINVAL;
        if (cur(p)->kind != TK_NAME) return perr(p, cur(p)->line, "expected a variable name");
        if (names_push(p, n, cur(p)->text)) return ES_ENOMEM;
        next(p);
        struct ct_node *v;
        if (expect_op(p, OP_ASSIGN, "=") || parse_expr(p, true, &v) ||
            nodes_push(p, &n->kw_vals, v))
            return ES_EINVAL;
    }
    next(p);
    const char *end;
    if (parse_body(p, ends, &n->body, &end)) return ES_EINVAL;
    return expect_block_end(p);
}

static enum es_status parse_statement(struct parser *p, struct ct_node **out)
{
    const struct ct_token *t = cur(p);
    int line = t->line;
    if (t->kind != TK_NAME) return perr(p, line, "expected a tag name after '{%%'");
    const char *tag = t->text;
    next(p);
    if (++p->depth > CT_MAX_PARSE_DEPTH) return perr(p, line, "blocks nested too deeply");
    struct ct_node *n = node(p, ND_BODY, line);
    if (!n) return oom(p);
    enum es_status st;
    if (!strcmp(tag, "for")) {
        n->kind = ND_FOR;
        st = parse_for(p, n);
    } else if (!strcmp(tag, "if")) {
        n->kind = ND_IF;
        st = parse_if(p, n);
    } else if (!strcmp(tag, "set")) {
        n->kind = ND_SET;
        st = parse_set(p, n);
    } else if (!strcmp(tag, "macro")) {
        n->kind = ND_MACRO;
        st = parse_macro(p, n);
    } else if (!strcmp(tag, "break") || !strcmp(tag, "continue")) {
        if (!p->loop_depth) return perr(p, line, "'%s' outside a for loop", tag);
        n->kind = tag[0] == 'b' ? ND_BREAK : ND_CONTINUE;
        st = expect_block_end(p);
    } else if (!strcmp(tag, "with")) {
        n->kind = ND_WITH;
        st = parse_with(p, n);
    } else if (!strcmp(tag, "filter")) {
        static const char *const ends[] = {"endfilter", NULL};
        n->kind = ND_FILTER_BLOCK;
        struct ct_node *marker = node(p, ND_LIT, line);
        if (!marker) return oom(p);
        marker->lit = ct_undef(NULL);
        struct ct_node *f = marker;
        st = parse_filter_call(p, line, &f);
        if (!st) st = parse_filter_expr(p, &f);
        const char *end;
        if (st || f == marker) return st ? st : perr(p, line, "expected a filter name");
        n->a = f;
        n->b = marker;
        if (expect_block_end(p) || parse_body(p, ends, &n->body, &end)) return ES_EINVAL;
        st = expect_block_end(p);
    } else if (!strcmp(tag, "generation")) {
        /* transformers' AssistantTracker tag: renders its body unchanged */
        static const char *const ends[] = {"endgeneration", NULL};
        const char *end;
        if (expect_block_end(p) || parse_body(p, ends, &n, &end)) return ES_EINVAL;
        st = expect_block_end(p);
    } else {
        return perr(p, line, "unsupported tag '%s'", tag);
    }
    p->depth--;
    *out = n;
    return st;
}

/* Parses statements until a {% tag %} named in ends (NULL-terminated; NULL
 * ends = top level, up to EOF). Leaves the cursor after the end tag's name. */
static enum es_status parse_body(struct parser *p, const char *const *ends, struct ct_node **body,
                                 const char **end_tag)
{
    struct ct_node *b = node(p, ND_BODY, cur(p)->line);
    if (!b) return oom(p);
    int open_line = p->t->v[p->pos ? p->pos - 1 : 0].line; /* the opening tag */
    for (;;) {
        const struct ct_token *t = cur(p);
        struct ct_node *n = NULL;
        if (t->kind == TK_EOF) {
            if (!ends) break;
            return perr(p, open_line, "missing '{%% %s %%}' before the end of the template",
                        ends[0]);
        }
        if (t->kind == TK_DATA) {
            if (!(n = node(p, ND_TEXT, t->line))) return oom(p);
            n->name = t->text;
            n->name_len = t->len;
            next(p);
        } else if (t->kind == TK_VAR_BEGIN) {
            if (!(n = node(p, ND_OUTPUT, t->line))) return oom(p);
            next(p);
            if (parse_tuple(p, true, &n->a)) return ES_EINVAL;
            if (cur(p)->kind != TK_VAR_END)
                return perr(p, cur(p)->line, "expected '}}', got %s", tok_desc(cur(p)));
            next(p);
        } else if (t->kind == TK_BLOCK_BEGIN) {
            const struct ct_token *name = peek(p, 1);
            if (name->kind == TK_NAME && ends) {
                for (const char *const *e = ends; *e; e++) {
                    if (!strcmp(name->text, *e)) {
                        next(p);
                        next(p);
                        *end_tag = *e;
                        *body = b;
                        return ES_OK;
                    }
                }
            }
            if (name->kind == TK_NAME &&
                (!strncmp(name->text, "end", 3) || !strcmp(name->text, "else") ||
                 !strcmp(name->text, "elif")))
                return perr(p, name->line, "unexpected '%s'", name->text);
            next(p);
            if (parse_statement(p, &n)) return ES_EINVAL;
        } else {
            return perr(p, t->line, "unexpected %s", tok_desc(t));
        }
        if (nodes_push(p, &b->items, n)) return ES_ENOMEM;
    }
    *body = b;
    if (end_tag) *end_tag = NULL;
    return ES_OK;
}

enum es_status ct_parse(const struct ct_tokens *toks, struct ct_arena *arena, struct ct_node **root,
                        struct es_err *err)
{
    struct parser p = {.t = toks, .arena = arena, .err = err};
    return parse_body(&p, NULL, root, NULL);
}
