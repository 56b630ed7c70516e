/*
 * test_step_wire.c - unit tests of server/backend/step_wire.c: random
 * batches survive encode/decode with every field intact (whole block
 * tables, and tables trimmed to the addressable blocks), copy_blocks,
 * STOP and HEARTBEAT round-trip (a HEARTBEAT with a body or an old version
 * does not), every truncation fails cleanly (also when re-framed and
 * re-checksummed so the parser itself sees the short body), random byte
 * flips are caught by the checksum, and flips behind a recomputed
 * checksum never crash (run under ASan/UBSan to mean it) and decode, if
 * at all, into arrays that are safe to read, counts or positions at the
 * int32 edge do not overflow, and a block table at SW_MAX_TABLE_ENTRIES
 * passes while one entry more does not. The pipeline messages: a FORWARD
 * with the stream in and the ask for the stream out, and the answers
 * (READY, HIDDEN, DONE, ERROR) round-trip and refuse truncation.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "step_wire.h"
#include "testing.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static int rnd_in(int lo, int hi) /* [lo, hi] */
{
    return lo + (int)(rnd() % (uint32_t)(hi - lo + 1));
}

#define MAX_SEQS 8
#define MAX_SEQ_TOKENS 24
#define MAX_TOKENS (MAX_SEQS * MAX_SEQ_TOKENS)
#define MAX_STRIDE 16

/* A batch with its own storage. */
struct test_batch {
    struct batch b;
    int32_t token_ids[MAX_TOKENS], positions[MAX_TOKENS], slots[MAX_TOKENS];
    int32_t starts[MAX_SEQS + 1], context[MAX_SEQS];
    int32_t tables[MAX_SEQS * MAX_STRIDE];
    struct logit_row rows[MAX_TOKENS];
    struct sampling_params sp;
    int32_t history[4];
};

/* Sequences of random length whose positions end at their context length
 * (as the engine makes them), random block ids and row parameters. */
static void random_batch(struct test_batch *t, int block_size)
{
    memset(t, 0, sizeof(*t));
    sp_defaults(&t->sp);
    t->sp.temperature = 0.7f; /* never sent: the remote rows get defaults */
    int ns = rnd_in(0, MAX_SEQS), stride = rnd_in(1, MAX_STRIDE), nt = 0;
    bool decode_only = rnd() % 3 == 0;
    for (int s = 0; s < ns; s++) {
        int len = decode_only ? 1 : rnd_in(0, MAX_SEQ_TOKENS);
        int ctx = len + rnd_in(0, stride * block_size - len > 0 ? stride * block_size - len : 0);
        t->starts[s] = nt;
        t->context[s] = ctx;
        for (int i = 0; i < len; i++, nt++) {
            t->token_ids[nt] = (int32_t)(rnd() % 128256);
            t->positions[nt] = ctx - len + i;
            t->slots[nt] = rnd() % 5 == 0 ? -1 : (int32_t)rnd_in(0, 100000);
        }
        for (int j = 0; j < stride; j++)
            t->tables[s * stride + j] = (int32_t)rnd_in(-1, 5000);
    }
    t->starts[ns] = nt;
    int nr = nt > 0 ? rnd_in(0, nt) : 0;
    for (int r = 0; r < nr; r++)
        t->rows[r] = (struct logit_row){.token_index = rnd_in(0, nt - 1),
                                        .sample = rnd() % 2,
                                        .target_id = rnd_in(-1, 128000),
                                        .n_top = rnd_in(-1, BACKEND_MAX_TOP_LOGPROBS),
                                        .sp = &t->sp,
                                        .rng_counter = (uint64_t)rnd() << 32 | rnd(),
                                        .history = t->history,
                                        .n_history = 4,
                                        .n_history_prompt = 2};
    t->b = (struct batch){.n_tokens = nt,
                          .token_ids = t->token_ids,
                          .positions = t->positions,
                          .slot_mapping = t->slots,
                          .n_seqs = ns,
                          .seq_token_start = t->starts,
                          .seq_context_len = t->context,
                          .block_tables = t->tables,
                          .block_table_stride = stride,
                          .n_rows = nr,
                          .rows = t->rows,
                          .decode_only = decode_only};
}

