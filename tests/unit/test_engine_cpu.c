/*
 * test_engine_cpu.c - the engine end to end on the real CPU backend with a
 * tiny random-weight model made by mkmodel (path given as argv[1]).
 *
 * The same requests (greedy and seeded sampling, n > 1, echo prompt
 * logprobs, shared prefixes) run under a big cache, a tiny cache with a
 * small step budget (chunked prefill, preemption and recompute) and with
 * prefix caching off; every configuration must give the same tokens and
 * the same logprobs (to 1e-4), and the engine must end idle with every KV
 * block free. Skipped (77) when the shared tokenizer is not there.
 */
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine.h"
#include "model_config.h"
#include "testing.h"

#define N_REQ 12
#define MAX_LEN 512

struct outcome {
    int32_t tokens[N_REQ][3][64];
    int n_tokens[N_REQ][3];
    float logprobs[N_REQ][3][64];
    float prompt_lp[N_REQ][200];
    long preemptions, hits;
};

static int32_t prompts[N_REQ][200];
static int prompt_len[N_REQ];

static void run(const char *dir, const struct tokenizer *tok, int num_blocks, int budget,
                bool prefix, struct outcome *out)
{
    struct model_config cfg;
    struct es_err err = {{0}};
    CHECK(mc_load(dir, &cfg, &err) == ES_OK);
    static struct backend be;
    memset(&be, 0, sizeof(be));
    be.ops = &backend_cpu_ops;
    struct backend_opts bo = {.block_size = 16,
                              .max_num_batched_tokens = budget,
                              .max_num_seqs = 8,
                              .max_model_len = MAX_LEN,
                              .num_kv_blocks = num_blocks,
                              .num_threads = 2};
    if (be.ops->load(&be, &cfg, dir, &bo, &err) != ES_OK) {
        fprintf(stderr, "load: %s\n", err.msg);
        test_failures++;
        return;
    }
    struct engine_opts eo;
    engine_opts_defaults(&eo);
    eo.max_num_batched_tokens = budget;
    eo.max_num_seqs = 8;
    eo.max_model_len = MAX_LEN;
    eo.enable_prefix_caching = prefix;
    struct engine *e;
    CHECK(engine_create(&be, tok, &eo, &e, &err) == ES_OK);
    CHECK(engine_start(e) == ES_OK);
    struct request *reqs[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        struct request_params p;
        request_params_defaults(&p);
        p.n = i % 4 == 1 ? 3 : 1;
        p.max_tokens = 4 + i * 2;
        p.ignore_eos = true;
        p.logprobs = 1;
        p.prompt_logprobs = i % 3 == 0 ? 1 : -1;
        p.sampling.temperature = i % 2 ? 0.9f : 0.0f;
        p.sampling.seed = (uint64_t)(77 + i);
        reqs[i] = req_create(prompts[i], prompt_len[i], &p);
        CHECK(engine_submit(e, reqs[i], &err) == ES_OK);
    }
    for (int i = 0; i < N_REQ; i++)
        for (int t = 0; t < 120000 && !req_is_finished(reqs[i]); t++)
            usleep(1000);
    for (int i = 0; i < N_REQ; i++) {
        struct request *r = reqs[i];
        CHECK(req_is_finished(r));
        for (int c = 0; c < r->params.n; c++) {
            struct choice_output *co = &r->choices[c];
            CHECK(co->finish == FINISH_LENGTH && (int)co->tokens.n == r->params.max_tokens);
            out->n_tokens[i][c] = (int)co->tokens.n;
            for (size_t k = 0; k < co->tokens.n && k < 64; k++) {
                out->tokens[i][c][k] = co->tokens.v[k];
                out->logprobs[i][c][k] = co->logprobs[k];
            }
        }
        if (r->prompt_logprobs)
            for (int k = 0; k < prompt_len[i]; k++)
                out->prompt_lp[i][k] = r->prompt_logprobs[k];
        req_release(r);
    }
    struct engine_stats st;
    for (int t = 0; t < 5000; t++) {
        engine_get_stats(e, &st);
        if (st.running == 0 && st.waiting == 0) break;
        usleep(1000);
    }
    CHECK(st.healthy && st.free_kv_blocks == st.num_kv_blocks);
    out->preemptions = (long)st.preemptions;
    out->hits = (long)st.prefix_cache_hits;
    fprintf(stderr,
            "cpu engine: %d blocks, budget %d, prefix %d: %llu steps, %ld preemptions, "
            "%ld prefix hits, host %.3fs, device %.3fs\n",
            num_blocks, budget, prefix, (unsigned long long)st.steps, out->preemptions, out->hits,
            st.step_host_seconds, st.step_device_seconds);
    engine_destroy(e);
}

