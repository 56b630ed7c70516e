/*
 * chat_template.c - the public face of the chat-template interpreter:
 * compile (lex + parse into a tree owned by the template), render (one
 * arena per render, limits on output, loop iterations, nesting and memory)
 * and the built-in fallback templates for models that ship none.
 *
 * A compiled template is immutable, so concurrent renders need no lock.
 * A failed render leaves the caller's buffer untouched: the prompt is
 * either complete and exact or not produced at all.
 */
#include <stdlib.h>
#include <string.h>

#include "chat_template_internal.h"

struct chat_template {
    struct ct_arena arena; /* tokens and tree */
    struct ct_node *root;
};

enum es_status ct_compile(const char *source, struct chat_template **out, struct es_err *err)
{
    *out = NULL;
    if (!source) return es_fail(err, ES_EINVAL, "chat template: no source");
    struct chat_template *ct = calloc(1, sizeof(*ct));
    if (!ct) return es_fail(err, ES_ENOMEM, "chat template: out of memory");
    struct ct_tokens toks = {0};
    enum es_status st = ct_lex(source, &ct->arena, &toks, err);
    if (st) goto err;
    st = ct_parse(&toks, &ct->arena, &ct->root, err);
    if (st) goto err;
    *out = ct;
    return ES_OK;
err:
    ct_free(ct);
    return st;
}

void ct_free(struct chat_template *ct)
{
    if (!ct) return;
    ct_arena_free(&ct->arena);
    free(ct);
}

void ct_default_limits(struct ct_limits *lim)
{
    lim->max_output_bytes = 64u << 20;
    lim->max_loop_iterations = 1000000;
    lim->max_depth = 400;
    lim->max_memory_bytes = 512u << 20;
}

enum es_status ct_render_limited(const struct chat_template *ct, const cJSON *context,
                                 const struct ct_limits *lim, struct strbuf *out,
                                 struct es_err *err)
{
    struct ct_limits def;
    if (!lim) {
        ct_default_limits(&def);
        lim = &def;
    }
    struct strbuf text = {0};
    struct ct_render r = {
        .arena = {.cap_bytes = lim->max_memory_bytes},
        .out = &text,
        .err = err,
        .max_output_bytes = lim->max_output_bytes,
        .loop_budget = lim->max_loop_iterations,
        .max_depth = lim->max_depth,
    };
    enum es_status st = ct_exec(&r, ct->root, context);
    if (st && r.status) st = r.status;
    if (!st && sb_append(out, sb_cstr(&text), text.len))
        st = es_fail(err, ES_ENOMEM, "chat template: out of memory");
    sb_free(&text);
    ct_arena_free(&r.arena);
    return st;
}

enum es_status ct_render(const struct chat_template *ct, const cJSON *context, struct strbuf *out,
                         struct es_err *err)
{
    return ct_render_limited(ct, context, NULL, out, err);
}

/* Offset of the last occurrence of needle in hay, or -1: memmem over both
 * reversed, so the time stays linear however often the needle repeats. */
static long last_occurrence(const char *hay, size_t hn, const char *needle, size_t nn)
{
    if (nn > hn) return -1;
    char *rh = malloc(hn + 1), *rn = malloc(nn + 1);
    long at = -2; /* out of memory */
    if (rh && rn) {
        for (size_t i = 0; i < hn; i++)
            rh[i] = hay[hn - 1 - i];
        for (size_t i = 0; i < nn; i++)
            rn[i] = needle[nn - 1 - i];
        const char *hit = memmem(rh, hn, rn, nn);
        at = hit ? (long)(hn - (size_t)(hit - rh) - nn) : -1;
    }
    free(rh);
    free(rn);
    return at;
}

enum es_status ct_continue_cut(const char *prompt, size_t len, const char *final, size_t final_len,
                               size_t *cut, struct es_err *err)
{
    struct ct_val all = ct_str(final, final_len);
    struct ct_val stripped = ct_strip(all, ct_none(), true, true);
    struct ct_val lstripped = ct_strip(all, ct_none(), true, false);
    if (stripped.u.s.n == 0) { /* Python finds "" at the very end */
        *cut = len;
        return ES_OK;
    }
    long at = last_occurrence(prompt, len, stripped.u.s.p, stripped.u.s.n);
    if (at == -2) return es_fail(err, ES_ENOMEM, "chat template: out of memory");
    if (at < 0) return es_fail(err, ES_EINVAL, "the final message is not in the rendered prompt");
    size_t loc = (size_t)at;
    /* prompt[loc : loc + len(final.lstrip())] == final: only possible
     * without leading whitespace; then its trailing whitespace is kept. */
    if (lstripped.u.s.n == final_len && len - loc >= final_len &&
        memcmp(prompt + loc, final, final_len) == 0)
        *cut = loc + final_len;
    else
        *cut = loc + stripped.u.s.n;
    return ES_OK;
}

/* ---- built-in fallback templates ------------------------------------- */

static const char chatml_template[] =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

static const char llama3_template[] =
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim }}{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' "
    "}}{%- endif %}";

/* Llama-2 chat as Meta's reference code builds it: an optional system
 * prompt folded, untrimmed, into the first user turn, whose whole text is
 * then stripped. */
static const char llama2_template[] =
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set sys_prefix = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{%- set turns = messages[1:] %}"
    "{%- else %}{%- set sys_prefix = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('llama2 template: roles must alternate user/assistant') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- set text = (sys_prefix + message['content']) if loop.first else message['content'] %}"
    "{{- bos_token + '[INST] ' + (text | trim) + ' [/INST]' }}"
    "{%- else %}{{- ' ' + (message['content'] | trim) + ' ' + eos_token }}{%- endif %}"
    "{%- endfor %}";

static const char plain_template[] =
    "{%- for message in messages %}"
    "{{- message['role'] + ': ' + message['content'] + '\\n\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'assistant: ' }}{%- endif %}";

const char *ct_builtin(const char *name)
{
    if (!name) return NULL;
    if (!strcmp(name, "chatml")) return chatml_template;
    if (!strcmp(name, "llama3")) return llama3_template;
    if (!strcmp(name, "llama2")) return llama2_template;
    if (!strcmp(name, "plain")) return plain_template;
    return NULL;
}
