/*
 * test_tokenizer.c - the tokenizer API on the real tokenizers of shared/
 * (llama3_1, llama2, qwen3): known encodings, accessors, error statuses, and
 * above all the incremental stream decoder: for many id sequences (encoded
 * texts with multi-byte characters and byte fallback, random ids, special
 * tokens) every emitted chunk is whole UTF-8 and the chunks plus finish()
 * equal tok_decode() of all ids. tok_id_to_bytes: the raw bytes of known
 * ids, and the bytes of encoded texts joining into the (normalized) text.
 * Exactness against Python lives in tests/tokenizer/. Skips (77) when no
 * shared folder is found.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testing.h"
#include "tokenizer.h"

static const char *find_shared(char *buf, size_t cap)
{
    const char *env = getenv("EVAL_SHARED_DIR");
    const char *cands[] = {env, "../shared", "/work/shared"};
    for (size_t i = 0; i < sizeof(cands) / sizeof(cands[0]); i++) {
        struct stat sb;
        if (!cands[i]) continue;
        snprintf(buf, cap, "%s/tokenizers", cands[i]);
        if (stat(buf, &sb) == 0 && S_ISDIR(sb.st_mode)) return buf;
    }
    return NULL;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static bool whole_utf8(const char *s, size_t n)
{
    return utf8_valid_prefix(s, n) == n;
}

static int stream_failures;
static size_t bytes_early, bytes_total; /* emitted by push() vs in all */

/* Streams ids one by one; checks chunk validity and the concatenation. */
static void check_stream(const struct tokenizer *tok, const int32_t *ids, size_t n, bool skip)
{
    struct strbuf whole = {0}, streamed = {0}, chunk = {0};
    CHECK(tok_decode(tok, ids, n, skip, &whole) == ES_OK);
    struct tok_stream ts;
    tok_stream_init(&ts, tok, skip);
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        sb_clear(&chunk);
        if (tok_stream_push(&ts, ids[i], &chunk) != ES_OK) ok = false;
        if (!whole_utf8(sb_cstr(&chunk), chunk.len)) ok = false;
        sb_append(&streamed, sb_cstr(&chunk), chunk.len);
    }
    bytes_early += streamed.len;
    sb_clear(&chunk);
    CHECK(tok_stream_finish(&ts, &chunk) == ES_OK);
    sb_append(&streamed, sb_cstr(&chunk), chunk.len);
    bytes_total += streamed.len;
    if (!ok || streamed.len != whole.len ||
        memcmp(sb_cstr(&streamed), sb_cstr(&whole), whole.len)) {
        if (stream_failures++ < 5) {
            fprintf(stderr,
                    "stream mismatch (skip=%d, %zu ids): whole \"%s\" streamed \"%s\" ids:", skip,
                    n, sb_cstr(&whole), sb_cstr(&streamed));
            for (size_t i = 0; i < n && i < 40; i++)
                fprintf(stderr, " %d", ids[i]);
            fprintf(stderr, "\n");
        }
        test_failures++;
    }
    tok_stream_free(&ts);
    sb_free(&whole);
    sb_free(&streamed);
    sb_free(&chunk);
}

static const char *TEXTS[] = {
    "Hello world",
    " leading space and  double  spaces",
    "naïve café — “quotes” … ½ ©",
    "日本語のテキストと中文文本，한국어 텍스트",
    "emoji 😀👍🏽👨‍👩‍👧‍👦🏳️‍🌈 and flags 🇫🇷🇯🇵",
    "rare CJK 𠀀𠀁𪚥 and ancient 𓀀𓀁 and math 𝔸𝔹",
    "e\xcc\x81 combining a\xcc\x88\xcc\x81", /* NFC (qwen3) changes it */
    "tabs\tand\nnewlines\r\n  \n\n",
    "<|begin_of_text|><s></s><|im_start|>user\nhi<|im_end|>", /* llama2: U+2581 after specials */
    "   ",
    "x",
    "Ünïcödé ŧëxŧ with ſ and ꝏ and \xe2\x80\xa8 separators",
};

