/*
 * step_wire.c - encodes and decodes the step commands node 0 sends to the
 * other nodes of a multi-node group, and the answers of nodes that run
 * pipeline stages (format: step_wire.h).
 *
 * Encoding sizes the whole message first, grows the caller's sw_buf once
 * and writes every field little-endian; the checksum goes in last.
 * Decoding trusts nothing: the length field must match the bytes given,
 * the checksum must match the header fields and the body, every count is
 * checked against the bytes left before anything is allocated or read,
 * and the body must be consumed exactly. Decoded arrays live in the sw_cmd's own grow-only
 * storage. Neither side ever reads outside the buffer it was given.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "step_wire.h"

#define SW_FORWARD_FIXED 20 /* n_tokens, n_seqs, block_table_stride, n_rows, flags */
#define SW_ROW_BYTES 24     /* token_index, target_id, n_top, flags, rng_counter */
#define SW_FLAG_DECODE_ONLY 1u
#define SW_FLAG_HIDDEN_IN 2u
#define SW_FLAG_HIDDEN_OUT 4u
#define SW_BATCH_FLAGS (SW_FLAG_DECODE_ONLY | SW_FLAG_HIDDEN_IN | SW_FLAG_HIDDEN_OUT)
#define SW_ROW_FLAG_SAMPLE 1u

/* The checksum: four 64-bit lanes, each taking every fourth little-endian
 * 8-byte word of the body (lane = word index mod 4) through an xor, a
 * multiply, a rotation and a multiply by odd constants, so that any change
 * of one word changes its lane; the last partial word is zero-padded. The
 * header fields (8 bytes) seed lane 0; the lanes, the body's length and a
 * final avalanche fold to 32 bits. About 4 bytes per cycle, where the
 * byte-at-a-time FNV-1a it replaced did 1 byte per 3 cycles: a pipeline
 * stage's 32 MB stream costs milliseconds, not tens of them. */
#define SWC_K1 0x9E3779B97F4A7C15ull
#define SWC_K2 0xC2B2AE3D27D4EB4Full

static uint64_t load_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) /* compilers make this one load on little-endian hosts */
        v = v << 8 | p[i];
    return v;
}

static uint64_t rotl64(uint64_t v, int r)
{
    return v << r | v >> (64 - r);
}

static uint64_t lane_mix(uint64_t h, uint64_t w)
{
    h ^= w * SWC_K2;
    return rotl64(h, 31) * SWC_K1;
}

uint32_t sw_message_checksum(const unsigned char *msg, size_t len)
{
    const unsigned char *body = msg + SW_HEADER_BYTES;
    size_t n = len - SW_HEADER_BYTES, i = 0;
    uint64_t lane[4] = {lane_mix(SWC_K1, load_le64(msg + SW_PREFIX_BYTES)), SWC_K2, SWC_K1 ^ 1,
                        SWC_K2 ^ 1};
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; l++)
            lane[l] = lane_mix(lane[l], load_le64(body + i + 8 * (size_t)l));
    for (int l = 0; i < n; i += 8, l++) {
        unsigned char tail[8] = {0};
        memcpy(tail, body + i, n - i < 8 ? n - i : 8);
        lane[l] = lane_mix(lane[l], load_le64(tail));
    }
    uint64_t h = lane[0] ^ rotl64(lane[1], 7) ^ rotl64(lane[2], 13) ^ rotl64(lane[3], 19) ^
                 (uint64_t)n * SWC_K2;
    h ^= h >> 33;
    h *= SWC_K1;
    h ^= h >> 29;
    return (uint32_t)(h ^ h >> 32);
}

/* ------------------------------------------------------------------ encode */

/* Appends to a buffer already grown to the message's size. */
struct sw_writer {
    unsigned char *p;
};

static void put_u32(struct sw_writer *w, uint32_t v)
{
    sw_put_u32(w->p, v);
    w->p += 4;
}

static void put_i32(struct sw_writer *w, int32_t v)
{
    put_u32(w, (uint32_t)v);
}

static void put_u64(struct sw_writer *w, uint64_t v)
{
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}

static void put_i32s(struct sw_writer *w, const int32_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        put_i32(w, v[i]);
}

