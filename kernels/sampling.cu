/*
 * sampling.cu - the seeded draw of rows with non-greedy settings
 * (temperature, top_k, top_p, min_p, penalties, logit_bias, banned ids),
 * with the semantics of server/backend/sampling.c (see sampling.h), one
 * thread block per row.
 *
 * Per row: the processed logits w (NaN -> -inf, the host-built edits in
 * sampling.c's order and float arithmetic, times 1 / temperature) are
 * materialised in the caller's scratch row; p = exp(w - max w) is
 * recomputed wherever it is needed by the same polynomial as sampling.c's
 * exp8, operation for operation (explicit _rn intrinsics: no FMA
 * contraction), so every p is bit-identical to the CPU's. top_k, top_p
 * and the draw are each "the first token in canonical order (w
 * descending, id ascending) where a running count or double sum of p
 * crosses a threshold": smp_select finds it by a radix selection over the
 * composite key (order-preserving bits of w, then the id reversed), 11
 * bits per pass with shared-memory histograms of counts and double masses,
 * stopping as soon as one element is left. The vocabulary is never sorted.
 * Masses are summed in a different order than on the CPU, so a target
 * within double round-off of a boundary may fall on the other side.
 *
 * Every __syncthreads is reached by the whole block: loops over the
 * vocabulary run the same trip count on every thread, and every branch
 * around a barrier depends only on values every thread read from shared
 * memory (or computed from block reductions). Owns nothing.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include "kernels.h"
#include "rng.h"

/* Two 512-thread blocks per SM (58 registers a thread allow no more than
 * 1024 threads an SM): one block's barriers overlap the other's passes. */
#define SMP_THREADS 512
#define SMP_BLOCKS_PER_SM 2
#define SMP_WARPS (SMP_THREADS / 32)
#define SMP_DIGIT 11 /* bits of the composite key resolved per pass */
#define SMP_BUCKETS (1 << SMP_DIGIT)
#define SMP_PER (SMP_BUCKETS / SMP_THREADS) /* histogram positions per thread in a scan */
static_assert(SMP_BUCKETS % SMP_THREADS == 0 && SMP_WARPS <= 32, "scan layout");
#define SMP_FULL 0xffffffffu

/* ~29 KB (512 threads): static, under the 48 KB limit. */
struct smp_smem {
    double mass[SMP_BUCKETS];    /* histogram: sum of p per digit */
    int count[SMP_BUCKETS];      /* histogram: elements per digit */
    double stage[SMP_WARPS][32]; /* one warp's values for its aggregated adds */
    double scan[SMP_WARPS];      /* block scan: per-warp totals */
    double red_d[2][SMP_WARPS];  /* block sums */
    unsigned long long red_u[SMP_WARPS];
    float red_f[SMP_WARPS];
    int red_i[SMP_WARPS];
    int pick, pick_alt, pick_id; /* scan position / element chosen by the block */
    double pick_before;
};

/* What a selection runs over: the row and the kept set K. */
struct smp_ctx {
    const float *w; /* [V] processed logits, temperature applied */
    int V;
    int id_bits;     /* bits of V - 1 */
    float m;         /* max w */
    bool top_k;      /* K: only (key, id) up to the top-k boundary */
    uint32_t kb_key; /* the k-th token's key and id */
    int kb_id;
    bool live_only; /* K: only p > 0 (no top_k) */
    float min_p;    /* > 0: K only p >= min_p */
};

struct smp_pick {
    bool found;
    int id;
    double before; /* mass (or count) of K before the token in canonical order */
};

/* ---- per-element arithmetic ---- */

/* sampling.c's exp8, one lane: exp(x) for x <= 0, exactly 0 below -87.3
 * and for -inf; every operation rounded separately as on the CPU. */
