/*
 * test_engine.c - the whole engine (scheduler, KV cache, output path, step
 * loop) driven through engine.h with a fake backend whose logits depend on
 * every token it reads back through the block tables.
 *
 * Every choice's tokens and logprobs are compared with a reference that
 * samples the same fake logits straight from the token list (no cache, no
 * batching), under several configurations: a big cache, a tiny cache that
 * forces preemption, a small step budget, prefix caching off. Equal outputs
 * everywhere mean: chunked prefill, prefix reuse, n > 1 forks with
 * copy-on-write and recompute after preemption are exact, and a request's
 * output does not depend on what else is in the batch. Also: stop strings
 * across token boundaries, stop ids, EOS, min_tokens, max_tokens, echo
 * prompt logprobs (with and without cached prefixes), abort mid-run frees
 * every block, oversize requests are rejected, a failing backend ends
 * every request with an error and marks the engine unhealthy, and so does
 * engine_fail() from another thread (busy or idle).
 */
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine.h"
#include "fake_backend.h"
#include "sampling.h"
#include "testing.h"

static struct tokenizer *tok;
static struct smp_scratch *smp;
static float *ref_logits;

#define MAX_MODEL_LEN 1024

static uint64_t rng = 0x1234567887654321ULL;
static int rndn(int n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (int)(rng % (uint64_t)n);
}

/* ---- request specs and the reference ---- */

struct spec {
    int32_t prompt[600];
    int n_prompt;
    int n, max_tokens, min_tokens, logprobs, prompt_logprobs;
    float temperature, top_p;
    int top_k;
    uint64_t seed;
    bool ignore_eos;
    int32_t stop_id; /* -1 none */
};

static struct request *make_request(const struct spec *s)
{
    struct request_params p;
    request_params_defaults(&p);
    p.n = s->n;
    p.max_tokens = s->max_tokens;
    p.min_tokens = s->min_tokens;
    p.logprobs = s->logprobs;
    p.prompt_logprobs = s->prompt_logprobs;
    p.sampling.temperature = s->temperature;
    p.sampling.top_p = s->top_p;
    p.sampling.top_k = s->top_k;
    p.sampling.seed = s->seed;
    p.ignore_eos = s->ignore_eos;
    if (s->stop_id >= 0) {
        p.stop_token_ids = malloc(sizeof(int32_t));
        p.stop_token_ids[0] = s->stop_id;
        p.n_stop_token_ids = 1;
    }
    return req_create(s->prompt, s->n_prompt, &p);
}

static bool is_stop_id(const struct spec *s, int32_t t)
{
    if (t == s->stop_id) return true;
    if (s->ignore_eos) return false;
    return t == FAKE_EOS2 || t == FAKE_EOS || t == tok_eos_id(tok);
}

/* Generates choice c of s without the engine. */
static int ref_generate(const struct spec *s, int c, int32_t *out, float *lp)
{
    static int32_t hist[MAX_MODEL_LEN + 8];
    memcpy(hist, s->prompt, (size_t)s->n_prompt * sizeof(int32_t));
    int n = s->n_prompt, k = 0;
    struct sampling_params sp;
    sp_defaults(&sp);
    sp.temperature = s->temperature;
    sp.top_p = s->top_p;
    sp.top_k = s->top_k;
    sp.seed = s->seed + (uint64_t)c;
    int32_t banned[4] = {FAKE_EOS2, FAKE_EOS, tok_eos_id(tok), s->stop_id};
    int32_t banned_stop_only[1] = {s->stop_id};
    for (k = 0; k < s->max_tokens; k++) {
        fake_logits(hist, n, ref_logits);
        struct logit_row row = {.token_index = 0,
                                .sample = true,
                                .target_id = -1,
                                .n_top = s->logprobs,
                                .sp = &sp,
                                .rng_counter = (uint64_t)k,
                                .history = hist,
                                .n_history_prompt = s->n_prompt,
                                .n_history = n};
        if (k < s->min_tokens) {
            row.banned_ids = s->ignore_eos ? banned_stop_only : banned;
            row.n_banned = s->ignore_eos ? (s->stop_id >= 0) : (s->stop_id >= 0 ? 4 : 3);
        }
        struct row_result r;
        smp_row(smp, ref_logits, &row, &r);
        out[k] = r.token;
        lp[k] = r.logprob;
        hist[n++] = r.token;
        if (k + 1 >= s->min_tokens && is_stop_id(s, r.token)) return k + 1;
        if (n >= MAX_MODEL_LEN) return k + 1;
    }
    return k;
}

