/*
 * chat_template_lex.c - the arena and the lexer of the chat-template
 * interpreter.
 *
 * The lexer turns template source into tokens the way jinja2's lexer does
 * with trim_blocks=True and lstrip_blocks=True: newlines normalised to
 * "\n", one trailing newline dropped, "{%-"/"-%}" whitespace stripping,
 * a newline after "%}" and "#}" dropped, and spaces before a "{%" or "{#"
 * that opens a line removed. Comments vanish here. String literals are
 * decoded with Python's escape rules. It never evaluates anything and never
 * reads past the source.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template_internal.h"

/* ---- arena ---------------------------------------------------------- */

struct ct_arena_chunk {
    struct ct_arena_chunk *next;
    size_t used, size;
    max_align_t data[];
};

#define CT_CHUNK_MIN (64 * 1024)

void *ct_alloc(struct ct_arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    if (a->cap_bytes && (n > a->cap_bytes || a->used_bytes > a->cap_bytes - n)) return NULL;
    struct ct_arena_chunk *c = a->head;
    if (!c || c->size - c->used < n) {
        size_t size = n > CT_CHUNK_MIN ? n : CT_CHUNK_MIN;
        c = malloc(sizeof(*c) + size);
        if (!c) return NULL;
        c->size = size;
        c->used = 0;
        c->next = a->head;
        a->head = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    a->used_bytes += n;
    memset(p, 0, n);
    return p;
}

char *ct_strndup(struct ct_arena *a, const char *s, size_t n)
{
    char *p = ct_alloc(a, n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void ct_arena_free(struct ct_arena *a)
{
    struct ct_arena_chunk *c = a->head;
    while (c) {
        struct ct_arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->used_bytes = 0;
}

/* ---- helpers --------------------------------------------------------- */

size_t ct_space_len(const char *p, size_t avail)
{
    const unsigned char *s = (const unsigned char *)p;
    if (avail == 0) return 0;
    if (s[0] < 0x80)
        return ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20)) ? 1 : 0;
    int len = utf8_char_len(s, avail);
    if (len < 2) return 0;
    unsigned cp;
    if (len == 2)
        cp = ((s[0] & 0x1fu) << 6) | (s[1] & 0x3fu);
    else if (len == 3)
        cp = ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
    else
        return 0;
    bool sp = cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
              cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
    return sp ? (size_t)len : 0;
}

/* Byte length of the trailing whitespace of s[0..n). */
static size_t trailing_space(const char *s, size_t n)
{
    size_t end = n;
    while (end > 0) {
        size_t start = end - 1;
        while (start > 0 && ((unsigned char)s[start] & 0xc0) == 0x80 && end - start < 4)
            start--;
        size_t l = ct_space_len(s + start, end - start);
        if (l != end - start) break;
        end = start;
    }
    return n - end;
}

static size_t leading_space(const char *s, size_t n)
{
    size_t i = 0, l;
    while (i < n && (l = ct_space_len(s + i, n - i)) > 0)
        i += l;
    return i;
}

struct lexer {
    const char *src; /* normalised source */
    size_t n, pos;
    int line;
    struct ct_arena *arena;
    struct ct_tokens *toks;
    struct es_err *err;
};

static enum es_status lex_fail(struct lexer *lx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static enum es_status lex_fail(struct lexer *lx, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return es_fail(lx->err, ES_EINVAL, "chat template line %d: %s", lx->line, msg);
}

static struct ct_token *push(struct lexer *lx, enum ct_tok_kind kind)
{
    struct ct_tokens *t = lx->toks;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        struct ct_token *v = ct_alloc(lx->arena, cap * sizeof(*v));
        if (!v) return NULL;
        if (t->n) memcpy(v, t->v, t->n * sizeof(*v));
        t->v = v;
        t->cap = cap;
    }
    struct ct_token *tk = &t->v[t->n++];
    memset(tk, 0, sizeof(*tk));
    tk->kind = kind;
    tk->line = lx->line;
    return tk;
}

static void advance(struct lexer *lx, size_t k)
{
    for (size_t i = 0; i < k && lx->pos < lx->n; i++)
        if (lx->src[lx->pos++] == '\n') lx->line++;
}

static bool starts(const struct lexer *lx, const char *s)
{
    size_t k = strlen(s);
    return lx->n - lx->pos >= k && memcmp(lx->src + lx->pos, s, k) == 0;
}

/* ---- string literals ------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes body (between the quotes) with Python's unicode-escape rules. */
static enum es_status decode_string(struct lexer *lx, const char *s, size_t n, struct ct_token *tk)
{
    struct strbuf sb = {0};
    enum es_status st = ES_OK;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 == n) {
            sb_putc(&sb, s[i]);
            continue;
        }
        char c = s[++i];
        int ndig = 0;
        switch (c) {
        case '\n':
            break;
        case '\\':
            sb_putc(&sb, '\\');
            break;
        case '\'':
            sb_putc(&sb, '\'');
            break;
        case '"':
            sb_putc(&sb, '"');
            break;
        case 'a':
            sb_putc(&sb, '\a');
            break;
        case 'b':
            sb_putc(&sb, '\b');
            break;
        case 'f':
            sb_putc(&sb, '\f');
            break;
        case 'n':
            sb_putc(&sb, '\n');
            break;
        case 'r':
            sb_putc(&sb, '\r');
            break;
        case 't':
            sb_putc(&sb, '\t');
            break;
        case 'v':
            sb_putc(&sb, '\v');
            break;
        case 'x':
            ndig = 2;
            break;
        case 'u':
            ndig = 4;
            break;
        case 'U':
            ndig = 8;
            break;
        case 'N':
            st = lex_fail(lx, "unsupported escape '\\N{...}' in string literal");
            goto out;
        default:
            if (c >= '0' && c <= '7') {
                unsigned v = 0;
                int k = 0;
                while (k < 3 && i < n && s[i] >= '0' && s[i] <= '7')
                    v = v * 8 + (unsigned)(s[i++] - '0'), k++;
                i--;
                sb_put_utf8(&sb, v);
            } else {
                sb_putc(&sb, '\\');
                sb_putc(&sb, c);
            }
        }
        if (ndig) {
            unsigned v = 0;
            for (int k = 0; k < ndig; k++) {
                int h = i + 1 + (size_t)k < n ? hexval(s[i + 1 + k]) : -1;
                if (h < 0) {
                    st = lex_fail(lx, "truncated \\%c escape in string literal", c);
                    goto out;
                }
                v = v * 16 + (unsigned)h;
            }
            i += (size_t)ndig;
            if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) {
                st = lex_fail(lx, "escape outside the Unicode range in string literal");
                goto out;
            }
            sb_put_utf8(&sb, v);
        }
    }
    tk->len = sb.len;
    tk->text = ct_strndup(lx->arena, sb_cstr(&sb), sb.len);
    if (!tk->text) st = es_fail(lx->err, ES_ENOMEM, "chat template: out of memory");
