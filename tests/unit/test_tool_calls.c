/*
 * test_tool_calls.c - the chat tool call parsers (server/api/tool_calls.c):
 * hermes and llama3_json on valid single and multiple calls, arguments
 * as an object and as a string, unicode, an unclosed final call, invalid
 * JSON falling back to content, content before calls, and texts that are
 * no calls; the streaming hold-back rule and steps; the message fields;
 * which requests turn parsing on.
 */
#include <stdlib.h>
#include <string.h>

#include "testing.h"
#include "tool_calls.h"

/* A parse of text whose calls are expected to be [names, arguments]
 * (n of them; 0: none) and whose content is `content` (NULL: null). */
static void expect(enum tool_parser p, const char *text, int n, const char *const *names,
                   const char *const *arguments, const char *content)
{
    struct tool_parse tp;
    tool_calls_parse(p, text, strlen(text), &tp);
    CHECK(cJSON_GetArraySize(tp.calls) == n);
    CHECK((tp.calls == NULL) == (n == 0));
    int k = 0;
    for (const cJSON *call = tp.calls ? tp.calls->child : NULL; call && k < n; call = call->next) {
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(call, "id");
        CHECK_STR(cJSON_GetObjectItemCaseSensitive(call, "type")->valuestring, "function");
        CHECK(cJSON_IsString(id) && strlen(id->valuestring) == strlen("chatcmpl-tool-") + 32);
        CHECK(strncmp(id->valuestring, "chatcmpl-tool-", 14) == 0);
        CHECK_STR(cJSON_GetObjectItemCaseSensitive(fn, "name")->valuestring, names[k]);
        CHECK_STR(cJSON_GetObjectItemCaseSensitive(fn, "arguments")->valuestring, arguments[k]);
        k++;
    }
    if (content) {
        CHECK(!tp.content_null);
        CHECK(tp.content_len == strlen(content) && memcmp(text, content, tp.content_len) == 0);
    } else {
        CHECK(tp.content_null);
    }
    cJSON_Delete(tp.calls);
}

/* No calls: the whole text is content. */
static void expect_none(enum tool_parser p, const char *text)
{
    expect(p, text, 0, NULL, NULL, text[0] ? text : NULL);
}