static float ref_prompt_logprob(const struct spec *s, int pos)
{
    fake_logits(s->prompt, pos, ref_logits);
    struct sampling_params sp;
    sp_defaults(&sp);
    struct logit_row row = {.target_id = s->prompt[pos],
                            .n_top = 0,
                            .sp = &sp,
                            .history = s->prompt,
                            .n_history_prompt = pos,
                            .n_history = pos};
    struct row_result r;
    smp_row(smp, ref_logits, &row, &r);
    return r.target_logprob;
}

/* Checks one finished request against the reference; returns mismatches. */
static int verify(const struct spec *s, struct request *req)
{
    int bad = 0;
    static int32_t toks[MAX_MODEL_LEN];
    static float lps[MAX_MODEL_LEN];
    pthread_mutex_lock(&req->lock);
    for (int c = 0; c < s->n; c++) {
        struct choice_output *co = &req->choices[c];
        int n = s->max_tokens > 0 ? ref_generate(s, c, toks, lps) : 0;
        bool same = (int)co->tokens.n == n;
        for (int i = 0; same && i < n; i++) {
            if (co->tokens.v[i] != toks[i]) same = false;
            if (s->logprobs >= 0 && co->logprobs[i] != lps[i]) same = false;
        }
        if (!same) {
            fprintf(stderr, "request %llu choice %d: %zu tokens, reference %d\n",
                    (unsigned long long)req->id, c, co->tokens.n, n);
            bad++;
            continue;
        }
        bool stopped = n > 0 && n >= s->min_tokens && is_stop_id(s, toks[n - 1]);
        if (co->finish != (stopped ? FINISH_STOP : FINISH_LENGTH)) bad++;
        if (stopped && co->stop_token != toks[n - 1]) bad++;
        /* The text is the decode of the tokens, a stop token not rendered. */
        struct strbuf want = {0};
        tok_decode(tok, toks, (size_t)(stopped ? n - 1 : n), true, &want);
        if (want.len != co->text.len || memcmp(sb_cstr(&want), sb_cstr(&co->text), want.len)) {
            fprintf(stderr, "text mismatch: \"%s\" vs \"%s\"\n", sb_cstr(&co->text),
                    sb_cstr(&want));
            bad++;
        }
        sb_free(&want);
    }
    if (s->prompt_logprobs >= 0) {
        if (!isnan(req->prompt_logprobs[0])) bad++;
        for (int p = 1; p < s->n_prompt; p++)
            if (req->prompt_logprobs[p] != ref_prompt_logprob(s, p)) {
                fprintf(stderr, "prompt logprob %d: %g vs %g\n", p, req->prompt_logprobs[p],
                        ref_prompt_logprob(s, p));
                bad++;
                break;
            }
        if (s->prompt_logprobs > 0 && s->n_prompt > 1 && req->prompt_top[1].n != s->prompt_logprobs)
            bad++;
    }
    pthread_mutex_unlock(&req->lock);
    return bad;
}

/* ---- engine harness ---- */

struct config {
    const char *name;
    int num_blocks, budget, max_seqs;
    bool prefix;
    bool sync;             /* async scheduling off */
    int delay_us;          /* per forward */
    double step_timeout_s; /* 0: none */
};

static struct engine *start_engine(const struct config *c, int fail_at, struct backend **be_out)
{
    struct backend *be = fake_backend_create(c->num_blocks, fail_at);
    struct engine_opts o;
    engine_opts_defaults(&o);
    o.max_num_batched_tokens = c->budget;
    o.max_num_seqs = c->max_seqs;
    o.max_model_len = MAX_MODEL_LEN;
    o.enable_prefix_caching = c->prefix;
    o.async_scheduling = !c->sync;
    o.step_timeout_s = c->step_timeout_s;
    fake_backend_set_delay(be, c->delay_us);
    struct engine *e = NULL;
    struct es_err err = {{0}};
    CHECK(engine_create(be, tok, &o, &e, &err) == ES_OK);
    CHECK(engine_start(e) == ES_OK);
    if (be_out) *be_out = be;
    return e;
}