/* Floats go as their IEEE-754 bits, little-endian. */
static void put_f32s(struct sw_writer *w, const float *v, size_t n)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(w->p, v, n * sizeof(float));
    w->p += n * sizeof(float);
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], sizeof(bits));
        put_u32(w, bits);
    }
#endif
}

static enum es_status buf_reserve(struct sw_buf *out, size_t bytes, struct es_err *err)
{
    if (out->cap < bytes) {
        unsigned char *p = realloc(out->data, bytes);
        if (!p) return es_fail(err, ES_ENOMEM, "step_wire: out of memory for %zu bytes", bytes);
        out->data = p;
        out->cap = bytes;
    }
    out->len = bytes;
    return ES_OK;
}

/* Reserves a message with body_bytes of body, writes the header (the
 * checksum later, by seal()) and returns a writer at the body. */
static enum es_status begin_message(struct sw_buf *out, enum sw_kind kind, uint64_t body_bytes,
                                    struct sw_writer *w, struct es_err *err)
{
    uint64_t after_prefix = SW_HEADER_BYTES - SW_PREFIX_BYTES + body_bytes;
    if (after_prefix > SW_MAX_MESSAGE)
        return es_fail(err, ES_ERANGE, "step_wire: a %llu-byte message exceeds the %u-byte limit",
                       (unsigned long long)after_prefix, SW_MAX_MESSAGE);
    enum es_status st = buf_reserve(out, SW_HEADER_BYTES + (size_t)body_bytes, err);
    if (st != ES_OK) return st;
    w->p = out->data;
    put_u32(w, (uint32_t)after_prefix);
    put_u32(w, SW_MAGIC);
    put_u32(w, (uint32_t)SW_VERSION | (uint32_t)kind << 16);
    put_u32(w, 0); /* checksum */
    return ES_OK;
}

static void seal(struct sw_buf *out)
{
    sw_put_u32(out->data + 12, sw_message_checksum(out->data, out->len));
}

static enum es_status check_batch(const struct batch *b, struct es_err *err)
{
    if (b->n_tokens < 0 || b->n_seqs < 0 || b->n_rows < 0 || b->block_table_stride < 0)
        return es_fail(err, ES_EINVAL,
                       "step_wire: negative count in batch (%d tokens, %d seqs, "
                       "%d rows, stride %d)",
                       b->n_tokens, b->n_seqs, b->n_rows, b->block_table_stride);
    bool missing = (b->n_tokens > 0 && (!b->token_ids || !b->positions || !b->slot_mapping)) ||
                   (b->n_seqs > 0 && (!b->seq_token_start || !b->seq_context_len)) ||
                   (b->n_seqs > 0 && b->block_table_stride > 0 && !b->block_tables) ||
                   (b->n_rows > 0 && !b->rows);
    if (missing) return es_fail(err, ES_EINVAL, "step_wire: batch array missing");
    if ((uint64_t)b->n_seqs * (uint64_t)b->block_table_stride > SW_MAX_TABLE_ENTRIES)
        return es_fail(err, ES_ERANGE, "step_wire: %d block tables of %d entries exceed %d",
                       b->n_seqs, b->block_table_stride, SW_MAX_TABLE_ENTRIES);
    return ES_OK;
}

/* The leading block-table entries of sequence s that its tokens can
 * address: every block up to its context length and up to each new
 * token's position, so the backend's checks see the same entries on every
 * node. block_size <= 0: the whole row. */
static int used_blocks(const struct batch *b, int s, int block_size)
{
    int stride = b->block_table_stride;
    if (block_size <= 0) return stride;
    int ctx = b->seq_context_len[s];
    /* 64-bit: a position of INT32_MAX with blocks of 1 needs 2^31 entries */
    int64_t need = ctx > 0 ? ctx / block_size + (ctx % block_size != 0) : 0;
    int t0 = b->seq_token_start[s], t1 = b->seq_token_start[s + 1];
    t0 = t0 < 0 ? 0 : t0;
    t1 = t1 > b->n_tokens ? b->n_tokens : t1;
    for (int t = t0; t < t1; t++) {
        int64_t last = b->positions[t] >= 0 ? (int64_t)b->positions[t] / block_size + 1 : 0;
        if (last > need) need = last;
    }
    return need > stride ? stride : (int)need;
}

