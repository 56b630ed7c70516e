/*
 * test_backend_pp.c - server/backend/backend_pp.c over the real CPU
 * backend with mkmodel's tiny model (2 layers; mkmodel's path is argv[1]).
 *
 * A pipeline of 2 stages (split into 2 or 3 micro-batches, and with each
 * stage a TP group of 2 ranks) must answer a prefill step of three
 * sequences, a copy_blocks and a decode step exactly as one whole-model
 * backend does: same sampled tokens, bit-identical logprobs and top
 * lists, rows in the batch's order even when that order is not the
 * sequences'. Multi-sequence steps must really run as micro-batches
 * (pp_stats). A malformed batch fails with the stage's message instead of
 * hanging the stages after it, and the group then stays broken. Skipped
 * (77) when the shared tokenizer is not there.
 */
#include <stdlib.h>
#include <unistd.h>

#include "backend_cpu.h"
#include "backend_pp.h"
#include "backend_tp.h"
#include "model_config.h"
#include "testing.h"

#define N_SEQS 3
#define MAX_TOK 64
#define STRIDE 4 /* block table entries per sequence */
#define N_BLOCKS 32
#define MAX_ROWS 80

static const int seq_len[N_SEQS] = {20, 7, 33};

/* One step's batch over N_SEQS sequences, built by prefill() or decode(). */
struct step {
    int32_t tok[MAX_TOK], pos[MAX_TOK], slot[MAX_TOK];
    int32_t start[N_SEQS + 1], ctx[N_SEQS], table[N_SEQS * STRIDE];
    struct logit_row rows[MAX_ROWS];
    struct sampling_params sp[N_SEQS];
    struct batch b;
};

static int32_t token_at(int s, int i)
{
    return (int32_t)((i * 37 + s * 101 + 11) % 2000);
}

static void init_tables(struct step *st)
{
    for (int s = 0; s < N_SEQS; s++) {
        for (int j = 0; j < STRIDE; j++)
            st->table[s * STRIDE + j] = 1 + s * STRIDE + j; /* blocks 1 .. 12 */
        sp_defaults(&st->sp[s]);
        st->sp[s].temperature = s == 1 ? 0.0f : 0.8f;
        st->sp[s].seed = (uint64_t)(40 + s);
    }
}

static void add_token(struct step *st, int *nt, int s, int i)
{
    st->tok[*nt] = token_at(s, i);
    st->pos[*nt] = i;
    st->slot[*nt] = st->table[s * STRIDE + i / 16] * 16 + i % 16;
    (*nt)++;
}

static void finish(struct step *st, int nt, int n_rows, bool decode)
{
    st->b = (struct batch){.n_tokens = nt,
                           .token_ids = st->tok,
                           .positions = st->pos,
                           .slot_mapping = st->slot,
                           .n_seqs = N_SEQS,
                           .seq_token_start = st->start,
                           .seq_context_len = st->ctx,
                           .block_tables = st->table,
                           .block_table_stride = STRIDE,
                           .n_rows = n_rows,
                           .rows = st->rows,
                           .decode_only = decode};
}

/* Every prompt token of every sequence; rows listed last sequence first:
 * a scoring row per token and a sampling row at each sequence's end. */
static void prefill(struct step *st)
{
    init_tables(st);
    int nt = 0;
    for (int s = 0; s < N_SEQS; s++) {
        st->start[s] = nt;
        for (int i = 0; i < seq_len[s]; i++)
            add_token(st, &nt, s, i);
        st->ctx[s] = seq_len[s];
    }
    st->start[N_SEQS] = nt;
    int n_rows = 0;
    for (int s = N_SEQS - 1; s >= 0; s--) {
        for (int i = 0; i + 1 < seq_len[s]; i += 3)
            st->rows[n_rows++] = (struct logit_row){.token_index = st->start[s] + i,
                                                    .target_id = token_at(s, i + 1),
                                                    .n_top = 5,
                                                    .sp = &st->sp[s]};
        st->rows[n_rows++] = (struct logit_row){.token_index = st->start[s + 1] - 1,
                                                .sample = true,
                                                .target_id = -1,
                                                .n_top = 2,
                                                .sp = &st->sp[s],
                                                .rng_counter = 0};
    }
    finish(st, nt, n_rows, false);
}