static void wait_finished(struct request **reqs, int n)
{
    for (int i = 0; i < n; i++)
        for (int t = 0; !req_is_finished(reqs[i]); t++) {
            if (t > 60000) {
                fprintf(stderr, "request %d never finished\n", i);
                test_failures++;
                return;
            }
            usleep(1000);
        }
}

static void wait_idle(struct engine *e, struct engine_stats *st)
{
    for (int t = 0; t < 5000; t++) {
        engine_get_stats(e, st);
        if (st->running == 0 && st->waiting == 0) return;
        usleep(1000);
    }
}

#define N_SPECS 48
static struct spec specs[N_SPECS];

static void make_specs(void)
{
    int32_t base[3][600];
    for (int b = 0; b < 3; b++)
        for (int i = 0; i < 600; i++)
            base[b][i] = 10 + rndn(900);
    for (int i = 0; i < N_SPECS; i++) {
        struct spec *s = &specs[i];
        memset(s, 0, sizeof(*s));
        int b = rndn(3);
        s->n_prompt = 1 + rndn(i % 5 == 0 ? 300 : 70);
        int shared = rndn(s->n_prompt + 1);
        for (int t = 0; t < s->n_prompt; t++)
            s->prompt[t] = t < shared ? base[b][t] : 10 + rndn(900);
        s->n = i % 4 == 1 ? 2 + rndn(3) : 1;
        s->max_tokens = i % 7 == 3 ? 0 : 1 + rndn(40);
        s->min_tokens = i % 3 == 0 ? rndn(s->max_tokens + 1) : 0;
        s->logprobs = i % 2 ? rndn(4) : -1;
        s->prompt_logprobs = i % 5 == 2 || s->max_tokens == 0 ? rndn(3) : -1;
        s->temperature = i % 3 == 2 ? 0.0f : 0.8f;
        s->top_p = i % 4 == 0 ? 0.9f : 1.0f;
        s->top_k = i % 6 == 0 ? 20 : 0;
        s->seed = (uint64_t)(1000 + i);
        s->ignore_eos = i % 8 == 5;
        s->stop_id = i % 9 == 4 ? 10 + rndn(900) : -1;
    }
}

/* Runs every spec through an engine and checks it against the reference. */
static void run_workload(const struct config *c)
{
    struct backend *be;
    struct engine *e = start_engine(c, -1, &be);
    struct request *reqs[N_SPECS];
    struct es_err err = {{0}};
    int bad = 0;
    for (int i = 0; i < N_SPECS; i++) {
        reqs[i] = make_request(&specs[i]);
        CHECK(engine_submit(e, reqs[i], &err) == ES_OK);
        if (i % 5 == 0) usleep(200 * (unsigned)rndn(5)); /* vary batch composition */
    }
    wait_finished(reqs, N_SPECS);
    int n_stop = 0, n_min_held = 0;
    for (int i = 0; i < N_SPECS; i++) {
        bad += verify(&specs[i], reqs[i]);
        for (int ch = 0; ch < specs[i].n; ch++) {
            n_stop += reqs[i]->choices[ch].finish == FINISH_STOP;
            /* min_tokens held EOS back where it would have been likely. */
            n_min_held += specs[i].min_tokens > 1 &&
                          (int)reqs[i]->choices[ch].tokens.n >= specs[i].min_tokens;
        }
        req_release(reqs[i]);
    }
    CHECK(n_stop >= 5 && n_min_held >= 3); /* the workload does exercise stops */
    struct engine_stats st;
    wait_idle(e, &st);
    struct fake_stats *fs = fake_backend_stats(be);
    CHECK(bad == 0);
    CHECK(fs->bad_batches == 0);
    CHECK(fs->max_rows <= c->budget);
    CHECK(st.free_kv_blocks == c->num_blocks);
    CHECK(st.running == 0 && st.waiting == 0 && st.healthy);
    CHECK(!c->prefix || st.prefix_cache_hits > 0);
    /* Async: most steps were built while the one before ran. */
    CHECK(c->sync ? st.steps_scheduled_ahead == 0 : st.steps_scheduled_ahead * 2 > st.steps);
    fprintf(stderr,
            "%-12s %ld steps (%llu ahead), %llu preemptions, %llu/%llu prefix hits, %ld copies, "
            "host %.3fs device %.3fs gap %.3fs: %d mismatches\n",
            c->name, fs->steps, (unsigned long long)st.steps_scheduled_ahead,
            (unsigned long long)st.preemptions, (unsigned long long)st.prefix_cache_hits,
            (unsigned long long)st.prefix_cache_queries, fs->copies, st.step_host_seconds,
            st.step_device_seconds, st.step_gap_seconds, bad);
    engine_stop(e, true);
    engine_destroy(e);
}

