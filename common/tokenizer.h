/*
 * tokenizer.h - Hugging Face tokenizer.json (BPE models) in C.
 *
 * Loads tokenizer.json and, when present beside it, tokenizer_config.json
 * (BOS/EOS policy, chat template, special token strings). Supports byte-level
 * BPE with a Split-regex pre-tokenizer (Llama-3, Qwen, GPT-2 style) and
 * SentencePiece-style BPE with byte fallback (Llama-2). Token ids match the
 * Python `tokenizers` library exactly. A loaded tokenizer is immutable and
 * safe to share between threads.
 */
#ifndef ES_TOKENIZER_H
#define ES_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"
#include "strbuf.h"

struct tokenizer;

/* dir holds tokenizer.json (required) and tokenizer_config.json (optional). */
enum es_status tok_load(const char *dir, struct tokenizer **out, struct es_err *err);
void tok_free(struct tokenizer *tok);

/* Appends the ids of text[0..len) to out. add_special: as
 * tokenizers.Tokenizer.encode(text, add_special_tokens=True), i.e. the
 * post-processor's BOS/EOS are added. Special-token text in the input is
 * always matched as the special token (as `tokenizers` does). Text that is
 * not valid UTF-8 is ES_EINVAL, and out is left as it was. */
enum es_status tok_encode(const struct tokenizer *tok, const char *text, size_t len,
                          bool add_special, struct i32vec *out);

/* Appends the decoded text of ids to out (as tokenizers' decode()).
 * skip_special drops special added tokens. Ids out of range are ES_ERANGE. */
enum es_status tok_decode(const struct tokenizer *tok, const int32_t *ids, size_t n,
                          bool skip_special, struct strbuf *out);

/* Appends text after the normalizer chain alone (NFC, Prepend, ...), as
 * tokenizers' normalizer.normalize_str(); for tests and debugging. */
enum es_status tok_normalize(const struct tokenizer *tok, const char *text, size_t len,
                             struct strbuf *out);

int32_t tok_vocab_size(const struct tokenizer *tok); /* model vocab + added tokens */
/* The raw vocabulary string of an id ("Ġthe", "▁the", "<0x0A>"); NULL if
 * out of range. */
const char *tok_id_to_piece(const struct tokenizer *tok, int32_t id);
/* Appends the raw bytes an id stands for (OpenAI's logprobs `bytes`): a
 * byte-level piece mapped back through the GPT-2 alphabet, a "<0xNN>"
 * byte-fallback piece as that byte, U+2581 as a space (the decoder's
 * Replace steps), an added token as its content. Unlike tok_decode of the
 * one id, part of a multi-byte character stays its bytes (no U+FFFD) and
 * no Strip applies, so the bytes of consecutive ids join into the bytes of
 * their text. Ids out of range are ES_ERANGE, and out is left as it was. */
enum es_status tok_id_to_bytes(const struct tokenizer *tok, int32_t id, struct strbuf *out);
/* Exact lookup of a vocabulary or added-token string; -1 if absent. */
int32_t tok_piece_to_id(const struct tokenizer *tok, const char *piece);
bool tok_is_special(const struct tokenizer *tok, int32_t id);

/* From tokenizer_config.json (NULL / -1 when not declared). */
const char *tok_chat_template(const struct tokenizer *tok);
const char *tok_bos_token(const struct tokenizer *tok);
const char *tok_eos_token(const struct tokenizer *tok);
int32_t tok_bos_id(const struct tokenizer *tok);
int32_t tok_eos_id(const struct tokenizer *tok);
/* For tokenizers without a chat_template: the name of the built-in template
 * (chat_template.h ct_builtin) that suits the vocabulary: "chatml" when it
 * has <|im_start|>, "llama3" for <|start_header_id|>, "llama2" for <s> and
 * </s>, else "plain". */
const char *tok_fallback_template(const struct tokenizer *tok);

/*
 * Incremental decoder for streaming: feed ids one at a time, get back only
 * text that is final (never a partial UTF-8 character). The concatenation of
 * everything it emits, plus tok_stream_finish(), equals tok_decode() of all
 * ids fed.
 */
struct tok_stream {
    const struct tokenizer *tok;
    bool skip_special;
    struct i32vec ids;   /* ids fed so far */
    size_t emitted;      /* bytes of the full decode already returned */
    size_t prefix_start; /* implementation detail: window start into ids */
    bool started;        /* a visible token lies before prefix_start */
};

void tok_stream_init(struct tok_stream *ts, const struct tokenizer *tok, bool skip_special);
/* Appends newly final text (possibly none) to out. */
enum es_status tok_stream_push(struct tok_stream *ts, int32_t id, struct strbuf *out);
/* Appends whatever remains (an incomplete character becomes U+FFFD, as
 * tok_decode renders it). */
enum es_status tok_stream_finish(struct tok_stream *ts, struct strbuf *out);
void tok_stream_free(struct tok_stream *ts);

#endif