/* The entries of seq s the wire must carry, computed the plain way. */
static int expected_used(const struct batch *b, int s, int block_size)
{
    if (block_size <= 0) return b->block_table_stride;
    int need = (b->seq_context_len[s] + block_size - 1) / block_size;
    for (int t = b->seq_token_start[s]; t < b->seq_token_start[s + 1]; t++)
        if (b->positions[t] / block_size + 1 > need) need = b->positions[t] / block_size + 1;
    return need < b->block_table_stride ? need : b->block_table_stride;
}

static bool same_ints(const int32_t *a, const int32_t *b, int n)
{
    return n == 0 || memcmp(a, b, sizeof(*a) * (size_t)n) == 0;
}

static void check_same_batch(const struct batch *want, const struct batch *got, int block_size)
{
    CHECK(got->n_tokens == want->n_tokens);
    CHECK(got->n_seqs == want->n_seqs);
    CHECK(got->block_table_stride == want->block_table_stride);
    CHECK(got->n_rows == want->n_rows);
    CHECK(got->decode_only == want->decode_only);
    if (got->n_tokens != want->n_tokens || got->n_seqs != want->n_seqs ||
        got->n_rows != want->n_rows || got->block_table_stride != want->block_table_stride)
        return;
    CHECK(same_ints(got->token_ids, want->token_ids, want->n_tokens));
    CHECK(same_ints(got->positions, want->positions, want->n_tokens));
    CHECK(same_ints(got->slot_mapping, want->slot_mapping, want->n_tokens));
    CHECK(same_ints(got->seq_token_start, want->seq_token_start, want->n_seqs + 1));
    CHECK(same_ints(got->seq_context_len, want->seq_context_len, want->n_seqs));
    int stride = want->block_table_stride;
    for (int s = 0; s < want->n_seqs; s++) {
        int used = expected_used(want, s, block_size);
        const int32_t *w = want->block_tables + s * stride, *g = got->block_tables + s * stride;
        CHECK(same_ints(g, w, used));
        for (int j = used; j < stride; j++)
            CHECK(g[j] == 0);
    }
    for (int r = 0; r < want->n_rows; r++) {
        const struct logit_row *w = &want->rows[r], *g = &got->rows[r];
        CHECK(g->token_index == w->token_index);
        CHECK(g->sample == w->sample);
        CHECK(g->target_id == w->target_id);
        CHECK(g->n_top == w->n_top);
        CHECK(g->rng_counter == w->rng_counter);
        /* stand-ins: node 0 samples, the remote ranks only compute */
        CHECK(g->sp && g->sp->temperature == 0.0f);
        CHECK(!g->history && g->n_history == 0 && g->n_history_prompt == 0);
        CHECK(!g->banned_ids && g->n_banned == 0);
    }
}

static void test_forward_round_trip(void)
{
    struct test_batch *t = malloc(sizeof(*t));
    struct sw_buf buf = {0};
    struct sw_cmd cmd = {0};
    for (int iter = 0; iter < 400; iter++) {
        int block_size = iter % 2 ? 16 : 4;
        random_batch(t, block_size);
        int wire_bs = iter % 3 == 0 ? 0 : block_size; /* 0: whole rows */
        struct es_err err = {{0}};
        CHECK(sw_encode_forward(&buf, &t->b, wire_bs, &err) == ES_OK);
        CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
        CHECK(cmd.kind == SW_FORWARD);
        check_same_batch(&t->b, &cmd.batch, wire_bs);
    }
    sw_cmd_free(&cmd);
    sw_buf_free(&buf);
    free(t);
}

static void test_empty_batch(void)
{
    struct batch b = {0}; /* no sequences, no start array */
    struct sw_buf buf = {0};
    struct sw_cmd cmd = {0};
    struct es_err err = {{0}};
    CHECK(sw_encode_forward(&buf, &b, 16, &err) == ES_OK);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
    CHECK(cmd.kind == SW_FORWARD && cmd.batch.n_tokens == 0 && cmd.batch.n_seqs == 0);
    CHECK(cmd.batch.seq_token_start && cmd.batch.seq_token_start[0] == 0);
    sw_cmd_free(&cmd);
    sw_buf_free(&buf);
}