/* Runs one request to completion on e. */
static struct request *run_one(struct engine *e, struct request *req)
{
    struct es_err err = {{0}};
    CHECK(engine_submit(e, req, &err) == ES_OK);
    wait_finished(&req, 1);
    return req;
}

/* Streaming view: the text seen at every notification must be a prefix
 * of the final text (held-back text is never shown, then retracted). */
struct stream_log {
    struct strbuf seen[256];
    int n;
    atomic_bool finished_seen;
};

static void on_update_log(struct request *req, void *ctx)
{
    struct stream_log *log = ctx;
    pthread_mutex_lock(&req->lock);
    if (log->n < 256) {
        memset(&log->seen[log->n], 0, sizeof(log->seen[0]));
        sb_append(&log->seen[log->n++], req->choices[0].text.s ? req->choices[0].text.s : "",
                  req->choices[0].text.len);
    }
    if (req->n_finished == req->params.n) atomic_store(&log->finished_seen, true);
    pthread_mutex_unlock(&req->lock);
}

static void check_stream_log(struct stream_log *log, struct request *req)
{
    /* The last notification comes after the request is seen finished. */
    for (int t = 0; t < 20000 && !atomic_load(&log->finished_seen); t++)
        usleep(500);
    pthread_mutex_lock(&req->lock); /* the callback has left its critical section */
    pthread_mutex_unlock(&req->lock);
    CHECK(atomic_load(&log->finished_seen) && log->n >= 1);
    for (int i = 0; i < log->n; i++) {
        CHECK(log->seen[i].len <= req->choices[0].text.len);
        CHECK(log->seen[i].len == 0 ||
              memcmp(log->seen[i].s, req->choices[0].text.s, log->seen[i].len) == 0);
        sb_free(&log->seen[i]);
    }
    log->n = 0;
    atomic_store(&log->finished_seen, false);
}

static struct request *make_stop_request(const int32_t *prompt, int n_prompt, const char *stop,
                                         bool include)
{
    struct request_params p;
    request_params_defaults(&p);
    p.max_tokens = 60;
    p.ignore_eos = true;
    p.sampling.temperature = 0.0f;
    if (stop) {
        p.stop = malloc(sizeof(char *));
        p.stop[0] = strdup(stop);
        p.n_stop = 1;
        p.include_stop_str_in_output = include;
    }
    return req_create(prompt, n_prompt, &p);
}

/* Stop strings that straddle token boundaries: the text is cut right
 * before the first occurrence (or after it when included), the tokens
 * that produced it are kept, and nothing past it is generated. */
