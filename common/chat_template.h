/*
 * chat_template.h - a Jinja2-subset interpreter for the chat_template of
 * tokenizer_config.json, rendering byte-identically to transformers'
 * apply_chat_template (jinja2 with trim_blocks and lstrip_blocks, the
 * raise_exception and strftime_now globals, tojson without HTML escaping).
 *
 * A template is compiled once and rendered many times, from any thread.
 * Unsupported syntax fails at compile time with the line number; a runtime
 * error (raise_exception, a type error) fails the render, never produces a
 * wrong prompt.
 */
#ifndef ES_CHAT_TEMPLATE_H
#define ES_CHAT_TEMPLATE_H

#include <cjson/cJSON.h>

#include "status.h"
#include "strbuf.h"

struct chat_template;

enum es_status ct_compile(const char *source, struct chat_template **out, struct es_err *err);
void ct_free(struct chat_template *ct);

/* context: a JSON object whose members become template variables, e.g.
 * {"messages": [...], "add_generation_prompt": true, "bos_token": "<s>",
 *  "eos_token": "</s>", "tools": null, ...chat_template_kwargs}.
 * Appends the rendered prompt to out. */
enum es_status ct_render(const struct chat_template *ct, const cJSON *context, struct strbuf *out,
                         struct es_err *err);

/* Bounds on one render, so a hostile template cannot hang or exhaust the
 * server. Exceeding one fails the render with ES_ERANGE/ES_ENOMEM. */
struct ct_limits {
    size_t max_output_bytes;                /* rendered text, also any one string built */
    unsigned long long max_loop_iterations; /* all loops of one render together */
    int max_depth;                          /* nesting of statements, expressions, macro calls */
    size_t max_memory_bytes;                /* everything the render allocates */
};

/* Defaults: 64 MiB output, 1e6 iterations, depth 400, 512 MiB memory. */
void ct_default_limits(struct ct_limits *lim);

/* ct_render with explicit limits (NULL = defaults). */
enum es_status ct_render_limited(const struct chat_template *ct, const cJSON *context,
                                 const struct ct_limits *lim, struct strbuf *out,
                                 struct es_err *err);

/* Where transformers' apply_chat_template(continue_final_message=True)
 * cuts a rendered prompt so that the model continues the final message:
 * after the last occurrence of that message's content stripped of
 * whitespace (Python str.strip()), keeping the trailing whitespace when the
 * content has no leading whitespace and the template left it whole. A
 * content of only whitespace leaves the prompt uncut (*cut = len).
 * ES_EINVAL when the stripped content is not in the prompt. */
enum es_status ct_continue_cut(const char *prompt, size_t len, const char *final, size_t final_len,
                               size_t *cut, struct es_err *err);

/* Built-in fallback templates for models that ship none: "chatml",
 * "llama3", "llama2", "plain". NULL for an unknown name. */
const char *ct_builtin(const char *name);

#endif
