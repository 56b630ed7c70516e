/*
 * tool_calls.c - the tool call parsers of chat answers (see tool_calls.h):
 * hermes (<tool_call> JSON </tool_call>) and llama3_json (JSON objects,
 * ';'-separated, after an optional <|python_tag|>), the streaming
 * hold-back rule and the OpenAI shape of the calls.
 *
 * Owns nothing beyond the cJSON trees it returns. Every call's JSON goes
 * through js_parse (depth-limited, UTF-8 checked); a text that does not
 * fit the shape yields no calls rather than an error, as vLLM falls back
 * to content. Arguments are re-serialized compactly by cJSON, keys in the
 * model's order. Out of memory while building a call counts as no call
 * (the text stays content). Runs on HTTP threads, under a request's lock; never
 * blocks and never touches the request itself.
 */
#include "tool_calls.h"

#include <ctype.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "json.h"

#define HERMES_OPEN "<tool_call>"
#define HERMES_CLOSE "</tool_call>"
#define LLAMA3_PYTHON_TAG "<|python_tag|>"

/* ---------------------------------------------------------------- names */

bool tool_parser_from_name(const char *name, enum tool_parser *out)
{
    if (strcmp(name, "hermes") == 0) {
        *out = TOOL_PARSER_HERMES;
        return true;
    }
    if (strcmp(name, "llama3_json") == 0) {
        *out = TOOL_PARSER_LLAMA3_JSON;
        return true;
    }
    return false;
}

const char *tool_parser_names(void)
{
    return "hermes, llama3_json";
}

enum tool_parser tool_parser_for_request(enum tool_parser server_parser, const cJSON *body)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(body, "tools");
    if (server_parser == TOOL_PARSER_NONE || !cJSON_IsArray(tools) || !tools->child)
        return TOOL_PARSER_NONE;
    const cJSON *choice = cJSON_GetObjectItemCaseSensitive(body, "tool_choice");
    if (!choice || cJSON_IsNull(choice)) return server_parser;
    if (cJSON_IsString(choice) && strcmp(choice->valuestring, "auto") == 0) return server_parser;
    return TOOL_PARSER_NONE;
}

/* ---------------------------------------------------------------- text helpers */

static bool is_space(char c)
{
    return isspace((unsigned char)c) != 0;
}

static size_t skip_space(const char *s, size_t len, size_t i)
{
    while (i < len && is_space(s[i]))
        i++;
    return i;
}

/* The first occurrence of needle in s[from, len), or len when none. */
static size_t find(const char *s, size_t len, size_t from, const char *needle)
{
    const char *hit = from < len ? memmem(s + from, len - from, needle, strlen(needle)) : NULL;
    return hit ? (size_t)(hit - s) : len;
}

static bool starts_with(const char *s, size_t len, size_t i, const char *prefix)
{
    size_t n = strlen(prefix);
    return i + n <= len && memcmp(s + i, prefix, n) == 0;
}

/* Where the JSON object starting at s[i] == '{' ends (one past its '}'),
 * counting braces outside strings; 0 when it does not end in s[0, len).
 * Only finds the span: js_parse validates it. */