static void test_stop_strings(void)
{
    struct config c = {
        .name = "stop", .num_blocks = 256, .budget = 64, .max_seqs = 8, .prefix = true};
    struct engine *e = start_engine(&c, -1, NULL);
    int tried = 0;
    for (int trial = 0; trial < 12; trial++) {
        int32_t prompt[8];
        for (int i = 0; i < 8; i++)
            prompt[i] = 10 + rndn(900);
        struct request *free_run = run_one(e, make_stop_request(prompt, 8, NULL, false));
        struct choice_output *co = &free_run->choices[0];
        /* A stop string made of the last 2 bytes of token k's text and the
         * first 2 bytes of token k+1's text. */
        int k = 3 + rndn(20);
        struct strbuf a = {0}, ab = {0};
        tok_decode(tok, co->tokens.v, (size_t)k + 1, true, &a);
        tok_decode(tok, co->tokens.v, (size_t)k + 2, true, &ab);
        if (a.len < 2 || ab.len < a.len + 2 || utf8_valid_prefix(ab.s, ab.len) != ab.len) {
            sb_free(&a);
            sb_free(&ab);
            req_release(free_run);
            continue;
        }
        char stop[5];
        memcpy(stop, ab.s + a.len - 2, 4);
        stop[4] = 0;
        if (utf8_valid_prefix(stop, 4) != 4 || memchr(stop, 0, 4)) {
            sb_free(&a);
            sb_free(&ab);
            req_release(free_run);
            continue;
        }
        tried++;
        /* Texts may hold NUL bytes (byte-level tokens): compare with lengths. */
        const char *first = memmem(co->text.s, co->text.len, stop, 4);
        CHECK(first != NULL);
        size_t cut = first ? (size_t)(first - co->text.s) : 0;
        for (int include = 0; include < 2; include++) {
            static struct stream_log log;
            struct request *r = make_stop_request(prompt, 8, stop, include);
            r->on_update = on_update_log;
            r->on_update_ctx = &log;
            run_one(e, r);
            check_stream_log(&log, r);
            struct choice_output *cs = &r->choices[0];
            CHECK(cs->finish == FINISH_STOP && cs->stop_string_index == 0 && cs->stop_token == -1);
            size_t want = cut + (include ? 4 : 0);
            CHECK(cs->text.len == want && memcmp(sb_cstr(&cs->text), co->text.s, want) == 0);
            /* Generation stopped at the token that completed the stop string. */
            struct strbuf upto = {0}, before = {0};
            tok_decode(tok, cs->tokens.v, cs->tokens.n, true, &upto);
            tok_decode(tok, cs->tokens.v, cs->tokens.n - 1, true, &before);
            CHECK(memmem(upto.s, upto.len, stop, 4) != NULL);
            CHECK(before.len == 0 || memmem(before.s, before.len, stop, 4) == NULL);
            sb_free(&upto);
            sb_free(&before);
            req_release(r);
        }
        sb_free(&a);
        sb_free(&ab);
        req_release(free_run);
    }
    CHECK(tried >= 3);
    engine_destroy(e);
}

/* Aborting requests mid-generation ends them with FINISH_ABORT and gives
 * every KV block back. */
static void test_abort(void)
{
    struct config c = {
        .name = "abort", .num_blocks = 64, .budget = 64, .max_seqs = 8, .prefix = true};
    struct engine *e = start_engine(&c, -1, NULL);
    struct request *reqs[6];
    struct es_err err = {{0}};
    for (int i = 0; i < 6; i++) {
        struct request_params p;
        request_params_defaults(&p);
        p.max_tokens = 900;
        p.ignore_eos = true;
        p.n = i == 2 ? 3 : 1;
        p.sampling.seed = (uint64_t)i;
        int32_t prompt[40];
        for (int t = 0; t < 40; t++)
            prompt[t] = 10 + rndn(900);
        reqs[i] = req_create(prompt, 40, &p);
        CHECK(engine_submit(e, reqs[i], &err) == ES_OK);
    }
    /* Wait until every choice has some output, then abort them all. */
    for (int t = 0; t < 20000; t++) {
        pthread_mutex_lock(&reqs[5]->lock);
        size_t n = reqs[5]->choices[0].tokens.n;
        pthread_mutex_unlock(&reqs[5]->lock);
        if (n >= 3) break;
        usleep(500);
    }
    for (int i = 0; i < 6; i++)
        req_abort(reqs[i]);
    wait_finished(reqs, 6);
    for (int i = 0; i < 6; i++) {
        for (int ch = 0; ch < reqs[i]->params.n; ch++) {
            CHECK(reqs[i]->choices[ch].finish == FINISH_ABORT);
            CHECK(reqs[i]->choices[ch].tokens.n < 900);
        }
        CHECK(reqs[i]->t_finished > 0);
        req_release(reqs[i]);
    }
    struct engine_stats st;
    wait_idle(e, &st);
    CHECK(st.running == 0 && st.free_kv_blocks == 64);
    engine_destroy(e);
}

