/*
 * chat_template_internal.h - the pieces the chat-template interpreter's
 * files share: the arena, the lexer's tokens, the syntax tree, run-time
 * values and the render state. Nothing outside common/chat_template*.c
 * includes this header; the public contract is chat_template.h.
 *
 * Pipeline: ct_lex (source -> tokens, whitespace control applied to the
 * text between tags) -> ct_parse (tokens -> tree of struct ct_node, filter
 * and test names checked) -> ct_exec (tree + context -> text). Values and
 * the Python-compatible printing/comparison live in chat_template_value.c;
 * filters, tests, methods and globals in chat_template_builtins.c.
 *
 * Memory: the compiled tree lives in the template's arena; everything a
 * render creates lives in that render's arena (capped), freed in one go.
 */
#ifndef ES_CHAT_TEMPLATE_INTERNAL_H
#define ES_CHAT_TEMPLATE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "chat_template.h"
#include "status.h"
#include "strbuf.h"

/* ---- arena ---------------------------------------------------------- */

struct ct_arena_chunk;
struct ct_arena {
    struct ct_arena_chunk *head;
    size_t used_bytes; /* total bytes handed out, checked against cap */
    size_t cap_bytes;  /* 0 = unlimited */
};

void *ct_alloc(struct ct_arena *a, size_t n); /* zeroed; NULL when over cap */
char *ct_strndup(struct ct_arena *a, const char *s, size_t n);
void ct_arena_free(struct ct_arena *a);

/* ---- lexer ----------------------------------------------------------- */

enum ct_tok_kind {
    TK_EOF,
    TK_DATA,        /* literal text between tags, whitespace control applied */
    TK_BLOCK_BEGIN, /* {% */
    TK_BLOCK_END,   /* %} */
    TK_VAR_BEGIN,   /* {{ */
    TK_VAR_END,     /* }} */
    TK_NAME,
    TK_STRING, /* text holds the decoded value */
    TK_INT,
    TK_FLOAT,
    TK_OP, /* op holds one of enum ct_op */
};

enum ct_op {
    OP_NONE,
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_DIV,
    OP_FLOORDIV,
    OP_MOD,
    OP_POW,
    OP_TILDE,
    OP_LBRACKET,
    OP_RBRACKET,
    OP_LPAREN,
    OP_RPAREN,
    OP_LBRACE,
    OP_RBRACE,
    OP_EQ,
    OP_NE,
    OP_GT,
    OP_GE,
    OP_LT,
    OP_LE,
    OP_ASSIGN,
    OP_DOT,
    OP_COLON,
    OP_PIPE,
    OP_COMMA,
    OP_SEMICOLON,
    /* not lexer tokens: operators the parser builds */
    OP_IN,
    OP_NOTIN,
    OP_NEG,
    OP_POS,
};

struct ct_token {
    enum ct_tok_kind kind;
    enum ct_op op;
    int line;
    const char *text; /* NAME/DATA: points into the arena; STRING: decoded */
    size_t len;
    int64_t ival;
    double fval;
};

struct ct_tokens {
    struct ct_token *v;
    size_t n, cap;
};

/* Tokenizes source (UTF-8) into toks, allocations from arena. */
enum es_status ct_lex(const char *source, struct ct_arena *arena, struct ct_tokens *toks,
                      struct es_err *err);

/* Python str.isspace() for the character at p: its byte length, or 0. */
size_t ct_space_len(const char *p, size_t avail);

/* ---- values ---------------------------------------------------------- */

enum ct_kind {
    CV_UNDEF, /* jinja2.Undefined: prints "", falsy, fails on use */
    CV_NONE,
    CV_BOOL,
    CV_INT,
    CV_FLOAT,
    CV_STR,
    CV_LIST,
    CV_TUPLE,
    CV_DICT,
    CV_NS, /* namespace(): a dict whose attributes can be set */
    CV_MACRO,
    CV_FUNC,   /* a global function (range, namespace, raise_exception...) */
    CV_METHOD, /* a method bound to a receiver: "abc".strip */
};

struct ct_list;
struct ct_dict;
struct ct_macro;
struct ct_method;

struct ct_val {
    enum ct_kind kind;
    union {
        bool b;
        int64_t i;
        double f;
        struct {
            const char *p; /* not NUL-terminated; CV_UNDEF: the missing name or NULL */
            size_t n;      /* bytes */
        } s;
        struct ct_list *list; /* CV_LIST, CV_TUPLE */
        struct ct_dict *dict; /* CV_DICT, CV_NS */
        struct ct_macro *macro;
        int func;
        struct ct_method *method;
    } u;
};

