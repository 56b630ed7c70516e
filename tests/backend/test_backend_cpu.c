/*
 * test_backend_cpu.c - the CPU backend's contract paths that the NumPy
 * comparison does not reach: load() errors (missing tensor, wrong shape),
 * every malformed-batch check returning ES_EINVAL with a message and
 * leaving the backend usable, copy_blocks bounds and effect, and the
 * sampling path of forward() (greedy agrees with the logits, seeded draws
 * independent of the rest of the batch). Writes its own tiny fp32 model.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "backend_cpu.h"
#include "model_config.h"
#include "testing.h"

enum { HID = 32, LAYERS = 2, HEADS = 4, KV = 2, INTER = 48, VOCAB = 64, HD = HID / HEADS };

struct tensor_spec {
    char name[96];
    int rows, cols; /* cols == 0: 1-D */
};

static uint64_t lcg = 88172645463325252ULL;
static float rnd(void)
{
    lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(lcg >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Writes dir/model.safetensors (F32) and dir/config.json; skip_name leaves
 * one tensor out. */
static int write_model(const char *dir, const char *skip_name, int config_inter)
{
    struct tensor_spec specs[64];
    int n = 0;
    specs[n++] = (struct tensor_spec){"model.embed_tokens.weight", VOCAB, HID};
    specs[n++] = (struct tensor_spec){"model.norm.weight", HID, 0};
    for (int l = 0; l < LAYERS; l++) {
        const char *names[] = {
            "input_layernorm",  "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj",         "mlp.gate_proj",    "mlp.up_proj",
            "mlp.down_proj"};
        int rows[] = {HID, HID, HEADS * HD, KV * HD, KV * HD, HID, INTER, INTER, HID};
        int cols[] = {0, 0, HID, HID, HID, HEADS * HD, HID, HID, INTER};
        for (int i = 0; i < 9; i++) {
            snprintf(specs[n].name, sizeof(specs[n].name), "model.layers.%d.%s.weight", l,
                     names[i]);
            specs[n].rows = rows[i];
            specs[n].cols = cols[i];
            n++;
        }
    }
    char header[16384], path[512];
    size_t hl = 0, offset = 0;
    hl += (size_t)snprintf(header + hl, sizeof(header) - hl, "{");
    int first = 1;
    for (int i = 0; i < n; i++) {
        if (skip_name && !strcmp(specs[i].name, skip_name)) continue;
        size_t count = (size_t)specs[i].rows * (specs[i].cols ? specs[i].cols : 1);
        char shape[64];
        if (specs[i].cols)
            snprintf(shape, sizeof(shape), "[%d, %d]", specs[i].rows, specs[i].cols);
        else
            snprintf(shape, sizeof(shape), "[%d]", specs[i].rows);
        hl += (size_t)snprintf(header + hl, sizeof(header) - hl,
                               "%s\"%s\": {\"dtype\": \"F32\", \"shape\": %s, "
                               "\"data_offsets\": [%zu, %zu]}",
                               first ? "" : ", ", specs[i].name, shape, offset, offset + 4 * count);
        offset += 4 * count;
        first = 0;
    }
    hl += (size_t)snprintf(header + hl, sizeof(header) - hl, "}");
    while (hl % 8)
        header[hl++] = ' ';
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint64_t len = hl;
    fwrite(&len, 8, 1, f);
    fwrite(header, 1, hl, f);
    for (int i = 0; i < n; i++) {
        if (skip_name && !strcmp(specs[i].name, skip_name)) continue;
        size_t count = (size_t)specs[i].rows * (specs[i].cols ? specs[i].cols : 1);
        float scale = specs[i].cols ? 1.0f / sqrtf((float)specs[i].cols) : 0.2f;
        for (size_t k = 0; k < count; k++) {
            float v = specs[i].cols ? rnd() * scale * 1.7f : 1.0f + rnd() * scale;
            if (!strcmp(specs[i].name, "model.embed_tokens.weight")) v = rnd();
            fwrite(&v, 4, 1, f);
        }
    }
    fclose(f);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f,
            "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": %d, "
            "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
            "\"num_key_value_heads\": %d, \"vocab_size\": %d, \"tie_word_embeddings\": true, "
            "\"torch_dtype\": \"float32\", \"max_position_embeddings\": 512, "
            "\"rms_norm_eps\": 1e-5}\n",
            HID, config_inter, LAYERS, HEADS, KV, VOCAB);
    fclose(f);
    return 0;
}

static void remove_model(const char *dir)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    unlink(path);
}