static void test_rejections(void)
{
    struct config c = {
        .name = "reject", .num_blocks = 20, .budget = 64, .max_seqs = 4, .prefix = true};
    struct engine *e = start_engine(&c, -1, NULL);
    struct es_err err = {{0}};
    int32_t prompt[400];
    for (int i = 0; i < 400; i++)
        prompt[i] = 20 + i;
    struct request_params p;
    /* prompt + max_tokens over the context length */
    request_params_defaults(&p);
    p.max_tokens = MAX_MODEL_LEN - 399;
    struct request *r = req_create(prompt, 400, &p);
    CHECK(engine_submit(e, r, &err) == ES_EINVAL && strstr(err.msg, "context length"));
    req_release(r);
    /* over the whole KV cache (20 blocks = 320 tokens) */
    request_params_defaults(&p);
    p.max_tokens = 10;
    r = req_create(prompt, 400, &p);
    es_err_clear(&err);
    CHECK(engine_submit(e, r, &err) == ES_EINVAL && strstr(err.msg, "KV cache"));
    req_release(r);
    /* n over max_num_seqs */
    request_params_defaults(&p);
    p.n = 5;
    r = req_create(prompt, 10, &p);
    es_err_clear(&err);
    CHECK(engine_submit(e, r, &err) == ES_EINVAL);
    req_release(r);
    /* token id outside the vocabulary */
    request_params_defaults(&p);
    prompt[3] = FAKE_VOCAB;
    r = req_create(prompt, 10, &p);
    es_err_clear(&err);
    CHECK(engine_submit(e, r, &err) == ES_EINVAL);
    req_release(r);
    /* empty prompt */
    request_params_defaults(&p);
    r = req_create(prompt, 0, &p);
    es_err_clear(&err);
    CHECK(engine_submit(e, r, &err) == ES_EINVAL);
    req_release(r);
    /* still serving: one that fits exactly */
    prompt[3] = 23;
    request_params_defaults(&p);
    p.max_tokens = 20;
    p.ignore_eos = true;
    r = req_create(prompt, 300, &p);
    run_one(e, r);
    CHECK(r->choices[0].tokens.n == 20 && r->choices[0].finish == FINISH_LENGTH);
    req_release(r);
    engine_stop(e, true);
    /* after stop nothing is accepted */
    request_params_defaults(&p);
    r = req_create(prompt, 10, &p);
    CHECK(engine_submit(e, r, &err) == ES_EFULL);
    req_release(r);
    engine_destroy(e);
}

static void test_backend_failure(void)
{
    struct config c = {
        .name = "fail", .num_blocks = 64, .budget = 64, .max_seqs = 8, .prefix = true};
    struct engine *e = start_engine(&c, 5, NULL);
    struct request *reqs[4];
    struct es_err err = {{0}};
    for (int i = 0; i < 4; i++) {
        struct request_params p;
        request_params_defaults(&p);
        p.max_tokens = 100;
        p.ignore_eos = true;
        int32_t prompt[10] = {11, 12, 13, 14, 15, 16, 17, 18, 19, (int32_t)i};
        reqs[i] = req_create(prompt, 10, &p);
        CHECK(engine_submit(e, reqs[i], &err) == ES_OK);
    }
    wait_finished(reqs, 4);
    for (int i = 0; i < 4; i++) {
        CHECK(reqs[i]->choices[0].finish == FINISH_ERROR);
        CHECK(strstr(reqs[i]->error_message, "fell over") != NULL);
        req_release(reqs[i]);
    }
    CHECK(!engine_healthy(e));
    struct request_params p;
    request_params_defaults(&p);
    int32_t prompt[2] = {11, 12};
    struct request *r = req_create(prompt, 2, &p);
    CHECK(engine_submit(e, r, &err) == ES_EDEVICE);
    req_release(r);
    engine_destroy(e);
}

/* engine_fail() from another thread (node 0's watchdog): an idle engine
 * turns unhealthy at once; a busy one ends its running requests with
 * FINISH_ERROR and that reason; only the first reason is kept. */
