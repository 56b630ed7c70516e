/*
 * fuzz_chat_template.c - libFuzzer target for common/chat_template*.c.
 *
 * Two modes, picked by bit 0 of the first byte:
 *   - template mode: the rest of the input is a template source, compiled
 *     and rendered against a fixed conversation (system, user, assistant
 *     with a tool call, tool, user);
 *   - messages mode: a real template (llama3_1 or qwen3 from the shared
 *     folder, or one of the built-ins) renders a message list decoded from
 *     the input (roles, content kinds, tool calls, reasoning, flags).
 * Invariants (abort on violation): compile and render either succeed or
 * fail with a message; a failed render leaves the output buffer as it was;
 * a render of valid UTF-8 (template and strings) is valid UTF-8 and within
 * the output limit; with the real templates and only ordinary messages the
 * render succeeds.
 * Never does: write files.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_template.h"
#include "json.h"
#include "strbuf.h"

#ifndef FUZZ_REPO_DIR
#define FUZZ_REPO_DIR "."
#endif

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_chat_template: invariant failed at line %d: %s\n", __LINE__,     \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Bounds for one render: far below the server's defaults so that a hostile
 * template fails fast instead of tripping the fuzzer's timeout. */
#define FZ_MAX_OUTPUT (1u << 20)

enum { N_TEMPLATES = 6 };
static const char *const shared_names[2] = {"llama3_1", "qwen3"};
static const char *const builtin_names[4] = {"chatml", "llama3", "llama2", "plain"};
static struct chat_template *templates[N_TEMPLATES];
static bool template_strict[N_TEMPLATES]; /* must render every ordinary conversation */
static cJSON *fixed_context;

static char *shared_template(const char *shared, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizers/%s/tokenizer_config.json", shared, name);
    struct es_err err = {{0}};
    cJSON *cfg = js_parse_file(path, &err);
    if (!cfg) {
        fprintf(stderr, "fuzz_chat_template: %s\n", err.msg);
        exit(1);
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (!cJSON_IsString(t)) {
        fprintf(stderr, "fuzz_chat_template: %s has no chat_template string\n", path);
        exit(1);
    }
    char *s = strdup(t->valuestring);
    cJSON_Delete(cfg);
    return s;
}

static const char *find_shared(void)
{
    const char *cands[3] = {getenv("EVAL_SHARED_DIR"), FUZZ_REPO_DIR "/../shared", "/work/shared"};
    for (int i = 0; i < 3; i++) {
        char probe[4096];
        if (!cands[i] || !cands[i][0]) continue;
        snprintf(probe, sizeof probe, "%s/tokenizers/qwen3/tokenizer_config.json", cands[i]);
        if (access(probe, R_OK) == 0) return cands[i];
    }
    fprintf(stderr, "fuzz_chat_template: no shared dir with tokenizers/ (set EVAL_SHARED_DIR)\n");
    exit(1);
}

static const char fixed_context_json[] =
    "{\"messages\": ["
    "{\"role\": \"system\", \"content\": \"You are terse.\"},"
    "{\"role\": \"user\", \"content\": \"Wie spät ist es? 今何時\"},"
    "{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"type\": \"function\","
    " \"function\": {\"name\": \"clock\", \"arguments\": {\"tz\": \"UTC\"}}}]},"
    "{\"role\": \"tool\", \"content\": \"12:00\"},"
    "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"thanks\"}]}],"
    " \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\","
    " \"tools\": null, \"n\": 3, \"pi\": 3.5, \"flag\": false,"
    " \"obj\": {\"b\": [1, 2, {\"c\": null}], \"a\": \"x\"}}";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *shared = find_shared();
    for (int i = 0; i < N_TEMPLATES; i++) {
        char *owned = NULL;
        const char *src;
        if (i < 2) src = owned = shared_template(shared, shared_names[i]);
        else src = ct_builtin(builtin_names[i - 2]);
        struct es_err err = {{0}};
        if (!src || ct_compile(src, &templates[i], &err) != ES_OK) {
            fprintf(stderr, "fuzz_chat_template: template %d does not compile: %s\n", i, err.msg);
            exit(1);
        }
        free(owned);
        /* llama2's built-in raises on non-alternating roles by design. */
        template_strict[i] = i != 4;
    }
    struct es_err err = {{0}};
    fixed_context = js_parse(fixed_context_json, strlen(fixed_context_json), 0, &err);
    if (!fixed_context) {
        fprintf(stderr, "fuzz_chat_template: fixed context: %s\n", err.msg);
        exit(1);
    }
    return 0;
}

