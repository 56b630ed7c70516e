/*
 * step_wire.h - the commands node 0 sends to the other nodes of a
 * multi-node tensor-parallel group, as length-prefixed byte messages.
 *
 * Pipelines over nodes (--pp with --nnodes) use the same channel with
 * answers: a node that runs pipeline stages receives FORWARDs that may
 * carry the residual stream coming in and ask for the one going out, and
 * answers each command (READY once loaded, HIDDEN to a FORWARD, DONE to
 * COPY_BLOCKS, ERROR to anything that failed).
 *
 * A message is a 16-byte header then a body, every field little-endian:
 *
 *   u32 length     bytes after this field (header rest + body)
 *   u32 magic      SW_MAGIC
 *   u16 version    SW_VERSION
 *   u16 kind       enum sw_kind
 *   u32 checksum   of magic, version, kind and the body (sw_message_checksum:
 *                  four 64-bit multiply-rotate lanes over the body's
 *                  little-endian 8-byte words, folded to 32 bits)
 *
 *   FORWARD body   i32 n_tokens, n_seqs, block_table_stride, n_rows,
 *                  u32 flags (bit 0: decode_only, bit 1: hidden_in
 *                  follows, bit 2: answer with hidden_out);
 *                  i32 token_ids[n_tokens], positions[n_tokens],
 *                  slot_mapping[n_tokens], seq_token_start[n_seqs + 1],
 *                  seq_context_len[n_seqs];
 *                  per sequence: i32 n_used, i32 blocks[n_used] (with
 *                  block_size > 0 the entries its tokens can address:
 *                  up to its context length and every new token's
 *                  position; the rest decode as 0);
 *                  per row: i32 token_index, target_id, n_top,
 *                  u32 flags (bit 0: sample), u64 rng_counter;
 *                  with bit 1 or 2: i32 hidden (the model's width);
 *                  with bit 1: f32 hidden_in[n_tokens][hidden]
 *   COPY_BLOCKS    i32 n, i32 src[n], i32 dst[n]
 *   STOP           empty
 *   HEARTBEAT      empty; node 0 sends one to a node when the channel has
 *                  been quiet for a while, and the node sends one back
 *                  (with the answers below, what travels towards node 0)
 *   READY          i32 num_kv_blocks, block_size: a stage node has loaded
 *   HIDDEN         i32 n_tokens, hidden; f32 [n_tokens][hidden]: the
 *                  residual stream after the node's last layer
 *   DONE           empty: the block copy ran
 *   ERROR          i32 status (enum es_status), u32 n, n bytes of message
 *
 * The remote ranks need only what their forward reads: sampling happens
 * on global rank 0 (node 0), so a decoded row's sampling parameters are
 * greedy defaults and it carries no history.
 *
 * Decoding checks every count, length, offset and index against the
 * message's own size, so a truncated or corrupted message is an error
 * (ES_EFORMAT), never an out-of-bounds read. The only field the size
 * cannot bound, the block-table stride, is capped by SW_MAX_TABLE_ENTRIES.
 * Semantic checks (token ids, positions, block ids) stay with the
 * backend, which runs the same ones on every rank. Buffers (struct
 * sw_buf, struct sw_cmd) grow and are reused: after the first steps
 * neither side allocates.
 */
#ifndef ES_STEP_WIRE_H
#define ES_STEP_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

#define SW_MAGIC 0x57535345u           /* "ESSW" */
#define SW_VERSION 3                   /* 2: HEARTBEAT; 3: pipeline stages */
#define SW_PREFIX_BYTES 4              /* the length field */
#define SW_HEADER_BYTES 16             /* length, magic, version, kind, checksum */
#define SW_MAX_MESSAGE (1u << 30)      /* bytes after the length field, at most */
#define SW_MAX_TABLE_ENTRIES (1 << 24) /* n_seqs * block_table_stride, at most (64 MiB) */

enum sw_kind {
    SW_NONE = 0,
    SW_FORWARD = 1,
    SW_COPY_BLOCKS = 2,
    SW_STOP = 3,
    SW_HEARTBEAT = 4,
    SW_READY = 5,
    SW_HIDDEN = 6,
    SW_DONE = 7,
    SW_ERROR = 8,
};