static void test_external_failure(void)
{
    struct config c = {
        .name = "external", .num_blocks = 64, .budget = 64, .max_seqs = 8, .prefix = true};
    struct es_err err = {{0}};
    struct request_params p;
    int32_t prompt[10] = {11, 12, 13, 14, 15, 16, 17, 18, 19, 20};

    struct engine *idle = start_engine(&c, -1, NULL);
    engine_fail(idle, "node 1 closed its control connection");
    CHECK(!engine_healthy(idle));
    request_params_defaults(&p);
    struct request *r = req_create(prompt, 10, &p);
    CHECK(engine_submit(idle, r, &err) == ES_EDEVICE);
    CHECK(strstr(err.msg, "node 1 closed its control connection") != NULL);
    req_release(r);
    engine_destroy(idle);

    struct engine *e = start_engine(&c, -1, NULL);
    struct request *reqs[2];
    for (int i = 0; i < 2; i++) {
        request_params_defaults(&p);
        p.max_tokens = 900;
        p.ignore_eos = true;
        reqs[i] = req_create(prompt, 10, &p);
        CHECK(engine_submit(e, reqs[i], &err) == ES_OK);
    }
    for (int t = 0; t < 20000; t++) { /* both running */
        pthread_mutex_lock(&reqs[1]->lock);
        size_t n = reqs[1]->choices[0].tokens.n;
        pthread_mutex_unlock(&reqs[1]->lock);
        if (n >= 2) break;
        usleep(500);
    }
    engine_fail(e, "node 2 did not answer a heartbeat");
    engine_fail(e, "a later reason");
    wait_finished(reqs, 2);
    for (int i = 0; i < 2; i++) {
        CHECK(reqs[i]->choices[0].finish == FINISH_ERROR);
        CHECK(reqs[i]->choices[0].tokens.n < 900);
        CHECK(strstr(reqs[i]->error_message, "node 2 did not answer") != NULL);
        req_release(reqs[i]);
    }
    CHECK(!engine_healthy(e));
    engine_destroy(e);
}

/* A forward that outlives --step-timeout and then comes back (a device
 * that recovers late): the engine fails its requests at the timeout, the
 * client lets go of them, and the late forward still reads their batch
 * rows (token histories, sampling parameters). Those must still be alive:
 * under AddressSanitizer a freed history is a heap-use-after-free here. */
static void test_late_forward(void)
{
    struct config c = {.name = "late",
                       .num_blocks = 64,
                       .budget = 64,
                       .max_seqs = 8,
                       .prefix = true,
                       .step_timeout_s = 0.2};
    struct backend *be = NULL;
    struct engine *e = start_engine(&c, -1, &be);
    fake_backend_hold(be, 3); /* before the first request: no forward has run */
    struct es_err err = {{0}};
    struct request *reqs[3];
    for (int i = 0; i < 3; i++) {
        struct request_params p;
        request_params_defaults(&p);
        p.max_tokens = 50;
        p.ignore_eos = true;
        p.sampling.temperature = 0.7f;
        p.sampling.repetition_penalty = 1.2f; /* the sampler reads the history */
        p.sampling.seed = 7 + (uint64_t)i;
        int32_t prompt[6] = {21, 22, 23, 24, 25, (int32_t)i};
        reqs[i] = req_create(prompt, 6, &p);
        CHECK(engine_submit(e, reqs[i], &err) == ES_OK);
    }
    wait_finished(reqs, 3);
    for (int i = 0; i < 3; i++) {
        CHECK(reqs[i]->choices[0].finish == FINISH_ERROR);
        CHECK(reqs[i]->error_message && strstr(reqs[i]->error_message, "--step-timeout"));
        req_release(reqs[i]);
    }
    CHECK(!engine_healthy(e));
    long before = fake_backend_forwards_done(be);
    fake_backend_release(be);
    for (int t = 0; t < 5000 && fake_backend_forwards_done(be) == before; t++)
        usleep(1000);
    CHECK(fake_backend_forwards_done(be) == before + 1); /* it ran, on what it was given */
    CHECK(fake_backend_stats(be)->bad_batches == 0);
    engine_destroy(e); /* left behind with its backend: its runner was given up on */
}

/* Echo scoring reuses cached prefixes only where the cached blocks also
 * carry their prompt-logprob rows, and every position stays exact: after
 * a plain request (KV only), a first echo (computes and stores the rows),
 * repeats, prompts diverging inside and at a block boundary, and a top-k
 * larger than the rows keep. */