static void test_one(const char *dir)
{
    struct es_err err = {{0}};
    struct tokenizer *tok = NULL;
    if (tok_load(dir, &tok, &err) != ES_OK) {
        fprintf(stderr, "%s: %s\n", dir, err.msg);
        test_failures++;
        return;
    }
    int32_t vocab = tok_vocab_size(tok);
    CHECK(vocab > 1000);
    CHECK(tok_id_to_piece(tok, -1) == NULL && tok_id_to_piece(tok, vocab) == NULL);
    /* every piece maps back to an id with the same piece */
    for (int32_t id = 0; id < vocab; id += 97) {
        const char *p = tok_id_to_piece(tok, id);
        if (p) CHECK_STR(tok_id_to_piece(tok, tok_piece_to_id(tok, p)), p);
    }
    if (tok_eos_token(tok)) {
        CHECK(tok_eos_id(tok) >= 0);
        CHECK_STR(tok_id_to_piece(tok, tok_eos_id(tok)), tok_eos_token(tok));
        CHECK(tok_is_special(tok, tok_eos_id(tok)));
    }
    CHECK(tok_piece_to_id(tok, "definitely not a token \x01") == -1);

    struct i32vec ids = {0};
    struct strbuf sb = {0};
    /* invalid UTF-8 and bad ids are errors, not crashes */
    CHECK(tok_encode(tok, "ab\xff", 3, true, &ids) == ES_EINVAL && ids.n == 0);
    int32_t bad[2] = {1, vocab};
    CHECK(tok_decode(tok, bad, 2, false, &sb) == ES_ERANGE);
    struct tok_stream ts;
    tok_stream_init(&ts, tok, false);
    CHECK(tok_stream_push(&ts, -5, &sb) == ES_ERANGE);
    tok_stream_free(&ts);

    /* encode -> decode round trip and stream equality on fixed texts */
    for (size_t t = 0; t < sizeof(TEXTS) / sizeof(TEXTS[0]); t++) {
        ids.n = 0;
        sb_clear(&sb);
        CHECK(tok_encode(tok, TEXTS[t], strlen(TEXTS[t]), false, &ids) == ES_OK);
        CHECK(tok_decode(tok, ids.v, ids.n, false, &sb) == ES_OK);
        if (!strstr(TEXTS[t], "combining") && !strstr(TEXTS[t], "<s>"))
            CHECK_STR(sb_cstr(&sb), TEXTS[t]);
        check_stream(tok, ids.v, ids.n, false);
        check_stream(tok, ids.v, ids.n, true);
    }
    /* concatenations of encoded texts, cut at random places */
    struct i32vec all = {0};
    for (size_t t = 0; t < sizeof(TEXTS) / sizeof(TEXTS[0]); t++)
        CHECK(tok_encode(tok, TEXTS[t], strlen(TEXTS[t]), true, &all) == ES_OK);
    for (int k = 0; k < 300; k++) {
        size_t a = rnd((uint32_t)all.n), b = a + rnd((uint32_t)(all.n - a)) + 1;
        check_stream(tok, all.v + a, b - a, k & 1);
    }
    /* random ids, heavy on single-byte / byte-fallback pieces and specials */
    int32_t byte_ids[256];
    int n_bytes = 0;
    for (int32_t id = 0; id < vocab && n_bytes < 256; id++) {
        const char *p = tok_id_to_piece(tok, id);
        if (p && ((strlen(p) == 6 && !strncmp(p, "<0x", 3)) || strlen(p) <= 2))
            byte_ids[n_bytes++] = id;
    }
    CHECK(n_bytes > 100);
    int32_t seq[64];
    for (int k = 0; k < 2000; k++) {
        size_t n = 1 + rnd(40);
        for (size_t i = 0; i < n; i++) {
            uint32_t r = rnd(10);
            if (r < 5)
                seq[i] = byte_ids[rnd((uint32_t)n_bytes)];
            else if (r < 6)
                seq[i] = vocab - 1 - (int32_t)rnd(30); /* added tokens live here */
            else if (r < 7)
                seq[i] = (int32_t)rnd(3);
            else
                seq[i] = (int32_t)rnd((uint32_t)vocab);
        }
        check_stream(tok, seq, n, k & 1);
    }
    iv_free(&all);
    iv_free(&ids);
    sb_free(&sb);
    tok_free(tok);
}

/* The raw bytes of the ids of each text join into the text as the model
 * sees it: the normalizer's output, with U+2581 as a space for the
 * SentencePiece-style llama2 (metaspace). Texts whose special tokens cut
 * the normalizer's input are left out there. */