out:
    sb_free(&sb);
    return st;
}

/* ---- tags ------------------------------------------------------------ */

static const struct {
    const char *s;
    enum ct_op op;
} ops[] = {
    {"//", OP_FLOORDIV}, {"**", OP_POW},   {"==", OP_EQ},      {"!=", OP_NE},      {">=", OP_GE},
    {"<=", OP_LE},       {"+", OP_ADD},    {"-", OP_SUB},      {"*", OP_MUL},      {"/", OP_DIV},
    {"%", OP_MOD},       {"~", OP_TILDE},  {"[", OP_LBRACKET}, {"]", OP_RBRACKET}, {"(", OP_LPAREN},
    {")", OP_RPAREN},    {"{", OP_LBRACE}, {"}", OP_RBRACE},   {">", OP_GT},       {"<", OP_LT},
    {"=", OP_ASSIGN},    {".", OP_DOT},    {":", OP_COLON},    {"|", OP_PIPE},     {",", OP_COMMA},
    {";", OP_SEMICOLON},
};

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}
static bool is_name_start(char c)
{
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static enum es_status lex_number(struct lexer *lx)
{
    const char *s = lx->src + lx->pos;
    size_t n = lx->n - lx->pos, i = 0;
    char digits[128];
    size_t nd = 0;
    bool is_float = false;
    while (i < n && (is_digit(s[i]) || (s[i] == '_' && i + 1 < n && is_digit(s[i + 1])))) {
        if (s[i] != '_' && nd < sizeof digits - 8) digits[nd++] = s[i];
        i++;
    }
    if (i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
        is_float = true;
        digits[nd++] = s[i++];
        while (i < n && (is_digit(s[i]) || (s[i] == '_' && i + 1 < n && is_digit(s[i + 1])))) {
            if (s[i] != '_' && nd < sizeof digits - 8) digits[nd++] = s[i];
            i++;
        }
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t j = i + 1;
        if (j < n && (s[j] == '+' || s[j] == '-')) j++;
        if (j < n && is_digit(s[j])) {
            is_float = true;
            digits[nd++] = 'e';
            if (s[i + 1] == '-') digits[nd++] = '-';
            i = j;
            while (i < n && is_digit(s[i]) && nd < sizeof digits - 1)
                digits[nd++] = s[i++];
        }
    }
    digits[nd] = '\0';
    struct ct_token *tk = push(lx, is_float ? TK_FLOAT : TK_INT);
    if (!tk) return es_fail(lx->err, ES_ENOMEM, "chat template: out of memory");
    if (is_float) {
        tk->fval = strtod(digits, NULL);
    } else {
        char *end;
        errno = 0;
        long long v = strtoll(digits, &end, 10);
        if (errno) return lex_fail(lx, "integer literal too large");
        tk->ival = v;
    }
    advance(lx, i);
    return ES_OK;
}

/* Lexes the inside of a {% %} or {{ }} tag up to and including its end.
 * strip_after: set when the end was "-%}"/"-}}". */
static enum es_status lex_tag(struct lexer *lx, bool block)
{
    const char *end = block ? "%}" : "}}";
    int open_line = lx->line;
    for (;;) {
        while (lx->pos < lx->n) {
            size_t l = ct_space_len(lx->src + lx->pos, lx->n - lx->pos);
            if (!l) break;
            advance(lx, l);
        }
        if (lx->pos >= lx->n) {
            lx->line = open_line;
            return lex_fail(lx, "unclosed '%s' tag", block ? "{%" : "{{");
        }
        /* the end markers come first, as in jinja2's rule order */
        bool minus = lx->src[lx->pos] == '-' && lx->n - lx->pos >= 3 &&
                     memcmp(lx->src + lx->pos + 1, end, 2) == 0;
        bool plus = block && lx->src[lx->pos] == '+' && lx->n - lx->pos >= 3 &&
                    memcmp(lx->src + lx->pos + 1, end, 2) == 0;
        if (minus || plus || starts(lx, end)) {
            if (!push(lx, block ? TK_BLOCK_END : TK_VAR_END))
                return es_fail(lx->err, ES_ENOMEM, "chat template: out of memory");
            advance(lx, (minus || plus) ? 3 : 2);
            if (minus) {
                advance(lx, leading_space(lx->src + lx->pos, lx->n - lx->pos));
            } else if (block && !plus && lx->pos < lx->n && lx->src[lx->pos] == '\n') {
                advance(lx, 1); /* trim_blocks */
            }
            return ES_OK;
        }
        char c = lx->src[lx->pos];
        if (is_name_start(c)) {
            size_t i = lx->pos;
            while (i < lx->n && (is_name_start(lx->src[i]) || is_digit(lx->src[i])))
                i++;
            struct ct_token *tk = push(lx, TK_NAME);
            if (!tk) return es_fail(lx->err, ES_ENOMEM, "chat template: out of memory");
            tk->text = ct_strndup(lx->arena, lx->src + lx->pos, i - lx->pos);
            tk->len = i - lx->pos;
            if (!tk->text) return es_fail(lx->err, ES_ENOMEM, "chat template: out of memory");
            advance(lx, i - lx->pos);
            continue;
        }
        if (is_digit(c)) {
            enum es_status st = lex_number(lx);
            if (st) return st;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t i = lx->pos + 1;
            while (i < lx->n && lx->src[i] != c)
                i += (lx->src[i] == '\\' && i + 1 < lx->n) ? 2 : 1;
            if (i >= lx->n) return lex_fail(lx, "unterminated string literal");
            struct ct_token *tk = push(lx, TK_STRING);
            if (!tk) return es_fail(lx->err, ES_ENOMEM, "chat template: out of memory");
            enum es_status st = decode_string(lx, lx->src + lx->pos + 1, i - lx->pos - 1, tk);
            if (st) return st;
            advance(lx, i + 1 - lx->pos);
            continue;
        }
        bool found = false;
        for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
            if (starts(lx, ops[k].s)) {
                struct ct_token *tk = push(lx, TK_OP);
                if (!tk) return es_fail(lx->err, ES_ENOMEM, "chat template: out of memory");
                tk->op = ops[k].op;
                advance(lx, strlen(ops[k].s));
                found = true;
                break;
            }
        }
        if (!found) return lex_fail(lx, "unexpected character '%c'", c);
    }
}

