/*
 * tool_calls.h - OpenAI tool calls read out of a chat answer's text, as
 * vLLM's --enable-auto-tool-choice --tool-call-parser NAME does it:
 *
 *   hermes       (Qwen2.5, Qwen3, Hermes): each call is
 *                <tool_call> {"name": ..., "arguments": {...}} </tool_call>;
 *                a final call whose closing tag is missing counts when its
 *                JSON parses. content: the text before the first
 *                <tool_call>, trailing whitespace cut (null when empty).
 *   llama3_json  (Llama 3.1 / 3.2): optional leading whitespace, an
 *                optional <|python_tag|>, then one JSON object or several
 *                separated by ';', each {"name", "parameters" or
 *                "arguments"}; content is null.
 *
 * A text that does not fit its parser's shape (invalid JSON in any call
 * included) has no tool calls: the whole text stays content.
 *
 * The parsers are pure functions of the text (but for the calls' random
 * ids); the server's options name one (tool_parser_from_name), a request
 * turns it on by sending tools with tool_choice absent or "auto"
 * (tool_parser_for_request). The answer's message gets its content and
 * tool_calls (tool_calls_message); streaming holds back the text that
 * could still become a call (tool_calls_stream_ready) and parses the
 * whole text once its choice finishes (tool_calls_stream_text). Never decides how the text is
 * generated: there is no constrained decoding, so a call cannot be forced.
 */
#ifndef ES_TOOL_CALLS_H
#define ES_TOOL_CALLS_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

enum tool_parser {
    TOOL_PARSER_NONE = 0, /* tool calls stay in content, unparsed */
    TOOL_PARSER_HERMES,
    TOOL_PARSER_LLAMA3_JSON,
};

/* "hermes" or "llama3_json"; false for any other name. */
bool tool_parser_from_name(const char *name, enum tool_parser *out);
/* The names tool_parser_from_name takes, for messages ("hermes, llama3_json"). */
const char *tool_parser_names(void);

/* The parser a chat request's answer goes through: server_parser when
 * the request has a non-empty "tools" array and its "tool_choice" is
 * absent, null or "auto"; TOOL_PARSER_NONE otherwise ("none", no tools). */
enum tool_parser tool_parser_for_request(enum tool_parser server_parser, const cJSON *body);

/* One choice's text, parsed. */
struct tool_parse {
    cJSON *calls;       /* [{"id", "type": "function", "function": {"name", "arguments"}}]
                           with at least one call, or NULL when the text has none */
    size_t content_len; /* content is text[0, content_len) */
    bool content_null;  /* the message's content is null (no text besides the calls) */
};

/* Parses text[0, len) (it need not end in NUL). Without calls (or out
 * of memory) the whole text is content. out->calls belongs to the caller
 * (cJSON_Delete). */
void tool_calls_parse(enum tool_parser parser, const char *text, size_t len,
                      struct tool_parse *out);

/* Streaming: how many leading bytes of an unfinished choice's text may go
 * out as content now. The rest could still be (or lead into) a tool call
 * and waits for the end of the choice: hermes holds from a "<tool_call>"
 * or a trailing proper prefix of it, and the whitespace before that;
 * llama3_json holds everything while the first non-space characters are
 * "{" or (a prefix of) "<|python_tag|>", or none has come yet. The result
 * only grows as text is appended, and never passes the content that
 * tool_calls_parse later finds. */
size_t tool_calls_stream_ready(enum tool_parser parser, const char *text, size_t len);

/* Streaming, one choice: how many leading bytes of its text may go out
 * as content now. Unfinished: tool_calls_stream_ready. Finished: the
 * whole text is parsed, *calls receives its calls (NULL: none; the
 * caller cJSON_Deletes them) and the content before them is ready (the
 * whole text when there are none). */
size_t tool_calls_stream_text(enum tool_parser parser, const char *text, size_t len, bool finished,
                              cJSON **calls);

/* The choice of a chat.completion.chunk that carries calls:
 * {"index", "delta": {"tool_calls": [{"index", "id", "type", "function"}]},
 * "logprobs": null, "finish_reason": null}. */
cJSON *tool_calls_stream_choice(int index, const cJSON *calls);

/* Adds a chat answer's "content" (text, or null) and, when the text
 * holds calls, its "tool_calls" to the message msg. Returns whether it
 * holds calls (finish_reason then is "tool_calls"). TOOL_PARSER_NONE:
 * the text is the content, as it is. */
bool tool_calls_message(enum tool_parser parser, const char *text, size_t len, cJSON *msg);

#endif