__device__ __forceinline__ float smp_exp(float x)
{
    const float lo = -87.3f, round_magic = 12582912.0f;
    bool under = x < lo;
    x = under ? lo : x;
    float nf = __fsub_rn(__fadd_rn(__fmul_rn(x, 1.44269504088896341f), round_magic), round_magic);
    float r = __fadd_rn(__fsub_rn(x, __fmul_rn(nf, 0.693359375f)), __fmul_rn(nf, 2.12194440e-4f));
    float poly = __fadd_rn(__fmul_rn(r, 1.9875691500e-4f), 1.3981999507e-3f);
    poly = __fadd_rn(__fmul_rn(poly, r), 8.3334519073e-3f);
    poly = __fadd_rn(__fmul_rn(poly, r), 4.1665795894e-2f);
    poly = __fadd_rn(__fmul_rn(poly, r), 1.6666665459e-1f);
    poly = __fadd_rn(__fmul_rn(poly, r), 5.0000001201e-1f);
    float y = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(poly, r), r), r), 1.0f);
    float scale = __int_as_float(((int)nf + 127) << 23);
    return under ? 0.0f : __fmul_rn(y, scale);
}

__device__ __forceinline__ float smp_p(const smp_ctx &c, float w)
{
    return smp_exp(__fsub_rn(w, c.m));
}

/* Order-preserving bits of w (larger w, larger key); -0 and +0 are one
 * value, as the CPU's float comparisons see them. */
__device__ __forceinline__ uint32_t smp_key(float w)
{
    uint32_t b = __float_as_uint(w == 0.0f ? 0.0f : w);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* The composite key: descending order = canonical order. */
__device__ __forceinline__ uint64_t smp_ck(const smp_ctx &c, uint32_t key, int id)
{
    return ((uint64_t)key << c.id_bits) | (uint64_t)(uint32_t)(c.V - 1 - id);
}

__device__ __forceinline__ bool smp_in_top_k(const smp_ctx &c, uint32_t key, int id)
{
    return !c.top_k || key > c.kb_key || (key == c.kb_key && id <= c.kb_id);
}

__device__ __forceinline__ bool smp_kept(const smp_ctx &c, uint32_t key, int id, float p)
{
    if (!smp_in_top_k(c, key, id)) return false;
    if (c.live_only && !(p > 0.0f)) return false;
    return !(c.min_p > 0.0f) || p >= c.min_p;
}

/* sampling.c's `before`: a precedes b in canonical order. */
__device__ __forceinline__ bool smp_before(float wa, int ida, float wb, int idb)
{
    return wa > wb || (wa == wb && ida < idb);
}

/* ---- block reductions (every thread gets the result) ---- */

__device__ unsigned long long smp_block_max_u64(unsigned long long v, smp_smem *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        unsigned long long t = __shfl_xor_sync(SMP_FULL, v, o);
        v = t > v ? t : v;
    }
    __syncthreads(); /* the previous call's readers are done */
    if (lane == 0) sh->red_u[warp] = v;
    __syncthreads();
    v = lane < nw ? sh->red_u[lane] : 0ull;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        unsigned long long t = __shfl_xor_sync(SMP_FULL, v, o);
        v = t > v ? t : v;
    }
    return v;
}

__device__ void smp_block_sum2(double *a, double *b, smp_smem *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    double x = *a, y = *b;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        x += __shfl_xor_sync(SMP_FULL, x, o);
        y += __shfl_xor_sync(SMP_FULL, y, o);
    }
    __syncthreads();
    if (lane == 0) {
        sh->red_d[0][warp] = x;
        sh->red_d[1][warp] = y;
    }
    __syncthreads();
    x = lane < nw ? sh->red_d[0][lane] : 0.0;
    y = lane < nw ? sh->red_d[1][lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        x += __shfl_xor_sync(SMP_FULL, x, o);
        y += __shfl_xor_sync(SMP_FULL, y, o);
    }
    *a = x;
    *b = y;
}

/* max of m (NaN dropped) and sum of n */
__device__ void smp_block_max_count(float *m, int *n, smp_smem *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float x = *m;
    int y = *n;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        x = fmaxf(x, __shfl_xor_sync(SMP_FULL, x, o));
        y += __shfl_xor_sync(SMP_FULL, y, o);
    }
    __syncthreads();
    if (lane == 0) {
        sh->red_f[warp] = x;
        sh->red_i[warp] = y;
    }
    __syncthreads();
    x = lane < nw ? sh->red_f[lane] : -INFINITY;
    y = lane < nw ? sh->red_i[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        x = fmaxf(x, __shfl_xor_sync(SMP_FULL, x, o));
        y += __shfl_xor_sync(SMP_FULL, y, o);
    }
    *m = x;
    *n = y;
}