static void test_copy_and_stop(void)
{
    int32_t src[5] = {1, 2, 3, 40000, -7}, dst[5] = {9, 8, 7, 6, 5};
    struct sw_buf buf = {0};
    struct sw_cmd cmd = {0};
    struct es_err err = {{0}};
    for (int n = 0; n <= 5; n++) {
        CHECK(sw_encode_copy_blocks(&buf, src, dst, n, &err) == ES_OK);
        CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
        CHECK(cmd.kind == SW_COPY_BLOCKS && cmd.n_copies == n);
        CHECK(same_ints(cmd.copy_src, src, n) && same_ints(cmd.copy_dst, dst, n));
    }
    CHECK(sw_encode_stop(&buf, &err) == ES_OK);
    CHECK(buf.len == SW_HEADER_BYTES);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
    CHECK(cmd.kind == SW_STOP);
    CHECK(sw_encode_copy_blocks(&buf, src, dst, -1, &err) == ES_EINVAL);
    sw_cmd_free(&cmd);
    sw_buf_free(&buf);
}

/* HEARTBEAT: an empty message; one with a body (well framed, checksum
 * right) or from protocol version 1 (which had no heartbeat) is refused. */
static void test_heartbeat(void)
{
    struct sw_buf buf = {0};
    struct sw_cmd cmd = {0};
    struct es_err err = {{0}};
    CHECK(sw_encode_heartbeat(&buf, &err) == ES_OK);
    CHECK(buf.len == SW_HEADER_BYTES);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
    CHECK(cmd.kind == SW_HEARTBEAT);
    unsigned char longer[SW_HEADER_BYTES + 4] = {0};
    memcpy(longer, buf.data, buf.len);
    sw_put_u32(longer, sizeof(longer) - SW_PREFIX_BYTES);
    sw_put_u32(longer + 12, sw_message_checksum(longer, sizeof(longer)));
    CHECK(sw_decode(longer, sizeof(longer), &cmd, &err) == ES_EFORMAT);
    CHECK(cmd.kind == SW_NONE && strstr(err.msg, "HEARTBEAT with a body") != NULL);
    es_err_clear(&err);
    sw_put_u32(buf.data + 8, 1u | (uint32_t)SW_HEARTBEAT << 16);
    sw_put_u32(buf.data + 12, sw_message_checksum(buf.data, buf.len));
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_EFORMAT);
    CHECK(strstr(err.msg, "version 1") != NULL);
    sw_cmd_free(&cmd);
    sw_buf_free(&buf);
}

static void test_bad_inputs_to_encode(void)
{
    struct sw_buf buf = {0};
    struct es_err err = {{0}};
    struct batch b = {.n_tokens = -1};
    CHECK(sw_encode_forward(&buf, &b, 16, &err) == ES_EINVAL);
    b = (struct batch){.n_tokens = 3}; /* arrays missing */
    CHECK(sw_encode_forward(&buf, &b, 16, &err) == ES_EINVAL);
    int32_t start[2] = {0, 0}, ctx[1] = {0}, table[1] = {0};
    b = (struct batch){.n_seqs = 1,
                       .seq_token_start = start,
                       .seq_context_len = ctx,
                       .block_tables = table,
                       .block_table_stride = SW_MAX_TABLE_ENTRIES + 1};
    CHECK(sw_encode_forward(&buf, &b, 16, &err) == ES_ERANGE);
    sw_buf_free(&buf);
}

/* Every strict prefix of msg fails; so does every prefix re-framed as a
 * whole message with a fresh length and checksum. */
static void check_truncations(const struct sw_buf *msg, struct sw_cmd *cmd)
{
    unsigned char *copy = malloc(msg->len);
    for (size_t k = 0; k < msg->len; k++) {
        struct es_err err = {{0}};
        memcpy(copy, msg->data, k);
        CHECK(sw_decode(copy, k, cmd, &err) == ES_EFORMAT);
        CHECK(cmd->kind == SW_NONE && err.msg[0]);
        if (k < SW_HEADER_BYTES) continue;
        sw_put_u32(copy, (uint32_t)(k - SW_PREFIX_BYTES));
        sw_put_u32(copy + 12, sw_message_checksum(copy, k));
        CHECK(sw_decode(copy, k, cmd, &err) == ES_EFORMAT);
    }
    free(copy);
}

