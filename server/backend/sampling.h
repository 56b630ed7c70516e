/*
 * sampling.h - turning one row of raw logits into a struct row_result:
 * log-probabilities of the model's own distribution (log-softmax of the raw
 * logits), top-k log-probabilities, the rank and logprob of a scoring
 * target, and the sampled token.
 *
 * This is the reference semantics the CUDA sampler must reproduce:
 *
 *  1. logprobs: log_softmax(raw logits), max-subtracted, sum in double.
 *     Top lists and ranks order tokens by (logit descending, id ascending);
 *     target_rank = 1 + number of tokens before the target in that order.
 *  2. processed logits w (from the raw logits, in this order):
 *     logit_bias (added), banned_ids (-inf), repetition_penalty (HF: w / p
 *     if w > 0 else w * p, once per distinct token of prompt + generated),
 *     presence/frequency (OpenAI: w -= presence * (count > 0) + frequency *
 *     count, over generated tokens only).
 *  3. temperature < SMP_GREEDY_EPS: argmax of w (ties: lowest id).
 *  4. otherwise w /= temperature; the canonical order is (w descending, id
 *     ascending); p_i = exp(w_i - max w) (~1 ulp; exactly 0 below e^-87.3,
 *     so such tokens are never drawn). Filters: top_k keeps the first k
 *     in canonical order; top_p keeps, over the top-k distribution, every
 *     token whose cumulative probability before it (in canonical order) is
 *     below top_p (at least one); min_p keeps p_i >= min_p (p_max == 1;
 *     min_p > 1 leaves only the best token).
 *  5. draw: u = rng_uniform(seed, rng_counter); walking the kept tokens in
 *     canonical order, the token where the running sum of p_i (double)
 *     first exceeds u * sum(kept p_i) is chosen (the last kept if rounding
 *     leaves none). p_i and the order of the sums carry round-off, so a
 *     target within ~1e-6 (relative) of a boundary may fall either side;
 *     another implementation agrees token for token except there (the CPU
 *     finds crossings by value buckets and selection, never sorting the
 *     vocabulary).
 *
 * The scratch owns every buffer the work needs (sized for one vocabulary at
 * creation), so smp_row never allocates; one scratch per thread.
 */
#ifndef ES_SAMPLING_H
#define ES_SAMPLING_H

#include "backend.h"

/* Temperatures below this are greedy (as vLLM: dividing by them would
 * overflow the logits). */
#define SMP_GREEDY_EPS 1e-5f

struct smp_scratch;

enum es_status smp_scratch_create(int vocab_size, struct smp_scratch **out, struct es_err *err);
void smp_scratch_destroy(struct smp_scratch *s);

/* Fills out for one row. logits: fp32 [vocab_size] raw model logits (not
 * modified). Rows without `sample` get token -1, logprob 0. */
void smp_row(struct smp_scratch *s, const float *logits, const struct logit_row *row,
             struct row_result *out);

/* log(sum(exp(logits))) over [n], max-subtracted, accumulated in double. */
double smp_logsumexp(const float *logits, int n);

#endif