/* hidden > 0: a pipeline stage's FORWARD (the stream in and out as b
 * has them); 0: a tensor-parallel one, which carries neither. */
static enum es_status encode_forward(struct sw_buf *out, const struct batch *b, int block_size,
                                     int hidden, struct es_err *err)
{
    enum es_status st = check_batch(b, err);
    if (st != ES_OK) return st;
    int nt = b->n_tokens, ns = b->n_seqs;
    uint32_t flags = b->decode_only ? SW_FLAG_DECODE_ONLY : 0;
    if (hidden > 0 && b->hidden_in) flags |= SW_FLAG_HIDDEN_IN;
    if (hidden > 0 && b->hidden_out) flags |= SW_FLAG_HIDDEN_OUT;
    uint64_t body = SW_FORWARD_FIXED + 12ull * (uint64_t)nt + 4ull * ((uint64_t)ns + 1) +
                    4ull * (uint64_t)ns + SW_ROW_BYTES * (uint64_t)b->n_rows;
    for (int s = 0; s < ns; s++)
        body += 4ull + 4ull * (uint64_t)used_blocks(b, s, block_size);
    if (flags & (SW_FLAG_HIDDEN_IN | SW_FLAG_HIDDEN_OUT)) body += 4;
    if (flags & SW_FLAG_HIDDEN_IN) body += 4ull * (uint64_t)nt * (uint64_t)hidden;
    struct sw_writer w;
    if ((st = begin_message(out, SW_FORWARD, body, &w, err)) != ES_OK) return st;
    put_i32(&w, nt);
    put_i32(&w, ns);
    put_i32(&w, b->block_table_stride);
    put_i32(&w, b->n_rows);
    put_u32(&w, flags);
    if (nt > 0) {
        put_i32s(&w, b->token_ids, (size_t)nt);
        put_i32s(&w, b->positions, (size_t)nt);
        put_i32s(&w, b->slot_mapping, (size_t)nt);
    }
    if (b->seq_token_start)
        put_i32s(&w, b->seq_token_start, (size_t)ns + 1);
    else
        put_i32(&w, 0); /* n_seqs == 0 without a start array */
    if (ns > 0) put_i32s(&w, b->seq_context_len, (size_t)ns);
    for (int s = 0; s < ns; s++) {
        int used = used_blocks(b, s, block_size);
        put_i32(&w, used);
        if (used > 0)
            put_i32s(&w, b->block_tables + (size_t)s * b->block_table_stride, (size_t)used);
    }
    for (int r = 0; r < b->n_rows; r++) {
        const struct logit_row *row = &b->rows[r];
        put_i32(&w, row->token_index);
        put_i32(&w, row->target_id);
        put_i32(&w, row->n_top);
        put_u32(&w, row->sample ? SW_ROW_FLAG_SAMPLE : 0);
        put_u64(&w, row->rng_counter);
    }
    if (flags & (SW_FLAG_HIDDEN_IN | SW_FLAG_HIDDEN_OUT)) put_i32(&w, hidden);
    if (flags & SW_FLAG_HIDDEN_IN) put_f32s(&w, b->hidden_in, (size_t)nt * (size_t)hidden);
    seal(out);
    return ES_OK;
}

enum es_status sw_encode_forward(struct sw_buf *out, const struct batch *b, int block_size,
                                 struct es_err *err)
{
    return encode_forward(out, b, block_size, 0, err);
}

enum es_status sw_encode_stage_forward(struct sw_buf *out, const struct batch *b, int block_size,
                                       int hidden, struct es_err *err)
{
    if (hidden <= 0) return es_fail(err, ES_EINVAL, "step_wire: stream width %d", hidden);
    return encode_forward(out, b, block_size, hidden, err);
}

enum es_status sw_encode_copy_blocks(struct sw_buf *out, const int32_t *src, const int32_t *dst,
                                     int n, struct es_err *err)
{
    if (n < 0 || (n > 0 && (!src || !dst)))
        return es_fail(err, ES_EINVAL, "step_wire: copy_blocks of %d blocks", n);
    struct sw_writer w;
    enum es_status st = begin_message(out, SW_COPY_BLOCKS, 4ull + 8ull * (uint64_t)n, &w, err);
    if (st != ES_OK) return st;
    put_i32(&w, n);
    if (n > 0) {
        put_i32s(&w, src, (size_t)n);
        put_i32s(&w, dst, (size_t)n);
    }
    seal(out);
    return ES_OK;
}