static bool valid_utf8(const char *s, size_t n)
{
    return utf8_valid_prefix(s, n) == n;
}

static void small_limits(struct ct_limits *lim)
{
    ct_default_limits(lim);
    lim->max_output_bytes = FZ_MAX_OUTPUT;
    lim->max_loop_iterations = 20000;
    lim->max_memory_bytes = 64u << 20;
}

/* Renders and checks the buffer contract. Returns the status. */
static enum es_status render_checked(const struct chat_template *ct, const cJSON *ctx,
                                     bool expect_utf8)
{
    struct ct_limits lim;
    small_limits(&lim);
    struct strbuf out = {0};
    sb_puts(&out, "keep:");
    struct es_err err = {{0}};
    enum es_status st = ct_render_limited(ct, ctx, &lim, &out, &err);
    if (st != ES_OK) {
        /* FUZZ_CT_ALLOW_EMPTY_MESSAGE=1 lets a long campaign look past a
         * known message-less failure (see regressions/) for other bugs. */
        if (!getenv("FUZZ_CT_ALLOW_EMPTY_MESSAGE")) CHECK(err.msg[0] != '\0');
        CHECK(out.len == 5 && memcmp(out.s, "keep:", 5) == 0);
    } else {
        CHECK(out.len - 5 <= FZ_MAX_OUTPUT);
        if (expect_utf8 && !valid_utf8(out.s, out.len)) {
            fprintf(stderr, "render produced invalid UTF-8 from valid input\n");
            abort();
        }
    }
    sb_free(&out);
    return st;
}

static void fuzz_template(const uint8_t *data, size_t size)
{
    char *src = malloc(size + 1);
    if (!src) return;
    memcpy(src, data, size);
    src[size] = '\0';
    struct chat_template *ct = NULL;
    struct es_err err = {{0}};
    enum es_status st = ct_compile(src, &ct, &err);
    if (st != ES_OK) {
        CHECK(ct == NULL && err.msg[0] != '\0');
    } else {
        CHECK(ct != NULL);
        render_checked(ct, fixed_context, valid_utf8(src, strlen(src)));
        ct_free(ct);
    }
    free(src);
}

/* Reads bytes from the input as a cursor. */
struct cursor {
    const uint8_t *p;
    size_t n;
};

static int take(struct cursor *c)
{
    if (!c->n) return -1;
    c->n--;
    return *c->p++;
}

/* A string of up to len bytes from the input, made valid UTF-8 ('?' for
 * bad bytes) so that the render's output can be checked for validity. */
static cJSON *take_string(struct cursor *c, size_t len)
{
    if (len > c->n) len = c->n;
    char *s = malloc(len + 1);
    if (!s) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        int l = c->p[i] ? utf8_char_len(c->p + i, len - i) : 0;
        if (l == 0) {
            s[o++] = '?';
            i++;
            continue;
        }
        memcpy(s + o, c->p + i, (size_t)l);
        o += (size_t)l;
        i += (size_t)l;
    }
    s[o] = '\0';
    c->p += len;
    c->n -= len;
    cJSON *j = cJSON_CreateString(s);
    free(s);
    return j;
}

static const char *const roles[8] = {"system", "user",  "assistant", "tool",
                                     "user",   "assistant", "developer", ""};

/* Builds {"messages": [...], ...} from the input. *ordinary is set false
 * when a message is one a real template may legitimately refuse. */