static int compare(const struct outcome *a, const struct outcome *b)
{
    int bad = 0;
    for (int i = 0; i < N_REQ; i++) {
        int n = i % 4 == 1 ? 3 : 1;
        for (int c = 0; c < n; c++) {
            if (a->n_tokens[i][c] != b->n_tokens[i][c]) bad++;
            for (int k = 0; k < a->n_tokens[i][c] && k < 64; k++) {
                if (a->tokens[i][c][k] != b->tokens[i][c][k]) {
                    fprintf(stderr, "request %d choice %d token %d differs\n", i, c, k);
                    bad++;
                    break;
                }
                if (fabsf(a->logprobs[i][c][k] - b->logprobs[i][c][k]) > 1e-4f) bad++;
            }
        }
        if (i % 3 == 0) {
            if (!isnan(a->prompt_lp[i][0]) || !isnan(b->prompt_lp[i][0])) bad++;
            for (int k = 1; k < prompt_len[i]; k++)
                if (!(fabsf(a->prompt_lp[i][k] - b->prompt_lp[i][k]) <= 1e-4f)) bad++;
        }
    }
    return bad;
}

int main(int argc, char **argv)
{
    const char *shared = getenv("EVAL_SHARED_DIR");
    char tokdir[1024], dir[] = "/tmp/test_engine_cpu.XXXXXX", cmd[4096];
    snprintf(tokdir, sizeof(tokdir), "%s/tokenizers/llama3_1",
             shared && *shared ? shared : "../shared");
    if (argc < 2 || access(tokdir, R_OK) != 0) {
        fprintf(stderr, "test_engine_cpu: skipped (needs mkmodel and %s)\n", tokdir);
        return 77;
    }
    if (!mkdtemp(dir)) return 1;
    snprintf(cmd, sizeof(cmd), "%s --shape tiny --tokenizer %s --out %s > /dev/null", argv[1],
             tokdir, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_engine_cpu: mkmodel failed: %s\n", cmd);
        return 1;
    }
    struct tokenizer *tok;
    struct es_err err = {{0}};
    if (tok_load(dir, &tok, &err) != ES_OK) {
        fprintf(stderr, "tokenizer: %s\n", err.msg);
        return 1;
    }
    /* Prompts: two shared 40-token prefixes and random tails. */
    uint64_t x = 12345;
    for (int i = 0; i < N_REQ; i++) {
        prompt_len[i] = 5 + (i * 37) % 150;
        for (int k = 0; k < prompt_len[i]; k++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            prompts[i][k] = k < 40 ? 1000 + 3 * k + (i % 2) : (int32_t)(x >> 33) % 120000;
        }
    }
    static struct outcome big, tiny, noprefix;
    run(dir, tok, 400, 256, true, &big);
    run(dir, tok, 16, 16, true, &tiny);
    run(dir, tok, 400, 64, false, &noprefix);
    CHECK(tiny.preemptions > 0);
    CHECK(big.hits > 0);
    CHECK(compare(&big, &tiny) == 0);
    CHECK(compare(&big, &noprefix) == 0);
    tok_free(tok);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_result("test_engine_cpu");
}