/* One new token per sequence; sequence 1 reads its first block from
 * block `moved` (a copy made by copy_blocks). */
static void decode(struct step *st, int32_t moved)
{
    init_tables(st);
    st->table[1 * STRIDE + 0] = moved;
    int nt = 0;
    for (int s = 0; s < N_SEQS; s++) {
        st->start[s] = nt;
        add_token(st, &nt, s, seq_len[s]);
        st->ctx[s] = seq_len[s] + 1;
        st->rows[s] = (struct logit_row){.token_index = s,
                                         .sample = true,
                                         .target_id = token_at(s, 0),
                                         .n_top = 3,
                                         .sp = &st->sp[s],
                                         .rng_counter = 1};
    }
    st->start[N_SEQS] = nt;
    finish(st, nt, N_SEQS, true);
}

static struct model_config cfg;
static struct tp_config stage_tp = {.inner = &backend_cpu_ops, .tp_size = 2, .local_ranks = 2};

/* stages 0: the whole model in one plain CPU backend (tp: one TP group). */
static bool load(struct backend *be, const char *dir, int stages, int micro, bool tp)
{
    struct pp_config pc = {.stage_ops = tp ? &backend_tp_ops : &backend_cpu_ops,
                           .tp = &stage_tp,
                           .pp_size = stages,
                           .micro_batches = micro};
    struct backend_opts o = {.block_size = 16,
                             .max_num_batched_tokens = MAX_TOK,
                             .max_num_seqs = 8,
                             .max_model_len = STRIDE * 16,
                             .num_kv_blocks = N_BLOCKS,
                             .num_threads = 2,
                             .tp = tp ? &stage_tp : NULL,
                             .pp = stages > 0 ? &pc : NULL};
    const struct backend_ops *whole = tp ? &backend_tp_ops : &backend_cpu_ops;
    *be = (struct backend){.ops = stages > 0 ? &backend_pp_ops : whole};
    struct es_err err = {{0}};
    if (be->ops->load(be, &cfg, dir, &o, &err) != ES_OK) {
        fprintf(stderr, "load (%d stages, tp %d): %s\n", stages, tp, err.msg);
        return false;
    }
    CHECK(be->num_kv_blocks == N_BLOCKS && be->block_size == 16);
    return true;
}

/* The prefill, a copy of sequence 1's first block to block 20 and a
 * decode that reads the copy; results[0] prefill rows, [1] decode rows. */
static void run(struct backend *be, struct row_result results[2][MAX_ROWS])
{
    static struct step st;
    struct es_err err = {{0}};
    memset(results, 0, sizeof(struct row_result) * 2 * MAX_ROWS);
    prefill(&st);
    struct batch_result br = {.rows = results[0]};
    CHECK(be->ops->forward(be, &st.b, &br, &err) == ES_OK);
    int32_t src = 1 + 1 * STRIDE, dst = 20;
    CHECK(be->ops->copy_blocks(be, &src, &dst, 1, &err) == ES_OK);
    decode(&st, dst);
    br.rows = results[1];
    CHECK(be->ops->forward(be, &st.b, &br, &err) == ES_OK);
    if (err.msg[0]) fprintf(stderr, "run: %s\n", err.msg);
}

static int rows_differ(const struct row_result *a, const struct row_result *b, int n)
{
    int bad = 0;
    for (int r = 0; r < n; r++) {
        bool same = a[r].token == b[r].token && a[r].logprob == b[r].logprob &&
                    a[r].target_logprob == b[r].target_logprob &&
                    a[r].target_rank == b[r].target_rank && a[r].n_top == b[r].n_top;
        for (int k = 0; same && k < a[r].n_top; k++)
            same =
                a[r].top_ids[k] == b[r].top_ids[k] && a[r].top_logprobs[k] == b[r].top_logprobs[k];
        if (!same) {
            fprintf(stderr, "row %d: token %d/%d logprob %.9g/%.9g target %.9g/%.9g\n", r,
                    a[r].token, b[r].token, a[r].logprob, b[r].logprob, a[r].target_logprob,
                    b[r].target_logprob);
            bad++;
        }
    }
    return bad;
}

/* The pipelines against the whole model: plain stages against one CPU
 * backend, TP stages against one TP group (whose sums differ from a
 * single rank's in the last bits). */