/* Exclusive prefix sum of v in thread order. */
__device__ double smp_block_exclusive_scan(double v, smp_smem *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    double inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        double t = __shfl_up_sync(SMP_FULL, inc, o);
        if (lane >= o) inc += t;
    }
    double ex = __shfl_up_sync(SMP_FULL, inc, 1);
    if (lane == 0) ex = 0.0;
    __syncthreads();
    if (lane == 31) sh->scan[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        double tv = lane < nw ? sh->scan[lane] : 0.0, ti = tv;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            double t = __shfl_up_sync(SMP_FULL, ti, o);
            if (lane >= o) ti += t;
        }
        double te = __shfl_up_sync(SMP_FULL, ti, 1);
        if (lane < nw) sh->scan[lane] = lane == 0 ? 0.0 : te;
    }
    __syncthreads();
    return sh->scan[warp] + ex;
}

/* ---- argmax ---- */

/* sampling.c's argmax (a sequential `>` scan from id 0): the first
 * non-NaN maximum, ties to the lowest id; 0 when v[0] is NaN. */
__device__ int smp_seq_argmax(const float *v, int V, smp_smem *sh)
{
    unsigned long long best = 0; /* (key, reversed id): every non-NaN value encodes above 0 */
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float a = v[i];
        if (isnan(a)) continue;
        unsigned long long c = ((unsigned long long)smp_key(a) << 32) | (0xffffffffu - (uint32_t)i);
        best = c > best ? c : best;
    }
    best = smp_block_max_u64(best, sh);
    if (best == 0 || isnan(v[0])) return 0;
    return (int)(0xffffffffu - (uint32_t)best);
}

/* The last token of K in canonical order (smallest key, then largest id). */
__device__ int smp_last_kept(const smp_ctx &c, smp_smem *sh)
{
    unsigned long long best = 0; /* encoded + 1: 0 = none */
    for (int i = threadIdx.x; i < c.V; i += blockDim.x) {
        float w = c.w[i];
        uint32_t key = smp_key(w);
        if (!smp_kept(c, key, i, smp_p(c, w))) continue;
        unsigned long long e = (((unsigned long long)~key << 32) | (uint32_t)i) + 1;
        best = e > best ? e : best;
    }
    best = smp_block_max_u64(best, sh);
    return best ? (int)(uint32_t)(best - 1) : 0;
}

/* ---- radix selection ---- */

/* histogram[digit] += (1, q) for every lane with digit >= 0; lanes with
 * the same digit are summed first, so one atomic per distinct digit per
 * warp. All 32 lanes of the warp call it. */
__device__ __forceinline__ void smp_hist_add(smp_smem *sh, int digit, double q, bool by_mass)
{
    if (!__any_sync(SMP_FULL, digit >= 0)) return;
    int lane = threadIdx.x & 31;
    unsigned peers = __match_any_sync(SMP_FULL, digit);
    double *stage = sh->stage[threadIdx.x >> 5];
    if (by_mass) {
        stage[lane] = q;
        __syncwarp();
    }
    if (digit >= 0 && lane == __ffs(peers) - 1) {
        if (by_mass) {
            double s = 0.0;
            for (unsigned left = peers; left; left &= left - 1)
                s += stage[__ffs(left) - 1];
            atomicAdd(&sh->mass[digit], s);
        }
        atomicAdd(&sh->count[digit], __popc(peers));
    }
    __syncwarp();
}

__device__ __forceinline__ bool smp_crosses(double cum, double target, bool reach)
{
    return reach ? cum >= target : cum > target;
}

struct smp_level {
    int pos;       /* scan position of the chosen bucket, -1 = none */
    int count;     /* its elements */
    double before; /* quantity before it, acc included */
};

/* Scans the histogram in canonical order (digit descending; thread t owns
 * the SMP_PER positions from t * SMP_PER) for the first non-empty bucket
 * where acc plus the running quantity crosses target. With clamp (a level
 * below one that crossed: only round-off of the regrouped sums can leave
 * it short) and no crossing, the last bucket with mass is taken (else the
 * last non-empty one). */
