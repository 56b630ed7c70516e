/*
 * fuzz_step_wire.c - libFuzzer target for the multi-node step wire format,
 * version 3 (server/backend/step_wire.c): sw_frame_length, sw_decode, and
 * the encoders on what was decoded.
 *
 * Input layout: byte 0 is the control byte, the rest is a byte stream as
 * one end of the node channel reads it (node 0's commands to a node, or a
 * stage node's answers to node 0; sw_decode takes both), read the way
 * node_worker.c does: a 4-byte prefix through sw_frame_length, then
 * exactly that many bytes, then sw_decode on prefix + frame; up to
 * SWF_MAX_MESSAGES messages in a row through one reused sw_cmd, stopping
 * at the first error. A frame the stream cuts short is still handed to
 * sw_decode as it arrived, which must refuse it.
 *   bit 0     keep each message's checksum as it is; otherwise the harness
 *             writes the right one first, so that mutations reach the
 *             parser behind it (the checksum path is fuzzed on odd bytes)
 *   bits 1-2  block size of a second, trimmed re-encode of a FORWARD:
 *             none, 1, 16, 5
 *
 * Each message is copied to a buffer of its exact size (ASan sees any
 * read past it). Invariants beyond "no crash, no leak" (abort on a
 * violation), all promised by step_wire.h:
 *  - a refused message is ES_EFORMAT with a message and cmd->kind SW_NONE;
 *  - an accepted one has the header's kind, counts within their documented
 *    ranges, every array it claims readable in full, and every field equal
 *    to the message's bytes read again here from the documented layout
 *    (the fields fill the body exactly; floats compared as bits, so NaNs
 *    count):
 *      FORWARD: rows with the greedy stand-in parameters and no history;
 *        block tables hold the entries sent, then zeros to the stride;
 *        flag bit 1 <=> batch.hidden_in (into cmd->floats, n_tokens x
 *        hidden floats), bit 2 <=> want_hidden, cmd->hidden > 0 (the width
 *        field) exactly when either is set, batch.hidden_out always NULL;
 *      COPY_BLOCKS, READY, HIDDEN (n_tokens >= 0, width > 0): their fields;
 *      STOP, HEARTBEAT, DONE: an empty body;
 *      ERROR: a status outside [ES_EDEVICE, -1] reads as ES_ERR, the
 *        message (at most SW_ERROR_MSG_MAX bytes) up to its first NUL;
 *  - re-encoding the decoded command (a FORWARD through
 *    sw_encode_stage_forward when it carries or asks for a stream, with
 *    whole block-table rows; up to SWF_ROUND_TRIP_ENTRIES table entries,
 *    for speed) gives a message that decodes to the same command field by
 *    field, and is the very same bytes whenever the original sent whole
 *    rows too (every other kind always, except an ERROR whose status
 *    was unknown or whose message held a NUL);
 *  - for a FORWARD whose sequences are well formed (starts within the
 *    tokens and ascending, positions and context lengths >= 0), a
 *    re-encode with a block size keeps exactly the entries its context
 *    and positions can address and zeros the rest.
 * Deliberately not checked: token ids, positions, block ids, starts of
 * malformed batches, float values (the header leaves those to the
 * backend).
 * Never does: I/O, global state.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sanitizer/asan_interface.h> /* build.sh always builds with ASan */

#include "step_wire.h"

#define SWF_MAX_MESSAGES 4
/* Under libFuzzer's comparison tracing every instrumented loop step
 * costs, and a ~40-byte FORWARD can claim SW_MAX_TABLE_ENTRIES (2^24)
 * block-table entries: walking, re-encoding and re-decoding those takes
 * ~6 s, so two in one input would time out. Tables above this many
 * entries are checked for addressability with ASan's region query
 * instead of a walk, and not round-tripped (the unit tests encode and
 * decode a table at the limit). */
