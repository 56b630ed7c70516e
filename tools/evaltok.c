/*
 * evaltok.c - the tokenizer and chat template from the command line, so the
 * library can be checked from outside (tests compare it with Python).
 *
 *   evaltok --tokenizer DIR [--no-special]        JSON string  -> [ids]
 *   evaltok --tokenizer DIR --decode [--skip-special]  [ids]   -> JSON string
 *   evaltok --tokenizer DIR --bytes     id -> [the token's raw bytes]
 *   evaltok --tokenizer DIR --chat      {"messages": [...], ...} -> JSON string
 *       (tokenizer_config.json's chat_template, else a built-in fallback)
 *   evaltok --tokenizer DIR --normalize  JSON string -> normalized JSON string
 *   evaltok --tokenizer DIR --bench FILE [--no-special]
 *       FILE holds one JSON string per line; prints the encode throughput.
 *
 * One JSON value per input line, one per output line, in order. A bad line
 * yields {"error": "..."} on its output line; only startup errors exit 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_template.h"
#include "json.h"
#include "tokenizer.h"

enum mode { MODE_ENCODE, MODE_DECODE, MODE_BYTES, MODE_CHAT, MODE_NORMALIZE };

struct opts {
    const char *dir;
    enum mode mode;
    bool add_special;
    bool skip_special;
    const char *bench;
};

static void usage(void)
{
    fprintf(stderr, "usage: evaltok --tokenizer DIR [--decode [--skip-special]] [--bytes] "
                    "[--no-special] [--chat] [--normalize] [--bench FILE]\n");
}

static enum es_status put_ids(struct strbuf *o, const struct i32vec *ids)
{
    enum es_status st = sb_putc(o, '[');
    for (size_t i = 0; i < ids->n && st == ES_OK; i++)
        st = sb_printf(o, i ? ",%d" : "%d", (int)ids->v[i]);
    if (st == ES_OK) st = sb_putc(o, ']');
    return st;
}

static void put_error(struct strbuf *o, const char *msg)
{
    sb_clear(o);
    sb_puts(o, "{\"error\":");
    sb_json_str(o, msg, strlen(msg));
    sb_putc(o, '}');
}

/* --bytes: one id in, the list of its raw bytes (tok_id_to_bytes) out. */
static void put_token_bytes(const struct tokenizer *tok, const cJSON *in, struct strbuf *o)
{
    struct es_err err = {{0}};
    struct strbuf raw = {0};
    int64_t id;
    if (js_as_int(in, "token id", 0, INT32_MAX, &id, &err) != ES_OK) {
        put_error(o, err.msg);
        return;
    }
    if (tok_id_to_bytes(tok, (int32_t)id, &raw) != ES_OK) {
        put_error(o, "token id out of range");
        return;
    }
    enum es_status st = sb_putc(o, '[');
    for (size_t i = 0; i < raw.len && st == ES_OK; i++)
        st = sb_printf(o, i ? ",%u" : "%u", (unsigned)(unsigned char)raw.s[i]);
    if (st == ES_OK) st = sb_putc(o, ']');
    if (st != ES_OK) put_error(o, "out of memory");
    sb_free(&raw);
}