static void test_truncation(void)
{
    struct test_batch *t = malloc(sizeof(*t));
    struct sw_buf buf = {0};
    struct sw_cmd cmd = {0};
    struct es_err err = {{0}};
    for (int iter = 0; iter < 20; iter++) {
        random_batch(t, 16);
        CHECK(sw_encode_forward(&buf, &t->b, 16, &err) == ES_OK);
        check_truncations(&buf, &cmd);
    }
    int32_t src[3] = {1, 2, 3};
    CHECK(sw_encode_copy_blocks(&buf, src, src, 3, &err) == ES_OK);
    check_truncations(&buf, &cmd);
    CHECK(sw_encode_stop(&buf, &err) == ES_OK);
    check_truncations(&buf, &cmd);
    /* bytes beyond the message are no message either */
    CHECK(sw_encode_copy_blocks(&buf, src, src, 3, &err) == ES_OK);
    unsigned char longer[128] = {0};
    memcpy(longer, buf.data, buf.len);
    CHECK(sw_decode(longer, buf.len + 4, &cmd, &err) == ES_EFORMAT);
    sw_cmd_free(&cmd);
    sw_buf_free(&buf);
    free(t);
}

/* A pipeline FORWARD: the stream coming in arrives bit for bit, the ask
 * for the stream going out is kept, and a tensor-parallel FORWARD of the
 * same batch carries neither. */
static void test_stage_forward(void)
{
    struct test_batch *t = malloc(sizeof(*t));
    struct sw_buf buf = {0};
    struct sw_cmd cmd = {0};
    enum { WIDTH = 6 };
    static float stream[MAX_TOKENS * WIDTH], out[1];
    for (int i = 0; i < MAX_TOKENS * WIDTH; i++)
        stream[i] = (float)i * 0.37f - 11.0f;
    stream[3] = -0.0f;
    for (int iter = 0; iter < 200; iter++) {
        random_batch(t, 16);
        bool in = iter % 2, want = iter % 3 != 0;
        t->b.hidden_in = in ? stream : NULL;
        t->b.hidden_out = want ? out : NULL;
        struct es_err err = {{0}};
        CHECK(sw_encode_stage_forward(&buf, &t->b, 16, WIDTH, &err) == ES_OK);
        CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
        CHECK(cmd.kind == SW_FORWARD && cmd.want_hidden == want);
        check_same_batch(&t->b, &cmd.batch, 16);
        CHECK(cmd.hidden == (in || want ? WIDTH : 0));
        CHECK((cmd.batch.hidden_in != NULL) == in && cmd.batch.hidden_out == NULL);
        size_t n = (size_t)t->b.n_tokens * WIDTH;
        if (in) CHECK(n == 0 || memcmp(cmd.batch.hidden_in, stream, n * sizeof(float)) == 0);
        if (iter < 6) check_truncations(&buf, &cmd);
        CHECK(sw_encode_forward(&buf, &t->b, 16, &err) == ES_OK);
        CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
        CHECK(!cmd.want_hidden && cmd.batch.hidden_in == NULL && cmd.hidden == 0);
    }
    struct es_err err = {{0}};
    CHECK(sw_encode_stage_forward(&buf, &t->b, 16, 0, &err) == ES_EINVAL);
    sw_cmd_free(&cmd);
    sw_buf_free(&buf);
    free(t);
}

/* READY, HIDDEN, DONE and ERROR round-trip; an ERROR's message is cut to
 * SW_ERROR_MSG_MAX, an unknown status reads as ES_ERR, a HIDDEN whose
 * shape disagrees with its size and every truncation are refused. */
