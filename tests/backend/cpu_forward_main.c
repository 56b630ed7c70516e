/*
 * cpu_forward_main.c - test driver of the CPU backend for
 * tests/backend/test_cpu_vs_numpy.py: loads a model directory and runs two
 * sequences through the paged KV cache the way the engine would, then
 * writes every computed position's raw logits to a file.
 *
 *   cpu_forward_main MODEL_DIR OUT.f32 --a IDS [--a-chunks N,N,..]
 *       [--b IDS --b-prefix N] [--b-chunks N,..] [--decode-a IDS --decode-b IDS]
 *       [--threads N] [--seed N] [--spare-blocks N]
 *
 * Sequence A (tokens IDS) is prefilled in the given chunk sizes, one step
 * each. Sequence B is A's first N tokens (its full blocks shared by
 * reference, a partial last block copied with copy_blocks) followed by its
 * own IDS; its chunks join A's steps as soon as A has written the prefix.
 * Then decode steps carry one token of each sequence together. Physical
 * blocks are a seeded random permutation, so tables are scattered.
 *
 * OUT.f32: float32 logits, A's positions 0.. in order, then B's computed
 * positions (N..) in order, [rows][vocab]. stdout: one JSON line per row
 * of the last step, run again through forward() (greedy, top 5 logprobs,
 * target = the sequence's first token), for the test to check against the
 * reference logits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cpu.h"
#include "model_config.h"

#define BS 16

struct ivec {
    int32_t *v;
    int n;
};

static int parse_list(const char *s, struct ivec *out)
{
    out->n = 0;
    out->v = NULL;
    if (!*s) return 0;
    int cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    out->v = malloc(sizeof(int32_t) * (size_t)cap);
    if (!out->v) return -1;
    char *end;
    for (;;) {
        long x = strtol(s, &end, 10);
        if (end == s) return -1;
        out->v[out->n++] = (int32_t)x;
        if (*end == '\0') return 0;
        if (*end != ',') return -1;
        s = end + 1;
    }
}

/* One sequence's state in the driver (what kvcache.c + sched.c would hold). */
struct seq {
    int32_t *tokens; /* all tokens, prefix + own + decode */
    int n_tokens;
    int done;       /* tokens already through the model */
    int first_out;  /* first position whose logits are reported */
    int32_t *table; /* [max_blocks] physical blocks */
    int n_blocks;
    float *logits; /* [n_tokens - first_out][vocab] */
};

struct plan_step {
    int n_a, n_b; /* tokens of A and B in this step */
};

static void usage(void)
{
    fprintf(stderr, "usage: cpu_forward_main MODEL_DIR OUT.f32 --a IDS [--a-chunks N,..] "
                    "[--b IDS --b-prefix N [--b-chunks N,..]] [--decode-a IDS --decode-b IDS] "
                    "[--threads N] [--seed N]\n");
}