static size_t object_end(const char *s, size_t len, size_t i)
{
    int depth = 0;
    bool in_string = false;
    for (; i < len; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\')
                i++; /* the escaped character, whatever it is */
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if ((c == '}' || c == ']') && --depth == 0) {
            return i + 1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- one call */

/* "chatcmpl-tool-" and 32 random hex digits. */
static void call_id(char out[48])
{
    static atomic_uint_fast64_t fallback_counter;
    uint64_t r[2];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        r[0] = (uint64_t)time(NULL) ^ ((uint64_t)(uintptr_t)out << 17);
        r[1] = atomic_fetch_add(&fallback_counter, 1) * 0x9e3779b97f4a7c15ull;
    }
    snprintf(out, 48, "chatcmpl-tool-%016llx%016llx", (unsigned long long)r[0],
             (unsigned long long)r[1]);
}

/* The arguments as a compact JSON string: an object, or a string holding
 * one. NULL when they are neither (or out of memory). */
static char *arguments_string(const cJSON *args)
{
    if (cJSON_IsObject(args)) return cJSON_PrintUnformatted(args);
    if (!cJSON_IsString(args)) return NULL;
    struct es_err err = {{0}};
    const char *s = args->valuestring;
    cJSON *parsed = js_parse(s, strlen(s), 0, &err);
    char *out = cJSON_IsObject(parsed) ? cJSON_PrintUnformatted(parsed) : NULL;
    cJSON_Delete(parsed);
    return out;
}

/* One call in the OpenAI shape from the model's JSON object in s[0, len)
 * with its name and its arguments under args_key (or alt_key, when not
 * NULL and args_key is absent). NULL when the text is no such object. */
static cJSON *call_from_json(const char *s, size_t len, const char *args_key, const char *alt_key)
{
    struct es_err err = {{0}};
    cJSON *obj = js_parse(s, len, 0, &err);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(obj, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(obj, args_key);
    if (!args && alt_key) args = cJSON_GetObjectItemCaseSensitive(obj, alt_key);
    char *arguments = cJSON_IsObject(obj) && cJSON_IsString(name) ? arguments_string(args) : NULL;
    cJSON *call = NULL;
    if (arguments) {
        char id[48];
        call_id(id);
        call = cJSON_CreateObject();
        cJSON_AddStringToObject(call, "id", id);
        cJSON_AddStringToObject(call, "type", "function");
        cJSON *fn = cJSON_AddObjectToObject(call, "function");
        cJSON_AddStringToObject(fn, "name", name->valuestring);
        cJSON_AddStringToObject(fn, "arguments", arguments);
    }
    cJSON_free(arguments);
    cJSON_Delete(obj);
    return call;
}

/* ---------------------------------------------------------------- hermes */

/* The calls of a hermes text that holds "<tool_call>" at first_open, or
 * NULL when any of them is not a call. */
static cJSON *hermes_calls(const char *s, size_t len, size_t first_open)
{
    cJSON *calls = cJSON_CreateArray();
    size_t open = first_open;
    while (open < len) {
        size_t body = open + strlen(HERMES_OPEN);
        size_t close = find(s, len, body, HERMES_CLOSE); /* len: unclosed, runs to the end */
        size_t from = skip_space(s, close, body), to = close;
        while (to > from && is_space(s[to - 1]))
            to--;
        cJSON *call = call_from_json(s + from, to - from, "arguments", NULL);
        if (!call) {
            cJSON_Delete(calls);
            return NULL;
        }
        cJSON_AddItemToArray(calls, call);
        if (close == len) break;
        open = find(s, len, close + strlen(HERMES_CLOSE), HERMES_OPEN);
    }
    return calls;
}

static void hermes_parse(const char *s, size_t len, struct tool_parse *out)
{
    size_t open = find(s, len, 0, HERMES_OPEN);
    if (open == len) return;
    out->calls = hermes_calls(s, len, open);
    if (!out->calls) return;
    size_t end = open;
    while (end > 0 && is_space(s[end - 1]))
        end--;
    out->content_len = end;
    out->content_null = end == 0;
}

/* ---------------------------------------------------------------- llama3_json */

/* The calls of a llama3_json text, or NULL when it is anything else. */
static cJSON *llama3_calls(const char *s, size_t len)
{
    size_t i = skip_space(s, len, 0);
    if (starts_with(s, len, i, LLAMA3_PYTHON_TAG))
        i = skip_space(s, len, i + strlen(LLAMA3_PYTHON_TAG));
    if (i >= len || s[i] != '{') return NULL;
    cJSON *calls = cJSON_CreateArray();
    while (i < len) {
        size_t end = s[i] == '{' ? object_end(s, len, i) : 0;
        cJSON *call = end ? call_from_json(s + i, end - i, "parameters", "arguments") : NULL;
        if (!call) goto not_calls;
        cJSON_AddItemToArray(calls, call);
        i = skip_space(s, len, end);
        if (i < len && s[i] != ';') goto not_calls;
        i = skip_space(s, len, i + 1); /* past ';' (or past the end: the loop ends) */
    }
    return calls;
not_calls:
    cJSON_Delete(calls);
    return NULL;
}

static void llama3_parse(const char *s, size_t len, struct tool_parse *out)
{
    out->calls = llama3_calls(s, len);
    if (!out->calls) return;
    out->content_len = 0;
    out->content_null = true;
}

/* ---------------------------------------------------------------- public */

void tool_calls_parse(enum tool_parser parser, const char *text, size_t len, struct tool_parse *out)
{
    if (!text) len = 0;
    *out = (struct tool_parse){.calls = NULL, .content_len = len, .content_null = len == 0};
    if (parser == TOOL_PARSER_HERMES)
        hermes_parse(text, len, out);
    else if (parser == TOOL_PARSER_LLAMA3_JSON)
        llama3_parse(text, len, out);
}

/* hermes: up to a "<tool_call>" or a trailing proper prefix of it, less
 * the whitespace before (which the parsed content would cut). */
static size_t hermes_ready(const char *s, size_t len)
{
    size_t limit = find(s, len, 0, HERMES_OPEN);
    if (limit == len) {
        size_t longest = strlen(HERMES_OPEN) - 1;
        for (size_t k = len < longest ? len : longest; k > 0; k--)
            if (memcmp(s + len - k, HERMES_OPEN, k) == 0) {
                limit = len - k;
                break;
            }
    }
    while (limit > 0 && is_space(s[limit - 1]))
        limit--;
    return limit;
}

/* llama3_json: nothing while the text may still be a call, else all. */
static size_t llama3_ready(const char *s, size_t len)
{
    size_t i = skip_space(s, len, 0);
    if (i == len || s[i] == '{') return 0;
    size_t rest = len - i, tag = strlen(LLAMA3_PYTHON_TAG);
    if (memcmp(s + i, LLAMA3_PYTHON_TAG, rest < tag ? rest : tag) == 0) return 0;
    return len;
}

size_t tool_calls_stream_ready(enum tool_parser parser, const char *text, size_t len)
{
    if (!text) return 0;
    if (parser == TOOL_PARSER_HERMES) return hermes_ready(text, len);
    if (parser == TOOL_PARSER_LLAMA3_JSON) return llama3_ready(text, len);
    return len;
}

size_t tool_calls_stream_text(enum tool_parser parser, const char *text, size_t len, bool finished,
                              cJSON **calls)
{
    *calls = NULL;
    if (!finished) return tool_calls_stream_ready(parser, text, len);
    struct tool_parse tp;
    tool_calls_parse(parser, text, len, &tp);
    *calls = tp.calls;
    return tp.content_len;
}

/* calls, each with its "index" first, as a delta's "tool_calls". */
static cJSON *indexed_calls(const cJSON *calls)
{
    cJSON *arr = cJSON_CreateArray();
    int k = 0;
    for (const cJSON *call = calls ? calls->child : NULL; call; call = call->next, k++) {
        cJSON *item = cJSON_CreateObject();
        cJSON_AddNumberToObject(item, "index", k);
        for (const cJSON *field = call->child; field; field = field->next)
            cJSON_AddItemToObject(item, field->string, cJSON_Duplicate(field, true));
        cJSON_AddItemToArray(arr, item);
    }
    return arr;
}

cJSON *tool_calls_stream_choice(int index, const cJSON *calls)
{
    cJSON *choice = cJSON_CreateObject();
    cJSON_AddNumberToObject(choice, "index", index);
    cJSON *delta = cJSON_AddObjectToObject(choice, "delta");
    cJSON_AddItemToObject(delta, "tool_calls", indexed_calls(calls));
    cJSON_AddNullToObject(choice, "logprobs");
    cJSON_AddNullToObject(choice, "finish_reason");
    return choice;
}

bool tool_calls_message(enum tool_parser parser, const char *text, size_t len, cJSON *msg)
{
    struct tool_parse tp;
    tool_calls_parse(parser, text, len, &tp);
    if (tp.content_null && tp.calls)
        cJSON_AddNullToObject(msg, "content");
    else
        cJSON_AddItemToObject(msg, "content", js_create_string_n(text, tp.content_len));
    if (!tp.calls) return false;
    cJSON_AddItemToObject(msg, "tool_calls", tp.calls);
    return true;
}