#define SW_ERROR_MSG_MAX 400 /* bytes of an ERROR's message kept (longer ones are cut) */

/* Little-endian field access, shared with the control handshake. */
static inline void sw_put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline uint32_t sw_get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The checksum that message msg[0..len) (len >= SW_HEADER_BYTES) should
 * carry, over bytes 4..12 and the body (the lanes of step_wire.c). */
uint32_t sw_message_checksum(const unsigned char *msg, size_t len);

/* An encoded message, prefix included. */
struct sw_buf {
    unsigned char *data;
    size_t len, cap;
};

/* A decoded command; the pointers inside point into its own storage and
 * stay valid until the next sw_decode into it or sw_cmd_free. */
struct sw_cmd {
    enum sw_kind kind;
    struct batch batch;       /* SW_FORWARD; hidden_in points into floats */
    bool want_hidden;         /* SW_FORWARD: answer with the stream after the last layer */
    int hidden;               /* SW_FORWARD with a stream, SW_HIDDEN: the width */
    int hidden_tokens;        /* SW_HIDDEN: rows of floats */
    const float *hidden_data; /* SW_HIDDEN */
    int ready_kv_blocks, ready_block_size; /* SW_READY */
    enum es_status error_status;           /* SW_ERROR */
    char error_msg[SW_ERROR_MSG_MAX + 1];  /* SW_ERROR, NUL-terminated */
    int n_copies;                          /* SW_COPY_BLOCKS */
    const int32_t *copy_src, *copy_dst;
    /* storage */
    int32_t *ints; /* every i32 array of the message */
    size_t ints_cap;
    struct logit_row *rows;
    size_t rows_cap;
    float *floats; /* a FORWARD's hidden_in, a HIDDEN's stream */
    size_t floats_cap;
    struct sampling_params sp; /* the rows' stand-in parameters */
};

/* block_size > 0 sends only the block-table entries that the sequences'
 * context lengths can address; 0 sends whole rows. */
enum es_status sw_encode_forward(struct sw_buf *out, const struct batch *b, int block_size,
                                 struct es_err *err);
/* A FORWARD to a node running pipeline stages: with b->hidden_in, the
 * stream coming in ([n_tokens][hidden]); with b->hidden_out, asks for the
 * stream going out. */
enum es_status sw_encode_stage_forward(struct sw_buf *out, const struct batch *b, int block_size,
                                       int hidden, struct es_err *err);
enum es_status sw_encode_copy_blocks(struct sw_buf *out, const int32_t *src, const int32_t *dst,
                                     int n, struct es_err *err);
enum es_status sw_encode_stop(struct sw_buf *out, struct es_err *err);
enum es_status sw_encode_heartbeat(struct sw_buf *out, struct es_err *err);
/* The answers of a node running pipeline stages. */
enum es_status sw_encode_ready(struct sw_buf *out, int num_kv_blocks, int block_size,
                               struct es_err *err);
enum es_status sw_encode_hidden(struct sw_buf *out, const float *data, int n_tokens, int hidden,
                                struct es_err *err);
enum es_status sw_encode_done(struct sw_buf *out, struct es_err *err);
enum es_status sw_encode_error(struct sw_buf *out, enum es_status status, const char *msg,
                               struct es_err *err);
void sw_buf_free(struct sw_buf *b);

/* The bytes that follow a message's first SW_PREFIX_BYTES, checked
 * against SW_MAX_MESSAGE. */
enum es_status sw_frame_length(const unsigned char prefix[SW_PREFIX_BYTES], size_t *len_out,
                               struct es_err *err);

/* Decodes msg[0..len) (prefix included) into cmd (zeroed before its
 * first use). On failure cmd->kind is SW_NONE. */
enum es_status sw_decode(const unsigned char *msg, size_t len, struct sw_cmd *cmd,
                         struct es_err *err);
void sw_cmd_free(struct sw_cmd *cmd);

#endif