#define SWF_ROUND_TRIP_ENTRIES (1 << 16)
#define SWF_KEEP_CHECKSUM 1u
/* FORWARD flags, from step_wire.h */
#define SWF_DECODE_ONLY 1u
#define SWF_HIDDEN_IN 2u  /* hidden_in follows */
#define SWF_HIDDEN_OUT 4u /* answer with hidden_out */
#define SWF_STREAM (SWF_HIDDEN_IN | SWF_HIDDEN_OUT)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_step_wire: invariant failed at line %d: %s\n", __LINE__, #cond); \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* The decode side of one input: the command and a scratch for re-decodes. */
struct swf_state {
    struct sw_cmd cmd, again;
    struct sw_buf buf;
    int trim_block_size; /* 0: no trimmed re-encode */
    volatile long sink;  /* keeps the array walks */
};

static bool same_ints(const int32_t *a, const int32_t *b, size_t n)
{
    return n == 0 || memcmp(a, b, n * sizeof(*a)) == 0;
}

/* Bit for bit: a NaN equals itself, -0.0 differs from 0.0. */
static bool same_floats(const float *a, const float *b, size_t n)
{
    return n == 0 || memcmp(a, b, n * sizeof(*a)) == 0;
}

/* The floats are the message's bytes (IEEE bits, little-endian). */
static bool floats_are_bytes(const float *v, const unsigned char *p, size_t n)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return n == 0 || memcmp(v, p, n * sizeof(*v)) == 0;
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], sizeof(bits));
        if (bits != sw_get_u32(p + 4 * i)) return false;
    }
    return true;
#endif
}

/* Touches every float of a decoded stream (as bits: no FP traps). */
static void walk_floats(struct swf_state *s, const float *v, size_t n)
{
    if (n > SWF_ROUND_TRIP_ENTRIES) {
        CHECK(!__asan_region_is_poisoned((void *)v, n * sizeof(*v)));
        return;
    }
    long sum = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], sizeof(bits));
        sum += bits;
    }
    s->sink += sum;
}

/* Touches every element a decoded batch claims to have. */
static void walk_batch(struct swf_state *s, const struct batch *b)
{
    long sum = 0;
    for (int i = 0; i < b->n_tokens; i++)
        sum += b->token_ids[i] ^ b->positions[i] ^ b->slot_mapping[i];
    for (int i = 0; i <= b->n_seqs; i++)
        sum += b->seq_token_start[i];
    for (int i = 0; i < b->n_seqs; i++)
        sum += b->seq_context_len[i];
    size_t entries = (size_t)b->n_seqs * (size_t)b->block_table_stride;
    if (entries > SWF_ROUND_TRIP_ENTRIES)
        CHECK(!__asan_region_is_poisoned((void *)b->block_tables, entries * sizeof(int32_t)));
    else
        for (size_t i = 0; i < entries; i++)
            sum += b->block_tables[i];
    for (int r = 0; r < b->n_rows; r++)
        sum += b->rows[r].token_index ^ b->rows[r].target_id;
    s->sink += sum;
}