static void test_prompt_logprobs_cached(void)
{
    struct config c = {
        .name = "echo", .num_blocks = 128, .budget = 64, .max_seqs = 8, .prefix = true};
    struct engine *e = start_engine(&c, -1, NULL);
    static struct spec s;
    memset(&s, 0, sizeof(s));
    s.n_prompt = 150;
    for (int i = 0; i < 150; i++)
        s.prompt[i] = 10 + rndn(900);
    s.n = 1;
    s.max_tokens = 5;
    s.logprobs = -1;
    s.prompt_logprobs = -1;
    s.temperature = 0;
    s.top_p = 1;
    s.stop_id = -1;
    s.ignore_eos = true;
    struct request *r = run_one(e, make_request(&s)); /* caches KV, no rows */
    CHECK(verify(&s, r) == 0);
    req_release(r);
    struct {
        int prompt_logprobs, max_tokens, logprobs, diverge_at, want_cached;
    } cases[] = {
        {1, 0, -1, -1, 0},   /* rows not cached yet: computes them all */
        {1, 0, -1, -1, 144}, /* 9 full blocks, the last token recomputed */
        {2, 1, 2, -1, 144},  /* echo + one generated token */
        {0, 0, -1, 100, 96}, /* diverges inside block 6 */
        {1, 0, -1, 96, 80},  /* diverges at block 6's first token: block 5's row 15 misses */
        {6, 0, -1, -1, 0},   /* more top entries than the cache keeps */
        {-1, 5, -1, -1, 144} /* plain request: KV reuse as before */
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        static struct spec t;
        t = s;
        t.prompt_logprobs = cases[k].prompt_logprobs;
        t.max_tokens = cases[k].max_tokens;
        t.logprobs = cases[k].logprobs;
        if (cases[k].diverge_at >= 0)
            for (int i = cases[k].diverge_at; i < t.n_prompt; i++)
                t.prompt[i] = 950 - i % 40;
        r = run_one(e, make_request(&t));
        CHECK(verify(&t, r) == 0);
        if (r->n_cached_prompt_tokens != cases[k].want_cached)
            fprintf(stderr, "echo case %zu: %d cached, want %d\n", k, r->n_cached_prompt_tokens,
                    cases[k].want_cached);
        CHECK(r->n_cached_prompt_tokens == cases[k].want_cached);
        if (t.max_tokens == 0)
            CHECK(r->choices[0].finish == FINISH_LENGTH && r->choices[0].tokens.n == 0);
        req_release(r);
    }
    engine_destroy(e);
}

static const char *shared_dir(void)
{
    const char *d = getenv("EVAL_SHARED_DIR");
    return d && *d ? d : "../shared";
}

int main(void)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/tokenizers/llama3_1", shared_dir());
    struct es_err err = {{0}};
    if (tok_load(path, &tok, &err) != ES_OK) {
        fprintf(stderr, "test_engine: skipped, no tokenizer at %s: %s\n", path, err.msg);
        return 77;
    }
    if (smp_scratch_create(FAKE_VOCAB, &smp, &err) != ES_OK) return 1;
    ref_logits = malloc(FAKE_VOCAB * sizeof(float));
    make_specs();

    test_rejections();
    test_stop_strings();
    test_prompt_logprobs_cached();
    test_abort();
    test_backend_failure();
    test_external_failure();
    test_late_forward();

    const struct config configs[] = {
        {.name = "big", .num_blocks = 2048, .budget = 512, .max_seqs = 64, .prefix = true},
        {.name = "tiny-kv", .num_blocks = 26, .budget = 64, .max_seqs = 8, .prefix = true},
        {.name = "budget-16", .num_blocks = 512, .budget = 16, .max_seqs = 4, .prefix = true},
        {.name = "no-prefix", .num_blocks = 2048, .budget = 256, .max_seqs = 32, .prefix = false},
        {.name = "big-sync",
         .num_blocks = 2048,
         .budget = 512,
         .max_seqs = 64,
         .prefix = true,
         .sync = true},
        {.name = "tiny-kv-sync",
         .num_blocks = 26,
         .budget = 64,
         .max_seqs = 8,
         .prefix = true,
         .sync = true},
        /* slow steps: requests arrive and finish while one is in flight */
        {.name = "tiny-kv-slow",
         .num_blocks = 26,
         .budget = 64,
         .max_seqs = 8,
         .prefix = true,
         .delay_us = 300},
    };
    for (size_t i = 0; i < sizeof(configs) / sizeof(configs[0]); i++)
        run_workload(&configs[i]);

    free(ref_logits);
    smp_scratch_destroy(smp);
    tok_free(tok);
    return test_result("test_engine");
}