__device__ smp_level smp_scan_pick(smp_smem *sh, int nb, bool by_mass, double acc, double target,
                                   bool reach, bool clamp)
{
    int t = threadIdx.x, p0 = t * SMP_PER;
    int cnt[SMP_PER];
    double q[SMP_PER], sum = 0.0;
#pragma unroll
    for (int k = 0; k < SMP_PER; k++) {
        int pos = p0 + k;
        cnt[k] = pos < nb ? sh->count[nb - 1 - pos] : 0;
        q[k] = pos >= nb ? 0.0 : by_mass ? sh->mass[nb - 1 - pos] : (double)cnt[k];
        sum += q[k];
    }
    double ex = acc + smp_block_exclusive_scan(sum, sh);
    int mine = INT_MAX;
    double bef = 0.0, run = ex;
#pragma unroll
    for (int k = 0; k < SMP_PER; k++) {
        double inc = run + q[k];
        if (mine == INT_MAX && cnt[k] > 0 && smp_crosses(inc, target, reach)) {
            mine = p0 + k;
            bef = run;
        }
        run = inc;
    }
    if (t == 0) sh->pick = INT_MAX; /* last read before the previous call's final barrier */
    __syncthreads();
    if (mine != INT_MAX) atomicMin(&sh->pick, mine);
    __syncthreads();
    int pick = sh->pick;
    if (pick == INT_MAX && clamp) {
        __syncthreads(); /* every thread has read sh->pick */
        if (t == 0) {
            sh->pick = -1;
            sh->pick_alt = -1;
        }
        __syncthreads();
        int with_mass = -1, with_any = -1;
#pragma unroll
        for (int k = 0; k < SMP_PER; k++) {
            if (cnt[k] > 0) with_any = p0 + k;
            if (cnt[k] > 0 && q[k] > 0.0) with_mass = p0 + k;
        }
        if (with_mass >= 0) atomicMax(&sh->pick, with_mass);
        if (with_any >= 0) atomicMax(&sh->pick_alt, with_any);
        __syncthreads();
        pick = sh->pick >= 0 ? sh->pick : sh->pick_alt;
        run = ex;
#pragma unroll
        for (int k = 0; k < SMP_PER; k++) {
            if (pick == p0 + k) {
                mine = pick;
                bef = run;
            }
            run += q[k];
        }
    }
    smp_level lv;
    lv.pos = pick == INT_MAX || pick < 0 ? -1 : pick;
    lv.count = lv.pos >= 0 ? sh->count[nb - 1 - lv.pos] : 0;
    if (lv.pos >= 0 && mine == lv.pos) sh->pick_before = bef;
    __syncthreads();
    lv.before = sh->pick_before;
    return lv;
}

/* The one element of the selection set whose composite key starts with
 * prefix (the key shifted right by rem bits). */
__device__ int smp_find(const smp_ctx &c, bool all, uint64_t prefix, int rem, smp_smem *sh)
{
    if (threadIdx.x == 0) sh->pick_id = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < c.V; i += blockDim.x) {
        float w = c.w[i];
        uint32_t key = smp_key(w);
        if ((smp_ck(c, key, i) >> rem) != prefix) continue;
        if (all || smp_kept(c, key, i, smp_p(c, w))) sh->pick_id = i;
    }
    __syncthreads();
    int id = sh->pick_id;
    __syncthreads(); /* before anyone writes pick_id again */
    return id;
}

/* The first token in canonical order, over every token (all) or over K,
 * where the running count (by_mass false) or double sum of p reaches
 * (reach: >=) or exceeds (>) target; found = false when the total stays
 * short. Radix passes over the composite key, most significant digit
 * first, each histogramming only the tokens that match the prefix chosen
 * so far; stops when one token is left or the key is exhausted. */