static void test_hermes(void)
{
    enum tool_parser H = TOOL_PARSER_HERMES;
    const char *one[] = {"get_weather"}, *one_args[] = {"{\"city\":\"Paris\",\"unit\":\"c\"}"};
    expect(H,
           "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", "
           "\"unit\": \"c\"}}\n</tool_call>",
           1, one, one_args, NULL);
    /* arguments as a JSON string, re-serialized compactly */
    expect(H,
           "<tool_call>{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": "
           "\\\"Paris\\\", \\\"unit\\\": \\\"c\\\"}\"}</tool_call>",
           1, one, one_args, NULL);
    /* content before the calls, trailing whitespace cut; text between and after dropped */
    const char *two[] = {"a", "b"}, *two_args[] = {"{\"x\":[1,2,{\"y\":null}]}", "{}"};
    expect(H,
           "Let me check.\n\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": [1, 2, "
           "{\"y\": null}]}}\n</tool_call>\nand\n<tool_call>{\"name\":\"b\",\"arguments\":{}}"
           "</tool_call> trailing",
           2, two, two_args, "Let me check.");
    /* unicode and escapes in the arguments; keys in the model's order */
    const char *u[] = {"say"}, *u_args[] = {"{\"z\":\"h\xc3\xa9llo \xe2\x9c\x93 \\\"q\\\"\","
                                            "\"a\":\"\xf0\x9f\x98\x80\"}"};
    expect(H,
           "<tool_call>{\"name\": \"say\", \"arguments\": {\"z\": \"h\xc3\xa9llo \\u2713 "
           "\\\"q\\\"\", \"a\": \"\xf0\x9f\x98\x80\"}}</tool_call>",
           1, u, u_args, NULL);
    /* an unclosed final call counts when its JSON parses */
    expect(H,
           "<tool_call>{\"name\": \"a\", \"arguments\": {\"x\": [1, 2, {\"y\": null}]}}"
           "</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}\n",
           2, two, two_args, NULL);
    expect(H,
           "x <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", "
           "\"unit\": \"c\"}}",
           1, one, one_args, "x");
    /* anything wrong in any call: no calls, the whole text is content */
    expect_none(H, "<tool_call>{\"name\": \"a\", \"arguments\": {\"x\": 1</tool_call>");
    expect_none(H, "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"na");
    expect_none(H, "<tool_call>{\"name\": \"a\"}</tool_call>");                /* no arguments */
    expect_none(H, "<tool_call>{\"name\": 3, \"arguments\": {}}</tool_call>"); /* name */
    expect_none(H, "<tool_call>{\"name\": \"a\", \"arguments\": [1]}</tool_call>"); /* array */
    expect_none(H, "<tool_call>{\"name\": \"a\", \"arguments\": \"x\"}</tool_call>");
    expect_none(H, "<tool_call>[1, 2]</tool_call>");
    expect_none(H, "<tool_call>");
    expect_none(H, "text then <tool_call>\n");
    /* no tag at all */
    expect_none(H, "");
    expect_none(H, "Just an answer.");
    expect_none(H, "{\"name\": \"a\", \"arguments\": {}}");
    expect_none(H, "<tool_call >{\"name\": \"a\", \"arguments\": {}}</tool_call>");
}

static void test_llama3(void)
{
    enum tool_parser L = TOOL_PARSER_LLAMA3_JSON;
    const char *one[] = {"get_weather"}, *one_args[] = {"{\"city\":\"Paris\"}"};
    expect(L, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", 1, one,
           one_args, NULL);
    expect(L, "  \n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n", 1, one,
           one_args, NULL);
    expect(L, "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", 1,
           one, one_args, NULL);
    expect(L, " <|python_tag|> {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
           1, one, one_args, NULL);
    const char *two[] = {"a", "b"}, *two_args[] = {"{\"s\":\"x; {y}\"}", "{\"n\":1.5}"};
    expect(L,
           "{\"name\": \"a\", \"parameters\": {\"s\": \"x; {y}\"}}; {\"name\": \"b\", "
           "\"parameters\": {\"n\": 1.5}}",
           2, two, two_args, NULL);
    expect(L,
           "{\"name\": \"a\", \"parameters\": {\"s\": \"x; {y}\"}};{\"name\": \"b\", "
           "\"arguments\": \"{\\\"n\\\": 1.5}\"};\n",
           2, two, two_args, NULL);
    /* "parameters" wins over "arguments" when both are there */
    const char *p[] = {"f"}, *p_args[] = {"{\"p\":1}"};
    expect(L, "{\"name\": \"f\", \"parameters\": {\"p\": 1}, \"arguments\": {\"a\": 2}}", 1, p,
           p_args, NULL);
    /* no calls */
    expect_none(L, "");
    expect_none(L, "The weather is fine.");
    expect_none(L, "Sure: {\"name\": \"a\", \"parameters\": {}}");
    expect_none(L, "{\"name\": \"a\", \"parameters\": {}} and more");
    expect_none(L, "{\"name\": \"a\", \"parameters\": {}}; hello");
    expect_none(L, "{\"name\": \"a\", \"parameters\": {}");   /* unclosed */
    expect_none(L, "{\"name\": \"a\"}");                      /* no parameters */
    expect_none(L, "{\"parameters\": {}}");                   /* no name */
    expect_none(L, "{\"name\": \"a\", \"parameters\": 5}");   /* not an object */
    expect_none(L, "{\"name\": \"a\", \"parameters\": {},}"); /* invalid JSON */
    expect_none(L, "<|python_tag|>print(1)");
    expect_none(L, "[{\"name\": \"a\", \"parameters\": {}}]");
}

/* Each prefix of text: the ready length never shrinks and never passes
 * the content finally parsed; the final text's ready length is `last`. */
static void expect_stream(enum tool_parser p, const char *text, size_t last)
{
    size_t len = strlen(text), prev = 0;
    struct tool_parse tp;
    tool_calls_parse(p, text, len, &tp);
    for (size_t n = 0; n <= len; n++) {
        size_t ready = tool_calls_stream_ready(p, text, n);
        CHECK(ready >= prev && ready <= n);
        CHECK(ready <= tp.content_len);
        prev = ready;
    }
    CHECK(prev == last);
    cJSON_Delete(tp.calls);
}

static void test_stream_ready(void)
{
    enum tool_parser H = TOOL_PARSER_HERMES, L = TOOL_PARSER_LLAMA3_JSON;
    CHECK(tool_calls_stream_ready(H, "abc <tool", 9) == 3);
    CHECK(tool_calls_stream_ready(H, "abc <toolbox", 12) == 12);
    CHECK(tool_calls_stream_ready(H, "a < b", 5) == 5);
    CHECK(tool_calls_stream_ready(H, "a <", 3) == 1);
    CHECK(tool_calls_stream_ready(H, "a  ", 3) == 1);
    expect_stream(H, "Let me look.\n<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>",
                  strlen("Let me look."));
    expect_stream(H, "No call here, <tool> but <tool_call>{bad</tool_call> x",
                  strlen("No call here, <tool> but"));
    expect_stream(H, "plain text", strlen("plain text"));
    CHECK(tool_calls_stream_ready(L, "  ", 2) == 0);
    CHECK(tool_calls_stream_ready(L, " <|py", 5) == 0);
    CHECK(tool_calls_stream_ready(L, " <|pz", 5) == 5);
    CHECK(tool_calls_stream_ready(L, "{", 1) == 0);
    CHECK(tool_calls_stream_ready(L, "Hi {", 4) == 4);
    expect_stream(L, "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}", 0);
    expect_stream(L, "{\"name\": \"a\", \"parameters\": {}} tail", 0); /* flushed at the end */
    expect_stream(L, "Hello", 5);
    CHECK(tool_calls_stream_ready(TOOL_PARSER_NONE, "<tool_call>", 11) == 11);
}

static void test_ids_and_delta(void)
{
    const char *text = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>"
                       "<tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
    struct tool_parse tp;
    tool_calls_parse(TOOL_PARSER_HERMES, text, strlen(text), &tp);
    CHECK(cJSON_GetArraySize(tp.calls) == 2);
    const char *id0 =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(tp.calls, 0), "id")->valuestring;
    const char *id1 =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(tp.calls, 1), "id")->valuestring;
    CHECK(strcmp(id0, id1) != 0);
    cJSON *choice = tool_calls_stream_choice(3, tp.calls);
    CHECK(cJSON_GetObjectItemCaseSensitive(choice, "index")->valueint == 3);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(choice, "finish_reason")));
    const cJSON *delta = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(choice, "delta"), "tool_calls");
    CHECK(cJSON_GetArraySize(delta) == 2);
    for (int k = 0; k < 2; k++) {
        const cJSON *d = cJSON_GetArrayItem(delta, k);
        CHECK(cJSON_GetObjectItemCaseSensitive(d, "index")->valueint == k);
        CHECK_STR(cJSON_GetObjectItemCaseSensitive(d, "id")->valuestring, k ? id1 : id0);
        CHECK(cJSON_GetObjectItemCaseSensitive(d, "function") != NULL);
    }
    cJSON_Delete(choice);
    cJSON_Delete(tp.calls);
}