static void test_stage_answers(void)
{
    struct sw_buf buf = {0};
    struct sw_cmd cmd = {0};
    struct es_err err = {{0}};
    CHECK(sw_encode_ready(&buf, 12345, 16, &err) == ES_OK);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
    CHECK(cmd.kind == SW_READY && cmd.ready_kv_blocks == 12345 && cmd.ready_block_size == 16);
    check_truncations(&buf, &cmd);

    float stream[3 * 5];
    for (int i = 0; i < 15; i++)
        stream[i] = 1.0f / (float)(i + 1) - 0.25f;
    CHECK(sw_encode_hidden(&buf, stream, 3, 5, &err) == ES_OK);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
    CHECK(cmd.kind == SW_HIDDEN && cmd.hidden_tokens == 3 && cmd.hidden == 5);
    CHECK(memcmp(cmd.hidden_data, stream, sizeof(stream)) == 0);
    check_truncations(&buf, &cmd);
    sw_put_u32(buf.data + SW_HEADER_BYTES, 4); /* 4 x 5 floats claimed, 3 x 5 sent */
    sw_put_u32(buf.data + 12, sw_message_checksum(buf.data, buf.len));
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_EFORMAT);
    CHECK(sw_encode_hidden(&buf, stream, 0, 5, &err) == ES_OK);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK && cmd.hidden_tokens == 0);
    CHECK(sw_encode_hidden(&buf, NULL, 2, 5, &err) == ES_EINVAL);

    CHECK(sw_encode_done(&buf, &err) == ES_OK);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK && cmd.kind == SW_DONE);

    char longmsg[SW_ERROR_MSG_MAX + 50];
    memset(longmsg, 'x', sizeof(longmsg) - 1);
    longmsg[sizeof(longmsg) - 1] = '\0';
    CHECK(sw_encode_error(&buf, ES_EDEVICE, "stage 3: out of memory", &err) == ES_OK);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
    CHECK(cmd.kind == SW_ERROR && cmd.error_status == ES_EDEVICE);
    CHECK(strcmp(cmd.error_msg, "stage 3: out of memory") == 0);
    check_truncations(&buf, &cmd);
    CHECK(sw_encode_error(&buf, (enum es_status) - 77, longmsg, &err) == ES_OK);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
    CHECK(cmd.error_status == ES_ERR && strlen(cmd.error_msg) == SW_ERROR_MSG_MAX);
    sw_cmd_free(&cmd);
    sw_buf_free(&buf);
}

/* Touches every array a decoded batch claims, so ASan sees any lie. */
static long walk_batch(const struct batch *b)
{
    long sum = 0;
    for (int i = 0; i < b->n_tokens; i++)
        sum += b->token_ids[i] + b->positions[i] + b->slot_mapping[i];
    for (int s = 0; s <= b->n_seqs; s++)
        sum += b->seq_token_start[s];
    for (int s = 0; s < b->n_seqs; s++) {
        sum += b->seq_context_len[s];
        for (int j = 0; j < b->block_table_stride; j++)
            sum += b->block_tables[(size_t)s * b->block_table_stride + j];
    }
    for (int r = 0; r < b->n_rows; r++)
        sum += b->rows[r].token_index + b->rows[r].n_top + b->rows[r].sp->top_k;
    return sum;
}

static void test_byte_flips(void)
{
    struct test_batch *t = malloc(sizeof(*t));
    struct sw_buf buf = {0};
    struct sw_cmd cmd = {0};
    unsigned char *copy = NULL;
    long decoded_ok = 0, walked = 0;
    volatile long sink = 0;
    for (int iter = 0; iter < 3000; iter++) {
        struct es_err err = {{0}};
        random_batch(t, 16);
        if (iter % 10 == 9) {
            int32_t src[4] = {1, 2, 3, 4};
            CHECK(sw_encode_copy_blocks(&buf, src, src, rnd_in(0, 4), &err) == ES_OK);
        } else {
            CHECK(sw_encode_forward(&buf, &t->b, 16, &err) == ES_OK);
        }
        copy = realloc(copy, buf.len);
        memcpy(copy, buf.data, buf.len);
        int flips = rnd_in(1, 3);
        for (int f = 0; f < flips; f++)
            copy[rnd() % buf.len] ^= (unsigned char)rnd_in(1, 255);
        bool changed = memcmp(copy, buf.data, buf.len) != 0;
        enum es_status st = sw_decode(copy, buf.len, &cmd, &err);
        if (changed) CHECK(st == ES_EFORMAT); /* the checksum (or the frame) catches it */
        /* behind a valid frame and checksum the parser must hold on its own */
        sw_put_u32(copy, (uint32_t)(buf.len - SW_PREFIX_BYTES));
        sw_put_u32(copy + 12, sw_message_checksum(copy, buf.len));
        st = sw_decode(copy, buf.len, &cmd, &err);
        CHECK(st == ES_OK || st == ES_EFORMAT);
        if (st == ES_OK) {
            decoded_ok++;
            if (cmd.kind == SW_FORWARD) {
                sink += walk_batch(&cmd.batch);
                walked++;
            }
        }
    }
    fprintf(stderr,
            "byte flips: %ld of 3000 resealed messages still decoded (%ld batches "
            "walked)\n",
            decoded_ok, walked);
    sw_cmd_free(&cmd);
    sw_buf_free(&buf);
    free(copy);
    free(t);
}