static enum es_status encode_empty(struct sw_buf *out, enum sw_kind kind, struct es_err *err)
{
    struct sw_writer w;
    enum es_status st = begin_message(out, kind, 0, &w, err);
    if (st == ES_OK) seal(out);
    return st;
}

enum es_status sw_encode_stop(struct sw_buf *out, struct es_err *err)
{
    return encode_empty(out, SW_STOP, err);
}

enum es_status sw_encode_heartbeat(struct sw_buf *out, struct es_err *err)
{
    return encode_empty(out, SW_HEARTBEAT, err);
}

enum es_status sw_encode_ready(struct sw_buf *out, int num_kv_blocks, int block_size,
                               struct es_err *err)
{
    struct sw_writer w = {0};
    enum es_status st = begin_message(out, SW_READY, 8, &w, err);
    if (st != ES_OK) return st;
    put_i32(&w, num_kv_blocks);
    put_i32(&w, block_size);
    seal(out);
    return ES_OK;
}

enum es_status sw_encode_hidden(struct sw_buf *out, const float *data, int n_tokens, int hidden,
                                struct es_err *err)
{
    if (n_tokens < 0 || hidden <= 0 || (n_tokens > 0 && !data))
        return es_fail(err, ES_EINVAL, "step_wire: a stream of %d x %d", n_tokens, hidden);
    uint64_t floats = (uint64_t)n_tokens * (uint64_t)hidden;
    struct sw_writer w = {0};
    enum es_status st = begin_message(out, SW_HIDDEN, 8 + 4 * floats, &w, err);
    if (st != ES_OK) return st;
    put_i32(&w, n_tokens);
    put_i32(&w, hidden);
    put_f32s(&w, data, (size_t)floats);
    seal(out);
    return ES_OK;
}

enum es_status sw_encode_done(struct sw_buf *out, struct es_err *err)
{
    return encode_empty(out, SW_DONE, err);
}

enum es_status sw_encode_error(struct sw_buf *out, enum es_status status, const char *msg,
                               struct es_err *err)
{
    size_t n = msg ? strlen(msg) : 0;
    if (n > SW_ERROR_MSG_MAX) n = SW_ERROR_MSG_MAX;
    struct sw_writer w = {0};
    enum es_status st = begin_message(out, SW_ERROR, 8 + n, &w, err);
    if (st != ES_OK) return st;
    put_i32(&w, (int32_t)status);
    put_u32(&w, (uint32_t)n);
    if (n > 0) memcpy(w.p, msg, n);
    seal(out);
    return ES_OK;
}

void sw_buf_free(struct sw_buf *b)
{
    if (!b) return;
    free(b->data);
    *b = (struct sw_buf){0};
}

/* ------------------------------------------------------------------ decode */

enum es_status sw_frame_length(const unsigned char prefix[SW_PREFIX_BYTES], size_t *len_out,
                               struct es_err *err)
{
    uint32_t len = sw_get_u32(prefix);
    if (len < SW_HEADER_BYTES - SW_PREFIX_BYTES || len > SW_MAX_MESSAGE)
        return es_fail(err, ES_EFORMAT, "step_wire: message length %u outside [%d, %u]", len,
                       SW_HEADER_BYTES - SW_PREFIX_BYTES, SW_MAX_MESSAGE);
    *len_out = len;
    return ES_OK;
}

/* Reads fields from a body; a read past its end sets short_read and
 * yields zeros, so callers check once per group of fields. */
struct sw_reader {
    const unsigned char *p;
    size_t left;
    bool short_read;
};

static uint32_t get_u32(struct sw_reader *r)
{
    if (r->left < 4) {
        r->short_read = true;
        r->left = 0;
        return 0;
    }
    uint32_t v = sw_get_u32(r->p);
    r->p += 4;
    r->left -= 4;
    return v;
}

static int32_t get_i32(struct sw_reader *r)
{
    return (int32_t)get_u32(r);
}

static uint64_t get_u64(struct sw_reader *r)
{
    uint64_t lo = get_u32(r);
    return lo | (uint64_t)get_u32(r) << 32;
}