/* The message fields and the streaming steps of one answer. */
static void test_message_and_stream_text(void)
{
    const char *text = "Hi <tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>";
    size_t len = strlen(text);
    cJSON *msg = cJSON_CreateObject();
    CHECK(tool_calls_message(TOOL_PARSER_HERMES, text, len, msg));
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(msg, "content")->valuestring, "Hi");
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(msg, "tool_calls")) == 1);
    cJSON_Delete(msg);
    msg = cJSON_CreateObject();
    CHECK(tool_calls_message(TOOL_PARSER_HERMES, text + 3, len - 3, msg));
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(msg, "content")));
    cJSON_Delete(msg);
    msg = cJSON_CreateObject();
    CHECK(!tool_calls_message(TOOL_PARSER_NONE, text, len, msg));
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(msg, "content")->valuestring, text);
    CHECK(!cJSON_GetObjectItemCaseSensitive(msg, "tool_calls"));
    cJSON_Delete(msg);
    msg = cJSON_CreateObject();
    CHECK(!tool_calls_message(TOOL_PARSER_LLAMA3_JSON, "", 0, msg));
    CHECK_STR(cJSON_GetObjectItemCaseSensitive(msg, "content")->valuestring, "");
    cJSON_Delete(msg);

    cJSON *calls = NULL;
    CHECK(tool_calls_stream_text(TOOL_PARSER_HERMES, text, 5, false, &calls) == 2 && !calls);
    CHECK(tool_calls_stream_text(TOOL_PARSER_HERMES, text, len, true, &calls) == 2);
    CHECK(cJSON_GetArraySize(calls) == 1);
    cJSON_Delete(calls);
    CHECK(tool_calls_stream_text(TOOL_PARSER_HERMES, text, len - 1, true, &calls) == len - 1);
    CHECK(!calls);
}

static void test_names_and_requests(void)
{
    enum tool_parser p = TOOL_PARSER_NONE;
    CHECK(tool_parser_from_name("hermes", &p) && p == TOOL_PARSER_HERMES);
    CHECK(tool_parser_from_name("llama3_json", &p) && p == TOOL_PARSER_LLAMA3_JSON);
    CHECK(!tool_parser_from_name("mistral", &p));
    struct {
        const char *body;
        bool parses;
    } cases[] = {
        {"{\"tools\": [{\"type\": \"function\"}]}", true},
        {"{\"tools\": [{\"type\": \"function\"}], \"tool_choice\": \"auto\"}", true},
        {"{\"tools\": [{\"type\": \"function\"}], \"tool_choice\": null}", true},
        {"{\"tools\": [{\"type\": \"function\"}], \"tool_choice\": \"none\"}", false},
        {"{\"tools\": []}", false},
        {"{\"tools\": null}", false},
        {"{}", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *body = cJSON_Parse(cases[i].body);
        CHECK((tool_parser_for_request(TOOL_PARSER_HERMES, body) == TOOL_PARSER_HERMES) ==
              cases[i].parses);
        CHECK(tool_parser_for_request(TOOL_PARSER_NONE, body) == TOOL_PARSER_NONE);
        cJSON_Delete(body);
    }
}

int main(void)
{
    test_hermes();
    test_llama3();
    test_stream_ready();
    test_ids_and_delta();
    test_message_and_stream_text();
    test_names_and_requests();
    return test_result("tool_calls");
}
