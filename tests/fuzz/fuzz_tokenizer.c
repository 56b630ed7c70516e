/*
 * fuzz_tokenizer.c - libFuzzer target for common/tokenizer*.c: encode,
 * whole decode and streaming decode on arbitrary bytes, with the real
 * llama3_1 (byte-level BPE), llama2 (SentencePiece-style BPE with byte
 * fallback) and qwen3 (byte-level BPE with NFC) tokenizers.
 *
 * The tokenizers are loaded once, in LLVMFuzzerInitialize, from the shared
 * folder: $EVAL_SHARED_DIR, else <repo>/../shared, else /work/shared.
 *
 * Input: byte 0 picks the tokenizer (bits 0-1) and the mode (bits 2-4); the
 * rest is either text (encode, then decode the ids) or a list of 3-byte ids
 * (decode only, some of them out of range). Invariants (abort on violation):
 *   - tok_encode succeeds on valid UTF-8 and is ES_EINVAL on anything else,
 *     leaving the output vector as it was;
 *   - every id it returns is in [0, tok_vocab_size);
 *   - llama3_1 round-trips: decode(encode(text)) == text; qwen3 (NFC)
 *     is stable: encode(decode(encode(text))) == encode(text);
 *   - tok_decode is ES_ERANGE when any id is out of range, else it gives
 *     valid UTF-8;
 *   - the streaming decoder emits only valid UTF-8 chunks and, with
 *     tok_stream_finish, exactly the whole decode.
 * Never does: write files; change the tokenizers after loading them.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strbuf.h"
#include "tokenizer.h"

#ifndef FUZZ_REPO_DIR
#define FUZZ_REPO_DIR "."
#endif

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_tokenizer: invariant failed at line %d: %s\n", __LINE__,         \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

enum { TK_LLAMA3, TK_LLAMA2, TK_QWEN3, N_TK };
static const char *const tk_names[N_TK] = {"llama3_1", "llama2", "qwen3"};
static struct tokenizer *tks[N_TK];

static bool is_dir(const char *p)
{
    char probe[4096];
    snprintf(probe, sizeof probe, "%s/tokenizers/llama3_1/tokenizer.json", p);
    return access(probe, R_OK) == 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *cands[3] = {getenv("EVAL_SHARED_DIR"), FUZZ_REPO_DIR "/../shared", "/work/shared"};
    const char *shared = NULL;
    for (int i = 0; i < 3 && !shared; i++)
        if (cands[i] && cands[i][0] && is_dir(cands[i])) shared = cands[i];
    if (!shared) {
        fprintf(stderr, "fuzz_tokenizer: no shared dir with tokenizers/ (set EVAL_SHARED_DIR)\n");
        exit(1);
    }
    for (int i = 0; i < N_TK; i++) {
        char dir[4096];
        struct es_err err = {{0}};
        snprintf(dir, sizeof dir, "%s/tokenizers/%s", shared, tk_names[i]);
        if (tok_load(dir, &tks[i], &err) != ES_OK) {
            fprintf(stderr, "fuzz_tokenizer: tok_load %s: %s\n", dir, err.msg);
            exit(1);
        }
    }
    return 0;
}

static bool valid_utf8(const char *s, size_t n)
{
    return utf8_valid_prefix(s, n) == n;
}

/* Decodes ids whole and streamed; checks that both agree. */
static void check_decode(const struct tokenizer *tok, const int32_t *ids, size_t n, bool skip)
{
    int32_t vocab = tok_vocab_size(tok);
    bool in_range = true;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) in_range = false;

    struct strbuf whole = {0};
    sb_puts(&whole, "keep:"); /* decode appends; a failure must leave this */
    enum es_status st = tok_decode(tok, ids, n, skip, &whole);
    if (!in_range) {
        CHECK(st == ES_ERANGE);
        CHECK(whole.len == 5 && memcmp(whole.s, "keep:", 5) == 0);
    } else {
        CHECK(st == ES_OK);
        CHECK(valid_utf8(whole.s, whole.len));
    }

    struct tok_stream ts;
    struct strbuf streamed = {0}, chunk = {0};
    sb_puts(&streamed, "keep:");
    tok_stream_init(&ts, tok, skip);
    bool stream_ok = true;
    for (size_t i = 0; i < n; i++) {
        sb_clear(&chunk);
        enum es_status ps = tok_stream_push(&ts, ids[i], &chunk);
        if (ids[i] < 0 || ids[i] >= vocab) {
            CHECK(ps == ES_ERANGE);
            stream_ok = false;
            break;
        }
        CHECK(ps == ES_OK);
        CHECK(valid_utf8(sb_cstr(&chunk), chunk.len));
        sb_append(&streamed, sb_cstr(&chunk), chunk.len);
    }
    if (stream_ok) {
        sb_clear(&chunk);
        CHECK(tok_stream_finish(&ts, &chunk) == ES_OK);
        sb_append(&streamed, sb_cstr(&chunk), chunk.len);
        if (in_range && (streamed.len != whole.len || memcmp(streamed.s, whole.s, whole.len))) {
            fprintf(stderr, "stream decode differs from whole decode:\n  whole:    ");
            fwrite(whole.s, 1, whole.len, stderr);
            fprintf(stderr, "\n  streamed: ");
            fwrite(streamed.s, 1, streamed.len, stderr);
            fprintf(stderr, "\n");
            abort();
        }
    }
    tok_stream_free(&ts);
    sb_free(&chunk);
    sb_free(&streamed);
    sb_free(&whole);
}