/* Handles one input line; fills o with the output JSON (no newline). */
static void handle_line(const struct opts *op, const struct tokenizer *tok,
                        const struct chat_template *ct, const char *ct_error, const char *line,
                        size_t len, struct strbuf *o)
{
    struct es_err err = {{0}};
    struct i32vec ids = {0};
    struct strbuf text = {0};
    cJSON *in = js_parse(line, len, 0, &err);
    sb_clear(o);
    if (!in) {
        put_error(o, err.msg[0] ? err.msg : "invalid JSON");
        return;
    }
    enum es_status st = ES_OK;
    if (op->mode == MODE_ENCODE) {
        if (!cJSON_IsString(in)) {
            put_error(o, "expected a JSON string");
            goto out;
        }
        const char *s = in->valuestring;
        st = tok_encode(tok, s, strlen(s), op->add_special, &ids);
        if (st == ES_OK)
            st = put_ids(o, &ids);
        else
            put_error(o, st == ES_EINVAL ? "text is not valid UTF-8" : es_status_str(st));
    } else if (op->mode == MODE_NORMALIZE) {
        if (!cJSON_IsString(in)) {
            put_error(o, "expected a JSON string");
            goto out;
        }
        st = tok_normalize(tok, in->valuestring, strlen(in->valuestring), &text);
        if (st == ES_OK)
            st = sb_json_str(o, sb_cstr(&text), text.len);
        else
            put_error(o, es_status_str(st));
    } else if (op->mode == MODE_BYTES) {
        put_token_bytes(tok, in, o);
    } else if (op->mode == MODE_DECODE) {
        const cJSON *it;
        if (!cJSON_IsArray(in)) {
            put_error(o, "expected a JSON array of token ids");
            goto out;
        }
        cJSON_ArrayForEach(it, in)
        {
            int64_t id;
            if (js_as_int(it, "token id", 0, INT32_MAX, &id, &err) != ES_OK) {
                put_error(o, err.msg);
                goto out;
            }
            if (iv_push(&ids, (int32_t)id) != ES_OK) {
                put_error(o, "out of memory");
                goto out;
            }
        }
        st = tok_decode(tok, ids.v, ids.n, op->skip_special, &text);
        if (st == ES_OK)
            st = sb_json_str(o, sb_cstr(&text), text.len);
        else
            put_error(o, st == ES_ERANGE ? "token id out of range" : es_status_str(st));
    } else {
        if (!ct) {
            put_error(o, ct_error);
            goto out;
        }
        if (!cJSON_IsObject(in)) {
            put_error(o, "expected a JSON object with 'messages'");
            goto out;
        }
        if (!cJSON_HasObjectItem(in, "bos_token") && tok_bos_token(tok))
            cJSON_AddStringToObject(in, "bos_token", tok_bos_token(tok));
        if (!cJSON_HasObjectItem(in, "eos_token") && tok_eos_token(tok))
            cJSON_AddStringToObject(in, "eos_token", tok_eos_token(tok));
        st = ct_render(ct, in, &text, &err);
        if (st == ES_OK)
            st = sb_json_str(o, sb_cstr(&text), text.len);
        else
            put_error(o, err.msg[0] ? err.msg : es_status_str(st));
    }
out:
    cJSON_Delete(in);
    iv_free(&ids);
    sb_free(&text);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Encodes every string of a JSONL file, several rounds, and reports the best. */
static int run_bench(const struct opts *op, const struct tokenizer *tok)
{
    FILE *f = fopen(op->bench, "rb");
    if (!f) {
        fprintf(stderr, "evaltok: cannot open %s\n", op->bench);
        return 1;
    }
    char **texts = NULL;
    size_t n = 0, cap = 0, bytes = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) > 0) {
        struct es_err err = {{0}};
        cJSON *j = js_parse(line, (size_t)len, 0, &err);
        if (!cJSON_IsString(j)) {
            fprintf(stderr, "evaltok: %s: line %zu is not a JSON string\n", op->bench, n + 1);
            return 1;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            texts = realloc(texts, cap * sizeof(char *));
            if (!texts) return 1;
        }
        texts[n++] = strdup(j->valuestring);
        bytes += strlen(j->valuestring);
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    struct i32vec ids = {0};
    double best = 1e30;
    size_t tokens = 0;
    for (int round = 0; round < 3; round++) {
        tokens = 0;
        double t0 = now_s();
        for (size_t i = 0; i < n; i++) {
            ids.n = 0;
            if (tok_encode(tok, texts[i], strlen(texts[i]), op->add_special, &ids) != ES_OK) {
                fprintf(stderr, "evaltok: encode failed on text %zu\n", i);
                return 1;
            }
            tokens += ids.n;
        }
        double dt = now_s() - t0;
        if (dt < best) best = dt;
    }
    printf("{\"texts\":%zu,\"bytes\":%zu,\"tokens\":%zu,\"seconds\":%.4f,\"mb_per_s\":%.3f}\n", n,
           bytes, tokens, best, (double)bytes / best / 1e6);
    for (size_t i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    iv_free(&ids);
    return 0;
}

int main(int argc, char **argv)
{
    struct opts op = {.mode = MODE_ENCODE, .add_special = true};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            op.dir = argv[++i];
        else if (!strcmp(argv[i], "--decode"))
            op.mode = MODE_DECODE;
        else if (!strcmp(argv[i], "--bytes"))
            op.mode = MODE_BYTES;
        else if (!strcmp(argv[i], "--chat"))
            op.mode = MODE_CHAT;
        else if (!strcmp(argv[i], "--normalize"))
            op.mode = MODE_NORMALIZE;
        else if (!strcmp(argv[i], "--no-special"))
            op.add_special = false;
        else if (!strcmp(argv[i], "--skip-special"))
            op.skip_special = true;
        else if (!strcmp(argv[i], "--bench") && i + 1 < argc)
            op.bench = argv[++i];
        else {
            usage();
            return 1;
        }
    }
    if (!op.dir) {
        usage();
        return 1;
    }
    struct es_err err = {{0}};
    struct tokenizer *tok = NULL;
    if (tok_load(op.dir, &tok, &err) != ES_OK) {
        fprintf(stderr, "evaltok: %s\n", err.msg);
        return 1;
    }
    if (op.bench) {
        int rc = run_bench(&op, tok);
        tok_free(tok);
        return rc;
    }
    struct chat_template *ct = NULL;
    char ct_error[600] = "";
    if (op.mode == MODE_CHAT) {
        /* no chat_template in tokenizer_config.json: a built-in fallback */
        const char *src = tok_chat_template(tok);
        if (!src) src = ct_builtin(tok_fallback_template(tok));
        if (!src)
            snprintf(ct_error, sizeof(ct_error), "tokenizer has no chat_template");
        else if (ct_compile(src, &ct, &err) != ES_OK)
            snprintf(ct_error, sizeof(ct_error), "chat template: %s", err.msg);
    }
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    struct strbuf o = {0};
    while ((len = getline(&line, &lcap, stdin)) >= 0) {
        size_t n = (size_t)len;
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        handle_line(&op, tok, ct, ct_error, line, n, &o);
        fwrite(sb_cstr(&o), 1, o.len, stdout);
        fputc('\n', stdout);
    }
    free(line);
    sb_free(&o);
    ct_free(ct);
    tok_free(tok);
    return 0;
}