/* flags: the message's FORWARD flags field. */
static void check_forward(struct swf_state *s, const struct sw_cmd *c, size_t body_len,
                          uint32_t flags)
{
    const struct batch *b = &c->batch;
    CHECK(b->n_tokens >= 0 && b->n_seqs >= 0 && b->n_rows >= 0 && b->block_table_stride >= 0);
    CHECK((uint64_t)b->n_seqs * (uint64_t)b->block_table_stride <= SW_MAX_TABLE_ENTRIES);
    /* the stream: in exactly with bit 1 (in the command's own floats), a
     * width exactly with bit 1 or 2, never one going out */
    CHECK(!b->hidden_out);
    CHECK((b->hidden_in != NULL) == ((flags & SWF_HIDDEN_IN) != 0));
    CHECK(c->want_hidden == ((flags & SWF_HIDDEN_OUT) != 0));
    CHECK((flags & SWF_STREAM) ? c->hidden > 0 : c->hidden == 0);
    uint64_t n_in = b->hidden_in ? (uint64_t)b->n_tokens * (uint64_t)c->hidden : 0;
    CHECK(n_in <= body_len / 4); /* before the sum below, which could wrap */
    if (b->hidden_in) /* within the command's own storage */
        CHECK(c->floats && b->hidden_in >= c->floats &&
              (size_t)(b->hidden_in - c->floats) + n_in <= c->floats_cap);
    /* the fixed fields, every array, one length per block table, the
     * width and the stream coming in */
    uint64_t least = 20 + 12ull * (uint64_t)b->n_tokens + 4ull * ((uint64_t)b->n_seqs + 1) +
                     8ull * (uint64_t)b->n_seqs + 24ull * (uint64_t)b->n_rows +
                     ((flags & SWF_STREAM) ? 4 : 0) + 4 * n_in;
    CHECK(least <= body_len);
    CHECK(b->n_tokens == 0 || (b->token_ids && b->positions && b->slot_mapping));
    CHECK(b->seq_token_start && (b->n_seqs == 0 || b->seq_context_len));
    CHECK(b->n_seqs == 0 || b->block_table_stride == 0 || b->block_tables);
    CHECK(b->n_rows == 0 || b->rows);
    for (int r = 0; r < b->n_rows; r++) {
        const struct logit_row *row = &b->rows[r];
        CHECK(row->n_top >= -1 && row->n_top <= BACKEND_MAX_TOP_LOGPROBS);
        CHECK(row->sp && row->sp->temperature == 0.0f); /* node 0 samples */
        CHECK(!row->history && row->n_history == 0 && row->n_history_prompt == 0);
        CHECK(!row->banned_ids && row->n_banned == 0);
    }
    walk_batch(s, b);
    walk_floats(s, b->hidden_in, (size_t)n_in);
}

/* The stream fields of two FORWARDs. */
static void check_same_stream(const struct sw_cmd *a, const struct sw_cmd *b)
{
    CHECK(a->want_hidden == b->want_hidden && a->hidden == b->hidden);
    CHECK((a->batch.hidden_in != NULL) == (b->batch.hidden_in != NULL));
    CHECK(!a->batch.hidden_out && !b->batch.hidden_out);
    if (a->batch.hidden_in)
        CHECK(same_floats(a->batch.hidden_in, b->batch.hidden_in,
                          (size_t)a->batch.n_tokens * (size_t)a->hidden));
}

/* Every field but the block tables' entries. */
static void check_same_but_tables(const struct batch *a, const struct batch *b)
{
    CHECK(a->n_tokens == b->n_tokens && a->n_seqs == b->n_seqs && a->n_rows == b->n_rows);
    CHECK(a->block_table_stride == b->block_table_stride && a->decode_only == b->decode_only);
    size_t nt = (size_t)a->n_tokens, ns = (size_t)a->n_seqs;
    CHECK(same_ints(a->token_ids, b->token_ids, nt));
    CHECK(same_ints(a->positions, b->positions, nt));
    CHECK(same_ints(a->slot_mapping, b->slot_mapping, nt));
    CHECK(same_ints(a->seq_token_start, b->seq_token_start, ns + 1));
    CHECK(same_ints(a->seq_context_len, b->seq_context_len, ns));
    for (int r = 0; r < a->n_rows; r++) {
        const struct logit_row *x = &a->rows[r], *y = &b->rows[r];
        CHECK(x->token_index == y->token_index && x->sample == y->sample);
        CHECK(x->target_id == y->target_id && x->n_top == y->n_top);
        CHECK(x->rng_counter == y->rng_counter);
        CHECK(x->sp && y->sp && x->sp->temperature == y->sp->temperature);
    }
}

static bool all_zero(const int32_t *v, size_t n)
{
    static const int32_t zeros[4096]; /* memcmp in chunks: no traced loop */
    for (size_t k; n > 0; v += k, n -= k) {
        k = n < 4096 ? n : 4096;
        if (memcmp(v, zeros, k * sizeof(*v)) != 0) return false;
    }
    return true;
}