/* Counts and positions at the int32 edge (fuzz_step_wire's first
 * findings, signed overflows that UBSan reports): a FORWARD claiming
 * INT32_MAX sequences is refused, and a position of INT32_MAX with blocks
 * of 1 token addresses every entry of its table. */
static void test_int32_edges(void)
{
    struct sw_buf buf = {0};
    struct sw_cmd cmd = {0};
    struct es_err err = {{0}};
    struct batch empty = {0};
    CHECK(sw_encode_forward(&buf, &empty, 16, &err) == ES_OK);
    sw_put_u32(buf.data + SW_HEADER_BYTES + 4, INT32_MAX); /* n_seqs */
    sw_put_u32(buf.data + 12, sw_message_checksum(buf.data, buf.len));
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_EFORMAT);
    CHECK(strstr(err.msg, "counts larger than the message") != NULL);

    int32_t token[1] = {5}, position[1] = {INT32_MAX}, slot[1] = {0};
    int32_t start[2] = {0, 1}, ctx[1] = {0}, table[3] = {7, 8, 9};
    struct batch b = {.n_tokens = 1,
                      .token_ids = token,
                      .positions = position,
                      .slot_mapping = slot,
                      .n_seqs = 1,
                      .seq_token_start = start,
                      .seq_context_len = ctx,
                      .block_tables = table,
                      .block_table_stride = 3};
    CHECK(sw_encode_forward(&buf, &b, 1, &err) == ES_OK);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
    CHECK(cmd.kind == SW_FORWARD && same_ints(cmd.batch.block_tables, table, 3));
    sw_cmd_free(&cmd);
    sw_buf_free(&buf);
}

/* A block table of exactly SW_MAX_TABLE_ENTRIES entries goes both ways
 * (trimmed to nothing, so the message stays small; the decoder zeros all
 * 64 MiB); one entry more is refused by the decoder as by the encoder.
 * fuzz_step_wire leaves tables this large out of its round trip. */
static void test_table_limit(void)
{
    struct sw_buf buf = {0};
    struct sw_cmd cmd = {0};
    struct es_err err = {{0}};
    int32_t start[2] = {0, 0}, ctx[1] = {0}, table[1] = {0};
    struct batch b = {.n_seqs = 1,
                      .seq_token_start = start,
                      .seq_context_len = ctx,
                      .block_tables = table,
                      .block_table_stride = SW_MAX_TABLE_ENTRIES};
    CHECK(sw_encode_forward(&buf, &b, 16, &err) == ES_OK);
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_OK);
    CHECK(cmd.batch.block_table_stride == SW_MAX_TABLE_ENTRIES);
    CHECK(cmd.batch.block_tables[0] == 0 && cmd.batch.block_tables[SW_MAX_TABLE_ENTRIES - 1] == 0);
    sw_put_u32(buf.data + SW_HEADER_BYTES + 8, SW_MAX_TABLE_ENTRIES + 1); /* the stride */
    sw_put_u32(buf.data + 12, sw_message_checksum(buf.data, buf.len));
    CHECK(sw_decode(buf.data, buf.len, &cmd, &err) == ES_EFORMAT);
    CHECK(strstr(err.msg, "block tables too large") != NULL);
    sw_cmd_free(&cmd);
    sw_buf_free(&buf);
}

static void test_frame_length(void)
{
    unsigned char p[4];
    size_t len = 0;
    struct es_err err = {{0}};
    sw_put_u32(p, 12);
    CHECK(sw_frame_length(p, &len, &err) == ES_OK && len == 12);
    sw_put_u32(p, 11);
    CHECK(sw_frame_length(p, &len, &err) == ES_EFORMAT);
    sw_put_u32(p, SW_MAX_MESSAGE + 1u);
    CHECK(sw_frame_length(p, &len, &err) == ES_EFORMAT);
}

int main(void)
{
    test_forward_round_trip();
    test_empty_batch();
    test_copy_and_stop();
    test_heartbeat();
    test_stage_forward();
    test_stage_answers();
    test_bad_inputs_to_encode();
    test_truncation();
    test_byte_flips();
    test_frame_length();
    test_int32_edges();
    test_table_limit();
    return test_result("test_step_wire");
}