__device__ smp_pick smp_select(const smp_ctx &c, bool all, bool by_mass, double target, bool reach,
                               smp_smem *sh)
{
    const int total = 32 + c.id_bits;
    uint64_t prefix = 0;
    int known = 0;
    double acc = 0.0;
    bool need_p = by_mass || !all;
    for (;;) {
        int rem = total - known;
        int d = rem < SMP_DIGIT ? rem : SMP_DIGIT;
        int shift = rem - d, nb = 1 << d;
        for (int b = threadIdx.x; b < nb; b += blockDim.x) {
            sh->mass[b] = 0.0;
            sh->count[b] = 0;
        }
        __syncthreads();
        for (int base = 0; base < c.V; base += blockDim.x) {
            int i = base + threadIdx.x, digit = -1;
            double q = 0.0;
            if (i < c.V) {
                float w = c.w[i];
                uint32_t key = smp_key(w);
                uint64_t ck = smp_ck(c, key, i);
                if (known == 0 || (ck >> rem) == prefix) {
                    float p = need_p ? smp_p(c, w) : 0.0f;
                    if (all || smp_kept(c, key, i, p)) {
                        digit = (int)((ck >> shift) & (uint64_t)(nb - 1));
                        q = (double)p;
                    }
                }
            }
            smp_hist_add(sh, digit, q, by_mass);
        }
        __syncthreads();
        smp_level lv = smp_scan_pick(sh, nb, by_mass, acc, target, reach, known > 0);
        smp_pick r = {false, 0, 0.0};
        if (lv.pos < 0) return r;
        prefix = (prefix << d) | (uint64_t)(nb - 1 - lv.pos);
        known += d;
        r.found = true;
        r.before = lv.before;
        acc = lv.before;
        if (known == total) {
            uint64_t id_mask = (1ull << c.id_bits) - 1;
            r.id = c.V - 1 - (int)(prefix & id_mask);
            return r;
        }
        if (lv.count == 1) {
            r.id = smp_find(c, all, prefix, total - known, sh);
            return r;
        }
    }
}

/* ---- one row ---- */

/* sampling.c's process_logits for one edit record: the same operations in
 * the same order, each rounded once. */
__device__ void smp_apply_edit(const float *x, float *w, const kern_logit_edit *ed, int n_edits,
                               int n_extra, int e, float rep)
{
    kern_logit_edit d = ed[e];
    float v = x[d.id];
    if (isnan(v)) v = -INFINITY;
    if (d.flags & KERN_EDIT_BIAS) {
        v = __fadd_rn(v, d.bias);
        if (d.flags & KERN_EDIT_MORE_BIAS)
            for (int j = n_edits; j < n_edits + n_extra; j++)
                if (ed[j].id == d.id) v = __fadd_rn(v, ed[j].bias);
    }
    if (d.flags & KERN_EDIT_BAN) v = -INFINITY;
    if (d.flags & KERN_EDIT_REPEAT) v = v > 0.0f ? __fdiv_rn(v, rep) : __fmul_rn(v, rep);
    if (d.flags & KERN_EDIT_PENALTY) v = __fsub_rn(v, d.penalty);
    w[d.id] = v;
}

/* w := processed logits (temperature applied when drawing); *m = max w,
 * *n_live = tokens with w != -inf. */
__device__ void smp_process(const float *x, float *w, int V, const kern_sample_row &rp,
                            const kern_logit_edit *ed, float *m, int *n_live, smp_smem *sh)
{
    bool draw = rp.mode == KERN_SAMPLE_DRAW;
    bool fused = rp.n_edits == 0; /* temperature in the same pass */
    float inv_t = rp.inv_temperature, mx = -INFINITY;
    int live = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = x[i];
        if (isnan(v)) v = -INFINITY;
        if (fused && draw) {
            v = __fmul_rn(v, inv_t);
            mx = fmaxf(mx, v);
            live += v != -INFINITY;
        }
        w[i] = v;
    }
    if (!fused) {
        __syncthreads(); /* the edits overwrite what other threads wrote */
        for (int e = threadIdx.x; e < rp.n_edits; e += blockDim.x)
            smp_apply_edit(x, w, ed, rp.n_edits, rp.n_extra, e, rp.repetition_penalty);
        __syncthreads();
        if (draw)
            for (int i = threadIdx.x; i < V; i += blockDim.x) {
                float v = __fmul_rn(w[i], inv_t);
                w[i] = v;
                mx = fmaxf(mx, v);
                live += v != -INFINITY;
            }
    }
    smp_block_max_count(&mx, &live, sh); /* its barriers also publish w */
    *m = mx;
    *n_live = live;
}