struct ct_list {
    struct ct_val *v;
    size_t n, cap;
};

struct ct_dict {
    struct ct_val *keys, *vals; /* insertion order, as Python dicts */
    size_t n, cap;
};

struct ct_method {
    struct ct_val self;
    const char *name;
};

/* ---- syntax tree ----------------------------------------------------- */

enum ct_node_kind {
    /* expressions */
    ND_LIT,
    ND_NAME,
    ND_GETATTR,
    ND_GETITEM,
    ND_SLICE,
    ND_CALL,
    ND_FILTER,
    ND_TEST,
    ND_UNARY,
    ND_BINARY,
    ND_COMPARE,
    ND_AND,
    ND_OR,
    ND_NOT,
    ND_COND,
    ND_LIST,
    ND_TUPLE,
    ND_DICT,
    /* statements */
    ND_BODY,
    ND_TEXT,
    ND_OUTPUT,
    ND_IF,
    ND_FOR,
    ND_SET,
    ND_SET_ATTR,
    ND_SET_BLOCK,
    ND_MACRO,
    ND_BREAK,
    ND_CONTINUE,
    ND_FILTER_BLOCK,
    ND_WITH,
};

struct ct_nodes {
    struct ct_node **v;
    size_t n, cap;
};

struct ct_node {
    enum ct_node_kind kind;
    int line;
    enum ct_op op;    /* UNARY/BINARY; COMPARE uses ops[] */
    bool negated;     /* TEST: "is not" */
    const char *name; /* NAME, GETATTR attribute, FILTER/TEST/MACRO name, SET target */
    size_t name_len;
    struct ct_val lit; /* LIT */
    struct ct_node *a, *b, *c, *d;
    /* CALL/FILTER/TEST: positional args; LIST/TUPLE: items; DICT: keys;
     * BODY: statements; COMPARE: operands after the first; MACRO: defaults */
    struct ct_nodes items;
    /* CALL/FILTER/TEST: keyword values; DICT: values; WITH: values */
    struct ct_nodes kw_vals;
    const char **kw_names; /* keyword names; FOR/SET/MACRO/WITH: target names */
    size_t n_kw_names;
    enum ct_op *ops; /* COMPARE: one per operand in items */
    struct ct_node *body, *else_body;
};

/* Parses the token stream into a ND_BODY tree. */
enum es_status ct_parse(const struct ct_tokens *toks, struct ct_arena *arena, struct ct_node **root,
                        struct es_err *err);

/* Filter/test names the interpreter supports (checked at compile time). */
bool ct_filter_known(const char *name);
bool ct_test_known(const char *name);

/* ---- render state ---------------------------------------------------- */

struct ct_scope;

struct ct_macro {
    const struct ct_node *node;
    struct ct_scope *closure;
};

struct ct_render {
    struct ct_arena arena;
    struct strbuf *out; /* current output: the result or a capture */
    struct es_err *err;
    enum es_status status; /* the first failure's code (callers pass ES_EINVAL up) */
    size_t max_output_bytes;
    uint64_t loop_budget; /* iterations left, all loops together */
    int depth;            /* macro call / expression nesting */
    int max_depth;
    struct ct_scope *globals;
};