/* Emits the text before a tag, applying the tag's left whitespace control. */
static enum es_status emit_data(struct lexer *lx, size_t start, size_t end, char sign,
                                bool lstrip_ok, bool line_starting, int line)
{
    size_t n = end - start;
    const char *s = lx->src + start;
    if (sign == '-') {
        n -= trailing_space(s, n);
    } else if (sign != '+' && lstrip_ok) {
        size_t l_pos = n;
        while (l_pos > 0 && s[l_pos - 1] != '\n')
            l_pos--;
        if ((l_pos > 0 || line_starting) && l_pos < n &&
            leading_space(s + l_pos, n - l_pos) == n - l_pos)
            n = l_pos;
    }
    if (n == 0) return ES_OK;
    struct ct_token *tk = push(lx, TK_DATA);
    if (!tk) return es_fail(lx->err, ES_ENOMEM, "chat template: out of memory");
    tk->line = line;
    tk->text = s;
    tk->len = n;
    return ES_OK;
}

enum es_status ct_lex(const char *source, struct ct_arena *arena, struct ct_tokens *toks,
                      struct es_err *err)
{
    size_t srclen = strlen(source);
    if (utf8_valid_prefix(source, srclen) != srclen)
        return es_fail(err, ES_EINVAL, "chat template: source is not valid UTF-8");
    /* normalise \r\n and \r to \n; drop one trailing newline */
    char *src = ct_alloc(arena, srclen + 1);
    if (!src) return es_fail(err, ES_ENOMEM, "chat template: out of memory");
    size_t n = 0;
    for (size_t i = 0; i < srclen; i++) {
        if (source[i] == '\r') {
            src[n++] = '\n';
            if (i + 1 < srclen && source[i + 1] == '\n') i++;
        } else {
            src[n++] = source[i];
        }
    }
    if (n > 0 && src[n - 1] == '\n') n--;
    src[n] = '\0';