static void test_bytes_join(const char *dir, bool metaspace)
{
    struct es_err err = {{0}};
    struct tokenizer *tok = NULL;
    if (tok_load(dir, &tok, &err) != ES_OK) {
        CHECK(0);
        return;
    }
    struct i32vec ids = {0};
    struct strbuf joined = {0}, norm = {0}, want = {0};
    for (size_t t = 0; t < sizeof(TEXTS) / sizeof(TEXTS[0]); t++) {
        const char *text = TEXTS[t];
        if (metaspace && strstr(text, "<s>")) continue;
        ids.n = 0;
        sb_clear(&joined);
        sb_clear(&norm);
        sb_clear(&want);
        CHECK(tok_encode(tok, text, strlen(text), false, &ids) == ES_OK);
        for (size_t i = 0; i < ids.n; i++)
            CHECK(tok_id_to_bytes(tok, ids.v[i], &joined) == ES_OK);
        CHECK(tok_normalize(tok, text, strlen(text), &norm) == ES_OK);
        for (size_t i = 0; i < norm.len; i++) {
            bool space = metaspace && i + 3 <= norm.len && !memcmp(norm.s + i, "\xE2\x96\x81", 3);
            sb_putc(&want, space ? ' ' : norm.s[i]);
            if (space) i += 2;
        }
        if (joined.len != want.len || memcmp(sb_cstr(&joined), sb_cstr(&want), want.len)) {
            fprintf(stderr, "%s: bytes of \"%s\" join into \"%s\"\n", dir, text, sb_cstr(&joined));
            test_failures++;
        }
    }
    int32_t vocab = tok_vocab_size(tok);
    sb_clear(&joined);
    CHECK(tok_id_to_bytes(tok, -1, &joined) == ES_ERANGE && joined.len == 0);
    CHECK(tok_id_to_bytes(tok, vocab, &joined) == ES_ERANGE && joined.len == 0);
    iv_free(&ids);
    sb_free(&joined);
    sb_free(&norm);
    sb_free(&want);
    tok_free(tok);
}

/* tok_id_to_bytes of one id equals want[0..n). */
static void check_bytes(const struct tokenizer *tok, int32_t id, const char *want, size_t n)
{
    struct strbuf sb = {0};
    CHECK(tok_id_to_bytes(tok, id, &sb) == ES_OK);
    if (sb.len != n || memcmp(sb_cstr(&sb), want, n) != 0) {
        fprintf(stderr, "tok_id_to_bytes(%d): %zu bytes \"%s\", want %zu\n", id, sb.len,
                sb_cstr(&sb), n);
        test_failures++;
    }
    sb_free(&sb);
}

/* tokenizer.json variants that must fail to load, with a clear message. */
static void test_load_errors(void)
{
    static const struct {
        const char *json;
        enum es_status want;
        const char *msg_part;
    } cases[] = {
        {"{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", ES_EUNSUPPORTED, "Unigram"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
         ES_EFORMAT, "not in vocabulary"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
         " \"normalizer\": {\"type\": \"Lowercase\"}}",
         ES_EUNSUPPORTED, "Lowercase"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
         " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"},"
         " \"behavior\": \"Isolated\"}}",
         ES_EFORMAT, "regex"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", ES_EFORMAT,
         "vocab id"},
        {"{\"model\": ", ES_EFORMAT, ""},
    };
    char dir[] = "/tmp/test_tokenizer_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0);
        return;
    }
    char path[256];
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        FILE *f = fopen(path, "w");
        fputs(cases[i].json, f);
        fclose(f);
        struct tokenizer *tok = (struct tokenizer *)1;
        struct es_err err = {{0}};
        enum es_status st = tok_load(dir, &tok, &err);
        CHECK(st == cases[i].want && tok == NULL);
        if (!strstr(err.msg, cases[i].msg_part)) {
            fprintf(stderr, "load error %zu: status %d message \"%s\"\n", i, st, err.msg);
            test_failures++;
        }
    }
    unlink(path);
    rmdir(dir);
    struct tokenizer *tok = NULL;
    struct es_err err = {{0}};
    CHECK(tok_load("/nonexistent/dir", &tok, &err) != ES_OK && tok == NULL && err.msg[0]);
}

/* A loaded tokenizer is shared by threads: encode and decode concurrently
 * and compare with the single-threaded results. */
struct mt_arg {
    const struct tokenizer *tok;
    const struct i32vec *expect; /* [n TEXTS] */
    int bad;
};

static void *mt_worker(void *p)
{
    struct mt_arg *a = p;
    for (int round = 0; round < 20; round++)
        for (size_t t = 0; t < sizeof(TEXTS) / sizeof(TEXTS[0]); t++) {
            struct i32vec ids = {0};
            if (tok_encode(a->tok, TEXTS[t], strlen(TEXTS[t]), true, &ids) != ES_OK ||
                ids.n != a->expect[t].n ||
                memcmp(ids.v, a->expect[t].v, ids.n * sizeof(int32_t)) != 0)
                a->bad++;
            iv_free(&ids);
        }
    return NULL;
}