/* The message read again, the plain way, from the format in step_wire.h. */
struct swf_reader {
    const unsigned char *p, *end;
};

static int32_t next_i32(struct swf_reader *r)
{
    CHECK(r->end - r->p >= 4); /* accepted, so no field lies past the end */
    int32_t v = (int32_t)sw_get_u32(r->p);
    r->p += 4;
    return v;
}

static void check_ints(struct swf_reader *r, const int32_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        CHECK(next_i32(r) == v[i]);
}

/* The next n floats of the message are v's bits. */
static void check_floats(struct swf_reader *r, const float *v, size_t n)
{
    CHECK((size_t)(r->end - r->p) / 4 >= n);
    CHECK(floats_are_bytes(v, r->p, n));
    r->p += 4 * n;
}

/* Every decoded field is the message's field; a table holds the entries
 * sent and zeros after them; the fields fill the body exactly. */
static void check_forward_bytes(const struct sw_cmd *c, const unsigned char *body, size_t len)
{
    const struct batch *b = &c->batch;
    struct swf_reader r = {body, body + len};
    CHECK(next_i32(&r) == b->n_tokens && next_i32(&r) == b->n_seqs);
    CHECK(next_i32(&r) == b->block_table_stride && next_i32(&r) == b->n_rows);
    uint32_t flags = (uint32_t)next_i32(&r);
    CHECK(!(flags & ~(SWF_DECODE_ONLY | SWF_STREAM))); /* no other bit is defined */
    CHECK(b->decode_only == ((flags & SWF_DECODE_ONLY) != 0));
    CHECK((b->hidden_in != NULL) == ((flags & SWF_HIDDEN_IN) != 0));
    CHECK(c->want_hidden == ((flags & SWF_HIDDEN_OUT) != 0));
    size_t nt = (size_t)b->n_tokens, ns = (size_t)b->n_seqs, stride = (size_t)b->block_table_stride;
    check_ints(&r, b->token_ids, nt);
    check_ints(&r, b->positions, nt);
    check_ints(&r, b->slot_mapping, nt);
    check_ints(&r, b->seq_token_start, ns + 1);
    check_ints(&r, b->seq_context_len, ns);
    for (size_t s = 0; s < ns; s++) {
        int32_t used = next_i32(&r);
        CHECK(used >= 0 && (size_t)used <= stride);
        check_ints(&r, b->block_tables + s * stride, (size_t)used);
        CHECK(all_zero(b->block_tables + s * stride + used, stride - (size_t)used));
    }
    for (int i = 0; i < b->n_rows; i++) {
        const struct logit_row *row = &b->rows[i];
        CHECK(next_i32(&r) == row->token_index && next_i32(&r) == row->target_id);
        CHECK(next_i32(&r) == row->n_top && (uint32_t)next_i32(&r) == (row->sample ? 1u : 0u));
        uint64_t lo = (uint32_t)next_i32(&r);
        CHECK((lo | (uint64_t)(uint32_t)next_i32(&r) << 32) == row->rng_counter);
    }
    if (flags & SWF_STREAM) {
        int32_t width = next_i32(&r);
        CHECK(width > 0 && width == c->hidden);
        if (flags & SWF_HIDDEN_IN) check_floats(&r, b->hidden_in, nt * (size_t)width);
    }
    CHECK(r.p == r.end);
}

/* Starts within the tokens and ascending, positions and contexts >= 0:
 * the batches whose addressable blocks step_wire.h defines. */
static bool well_formed(const struct batch *b)
{
    if (b->seq_token_start[0] < 0 || b->seq_token_start[b->n_seqs] > b->n_tokens) return false;
    for (int s = 0; s < b->n_seqs; s++)
        if (b->seq_token_start[s + 1] < b->seq_token_start[s] || b->seq_context_len[s] < 0)
            return false;
    for (int t = 0; t < b->n_tokens; t++)
        if (b->positions[t] < 0) return false;
    return true;
}