    struct lexer lx = {.src = src, .n = n, .line = 1, .arena = arena, .toks = toks, .err = err};
    bool line_starting = true;
    while (lx.pos < lx.n) {
        const char *p = src + lx.pos;
        const char *tag = NULL;
        for (const char *q = p; (q = memchr(q, '{', (size_t)(src + n - q))) != NULL; q++) {
            if (q + 1 < src + n && (q[1] == '{' || q[1] == '%' || q[1] == '#')) {
                tag = q;
                break;
            }
        }
        size_t data_end = tag ? (size_t)(tag - src) : n;
        int data_line = lx.line;
        if (!tag) {
            enum es_status st = emit_data(&lx, lx.pos, data_end, 0, false, false, data_line);
            if (st) return st;
            break;
        }
        char kind = tag[1];
        char sign = (tag + 2 < src + n && (tag[2] == '-' || tag[2] == '+')) ? tag[2] : 0;
        if (kind == '{' && sign == '+') sign = 0;
        enum es_status st =
            emit_data(&lx, lx.pos, data_end, sign, kind != '{', line_starting, data_line);
        if (st) return st;
        advance(&lx, data_end - lx.pos);
        advance(&lx, sign ? 3 : 2);
        if (kind == '#') {
            const char *close = NULL;
            for (const char *q = src + lx.pos; q + 1 < src + n; q++)
                if (q[0] == '#' && q[1] == '}') {
                    close = q;
                    break;
                }
            if (!close) return lex_fail(&lx, "unclosed comment");
            bool minus = close > src + lx.pos && close[-1] == '-';
            advance(&lx, (size_t)(close + 2 - (src + lx.pos)));
            if (minus)
                advance(&lx, leading_space(src + lx.pos, n - lx.pos));
            else if (lx.pos < n && src[lx.pos] == '\n')
                advance(&lx, 1);
            line_starting = lx.pos > 0 && src[lx.pos - 1] == '\n';
            continue;
        }
        if (!push(&lx, kind == '%' ? TK_BLOCK_BEGIN : TK_VAR_BEGIN))
            return es_fail(err, ES_ENOMEM, "chat template: out of memory");
        toks->v[toks->n - 1].line = lx.line;
        st = lex_tag(&lx, kind == '%');
        if (st) return st;
        line_starting = lx.pos > 0 && src[lx.pos - 1] == '\n';
    }
    if (!push(&lx, TK_EOF)) return es_fail(err, ES_ENOMEM, "chat template: out of memory");
    return ES_OK;
}