/* n values; the caller has checked that 4 * n bytes are left. */
static void get_i32s(struct sw_reader *r, int32_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = get_i32(r);
}

/* n floats; the caller has checked that 4 * n bytes are left. */
static void get_f32s(struct sw_reader *r, float *out, size_t n)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(out, r->p, n * sizeof(float));
    r->p += n * sizeof(float);
    r->left -= n * sizeof(float);
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t bits = get_u32(r);
        memcpy(&out[i], &bits, sizeof(bits));
    }
#endif
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (*cap >= need) return true;
    void *q = realloc(*p, need * elem);
    if (!q) return false;
    *p = q;
    *cap = need;
    return true;
}

static enum es_status corrupt(struct es_err *err, const char *what)
{
    return es_fail(err, ES_EFORMAT, "step_wire: corrupt message: %s", what);
}

static enum es_status decode_rows(struct sw_reader *r, struct sw_cmd *cmd, int n_rows,
                                  struct es_err *err)
{
    for (int i = 0; i < n_rows; i++) {
        struct logit_row *row = &cmd->rows[i];
        *row = (struct logit_row){0};
        row->token_index = get_i32(r);
        row->target_id = get_i32(r);
        row->n_top = get_i32(r);
        uint32_t flags = get_u32(r);
        row->rng_counter = get_u64(r);
        if (r->short_read) return corrupt(err, "rows cut short");
        if (flags & ~SW_ROW_FLAG_SAMPLE) return corrupt(err, "unknown row flags");
        if (row->n_top < -1 || row->n_top > BACKEND_MAX_TOP_LOGPROBS)
            return corrupt(err, "row n_top out of range");
        row->sample = flags & SW_ROW_FLAG_SAMPLE;
        row->sp = &cmd->sp; /* sampling happens on node 0 */
    }
    return ES_OK;
}

/* Each sequence's used entries, then zeros to the stride. */
static enum es_status decode_tables(struct sw_reader *r, int32_t *tables, int n_seqs, int stride,
                                    struct es_err *err)
{
    for (int s = 0; s < n_seqs; s++) {
        int32_t used = get_i32(r);
        if (r->short_read) return corrupt(err, "block tables cut short");
        if (used < 0 || used > stride) return corrupt(err, "block-table length out of range");
        if ((size_t)used * 4 > r->left) return corrupt(err, "block table longer than the message");
        int32_t *row = tables + (size_t)s * (size_t)stride;
        get_i32s(r, row, (size_t)used);
        memset(row + used, 0, sizeof(*row) * (size_t)(stride - used));
    }
    return ES_OK;
}

/* A stream of n_tokens x width floats into cmd->floats. */
static enum es_status decode_stream(struct sw_reader *r, struct sw_cmd *cmd, int n_tokens,
                                    int width, struct es_err *err)
{
    if (r->short_read || n_tokens < 0 || width <= 0) return corrupt(err, "bad stream shape");
    uint64_t n = (uint64_t)n_tokens * (uint64_t)width;
    if (4 * n > r->left) return corrupt(err, "stream longer than the message");
    if (!grow((void **)&cmd->floats, &cmd->floats_cap, n > 0 ? (size_t)n : 1, sizeof(float)))
        return es_fail(err, ES_ENOMEM, "step_wire: out of memory decoding a stream");
    get_f32s(r, cmd->floats, (size_t)n);
    cmd->hidden = width;
    return ES_OK;
}

/* A pipeline FORWARD's width and incoming stream, as its flags say. */
static enum es_status decode_stream_in(struct sw_reader *r, struct sw_cmd *cmd, uint32_t flags,
                                       int n_tokens, struct es_err *err)
{
    if (!(flags & (SW_FLAG_HIDDEN_IN | SW_FLAG_HIDDEN_OUT))) return ES_OK;
    int32_t width = get_i32(r);
    if (r->short_read || width <= 0) return corrupt(err, "bad stream width");
    cmd->hidden = width;
    return flags & SW_FLAG_HIDDEN_IN ? decode_stream(r, cmd, n_tokens, width, err) : ES_OK;
}