/* The entries of sequence s a block size can address, the plain way. */
static int64_t addressable(const struct batch *b, int s, int block_size)
{
    int64_t need = ((int64_t)b->seq_context_len[s] + block_size - 1) / block_size;
    for (int t = b->seq_token_start[s]; t < b->seq_token_start[s + 1]; t++) {
        int64_t last = (int64_t)b->positions[t] / block_size + 1;
        if (last > need) need = last;
    }
    return need < b->block_table_stride ? need : b->block_table_stride;
}

static void check_trimmed_tables(const struct batch *want, const struct batch *got, int block_size)
{
    size_t stride = (size_t)want->block_table_stride;
    for (int s = 0; s < want->n_seqs; s++) {
        size_t used = (size_t)addressable(want, s, block_size);
        const int32_t *w = want->block_tables + s * stride, *g = got->block_tables + s * stride;
        CHECK(same_ints(w, g, used));
        for (size_t j = used; j < stride; j++)
            CHECK(g[j] == 0);
    }
}

/* Decodes s->buf into s->again, which must succeed with the same kind. */
static void decode_again(struct swf_state *s, enum sw_kind kind)
{
    struct es_err err = {{0}};
    enum es_status st = sw_decode(s->buf.data, s->buf.len, &s->again, &err);
    if (st != ES_OK) fprintf(stderr, "fuzz_step_wire: re-decode: %s\n", err.msg);
    CHECK(st == ES_OK && s->again.kind == kind);
}

/* Re-encodes the decoded FORWARD into s->buf the way its sender would
 * have: a pipeline stage's when the message carried or asked for a stream
 * (flags bit 1 or 2), with the decoded width; else a plain one. */
static void encode_forward_again(struct swf_state *s, uint32_t flags, int block_size)
{
    const struct sw_cmd *c = &s->cmd;
    struct es_err err = {{0}};
    enum es_status st;
    if (flags & SWF_STREAM) {
        float out; /* only its address is taken: the encoder reads the pointer as a flag */
        struct batch b = c->batch;
        b.hidden_out = c->want_hidden ? &out : NULL;
        st = sw_encode_stage_forward(&s->buf, &b, block_size, c->hidden, &err);
    } else {
        st = sw_encode_forward(&s->buf, &c->batch, block_size, &err);
    }
    if (st != ES_OK) fprintf(stderr, "fuzz_step_wire: re-encode: %s\n", err.msg);
    CHECK(st == ES_OK);
}

static void round_trip_forward(struct swf_state *s, const unsigned char *msg, size_t len,
                               uint32_t flags)
{
    const struct batch *b = &s->cmd.batch;
    if ((size_t)b->n_seqs * (size_t)b->block_table_stride > SWF_ROUND_TRIP_ENTRIES) return;
    encode_forward_again(s, flags, 0);
    /* same size means every table went whole both times: the same bytes */
    if (s->buf.len == len) CHECK(memcmp(s->buf.data, msg, len) == 0);
    decode_again(s, SW_FORWARD);
    check_same_but_tables(b, &s->again.batch);
    check_same_stream(&s->cmd, &s->again);
    size_t entries = (size_t)b->n_seqs * (size_t)b->block_table_stride;
    CHECK(same_ints(b->block_tables, s->again.batch.block_tables, entries));
    if (!s->trim_block_size || !well_formed(b)) return;
    encode_forward_again(s, flags, s->trim_block_size);
    decode_again(s, SW_FORWARD);
    check_same_but_tables(b, &s->again.batch);
    check_same_stream(&s->cmd, &s->again);
    check_trimmed_tables(b, &s->again.batch, s->trim_block_size);
}

/* Re-encodes what was decoded; when canonical, the encoder's message is
 * the message itself. Either way it decodes to the same command. */