/* Fails the render: fills err with "chat template line N: ..." */
enum es_status ct_fail(struct ct_render *r, int line, enum es_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Builders (arena-backed; NULL on out of memory). */
struct ct_val ct_str(const char *p, size_t n);
struct ct_val ct_cstr(const char *s);
struct ct_val ct_int(int64_t i);
struct ct_val ct_bool(bool b);
struct ct_val ct_none(void);
struct ct_val ct_undef(const char *name);
struct ct_list *ct_list_new(struct ct_render *r, size_t cap);
enum es_status ct_list_push(struct ct_render *r, struct ct_list *l, struct ct_val v);
struct ct_dict *ct_dict_new(struct ct_render *r, size_t cap);
enum es_status ct_dict_set(struct ct_render *r, struct ct_dict *d, struct ct_val k,
                           struct ct_val v);
bool ct_dict_get(const struct ct_dict *d, struct ct_val k, struct ct_val *out);
bool ct_dict_get_str(const struct ct_dict *d, const char *key, struct ct_val *out);

enum es_status ct_from_json(struct ct_render *r, const cJSON *j, int depth, struct ct_val *out);

/* Python semantics */
bool ct_truthy(struct ct_val v);
bool ct_equal(struct ct_val a, struct ct_val b);
/* <0, 0, >0; ES_EINVAL when the types are not orderable */
enum es_status ct_compare(struct ct_render *r, int line, struct ct_val a, struct ct_val b,
                          int *cmp);
const char *ct_type_name(struct ct_val v);
/* str(v) appended to sb (jinja's output conversion). */
enum es_status ct_append_str(struct ct_render *r, int line, struct strbuf *sb, struct ct_val v);
/* repr(v) appended to sb */
enum es_status ct_append_repr(struct ct_render *r, int line, struct strbuf *sb, struct ct_val v);
/* str(v) as a value (strings returned as they are) */
enum es_status ct_to_str(struct ct_render *r, int line, struct ct_val v, struct ct_val *out);
/* json.dumps(v, ensure_ascii=False, indent, separators, sort_keys) */
struct ct_json_opts {
    const char *indent; /* NULL: no newlines */
    const char *item_sep, *key_sep;
    bool sort_keys;
    bool ensure_ascii; /* escape non-ASCII as \uXXXX */
};
enum es_status ct_append_json(struct ct_render *r, int line, struct strbuf *sb, struct ct_val v,
                              const struct ct_json_opts *o, int level);
void ct_format_float(double f, char buf[40]);
/* number of code points; byte offset of code point i (clamped) */
size_t ct_utf8_count(const char *p, size_t n);
size_t ct_utf8_offset(const char *p, size_t n, size_t index);
/* Makes a string value from an arena copy of sb, and clears sb. */
enum es_status ct_str_from_sb(struct ct_render *r, struct strbuf *sb, struct ct_val *out);

/* ---- builtins (chat_template_builtins.c) ----------------------------- */

struct ct_args {
    struct ct_val *pos;
    size_t n_pos;
    const char **kw_names;
    struct ct_val *kw;
    size_t n_kw;
};

enum es_status ct_apply_filter(struct ct_render *r, int line, const char *name, struct ct_val v,
                               const struct ct_args *a, struct ct_val *out);
enum es_status ct_apply_test(struct ct_render *r, int line, const char *name, struct ct_val v,
                             const struct ct_args *a, bool *out);
/* obj.name for non-dict-key attributes (methods); false when none */
bool ct_method_lookup(struct ct_render *r, struct ct_val self, const char *name, size_t name_len,
                      struct ct_val *out);
enum es_status ct_call_method(struct ct_render *r, int line, const struct ct_method *m,
                              const struct ct_args *a, struct ct_val *out);
/* Global functions: id from name (-1 when unknown), and the call. */
int ct_global_func(const char *name, size_t len);
enum es_status ct_call_global(struct ct_render *r, int line, int func, const struct ct_args *a,
                              struct ct_val *out);

/* String and sequence helpers shared by filters and methods, each with the
 * semantics of the Python function it names. */
enum ct_case { CASE_UPPER, CASE_LOWER, CASE_TITLE, CASE_CAPITALIZE, CASE_JINJA_TITLE };
unsigned ct_next_cp(const char *s, size_t n, size_t *len);
struct ct_val ct_strip(struct ct_val s, struct ct_val chars, bool left,
                       bool right); /* chars: non-str = whitespace */
enum es_status ct_split(struct ct_render *r, struct ct_val s, struct ct_val sep, int64_t maxsplit,
                        struct ct_val *out);
enum es_status ct_replace(struct ct_render *r, int line, struct ct_val s, struct ct_val old,
                          struct ct_val new, int64_t count, struct ct_val *out);
enum es_status ct_change_case(struct ct_render *r, struct ct_val s, enum ct_case mode,
                              struct ct_val *out);
bool ct_affix(struct ct_val s, struct ct_val x, bool end); /* startswith / endswith */
enum es_status ct_splitlines(struct ct_render *r, struct ct_val s, struct ct_list **out);
enum es_status ct_join(struct ct_render *r, int line, struct ct_list *items, struct ct_val sep,
                       struct ct_val *out);
enum es_status ct_to_list(struct ct_render *r, int line, struct ct_val v, struct ct_list **out);

/* ---- evaluator (chat_template_eval.c) -------------------------------- */

enum es_status ct_exec(struct ct_render *r, const struct ct_node *root, const cJSON *context);
enum es_status ct_call_macro(struct ct_render *r, int line, const struct ct_macro *m,
                             const struct ct_args *a, struct ct_val *out);

#endif
