/*
 * ct_render_main.c - test driver for the chat-template interpreter: reads
 * JSON lines {"template": "...", "context": {...}} (or {"builtin": "chatml",
 * ...} to use a built-in template, or {"source_of": "chatml"} to get a
 * built-in's source) from stdin and writes one line per
 * input: {"text": "..."} or {"error": "..."}. Optional "limits" object
 * {"max_output_bytes", "max_loop_iterations", "max_depth"} overrides the
 * defaults. Lets the Python exactness test render hundreds of cases in
 * one process. Compiled templates are cached by source text of the last
 * line, since a test sends many contexts for one template.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "json.h"
#include "strbuf.h"

static void reply(const char *key, const char *text, size_t len)
{
    struct strbuf sb = {0};
    sb_printf(&sb, "{\"%s\": ", key);
    sb_json_str(&sb, text, len);
    sb_puts(&sb, "}\n");
    fwrite(sb_cstr(&sb), 1, sb.len, stdout);
    sb_free(&sb);
}

int main(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    char *cached_src = NULL;
    struct chat_template *cached = NULL;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        struct es_err err = {{0}};
        cJSON *req = js_parse(line, (size_t)n, 0, &err);
        if (!req) {
            reply("error", err.msg, strlen(err.msg));
            continue;
        }
        const char *src = NULL, *builtin = NULL, *source_of = NULL;
        js_get_str(req, "template", false, &src, &err);
        js_get_str(req, "builtin", false, &builtin, &err);
        js_get_str(req, "source_of", false, &source_of, &err);
        if (source_of) { /* {"source_of": "chatml"}: the built-in's text */
            const char *b = ct_builtin(source_of);
            if (b)
                reply("text", b, strlen(b));
            else
                reply("error", "unknown built-in", 16);
            cJSON_Delete(req);
            continue;
        }
        if (builtin) src = ct_builtin(builtin);
        if (!src) {
            reply("error", "no template", 11);
            cJSON_Delete(req);
            continue;
        }
        if (!cached_src || strcmp(cached_src, src) != 0) {
            ct_free(cached);
            free(cached_src);
            cached = NULL;
            cached_src = strdup(src);
            if (ct_compile(src, &cached, &err) != ES_OK) {
                reply("error", err.msg, strlen(err.msg));
                free(cached_src);
                cached_src = NULL;
                cJSON_Delete(req);
                continue;
            }
        }
        struct ct_limits lim;
        ct_default_limits(&lim);
        const cJSON *limits = cJSON_GetObjectItemCaseSensitive(req, "limits");
        if (cJSON_IsObject(limits)) {
            int64_t v = -1;
            if (js_get_int(limits, "max_output_bytes", false, 0, INT64_MAX, &v, &err) == ES_OK &&
                v >= 0)
                lim.max_output_bytes = (size_t)v;
            v = -1;
            if (js_get_int(limits, "max_loop_iterations", false, 0, INT64_MAX, &v, &err) == ES_OK &&
                v >= 0)
                lim.max_loop_iterations = (unsigned long long)v;
            v = -1;
            if (js_get_int(limits, "max_depth", false, 0, 100000, &v, &err) == ES_OK && v >= 0)
                lim.max_depth = (int)v;
        }
        struct strbuf out = {0};
        const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(req, "context");
        if (ct_render_limited(cached, ctx, &lim, &out, &err) == ES_OK)
            reply("text", sb_cstr(&out), out.len);
        else
            reply("error", err.msg, strlen(err.msg));
        sb_free(&out);
        cJSON_Delete(req);
        fflush(stdout);
    }
    ct_free(cached);
    free(cached_src);
    free(line);
    return 0;
}
