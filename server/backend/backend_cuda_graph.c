/*
 * backend_cuda_graph.c - CUDA graphs for the layers of decode steps.
 *
 * A decode step launches a dozen kernels per layer, each a few tens of
 * microseconds at most; replaying them as one graph removes the launch
 * gaps between them. A graph bakes in its kernels' arguments, so a decode
 * step runs on a padded shape: its tokens rounded up to a bucket (pad
 * tokens have no context and store nothing) and its block-table columns
 * to a power of two, which also bounds the attention partition (see
 * pack_meta in backend_cuda_step.c). The metadata buffer sits at a fixed
 * address and is uploaded before the launch, outside the graph; the LM
 * head and sampling, whose row counts vary, run outside it too.
 *
 * A shape is captured the second time it runs: its first run tunes the
 * cuBLASLt algorithms of its row count, which synchronises and cannot be
 * captured. A capture that fails turns graphs off for the backend's life
 * (logged) and the step runs uncaptured. Graphs are off while profiling.
 *
 * With tensor parallelism each rank captures and replays its own graph,
 * NCCL's all-reduces included (NCCL supports stream capture, and mixes
 * captured collectives with the LM head's uncaptured gather on the same
 * communicator). The ranks run the same batches, so they capture the same
 * shapes at the same steps; a rank whose capture fails runs that step and
 * the later ones uncaptured, which issues the same collectives in the
 * same order, so the ranks still match.
 * They are on by default without --tp (EVAL_CUDA_GRAPHS=0 turns them off,
 * =1 turns them on under --tp too); tests/gpu/run.sh compares both paths
 * with the CPU backend (`test_gpu model` decodes through graphs from its
 * second decode step).
 *
 * Owns the graph executables in cb->graphs.
 */
#include "backend_cuda.h"
#include "log.h"

bool cgr_wanted(const struct cuda_backend *cb, const struct batch *b)
{
    return !cb->graphs.off && b->decode_only && !b->hidden_in && !b->hidden_out &&
           cgr_tokens(b->n_tokens) <= cb->max_tokens;
}

int cgr_tokens(int n_tokens)
{
    if (n_tokens <= 8) {
        int p = 1;
        while (p < n_tokens)
            p *= 2;
        return p;
    }
    return (n_tokens + 15) / 16 * 16;
}

int cgr_cols(int cols)
{
    int c = 8;
    while (c < cols)
        c *= 2;
    return c;
}

void cgr_reset(struct cuda_backend *cb, bool off)
{
    struct cuda_graphs *gs = &cb->graphs;
    for (int i = 0; i < gs->n; i++)
        if (gs->g[i].exec) cudaGraphExecDestroy(gs->g[i].exec);
    gs->n = 0;
    if (off) gs->off = true;
}

static struct cuda_graph *find(struct cuda_graphs *gs, int tokens, int cols)
{
    for (int i = 0; i < gs->n; i++)
        if (gs->g[i].tokens == tokens && gs->g[i].cols == cols) return &gs->g[i];
    if (gs->n == CUDA_MAX_GRAPHS) return NULL;
    struct cuda_graph *g = &gs->g[gs->n++];
    *g = (struct cuda_graph){.tokens = tokens, .cols = cols};
    return g;
}

/* Captures the layers into g->exec. False (graphs now off, nothing
 * enqueued) when CUDA refuses; an error of the layers themselves is
 * returned in *st. */
static bool capture(struct cuda_backend *cb, struct cuda_graph *g,
                    const struct cuda_meta_layout *ly, int max_ctx, enum es_status *st,
                    struct es_err *err)
{
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeThreadLocal);
    if (e == cudaSuccess) {
        *st = cbs_run_layers(cb, ly, max_ctx, err);
        e = cudaStreamEndCapture(cb->stream, &graph);
        if (*st == ES_OK && e == cudaSuccess) e = cudaGraphInstantiate(&g->exec, graph, 0);
        if (graph) cudaGraphDestroy(graph);
    }
    if (*st == ES_OK && e == cudaSuccess) {
        cb->graphs.captures++;
        return true;
    }
    g->exec = NULL;
    (void)cudaGetLastError(); /* the capture's error is not the stream's */
    LOG_W("cuda", "CUDA graphs off: capturing a decode step of %d tokens failed (%s%s%s)",
          ly->T, e != cudaSuccess ? cudaGetErrorString(e) : "",
          e != cudaSuccess && *st != ES_OK ? "; " : "", *st != ES_OK ? err->msg : "");
    cgr_reset(cb, true);
    *st = ES_OK;
    err->msg[0] = '\0';
    return false;
}

enum es_status cgr_run_layers(struct cuda_backend *cb, const struct cuda_meta_layout *ly,
                              int max_ctx, struct es_err *err)
{
    enum es_status st = ES_OK;
    struct cuda_graph *g = find(&cb->graphs, ly->T, ly->bt_stride);
    if (g && g->exec) {
        CU(cudaGraphLaunch(g->exec, cb->stream));
        cb->graphs.replays++;
        return ES_OK;
    }
    if (g && g->warm) {
        if (capture(cb, g, ly, max_ctx, &st, err)) {
            CU(cudaGraphLaunch(g->exec, cb->stream));
            cb->graphs.replays++;
            return ES_OK;
        }
    } else if (g) {
        g->warm = true;
    }
    return cbs_run_layers(cb, ly, max_ctx, err);
err:
    return st;
}