static void test_threads(const char *dir)
{
    struct es_err err = {{0}};
    struct tokenizer *tok = NULL;
    if (tok_load(dir, &tok, &err) != ES_OK) {
        CHECK(0);
        return;
    }
    enum { N_TEXTS = sizeof(TEXTS) / sizeof(TEXTS[0]), N_THREADS = 4 };
    struct i32vec expect[N_TEXTS] = {{0}};
    for (size_t t = 0; t < N_TEXTS; t++)
        CHECK(tok_encode(tok, TEXTS[t], strlen(TEXTS[t]), true, &expect[t]) == ES_OK);
    pthread_t th[N_THREADS];
    struct mt_arg args[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        args[i] = (struct mt_arg){.tok = tok, .expect = expect};
        CHECK(pthread_create(&th[i], NULL, mt_worker, &args[i]) == 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        CHECK(args[i].bad == 0);
    }
    for (size_t t = 0; t < N_TEXTS; t++)
        iv_free(&expect[t]);
    tok_free(tok);
}

int main(void)
{
    test_load_errors();
    char base[4096];
    if (!find_shared(base, sizeof(base))) {
        fprintf(stderr, "test_tokenizer: SKIP: no shared/tokenizers (set EVAL_SHARED_DIR)\n");
        return 77;
    }
    const char *names[] = {"llama3_1", "llama2", "qwen3"};
    for (size_t i = 0; i < 3; i++) {
        char dir[4200];
        snprintf(dir, sizeof(dir), "%s/%s", base, names[i]);
        test_one(dir);
    }
    /* the stream really streams: most text leaves before finish() */
    fprintf(stderr, "stream: %zu of %zu bytes emitted before finish\n", bytes_early, bytes_total);
    CHECK(bytes_early * 10 > bytes_total * 8);

    for (size_t i = 0; i < 3; i++) {
        char dir[4200];
        snprintf(dir, sizeof(dir), "%s/%s", base, names[i]);
        test_threads(dir);
        test_bytes_join(dir, !strcmp(names[i], "llama2"));
    }

    /* known ids (checked against tokenizers) */
    char dir[4200];
    struct es_err err = {{0}};
    struct tokenizer *tok = NULL;
    struct i32vec ids = {0};
    snprintf(dir, sizeof(dir), "%s/llama3_1", base);
    if (tok_load(dir, &tok, &err) == ES_OK) {
        CHECK(tok_encode(tok, "Hello world", 11, true, &ids) == ES_OK);
        CHECK(ids.n == 3 && ids.v[0] == 128000 && ids.v[1] == 9906 && ids.v[2] == 1917);
        CHECK(tok_bos_id(tok) == 128000);
        CHECK_STR(tok_bos_token(tok), "<|begin_of_text|>");
        CHECK(tok_chat_template(tok) != NULL);
        /* raw bytes: "Ā" is byte 0, "ä" byte 0xE4 (the first of 3 of "中",
         * whose text alone is U+FFFD), "Ġworld" " world", a special token
         * its content */
        check_bytes(tok, 188, "\0", 1);
        int32_t e4 = tok_piece_to_id(tok, "\xC3\xA4");
        CHECK(e4 >= 0);
        check_bytes(tok, e4, "\xE4", 1);
        struct strbuf sb = {0};
        CHECK(tok_decode(tok, &e4, 1, false, &sb) == ES_OK);
        CHECK_STR(sb_cstr(&sb), "\xEF\xBF\xBD");
        sb_free(&sb);
        check_bytes(tok, 1917, " world", 6);
        check_bytes(tok, 128000, "<|begin_of_text|>", 17);
        tok_free(tok);
    }
    ids.n = 0;
    snprintf(dir, sizeof(dir), "%s/llama2", base);
    if (tok_load(dir, &tok, &err) == ES_OK) {
        struct strbuf sb = {0};
        CHECK(tok_encode(tok, "<s>hello <s> world", 18, true, &ids) == ES_OK);
        int32_t want[] = {1, 1, 6312, 28709, 28705, 1, 28705, 1526};
        CHECK(ids.n == 8 && memcmp(ids.v, want, sizeof(want)) == 0);
        int32_t dec[] = {28705, 1};
        CHECK(tok_decode(tok, dec, 2, false, &sb) == ES_OK);
        CHECK_STR(sb_cstr(&sb), "<s>"); /* the leading space is stripped */
        sb_free(&sb);
        /* raw bytes: byte fallback <0xE4> is that byte, "▁" a space that no
         * Strip takes off, "<s>" its content */
        check_bytes(tok, tok_piece_to_id(tok, "<0xE4>"), "\xE4", 1);
        check_bytes(tok, tok_piece_to_id(tok, "<0x0A>"), "\n", 1);
        check_bytes(tok, 28705, " ", 1);
        check_bytes(tok, 1, "<s>", 3);
        tok_free(tok);
    }
    iv_free(&ids);
    return test_result("tokenizer");
}