static enum es_status try_load(const char *dir, struct backend *be, struct es_err *err)
{
    struct model_config cfg;
    enum es_status st = mc_load(dir, &cfg, err);
    if (st != ES_OK) return st;
    struct backend_opts opts = {.block_size = 16,
                                .max_num_batched_tokens = 64,
                                .max_model_len = 64,
                                .num_kv_blocks = 8,
                                .num_threads = 2};
    *be = (struct backend){.ops = &backend_cpu_ops};
    return be->ops->load(be, &cfg, dir, &opts, err);
}

/* A one-sequence batch of n tokens at positions 0.. in blocks {5, 2, 7, 0}. */
struct one_seq {
    int32_t tok[64], pos[64], slot[64], start[2], ctx[1], table[4];
    struct logit_row rows[2];
    struct sampling_params sp;
    struct batch b;
};

static void make_seq(struct one_seq *s, int n)
{
    int32_t table[4] = {5, 2, 7, 0};
    memcpy(s->table, table, sizeof(table));
    for (int i = 0; i < n; i++) {
        s->tok[i] = (i * 7 + 3) % VOCAB;
        s->pos[i] = i;
        s->slot[i] = table[i / 16] * 16 + i % 16;
    }
    s->start[0] = 0;
    s->start[1] = n;
    s->ctx[0] = n;
    sp_defaults(&s->sp);
    s->sp.temperature = 0.0f;
    s->rows[0] = (struct logit_row){
        .token_index = n - 1, .sample = true, .target_id = 5, .n_top = 3, .sp = &s->sp};
    s->rows[1] = (struct logit_row){
        .token_index = n - 2, .sample = false, .target_id = 9, .n_top = 0, .sp = &s->sp};
    s->b = (struct batch){.n_tokens = n,
                          .token_ids = s->tok,
                          .positions = s->pos,
                          .slot_mapping = s->slot,
                          .n_seqs = 1,
                          .seq_token_start = s->start,
                          .seq_context_len = s->ctx,
                          .block_tables = s->table,
                          .block_table_stride = 4,
                          .n_rows = 2,
                          .rows = s->rows};
}

static void expect_einval(struct backend *be, const struct batch *b, const char *what)
{
    struct es_err err = {{0}};
    struct row_result res[4];
    struct batch_result br = {.rows = res};
    enum es_status st = be->ops->forward(be, b, &br, &err);
    if (st != ES_EINVAL) fprintf(stderr, "%s: status %d\n", what, st);
    CHECK(st == ES_EINVAL);
    CHECK(err.msg[0] != '\0');
}

static void test_bad_batches(struct backend *be)
{
    struct one_seq s;
    make_seq(&s, 20);
    s.tok[3] = VOCAB;
    expect_einval(be, &s.b, "token id");
    make_seq(&s, 20);
    s.tok[3] = -1;
    expect_einval(be, &s.b, "negative token id");
    make_seq(&s, 20);
    s.table[1] = 8;
    expect_einval(be, &s.b, "block out of range");
    make_seq(&s, 20);
    s.slot[17] = s.slot[17] + 16;
    expect_einval(be, &s.b, "slot mismatch");
    make_seq(&s, 20);
    s.ctx[0] = 25;
    expect_einval(be, &s.b, "context length");
    make_seq(&s, 20);
    s.rows[1].token_index = 20;
    expect_einval(be, &s.b, "row index");
    make_seq(&s, 20);
    s.start[1] = 19;
    expect_einval(be, &s.b, "sequence starts");
    make_seq(&s, 20);
    s.b.block_table_stride = 1;
    expect_einval(be, &s.b, "stride");
    make_seq(&s, 20);
    s.pos[19] = 64;
    s.ctx[0] = 65;
    expect_einval(be, &s.b, "position beyond max_model_len");
    make_seq(&s, 20);
    s.b.n_tokens = 65;
    expect_einval(be, &s.b, "too many tokens");
}