static cJSON *decode_context(struct cursor *c, int flags, bool *ordinary)
{
    cJSON *ctx = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(ctx, "messages");
    cJSON_AddBoolToObject(ctx, "add_generation_prompt", flags & 1);
    cJSON_AddStringToObject(ctx, "bos_token", "<|begin_of_text|>");
    cJSON_AddStringToObject(ctx, "eos_token", "<|eot_id|>");
    if (flags & 2) cJSON_AddBoolToObject(ctx, "enable_thinking", flags & 4);
    if (flags & 8) {
        cJSON *tools = cJSON_AddArrayToObject(ctx, "tools");
        cJSON *t = cJSON_CreateObject(), *f = cJSON_AddObjectToObject(t, "function");
        cJSON_AddStringToObject(t, "type", "function");
        cJSON_AddStringToObject(f, "name", "lookup");
        cJSON_AddStringToObject(f, "description", "Looks a word up.");
        cJSON *params = cJSON_AddObjectToObject(f, "parameters");
        cJSON_AddStringToObject(params, "type", "object");
        cJSON_AddItemToArray(tools, t);
    }
    *ordinary = true;
    for (int m = 0; m < 64; m++) {
        int r = take(c), len = take(c);
        if (r < 0 || len < 0) break;
        cJSON *msg = cJSON_CreateObject();
        int role = r & 7, kind = (r >> 3) & 3;
        cJSON_AddStringToObject(msg, "role", roles[role]);
        if (role >= 6) *ordinary = false;
        cJSON *content = take_string(c, (size_t)len);
        if (!content) content = cJSON_CreateString("");
        if (kind == 0) {
            cJSON_AddItemToObject(msg, "content", content);
        } else if (kind == 1) {
            cJSON_Delete(content);
            cJSON_AddNullToObject(msg, "content");
            *ordinary = false;
        } else if (kind == 2) {
            cJSON *parts = cJSON_AddArrayToObject(msg, "content"), *part = cJSON_CreateObject();
            cJSON_AddStringToObject(part, "type", "text");
            cJSON_AddItemToObject(part, "text", content);
            cJSON_AddItemToArray(parts, part);
            *ordinary = false;
        } else {
            cJSON_Delete(content);
            cJSON_AddNumberToObject(msg, "content", len - 100);
            *ordinary = false;
        }
        if (r & 32) {
            cJSON *calls = cJSON_AddArrayToObject(msg, "tool_calls"), *call = cJSON_CreateObject();
            cJSON *fn = cJSON_AddObjectToObject(call, "function");
            cJSON_AddStringToObject(call, "type", "function");
            cJSON_AddStringToObject(call, "id", "call_1");
            cJSON_AddStringToObject(fn, "name", "lookup");
            if (r & 64) cJSON_AddStringToObject(fn, "arguments", "{\"word\": \"x\"}");
            else cJSON_AddItemToObject(fn, "arguments", cJSON_Parse("{\"word\": [1, null]}"));
            cJSON_AddItemToArray(calls, call);
            *ordinary = false;
        }
        if (r & 128) {
            cJSON_AddStringToObject(msg, "reasoning_content", "hmm");
            *ordinary = false;
        }
        cJSON_AddItemToArray(msgs, msg);
    }
    /* jinja2 itself fails on messages[0].role of an empty list */
    if (cJSON_GetArraySize(msgs) == 0) *ordinary = false;
    return ctx;
}

static void fuzz_messages(const uint8_t *data, size_t size)
{
    struct cursor c = {data, size};
    int head = take(&c);
    if (head < 0) return;
    int which = (head & 7) % N_TEMPLATES;
    bool ordinary;
    cJSON *ctx = decode_context(&c, head >> 3, &ordinary);
    enum es_status st = render_checked(templates[which], ctx, true);
    if (st != ES_OK && ordinary && template_strict[which]) {
        /* Plain system/user/assistant/tool text must always render. */
        char *dump = cJSON_Print(ctx);
        fprintf(stderr, "template %d refused an ordinary conversation:\n%s\n", which,
                dump ? dump : "?");
        free(dump);
        abort();
    }
    cJSON_Delete(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    if (data[0] & 1) fuzz_messages(data + 1, size - 1);
    else fuzz_template(data + 1, size - 1);
    return 0;
}