static uint64_t rng_state;
static uint32_t next_rand(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        usage();
        return 2;
    }
    const char *dir = argv[1], *out_path = argv[2];
    struct ivec a = {0}, a_chunks = {0}, b = {0}, b_chunks = {0}, dec_a = {0}, dec_b = {0};
    int b_prefix = 0, threads = 2, spare = 7;
    rng_state = 1;
    for (int i = 3; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = !v;
        if (bad) break;
        if (!strcmp(k, "--a"))
            bad = parse_list(v, &a);
        else if (!strcmp(k, "--a-chunks"))
            bad = parse_list(v, &a_chunks);
        else if (!strcmp(k, "--b"))
            bad = parse_list(v, &b);
        else if (!strcmp(k, "--b-chunks"))
            bad = parse_list(v, &b_chunks);
        else if (!strcmp(k, "--decode-a"))
            bad = parse_list(v, &dec_a);
        else if (!strcmp(k, "--decode-b"))
            bad = parse_list(v, &dec_b);
        else if (!strcmp(k, "--b-prefix"))
            b_prefix = atoi(v);
        else if (!strcmp(k, "--threads"))
            threads = atoi(v);
        else if (!strcmp(k, "--seed"))
            rng_state = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--spare-blocks"))
            spare = atoi(v);
        else
            bad = 1;
        if (bad) {
            usage();
            return 2;
        }
        i++;
    }
    int has_b = b.n > 0;
    if (a.n == 0 || b_prefix < 0 || b_prefix > a.n || (has_b && dec_a.n != dec_b.n) ||
        (!has_b && dec_b.n)) {
        usage();
        return 2;
    }
    if (a_chunks.n == 0) {
        a_chunks.v = malloc(sizeof(int32_t));
        a_chunks.v[0] = a.n;
        a_chunks.n = 1;
    }
    if (has_b && b_chunks.n == 0) {
        b_chunks.v = malloc(sizeof(int32_t));
        b_chunks.v[0] = b.n;
        b_chunks.n = 1;
    }
    int sum = 0;
    for (int i = 0; i < a_chunks.n; i++)
        sum += a_chunks.v[i];
    if (sum != a.n) return fprintf(stderr, "a-chunks must sum to %d\n", a.n), 2;
    sum = 0;
    for (int i = 0; i < b_chunks.n; i++)
        sum += b_chunks.v[i];
    if (has_b && sum != b.n) return fprintf(stderr, "b-chunks must sum to %d\n", b.n), 2;

    struct es_err err = {{0}};
    struct model_config cfg;
    if (mc_load(dir, &cfg, &err) != ES_OK) return fprintf(stderr, "%s\n", err.msg), 1;
    int vocab = cfg.vocab_size;

    /* sequences */
    struct seq sa = {0}, sb = {0};
    sa.n_tokens = a.n + dec_a.n;
    sa.tokens = malloc(sizeof(int32_t) * (size_t)sa.n_tokens);
    memcpy(sa.tokens, a.v, sizeof(int32_t) * (size_t)a.n);
    if (dec_a.n) memcpy(sa.tokens + a.n, dec_a.v, sizeof(int32_t) * (size_t)dec_a.n);
    if (has_b) {
        sb.n_tokens = b_prefix + b.n + dec_b.n;
        sb.tokens = malloc(sizeof(int32_t) * (size_t)sb.n_tokens);
        memcpy(sb.tokens, a.v, sizeof(int32_t) * (size_t)b_prefix);
        memcpy(sb.tokens + b_prefix, b.v, sizeof(int32_t) * (size_t)b.n);
        if (dec_b.n) memcpy(sb.tokens + b_prefix + b.n, dec_b.v, sizeof(int32_t) * (size_t)dec_b.n);
        sb.done = b_prefix;
        sb.first_out = b_prefix;
    }
    int blocks_a = (sa.n_tokens + BS - 1) / BS, blocks_b = (sb.n_tokens + BS - 1) / BS;
    int n_blocks = blocks_a + blocks_b + spare;
    int stride = blocks_a > blocks_b ? blocks_a : blocks_b;
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)n_blocks);
    for (int i = 0; i < n_blocks; i++)
        perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)(next_rand() % (uint32_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int next_block = 0;
    sa.table = calloc((size_t)stride, sizeof(int32_t));
    sb.table = calloc((size_t)stride, sizeof(int32_t));
    for (int i = 0; i < blocks_a; i++)
        sa.table[i] = perm[next_block++];
    int shared_full = b_prefix / BS, partial = b_prefix % BS != 0;
    for (int i = 0; i < blocks_b; i++)
        sb.table[i] = i < shared_full ? sa.table[i] : perm[next_block++];

    struct backend be = {.ops = &backend_cpu_ops};
    struct backend_opts opts = {.block_size = BS,
                                .max_num_batched_tokens = 4096,
                                .max_num_seqs = 4,
                                .max_model_len = stride * BS + BS,
                                .num_kv_blocks = n_blocks,
                                .num_threads = threads};
    if (be.ops->load(&be, &cfg, dir, &opts, &err) != ES_OK)
        return fprintf(stderr, "load: %s\n", err.msg), 1;

    sa.logits = malloc(sizeof(float) * (size_t)sa.n_tokens * vocab);
    if (has_b) sb.logits = malloc(sizeof(float) * (size_t)(sb.n_tokens - b_prefix) * vocab);

    /* steps: A's chunks; B's chunks join once A has written the prefix */
    int max_steps = a_chunks.n + b_chunks.n + dec_a.n + 1;
    struct plan_step *plan = calloc((size_t)max_steps, sizeof(*plan));
    int n_steps = 0, a_done = 0, bi = 0;
    for (int i = 0; i < a_chunks.n; i++) {
        plan[n_steps].n_a = a_chunks.v[i];
        if (has_b && a_done >= b_prefix && bi < b_chunks.n) plan[n_steps].n_b = b_chunks.v[bi++];
        a_done += a_chunks.v[i];
        n_steps++;
    }
    while (has_b && bi < b_chunks.n)
        plan[n_steps++].n_b = b_chunks.v[bi++];
    for (int i = 0; i < dec_a.n; i++) {
        plan[n_steps].n_a = 1;
        plan[n_steps].n_b = has_b;
        n_steps++;
    }

    size_t max_step = 1;
    for (int s = 0; s < n_steps; s++)
        if ((size_t)(plan[s].n_a + plan[s].n_b) > max_step) max_step = plan[s].n_a + plan[s].n_b;
    if (max_step > (size_t)opts.max_num_batched_tokens)
        return fprintf(stderr, "a step of %zu tokens is too big\n", max_step), 2;
    int32_t *tok = malloc(sizeof(int32_t) * max_step), *pos = malloc(sizeof(int32_t) * max_step);
    int32_t *slot = malloc(sizeof(int32_t) * max_step);
    int32_t *tables = malloc(sizeof(int32_t) * 2 * (size_t)stride);
    float *logits = malloc(sizeof(float) * max_step * (size_t)vocab);
    struct logit_row *rows = calloc(max_step, sizeof(*rows));
    struct row_result *res = calloc(max_step, sizeof(*res));
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.temperature = 0.0f;
    int copied = 0, rc = 0;
    for (int s = 0; s < n_steps; s++) {
        if (has_b && partial && !copied && plan[s].n_b) {
            /* copy-on-write of the partially shared block */
            if (be.ops->copy_blocks(&be, &sa.table[shared_full], &sb.table[shared_full], 1, &err) !=
                ES_OK)
                return fprintf(stderr, "copy_blocks: %s\n", err.msg), 1;
            copied = 1;
        }
        struct seq *seqs[2] = {&sa, &sb};
        int counts[2] = {plan[s].n_a, plan[s].n_b};
        int32_t starts[3] = {0}, ctx[2];
        int n_seqs = 0, n = 0;
        struct seq *in_step[2];
        for (int q = 0; q < 2; q++) {
            if (!counts[q]) continue;
            struct seq *sq = seqs[q];
            for (int i = 0; i < counts[q]; i++, n++) {
                int p = sq->done + i;
                tok[n] = sq->tokens[p];
                pos[n] = p;
                slot[n] = sq->table[p / BS] * BS + p % BS;
                rows[n] = (struct logit_row){.token_index = n,
                                             .sample = true,
                                             .target_id = sq->tokens[0],
                                             .n_top = 5,
                                             .sp = &sp};
            }
            memcpy(tables + (size_t)n_seqs * stride, sq->table, sizeof(int32_t) * stride);
            ctx[n_seqs] = sq->done + counts[q];
            in_step[n_seqs] = sq;
            starts[++n_seqs] = n;
        }
        struct batch bt = {.n_tokens = n,
                           .token_ids = tok,
                           .positions = pos,
                           .slot_mapping = slot,
                           .n_seqs = n_seqs,
                           .seq_token_start = starts,
                           .seq_context_len = ctx,
                           .block_tables = tables,
                           .block_table_stride = stride,
                           .n_rows = n,
                           .rows = rows,
                           .decode_only = plan[s].n_a <= 1 && plan[s].n_b <= 1};
        if (backend_cpu_forward_logits(&be, &bt, logits, &err) != ES_OK) {
            fprintf(stderr, "forward: %s\n", err.msg);
            rc = 1;
            break;
        }
        for (int q = 0; q < n_seqs; q++) {
            struct seq *sq = in_step[q];
            int cnt = starts[q + 1] - starts[q];
            memcpy(sq->logits + (size_t)(sq->done - sq->first_out) * vocab,
                   logits + (size_t)starts[q] * vocab, sizeof(float) * (size_t)cnt * vocab);
        }
        if (s == n_steps - 1) {
            struct batch_result br = {.rows = res};
            if (be.ops->forward(&be, &bt, &br, &err) != ES_OK) {
                fprintf(stderr, "forward (sampling): %s\n", err.msg);
                rc = 1;
                break;
            }
            for (int q = 0; q < n_seqs; q++)
                for (int i = starts[q]; i < starts[q + 1]; i++) {
                    printf("{\"seq\": %d, \"pos\": %d, \"token\": %d, \"logprob\": %.9g, "
                           "\"target\": %d, \"target_logprob\": %.9g, \"target_rank\": %d, "
                           "\"top_ids\": [",
                           in_step[q] == &sa ? 0 : 1, pos[i], res[i].token, res[i].logprob,
                           rows[i].target_id, res[i].target_logprob, res[i].target_rank);
                    for (int j = 0; j < res[i].n_top; j++)
                        printf("%s%d", j ? ", " : "", res[i].top_ids[j]);
                    printf("], \"top_logprobs\": [");
                    for (int j = 0; j < res[i].n_top; j++)
                        printf("%s%.9g", j ? ", " : "", res[i].top_logprobs[j]);
                    printf("]}\n");
                }
        }
        for (int q = 0; q < n_seqs; q++)
            in_step[q]->done += starts[q + 1] - starts[q];
    }

    if (rc == 0) {
        FILE *f = fopen(out_path, "wb");
        if (!f) return fprintf(stderr, "cannot write %s\n", out_path), 1;
        fwrite(sa.logits, sizeof(float), (size_t)sa.n_tokens * vocab, f);
        if (has_b) fwrite(sb.logits, sizeof(float), (size_t)(sb.n_tokens - b_prefix) * vocab, f);
        fclose(f);
    }
    be.ops->destroy(&be);
    free(a.v), free(a_chunks.v), free(b.v), free(b_chunks.v), free(dec_a.v), free(dec_b.v);
    free(sa.tokens), free(sb.tokens), free(sa.table), free(sb.table);
    free(sa.logits), free(sb.logits), free(perm), free(plan);
    free(tok), free(pos), free(slot), free(tables), free(logits), free(rows), free(res);
    return rc;
}