static void test_forward_and_copy(struct backend *be)
{
    struct es_err err = {{0}};
    struct one_seq s;
    make_seq(&s, 40);
    float logits[2][VOCAB];
    CHECK(backend_cpu_forward_logits(be, &s.b, &logits[0][0], &err) == ES_OK);
    struct row_result res[2];
    struct batch_result br = {.rows = res};
    CHECK(be->ops->forward(be, &s.b, &br, &err) == ES_OK);
    int best = 0;
    for (int i = 1; i < VOCAB; i++)
        if (logits[0][i] > logits[0][best]) best = i;
    CHECK(res[0].token == best);
    CHECK(res[0].n_top == 3 && res[0].top_ids[0] == best);
    CHECK(res[0].logprob <= 0.0f && res[0].top_logprobs[1] <= res[0].top_logprobs[0]);
    CHECK(res[1].token == -1 && res[1].target_rank >= 1 && res[1].target_rank <= VOCAB);
    double z = 0.0;
    for (int i = 0; i < VOCAB; i++)
        z += exp((double)logits[1][i]);
    CHECK(fabs(res[1].target_logprob - (logits[1][9] - log(z))) < 1e-4);

    /* decode one more token of the sequence through a copied block:
     * positions 32..39 live in block 7; copy it to block 1 and read there */
    CHECK(be->ops->copy_blocks(be, (int32_t[]){7}, (int32_t[]){1}, 1, &err) == ES_OK);
    for (int layer = 0; layer < LAYERS; layer++)
        for (int off = 0; off < 16; off++) {
            const float *k7, *v7, *k1, *v1;
            CHECK(backend_cpu_kv_slot(be, layer, 7 * 16 + off, &k7, &v7, &err) == ES_OK);
            CHECK(backend_cpu_kv_slot(be, layer, 1 * 16 + off, &k1, &v1, &err) == ES_OK);
            CHECK(memcmp(k7, k1, sizeof(float) * KV * HD) == 0);
            CHECK(memcmp(v7, v1, sizeof(float) * KV * HD) == 0);
        }
    const float *kk, *vv;
    CHECK(backend_cpu_kv_slot(be, 0, 8 * 16, &kk, &vv, &err) == ES_EINVAL);
    CHECK(backend_cpu_kv_slot(be, LAYERS, 0, &kk, &vv, &err) == ES_EINVAL);
    /* position 0 was written: its K is not all zero */
    CHECK(backend_cpu_kv_slot(be, 1, 5 * 16, &kk, &vv, &err) == ES_OK);
    int nonzero = 0;
    for (int i = 0; i < KV * HD; i++)
        nonzero += kk[i] != 0.0f && vv[i] != 0.0f;
    CHECK(nonzero > KV * HD / 2);
    int32_t bad_src[] = {8}, ok_dst[] = {3}, neg[] = {-1};
    CHECK(be->ops->copy_blocks(be, bad_src, ok_dst, 1, &err) == ES_EINVAL);
    CHECK(be->ops->copy_blocks(be, ok_dst, neg, 1, &err) == ES_EINVAL);
    struct one_seq d;
    make_seq(&d, 41);
    int32_t one_tok = d.tok[40];
    float want[VOCAB], got[VOCAB];
    struct logit_row row = {.token_index = 0, .sample = false, .target_id = -1, .n_top = -1};
    int32_t pos = 40, ctx = 41, start[2] = {0, 1};
    int32_t table_a[4] = {5, 2, 7, 0}, table_b[4] = {5, 2, 1, 4};
    int32_t slot_a = 7 * 16 + 8, slot_b = 1 * 16 + 8;
    struct batch b = {.n_tokens = 1,
                      .token_ids = &one_tok,
                      .positions = &pos,
                      .slot_mapping = &slot_a,
                      .n_seqs = 1,
                      .seq_token_start = start,
                      .seq_context_len = &ctx,
                      .block_tables = table_a,
                      .block_table_stride = 4,
                      .n_rows = 1,
                      .rows = &row,
                      .decode_only = true};
    CHECK(backend_cpu_forward_logits(be, &b, want, &err) == ES_OK);
    b.block_tables = table_b;
    b.slot_mapping = &slot_b;
    CHECK(backend_cpu_forward_logits(be, &b, got, &err) == ES_OK);
    CHECK(memcmp(want, got, sizeof(want)) == 0);

    /* seeded draws: the same (seed, counter) gives the same token whether
     * the row runs alone or beside another sequence */
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.seed = 77;
    int32_t toks2[2] = {one_tok, 11}, pos2[2] = {40, 3}, slot2[2] = {slot_a, 4 * 16 + 3};
    int32_t ctx2[2] = {41, 4}, start2[3] = {0, 1, 2}, tables2[8] = {5, 2, 7, 0, 4, 4, 4, 4};
    for (uint64_t counter = 0; counter < 20; counter++) {
        struct logit_row r1 = {.token_index = 0,
                               .sample = true,
                               .target_id = -1,
                               .n_top = 0,
                               .sp = &sp,
                               .rng_counter = counter};
        struct logit_row r2[2] = {r1, r1};
        r2[1].token_index = 1;
        r2[1].rng_counter = counter + 1000;
        struct row_result alone, both[2];
        b.block_tables = table_a;
        b.slot_mapping = &slot_a;
        b.rows = &r1;
        struct batch_result br1 = {.rows = &alone}, br2 = {.rows = both};
        CHECK(be->ops->forward(be, &b, &br1, &err) == ES_OK);
        struct batch b2 = {.n_tokens = 2,
                           .token_ids = toks2,
                           .positions = pos2,
                           .slot_mapping = slot2,
                           .n_seqs = 2,
                           .seq_token_start = start2,
                           .seq_context_len = ctx2,
                           .block_tables = tables2,
                           .block_table_stride = 4,
                           .n_rows = 2,
                           .rows = r2};
        CHECK(be->ops->forward(be, &b2, &br2, &err) == ES_OK);
        CHECK(alone.token == both[0].token);
        CHECK(alone.logprob == both[0].logprob);
    }
}