static void round_trip_canonical(struct swf_state *s, const unsigned char *msg, size_t len,
                                 bool canonical)
{
    struct es_err err = {{0}};
    const struct sw_cmd *c = &s->cmd;
    enum es_status st;
    switch (c->kind) {
    case SW_COPY_BLOCKS:
        st = sw_encode_copy_blocks(&s->buf, c->copy_src, c->copy_dst, c->n_copies, &err);
        break;
    case SW_STOP:
        st = sw_encode_stop(&s->buf, &err);
        break;
    case SW_HEARTBEAT:
        st = sw_encode_heartbeat(&s->buf, &err);
        break;
    case SW_READY:
        st = sw_encode_ready(&s->buf, c->ready_kv_blocks, c->ready_block_size, &err);
        break;
    case SW_HIDDEN:
        st = sw_encode_hidden(&s->buf, c->hidden_data, c->hidden_tokens, c->hidden, &err);
        break;
    case SW_DONE:
        st = sw_encode_done(&s->buf, &err);
        break;
    case SW_ERROR:
        st = sw_encode_error(&s->buf, c->error_status, c->error_msg, &err);
        break;
    default:
        CHECK(!"no canonical encoder for this kind");
        return;
    }
    if (st != ES_OK) fprintf(stderr, "fuzz_step_wire: re-encode: %s\n", err.msg);
    CHECK(st == ES_OK);
    if (canonical) CHECK(s->buf.len == len && memcmp(s->buf.data, msg, len) == 0);
    decode_again(s, c->kind);
    const struct sw_cmd *a = &s->again;
    CHECK(a->n_copies == c->n_copies);
    CHECK(same_ints(a->copy_src, c->copy_src, (size_t)c->n_copies));
    CHECK(same_ints(a->copy_dst, c->copy_dst, (size_t)c->n_copies));
    CHECK(a->ready_kv_blocks == c->ready_kv_blocks && a->ready_block_size == c->ready_block_size);
    CHECK(a->hidden_tokens == c->hidden_tokens && a->hidden == c->hidden);
    if (c->kind == SW_HIDDEN)
        CHECK(same_floats(a->hidden_data, c->hidden_data,
                          (size_t)c->hidden_tokens * (size_t)c->hidden));
    CHECK(a->error_status == c->error_status && strcmp(a->error_msg, c->error_msg) == 0);
}