/* Steps 4-5 of sampling.h (draw_live / draw_top_k of sampling.c). */
__device__ int smp_draw(const float *x, const float *w, int V, const kern_sample_row &rp, float m,
                        int n_live, smp_smem *sh)
{
    if (m == -INFINITY) return smp_seq_argmax(x, V, sh); /* everything banned */
    if (rp.min_p > 1.0f) return smp_seq_argmax(w, V, sh);
    smp_ctx c;
    c.w = w;
    c.V = V;
    c.id_bits = V > 1 ? 32 - __clz(V - 1) : 0;
    c.m = m;
    c.top_k = false;
    c.kb_key = 0;
    c.kb_id = 0;
    c.live_only = false;
    c.min_p = 0.0f;
    if (rp.top_k > 0 && rp.top_k < n_live) {
        smp_pick k = smp_select(c, true, false, (double)rp.top_k, true, sh);
        c.top_k = true;
        c.kb_id = k.id;
        c.kb_key = smp_key(w[k.id]);
    } else {
        c.live_only = true; /* draw_live: only tokens with p > 0 take part */
    }
    c.min_p = rp.min_p;
    /* z_dist: the distribution top_p is measured against (top-k, before
     * min_p); z_kept: the mass of K */
    double z_dist = 0.0, z_kept = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float wi = w[i], p = smp_p(c, wi);
        uint32_t key = smp_key(wi);
        if (!smp_in_top_k(c, key, i)) continue;
        z_dist += (double)p;
        if (smp_kept(c, key, i, p)) z_kept += (double)p;
    }
    smp_block_sum2(&z_dist, &z_kept, sh);
    bool have_last = false;
    int last = 0;
    double z = z_kept;
    if (rp.top_p < 1.0f) {
        smp_pick l = smp_select(c, false, true, (double)rp.top_p * z_dist, true, sh);
        if (l.found) {
            have_last = true;
            last = l.id;
            z = l.before + (double)smp_p(c, w[last]);
        }
    }
    double u = rng_uniform(rp.seed, rp.rng_counter);
    smp_pick hit = smp_select(c, false, true, u * z, false, sh);
    if (hit.found && !(have_last && smp_before(w[last], last, w[hit.id], hit.id))) return hit.id;
    /* round-off left the draw past the end: the last kept token */
    return have_last ? last : smp_last_kept(c, sh);
}

__global__ void __launch_bounds__(SMP_THREADS, SMP_BLOCKS_PER_SM)
    sample_kernel(const float *__restrict__ logits, int V, const kern_sample_row *__restrict__ rows,
                  const kern_logit_edit *__restrict__ edits, const double *__restrict__ lse,
                  int32_t *token, float *logprob, float *scratch)
{
    __shared__ smp_smem sh;
    const kern_sample_row rp = rows[blockIdx.x];
    const float *x = logits + (size_t)rp.row * V;
    float *w = scratch + (size_t)blockIdx.x * V;
    float m;
    int n_live;
    smp_process(x, w, V, rp, edits + rp.edit0, &m, &n_live, &sh);
    int tok = rp.mode == KERN_SAMPLE_DRAW ? smp_draw(x, w, V, rp, m, n_live, &sh)
                                          : smp_seq_argmax(w, V, &sh);
    if (threadIdx.x == 0) {
        token[rp.row] = tok;
        logprob[rp.row] = (float)((double)x[tok] - lse[rp.row]);
    }
}

extern "C" cudaError_t kern_sample(const float *logits, int V, const struct kern_sample_row *rows,
                                   int n, const struct kern_logit_edit *edits, const double *lse,
                                   int32_t *token, float *logprob, float *scratch,
                                   cudaStream_t stream)
{
    if (n <= 0) return cudaSuccess;
    sample_kernel<<<n, SMP_THREADS, 0, stream>>>(logits, V, rows, edits, lse, token, logprob,
                                                 scratch);
    return cudaGetLastError();
}