static enum es_status decode_forward(struct sw_reader *r, struct sw_cmd *cmd, struct es_err *err)
{
    int32_t nt = get_i32(r), ns = get_i32(r), stride = get_i32(r), nr = get_i32(r);
    uint32_t flags = get_u32(r);
    if (r->short_read) return corrupt(err, "forward header cut short");
    if (nt < 0 || ns < 0 || stride < 0 || nr < 0) return corrupt(err, "negative count");
    if (flags & ~SW_BATCH_FLAGS) return corrupt(err, "unknown batch flags");
    /* the least the counts need: every array plus one length per table */
    uint64_t least = 12ull * (uint64_t)nt + 4ull * ((uint64_t)ns + 1) + 8ull * (uint64_t)ns +
                     (uint64_t)SW_ROW_BYTES * (uint64_t)nr;
    if (least > r->left) return corrupt(err, "counts larger than the message");
    uint64_t table_entries = (uint64_t)ns * (uint64_t)stride;
    if (table_entries > SW_MAX_TABLE_ENTRIES) return corrupt(err, "block tables too large");
    size_t n_ints = 3 * (size_t)nt + 2 * (size_t)ns + 1 + (size_t)table_entries;
    if (!grow((void **)&cmd->ints, &cmd->ints_cap, n_ints, sizeof(int32_t)) ||
        !grow((void **)&cmd->rows, &cmd->rows_cap, nr > 0 ? (size_t)nr : 1, sizeof(*cmd->rows)))
        return es_fail(err, ES_ENOMEM, "step_wire: out of memory decoding a batch");
    int32_t *token_ids = cmd->ints, *positions = token_ids + nt, *slots = positions + nt;
    int32_t *starts = slots + nt, *context = starts + ns + 1, *tables = context + ns;
    get_i32s(r, token_ids, (size_t)nt);
    get_i32s(r, positions, (size_t)nt);
    get_i32s(r, slots, (size_t)nt);
    get_i32s(r, starts, (size_t)ns + 1);
    get_i32s(r, context, (size_t)ns);
    enum es_status st = decode_tables(r, tables, ns, stride, err);
    if (st == ES_OK) st = decode_rows(r, cmd, nr, err);
    if (st == ES_OK) st = decode_stream_in(r, cmd, flags, nt, err);
    if (st != ES_OK) return st;
    if (r->left != 0) return corrupt(err, "trailing bytes after the rows");
    cmd->batch = (struct batch){
        .n_tokens = nt,
        .token_ids = token_ids,
        .positions = positions,
        .slot_mapping = slots,
        .n_seqs = ns,
        .seq_token_start = starts,
        .seq_context_len = context,
        .block_tables = tables,
        .block_table_stride = stride,
        .n_rows = nr,
        .rows = cmd->rows,
        .decode_only = flags & SW_FLAG_DECODE_ONLY,
        .hidden_in = flags & SW_FLAG_HIDDEN_IN ? cmd->floats : NULL,
    };
    cmd->want_hidden = flags & SW_FLAG_HIDDEN_OUT;
    return ES_OK;
}

static enum es_status decode_copy_blocks(struct sw_reader *r, struct sw_cmd *cmd,
                                         struct es_err *err)
{
    int32_t n = get_i32(r);
    if (r->short_read || n < 0) return corrupt(err, "bad copy count");
    if (8ull * (uint64_t)n != r->left) return corrupt(err, "copy count disagrees with the size");
    if (!grow((void **)&cmd->ints, &cmd->ints_cap, 2 * (size_t)n + 1, sizeof(int32_t)))
        return es_fail(err, ES_ENOMEM, "step_wire: out of memory decoding a copy");
    get_i32s(r, cmd->ints, 2 * (size_t)n);
    cmd->n_copies = n;
    cmd->copy_src = cmd->ints;
    cmd->copy_dst = cmd->ints + n;
    return ES_OK;
}

static enum es_status decode_ready(struct sw_reader *r, struct sw_cmd *cmd, struct es_err *err)
{
    cmd->ready_kv_blocks = get_i32(r);
    cmd->ready_block_size = get_i32(r);
    if (r->short_read || r->left != 0) return corrupt(err, "READY of the wrong size");
    return ES_OK;
}