static void test_matches_whole_model(const char *dir)
{
    static struct row_result want[2][2][MAX_ROWS], got[2][MAX_ROWS];
    static struct step probe;
    prefill(&probe);
    int n_prefill_rows = probe.b.n_rows;
    for (int tp = 0; tp < 2; tp++) {
        struct backend whole;
        if (!load(&whole, dir, 0, 0, tp)) return;
        run(&whole, want[tp]);
        whole.ops->destroy(&whole);
        CHECK(want[tp][0][n_prefill_rows - 1].n_top == 2); /* sampled */
    }

    const struct {
        int micro;
        bool tp;
    } variants[] = {{0, false}, {3, false}, {0, true}};
    for (size_t v = 0; v < sizeof(variants) / sizeof(variants[0]); v++) {
        struct backend be;
        if (!load(&be, dir, 2, variants[v].micro, variants[v].tp)) continue;
        run(&be, got);
        int tp = variants[v].tp;
        int bad = rows_differ(want[tp][0], got[0], n_prefill_rows) +
                  rows_differ(want[tp][1], got[1], N_SEQS);
        if (bad) fprintf(stderr, "variant %zu: %d rows differ\n", v, bad);
        CHECK(bad == 0);
        struct pp_stats ps;
        backend_pp_stats(&be, &ps);
        int micro = variants[v].micro > 0 ? variants[v].micro : 2;
        CHECK(ps.steps == 2 && ps.split_steps == 2);
        CHECK(ps.micro_batches == (unsigned long)(2 * micro));
        be.ops->destroy(&be);
    }
}

static void test_bad_batch_fails(const char *dir)
{
    struct backend be;
    if (!load(&be, dir, 2, 0, false)) return;
    static struct step st;
    static struct row_result res[MAX_ROWS];
    prefill(&st);
    st.table[2 * STRIDE + 1] = N_BLOCKS; /* sequence 2, the second micro-batch */
    struct batch_result br = {.rows = res};
    struct es_err err = {{0}};
    CHECK(be.ops->forward(&be, &st.b, &br, &err) == ES_EINVAL);
    CHECK(strstr(err.msg, "pp stage 0 of 2") != NULL);
    CHECK(strstr(err.msg, "out of range") || strstr(err.msg, "block"));
    prefill(&st);
    es_err_clear(&err);
    CHECK(be.ops->forward(&be, &st.b, &br, &err) == ES_EIO);
    be.ops->destroy(&be);
}

static void test_too_many_stages(const char *dir)
{
    struct pp_config pc = {.stage_ops = &backend_cpu_ops, .pp_size = 3};
    struct backend_opts o = {.block_size = 16, .num_kv_blocks = 8, .num_threads = 1, .pp = &pc};
    struct backend be = {.ops = &backend_pp_ops};
    struct es_err err = {{0}};
    CHECK(be.ops->load(&be, &cfg, dir, &o, &err) == ES_EINVAL);
    CHECK(strstr(err.msg, "--pp 3 exceeds the model's 2 layers") != NULL);
}

int main(int argc, char **argv)
{
    const char *shared = getenv("EVAL_SHARED_DIR");
    char tokdir[1024], dir[] = "/tmp/test_backend_pp.XXXXXX", cmd[4096];
    snprintf(tokdir, sizeof(tokdir), "%s/tokenizers/llama3_1",
             shared && *shared ? shared : "../shared");
    if (argc < 2 || access(tokdir, R_OK) != 0) {
        fprintf(stderr, "test_backend_pp: skipped (needs mkmodel and %s)\n", tokdir);
        return 77;
    }
    if (!mkdtemp(dir)) return 1;
    snprintf(cmd, sizeof(cmd), "%s --shape tiny --tokenizer %s --out %s > /dev/null", argv[1],
             tokdir, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_backend_pp: mkmodel failed: %s\n", cmd);
        return 1;
    }
    struct es_err err = {{0}};
    if (mc_load(dir, &cfg, &err) != ES_OK) {
        fprintf(stderr, "config: %s\n", err.msg);
        return 1;
    }
    CHECK(cfg.num_layers == 2);
    test_matches_whole_model(dir);
    test_bad_batch_fails(dir);
    test_too_many_stages(dir);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_result("test_backend_pp");
}