static void check_accepted(struct swf_state *s, const unsigned char *msg, size_t len)
{
    const struct sw_cmd *c = &s->cmd;
    const unsigned char *body = msg + SW_HEADER_BYTES;
    size_t body_len = len - SW_HEADER_BYTES;
    bool canonical = true;
    CHECK(c->kind == (enum sw_kind)(sw_get_u32(msg + 8) >> 16));
    switch (c->kind) {
    case SW_FORWARD: {
        CHECK(body_len >= 20);
        uint32_t flags = sw_get_u32(body + 16);
        check_forward(s, c, body_len, flags);
        check_forward_bytes(c, body, body_len);
        round_trip_forward(s, msg, len, flags);
        return;
    }
    case SW_COPY_BLOCKS:
        CHECK(c->n_copies >= 0 && body_len == 4 + 8 * (size_t)c->n_copies);
        CHECK(c->n_copies == 0 || (c->copy_src && c->copy_dst));
        for (int i = 0; i < c->n_copies; i++) {
            const unsigned char *at = body + 4;
            CHECK(c->copy_src[i] == (int32_t)sw_get_u32(at + 4 * (size_t)i));
            CHECK(c->copy_dst[i] == (int32_t)sw_get_u32(at + 4 * ((size_t)c->n_copies + i)));
        }
        break;
    case SW_STOP:
    case SW_HEARTBEAT:
    case SW_DONE:
        CHECK(body_len == 0);
        break;
    case SW_READY:
        CHECK(body_len == 8);
        CHECK(c->ready_kv_blocks == (int32_t)sw_get_u32(body));
        CHECK(c->ready_block_size == (int32_t)sw_get_u32(body + 4));
        break;
    case SW_HIDDEN: {
        CHECK(body_len >= 8);
        int32_t n_tokens = (int32_t)sw_get_u32(body), width = (int32_t)sw_get_u32(body + 4);
        CHECK(n_tokens >= 0 && c->hidden_tokens == n_tokens);
        CHECK(width > 0 && c->hidden == width);
        uint64_t n = (uint64_t)n_tokens * (uint64_t)width;
        CHECK(n <= (body_len - 8) / 4 && body_len == 8 + 4 * n);
        CHECK(n == 0 || c->hidden_data);
        CHECK(floats_are_bytes(c->hidden_data, body + 8, (size_t)n));
        walk_floats(s, c->hidden_data, (size_t)n);
        break;
    }
    case SW_ERROR: {
        CHECK(body_len >= 8);
        int32_t status = (int32_t)sw_get_u32(body);
        uint32_t n = sw_get_u32(body + 4);
        CHECK(n <= SW_ERROR_MSG_MAX && body_len == 8 + (size_t)n);
        /* a status this side does not know (0 included) is still a failure */
        bool known = status >= ES_EDEVICE && status <= -1;
        CHECK(c->error_status == (known ? (enum es_status)status : ES_ERR));
        /* the message is a C string: the bytes up to the first NUL */
        CHECK(memchr(c->error_msg, '\0', sizeof(c->error_msg)));
        const unsigned char *nul = memchr(body + 8, '\0', n);
        size_t text = nul ? (size_t)(nul - (body + 8)) : n;
        CHECK(strlen(c->error_msg) == text && memcmp(c->error_msg, body + 8, text) == 0);
        /* the encoder writes a known status and the string: the same
         * bytes only when nothing was mapped or cut */
        canonical = known && !nul;
        break;
    }
    default:
        CHECK(!"decoded kind outside enum sw_kind");
    }
    round_trip_canonical(s, msg, len, canonical);
}

/* One message of total bytes (prefix included) from the stream, of which
 * only avail arrived; returns whether the worker would read on. */
static bool feed_message(struct swf_state *s, const uint8_t *at, size_t total, size_t avail,
                         bool keep_checksum)
{
    size_t have = avail < total ? avail : total;
    unsigned char *msg = malloc(have);
    CHECK(msg);
    memcpy(msg, at, have);
    if (!keep_checksum && have >= SW_HEADER_BYTES && have == total)
        sw_put_u32(msg + 12, sw_message_checksum(msg, have));
    struct es_err err = {{0}};
    enum es_status st = sw_decode(msg, have, &s->cmd, &err);
    if (have < total) CHECK(st == ES_EFORMAT); /* the length field disagrees */
    if (st == ES_OK) {
        CHECK(!err.msg[0]);
        check_accepted(s, msg, have);
    } else {
        CHECK(st == ES_EFORMAT && err.msg[0] && s->cmd.kind == SW_NONE);
    }
    free(msg);
    return st == ES_OK && have == total;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static const int trim_sizes[4] = {0, 1, 16, 5};
    struct swf_state s = {.trim_block_size = trim_sizes[(data[0] >> 1) & 3]};
    bool keep_checksum = data[0] & SWF_KEEP_CHECKSUM;
    const uint8_t *p = data + 1;
    size_t left = size - 1;
    for (int m = 0; m < SWF_MAX_MESSAGES && left >= SW_PREFIX_BYTES; m++) {
        size_t len = 0;
        struct es_err err = {{0}};
        if (sw_frame_length(p, &len, &err) != ES_OK) {
            CHECK(err.msg[0]);
            break;
        }
        CHECK(len >= SW_HEADER_BYTES - SW_PREFIX_BYTES && len <= SW_MAX_MESSAGE);
        size_t total = SW_PREFIX_BYTES + len;
        if (!feed_message(&s, p, total, left, keep_checksum)) break;
        p += total;
        left -= total;
    }
    sw_cmd_free(&s.cmd);
    sw_cmd_free(&s.again);
    sw_buf_free(&s.buf);
    return 0;
}