static enum es_status decode_hidden(struct sw_reader *r, struct sw_cmd *cmd, struct es_err *err)
{
    int32_t n_tokens = get_i32(r), width = get_i32(r);
    enum es_status st = decode_stream(r, cmd, n_tokens, width, err);
    if (st != ES_OK) return st;
    if (r->left != 0) return corrupt(err, "trailing bytes after the stream");
    cmd->hidden_tokens = n_tokens;
    cmd->hidden_data = cmd->floats;
    return ES_OK;
}

static enum es_status decode_error(struct sw_reader *r, struct sw_cmd *cmd, struct es_err *err)
{
    int32_t status = get_i32(r);
    uint32_t n = get_u32(r);
    if (r->short_read || n != r->left || n > SW_ERROR_MSG_MAX)
        return corrupt(err, "ERROR of the wrong size");
    memcpy(cmd->error_msg, r->p, n);
    cmd->error_msg[n] = '\0';
    /* a status this side does not know is still a failure */
    cmd->error_status = status < 0 && status >= ES_EDEVICE ? (enum es_status)status : ES_ERR;
    return ES_OK;
}

enum es_status sw_decode(const unsigned char *msg, size_t len, struct sw_cmd *cmd,
                         struct es_err *err)
{
    cmd->kind = SW_NONE;
    cmd->batch = (struct batch){0};
    cmd->n_copies = 0;
    cmd->copy_src = cmd->copy_dst = NULL;
    cmd->want_hidden = false;
    cmd->hidden = cmd->hidden_tokens = 0;
    cmd->hidden_data = NULL;
    cmd->ready_kv_blocks = cmd->ready_block_size = 0;
    cmd->error_status = ES_OK;
    cmd->error_msg[0] = '\0';
    sp_defaults(&cmd->sp);
    cmd->sp.temperature = 0.0f; /* greedy: a remote rank never draws */
    if (len < SW_HEADER_BYTES)
        return es_fail(err, ES_EFORMAT, "step_wire: a %zu-byte message is shorter than a header",
                       len);
    size_t framed;
    enum es_status st = sw_frame_length(msg, &framed, err);
    if (st != ES_OK) return st;
    if (framed != len - SW_PREFIX_BYTES)
        return es_fail(err, ES_EFORMAT, "step_wire: length field says %zu bytes, %zu arrived",
                       framed, len - SW_PREFIX_BYTES);
    uint32_t magic = sw_get_u32(msg + 4), vk = sw_get_u32(msg + 8), sum = sw_get_u32(msg + 12);
    unsigned version = vk & 0xffff, kind = vk >> 16;
    if (magic != SW_MAGIC) return corrupt(err, "wrong magic");
    if (version != SW_VERSION)
        return es_fail(err, ES_EFORMAT, "step_wire: message version %u, this node speaks %d",
                       version, SW_VERSION);
    const unsigned char *body = msg + SW_HEADER_BYTES;
    size_t body_len = len - SW_HEADER_BYTES;
    if (sw_message_checksum(msg, len) != sum) return corrupt(err, "checksum mismatch");
    struct sw_reader r = {.p = body, .left = body_len};
    switch (kind) {
    case SW_FORWARD:
        st = decode_forward(&r, cmd, err);
        break;
    case SW_COPY_BLOCKS:
        st = decode_copy_blocks(&r, cmd, err);
        break;
    case SW_STOP:
        st = body_len == 0 ? ES_OK : corrupt(err, "STOP with a body");
        break;
    case SW_HEARTBEAT:
        st = body_len == 0 ? ES_OK : corrupt(err, "HEARTBEAT with a body");
        break;
    case SW_READY:
        st = decode_ready(&r, cmd, err);
        break;
    case SW_HIDDEN:
        st = decode_hidden(&r, cmd, err);
        break;
    case SW_DONE:
        st = body_len == 0 ? ES_OK : corrupt(err, "DONE with a body");
        break;
    case SW_ERROR:
        st = decode_error(&r, cmd, err);
        break;
    default:
        return corrupt(err, "unknown command kind");
    }
    if (st == ES_OK) cmd->kind = (enum sw_kind)kind;
    return st;
}

void sw_cmd_free(struct sw_cmd *cmd)
{
    if (!cmd) return;
    free(cmd->ints);
    free(cmd->rows);
    free(cmd->floats);
    *cmd = (struct sw_cmd){0};
}