static void fuzz_text(int which, const struct tokenizer *tok, const char *text, size_t len,
                      bool add_special, bool skip)
{
    struct i32vec ids = {0};
    iv_push(&ids, 7); /* encode appends; a failure must leave this */
    enum es_status st = tok_encode(tok, text, len, add_special, &ids);
    if (!valid_utf8(text, len)) {
        CHECK(st == ES_EINVAL);
        CHECK(ids.n == 1 && ids.v[0] == 7);
        iv_free(&ids);
        return;
    }
    CHECK(st == ES_OK);
    int32_t vocab = tok_vocab_size(tok);
    for (size_t i = 1; i < ids.n; i++)
        CHECK(ids.v[i] >= 0 && ids.v[i] < vocab);
    if (which == TK_LLAMA3 && !add_special) {
        struct strbuf back = {0};
        CHECK(tok_decode(tok, ids.v + 1, ids.n - 1, false, &back) == ES_OK);
        if (back.len != len || memcmp(sb_cstr(&back), text, len) != 0) {
            fprintf(stderr, "llama3_1 round trip changed the text (%zu -> %zu bytes)\n", len,
                    back.len);
            abort();
        }
        sb_free(&back);
    }
    if (which == TK_QWEN3 && !add_special) {
        /* decode(encode(x)) is NFC(x); NFC is idempotent, so encoding that
         * text again must give the same ids. */
        struct strbuf back = {0};
        struct i32vec again = {0};
        CHECK(tok_decode(tok, ids.v + 1, ids.n - 1, false, &back) == ES_OK);
        CHECK(tok_encode(tok, sb_cstr(&back), back.len, false, &again) == ES_OK);
        if (again.n != ids.n - 1 ||
            (again.n && memcmp(again.v, ids.v + 1, again.n * sizeof(int32_t)) != 0)) {
            fprintf(stderr, "qwen3: encode(decode(encode(x))) != encode(x) (%zu vs %zu ids)\n",
                    again.n, ids.n - 1);
            abort();
        }
        iv_free(&again);
        sb_free(&back);
    }
    check_decode(tok, ids.v + 1, ids.n - 1, skip);
    iv_free(&ids);
}

static void fuzz_ids(const struct tokenizer *tok, const uint8_t *data, size_t size, bool skip)
{
    int32_t vocab = tok_vocab_size(tok);
    size_t n = size / 3;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) return;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = data[3 * i] | (uint32_t)data[3 * i + 1] << 8 | (uint32_t)data[3 * i + 2] << 16;
        /* mostly valid ids; a few just past the end and a few negative */
        uint32_t span = (uint32_t)vocab + 4;
        int32_t id = (int32_t)(v % span);
        if (id == vocab + 3) id = -1;
        ids[i] = id;
    }
    check_decode(tok, ids, n, skip);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    int which = (data[0] & 3) % N_TK;
    bool add_special = data[0] & 4, skip = data[0] & 8, ids_mode = data[0] & 16;
    const struct tokenizer *tok = tks[which];
    /* An exact-size copy, so a read past the end trips ASan. */
    size_t len = size - 1;
    char *text = malloc(len ? len : 1);
    if (!text) return 0;
    memcpy(text, data + 1, len);
    if (ids_mode) fuzz_ids(tok, (const uint8_t *)text, len, skip);
    else fuzz_text(which, tok, text, len, add_special, skip);
    free(text);
    return 0;
}