int main(void)
{
    char dir[] = "/tmp/test_backend_cpu_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    struct backend be;
    struct es_err err = {{0}};

    CHECK(write_model(dir, "model.layers.1.mlp.up_proj.weight", INTER) == 0);
    CHECK(try_load(dir, &be, &err) == ES_ENOTFOUND);
    CHECK(strstr(err.msg, "model.layers.1.mlp.up_proj.weight") != NULL);
    remove_model(dir);

    err.msg[0] = '\0';
    CHECK(write_model(dir, NULL, INTER + 2) == 0);
    CHECK(try_load(dir, &be, &err) == ES_EFORMAT);
    remove_model(dir);

    err.msg[0] = '\0';
    CHECK(write_model(dir, NULL, INTER) == 0);
    enum es_status st = try_load(dir, &be, &err);
    if (st != ES_OK) fprintf(stderr, "load: %s\n", err.msg);
    CHECK(st == ES_OK);
    if (st == ES_OK) {
        CHECK(be.num_kv_blocks == 8 && be.block_size == 16 && be.cfg->vocab_size == VOCAB);
        test_forward_and_copy(&be);
        test_bad_batches(&be);
        test_forward_and_copy(&be); /* still healthy after the rejections */
        be.ops->destroy(&be);
    }
    remove_model(dir);
    rmdir(dir);
    return test_result("backend_cpu");
}
