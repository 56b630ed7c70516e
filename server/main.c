/*
 * main.c - evalserver's command line and life cycle.
 *
 * Parses the options, starts HTTP first (so /health answers 503 while the
 * model loads), loads the model config, tokenizer, chat template, backend
 * and engine, then serves. SIGTERM/SIGINT are taken synchronously by the
 * main thread (blocked everywhere, read with sigtimedwait): the server
 * stops accepting work (503), lets running requests finish within
 * --shutdown-timeout, then aborts the rest and exits 0. If the engine dies
 * the server answers what it can and exits 1. This is the only file that
 * decides the process's exit status.
 *
 * Multi-node tensor parallelism (--nnodes N): node 0 is the process
 * above, its one replica a backend_tp group whose ranks span the nodes;
 * every other node (--node-rank R > 0) serves no HTTP and runs no engine:
 * it loads its ranks' shards and replays node 0's steps
 * (node_worker.h) until node 0 says stop (exit 0) or fails (exit 1).
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "backend.h"
#include "backend_pp.h"
#include "backend_tp.h"
#include "chat_template.h"
#include "engine.h"
#include "log.h"
#include "model_config.h"
#include "netio.h"
#include "node_worker.h"
#include "router.h"
#include "tokenizer.h"

#define LOG_MAIN(...) LOG_I("main", __VA_ARGS__)

#define KV_BLOCK_SIZE 16 /* tokens per KV block, every backend */

struct options {
    const char *model;
    const char *served_model_name;
    const char *host;
    int port;
    const char *device;
    int tp, dp;
    int pp; /* pipeline stages per replica */
    int max_model_len;
    int max_num_seqs;
    int max_num_batched_tokens;
    const char *api_key;
    const char *api_key_file;
    int max_queue;
    int threads;
    int http_threads;
    const char *log_level;
    double kv_cache_gb;
    double gpu_memory_utilization;
    double shutdown_timeout;
    long max_body_bytes;
    int max_header_bytes;
    int max_connections;
    int max_connections_per_ip;
    int request_timeout;
    const char *chat_template;
    bool no_prefix_caching;
    /* multi-node tensor parallelism */
    int nnodes, node_rank;
    const char *master_addr;
    int master_port;     /* node 0's control channel; the ranks' comm uses the next port */
    double node_timeout; /* seconds for every node to join */
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: evalserver --model DIR [options]\n"
            "\n"
            "An OpenAI-compatible inference server.\n"
            "\n"
            "  --model DIR                  Hugging Face model directory (config.json,\n"
            "                               *.safetensors, tokenizer.json)\n"
            "  --served-model-name NAME     model name in the API (default: --model)\n"
            "  --host ADDR                  listen address (default 127.0.0.1)\n"
            "  --port N                     listen port (default 8000)\n"
            "  --device cpu|cuda            backend (default cpu)\n"
            "  --tp N                       tensor-parallel ranks per replica (cpu: threads of\n"
            "                               this process sharing the replica's --threads and\n"
            "                               KV cache; N must divide the attention and KV heads)\n"
            "  --pp N                       pipeline stages per replica (cpu: threads of this\n"
            "                               process, each holding 1/N of the layers; with --tp\n"
            "                               each stage is a --tp group); N <= the model's layers\n"
            "  --dp N                       data-parallel replicas behind one port, each\n"
            "                               its own engine and KV cache (cpu: --threads\n"
            "                               split between them; cuda: replica i on device i)\n"
            "  --nnodes N                   processes (nodes) the --tp ranks span (default 1);\n"
            "                               each runs --tp / N ranks; --dp must be 1\n"
            "  --node-rank R                this node, 0 .. N-1 (default 0): node 0 serves HTTP\n"
            "                               and schedules, the others only compute their ranks\n"
            "                               and ignore the HTTP options\n"
            "  --master-addr ADDR           node 0's address, the same on every node\n"
            "                               (default 127.0.0.1)\n"
            "  --master-port P              node 0's control port (default 29500); the ranks'\n"
            "                               collectives use P+1\n"
            "  --node-timeout S             seconds for every node to join (default 300)\n"
            "  --max-model-len N            prompt + output tokens at most\n"
            "                               (default: the model's max_position_embeddings)\n"
            "  --max-num-seqs N             running sequences at most (default 256)\n"
            "  --max-num-batched-tokens N   tokens per engine step (default 2048)\n"
            "  --max-queue N                waiting requests before 429 (default 4096)\n"
            "  --api-key KEY                require 'Authorization: Bearer KEY' on every route\n"
            "  --api-key-file FILE          the same, the key read from FILE (else the\n"
            "                               EVALSERVER_API_KEY environment variable)\n"
            "                               but /health (also from EVALSERVER_API_KEY)\n"
            "  --threads N                  CPU backend threads (default: all cores)\n"
            "  --http-threads N             HTTP polling threads (default 4)\n"
            "  --kv-cache-gb X              CPU KV cache budget in GiB (default 2)\n"
            "  --gpu-memory-utilization X   CUDA: fraction of device memory (default 0.9)\n"
            "  --chat-template FILE         Jinja chat template overriding the tokenizer's\n"
            "  --no-prefix-caching          disable automatic prefix caching\n"
            "  --max-body-bytes N           request bodies above this get 413 (default 32 MiB)\n"
            "  --max-header-bytes N         request line + headers at most (default 65536)\n"
            "  --max-connections N          open connections at most (default 4096)\n"
            "  --max-connections-per-ip N   open connections per client address (default 2048,\n"
            "                               0: no limit)\n"
            "  --request-timeout S          a whole request must arrive within S seconds of the\n"
            "                               connection opening or of the previous answer\n"
            "                               (default 60, 0: off); generation is not limited\n"
            "  --shutdown-timeout S         seconds to let running requests finish (default 30)\n"
            "  --log-level L                error, warn, info or debug (default: $EVAL_LOG_LEVEL,\n"
            "                               else info)\n"
            "  --help                       this text\n");
}

enum {
    OPT_MODEL = 256,
    OPT_NAME,
    OPT_HOST,
    OPT_PORT,
    OPT_DEVICE,
    OPT_TP,
    OPT_PP,
    OPT_DP,
    OPT_MML,
    OPT_MNS,
    OPT_MNBT,
    OPT_KEY,
    OPT_KEY_FILE,
    OPT_QUEUE,
    OPT_THREADS,
    OPT_HTTP_THREADS,
    OPT_LOG,
    OPT_KV,
    OPT_GPU,
    OPT_SHUTDOWN,
    OPT_TEMPLATE,
    OPT_NO_PREFIX,
    OPT_BODY,
    OPT_HEADER,
    OPT_CONNS,
    OPT_CONNS_IP,
    OPT_REQ_TIMEOUT,
    OPT_NNODES,
    OPT_NODE_RANK,
    OPT_MASTER_ADDR,
    OPT_MASTER_PORT,
    OPT_NODE_TIMEOUT,
    OPT_HELP,
};

static bool parse_int(const char *flag, const char *s, long lo, long hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !*s || *end || v < lo || v > hi) {
        fprintf(stderr, "evalserver: %s must be an integer in [%ld, %ld], got '%s'\n", flag, lo, hi,
                s);
        return false;
    }
    *out = (int)v;
    return true;
}

static bool parse_num(const char *flag, const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || !*s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "evalserver: %s must be a number in [%g, %g], got '%s'\n", flag, lo, hi, s);
        return false;
    }
    *out = v;
    return true;
}

/* The multi-node options fit together. */
static bool check_nodes(const struct options *o)
{
    if (o->node_rank >= o->nnodes) {
        fprintf(stderr, "evalserver: --node-rank %d must be below --nnodes %d\n", o->node_rank,
                o->nnodes);
        return false;
    }
    if (o->tp % o->nnodes != 0) {
        fprintf(stderr,
                "evalserver: --tp %d must be a multiple of --nnodes %d (each node runs "
                "--tp / --nnodes ranks)\n",
                o->tp, o->nnodes);
        return false;
    }
    if (o->nnodes > 1 && o->dp > 1) {
        fprintf(stderr,
                "evalserver: --dp %d with --nnodes %d is not supported: a multi-node group is "
                "one replica (start one group per replica)\n",
                o->dp, o->nnodes);
        return false;
    }
    if (o->nnodes > 1 && !o->master_addr[0]) {
        fprintf(stderr, "evalserver: --master-addr must not be empty\n");
        return false;
    }
    return true;
}

/* Returns 0 to go on, 1 for --help, -1 for an error. */
static int parse_args(int argc, char **argv, struct options *o)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"served-model-name", required_argument, NULL, OPT_NAME},
        {"host", required_argument, NULL, OPT_HOST},
        {"port", required_argument, NULL, OPT_PORT},
        {"device", required_argument, NULL, OPT_DEVICE},
        {"tp", required_argument, NULL, OPT_TP},
        {"tensor-parallel-size", required_argument, NULL, OPT_TP},
        {"pp", required_argument, NULL, OPT_PP},
        {"pipeline-parallel-size", required_argument, NULL, OPT_PP},
        {"dp", required_argument, NULL, OPT_DP},
        {"data-parallel-size", required_argument, NULL, OPT_DP},
        {"max-model-len", required_argument, NULL, OPT_MML},
        {"max-num-seqs", required_argument, NULL, OPT_MNS},
        {"max-num-batched-tokens", required_argument, NULL, OPT_MNBT},
        {"api-key", required_argument, NULL, OPT_KEY},
        {"api-key-file", required_argument, NULL, OPT_KEY_FILE},
        {"max-queue", required_argument, NULL, OPT_QUEUE},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"http-threads", required_argument, NULL, OPT_HTTP_THREADS},
        {"log-level", required_argument, NULL, OPT_LOG},
        {"kv-cache-gb", required_argument, NULL, OPT_KV},
        {"gpu-memory-utilization", required_argument, NULL, OPT_GPU},
        {"shutdown-timeout", required_argument, NULL, OPT_SHUTDOWN},
        {"chat-template", required_argument, NULL, OPT_TEMPLATE},
        {"no-prefix-caching", no_argument, NULL, OPT_NO_PREFIX},
        {"max-body-bytes", required_argument, NULL, OPT_BODY},
        {"max-header-bytes", required_argument, NULL, OPT_HEADER},
        {"max-connections", required_argument, NULL, OPT_CONNS},
        {"max-connections-per-ip", required_argument, NULL, OPT_CONNS_IP},
        {"request-timeout", required_argument, NULL, OPT_REQ_TIMEOUT},
        {"nnodes", required_argument, NULL, OPT_NNODES},
        {"node-rank", required_argument, NULL, OPT_NODE_RANK},
        {"master-addr", required_argument, NULL, OPT_MASTER_ADDR},
        {"master-port", required_argument, NULL, OPT_MASTER_PORT},
        {"node-timeout", required_argument, NULL, OPT_NODE_TIMEOUT},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    int c;
    double d;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL:
            o->model = optarg;
            break;
        case OPT_NAME:
            o->served_model_name = optarg;
            break;
        case OPT_HOST:
            o->host = optarg;
            break;
        case OPT_PORT:
            if (!parse_int("--port", optarg, 0, 65535, &o->port)) return -1;
            break;
        case OPT_DEVICE:
            o->device = optarg;
            break;
        case OPT_TP:
            if (!parse_int("--tp", optarg, 1, 1024, &o->tp)) return -1;
            break;
        case OPT_PP:
            if (!parse_int("--pp", optarg, 1, 1024, &o->pp)) return -1;
            break;
        case OPT_DP:
            if (!parse_int("--dp", optarg, 1, 1024, &o->dp)) return -1;
            break;
        case OPT_MML:
            if (!parse_int("--max-model-len", optarg, 1, 1 << 24, &o->max_model_len)) return -1;
            break;
        case OPT_MNS:
            if (!parse_int("--max-num-seqs", optarg, 1, 1 << 20, &o->max_num_seqs)) return -1;
            break;
        case OPT_MNBT:
            if (!parse_int("--max-num-batched-tokens", optarg, 1, 1 << 24,
                           &o->max_num_batched_tokens))
                return -1;
            break;
        case OPT_KEY_FILE:
            o->api_key_file = optarg;
            break;
        case OPT_KEY:
            o->api_key = optarg;
            break;
        case OPT_QUEUE:
            if (!parse_int("--max-queue", optarg, 1, 1 << 24, &o->max_queue)) return -1;
            break;
        case OPT_THREADS:
            if (!parse_int("--threads", optarg, 0, 4096, &o->threads)) return -1;
            break;
        case OPT_HTTP_THREADS:
            if (!parse_int("--http-threads", optarg, 1, 256, &o->http_threads)) return -1;
            break;
        case OPT_LOG:
            o->log_level = optarg;
            break;
        case OPT_KV:
            if (!parse_num("--kv-cache-gb", optarg, 0.001, 1 << 20, &o->kv_cache_gb)) return -1;
            break;
        case OPT_GPU:
            if (!parse_num("--gpu-memory-utilization", optarg, 0.01, 1.0,
                           &o->gpu_memory_utilization))
                return -1;
            break;
        case OPT_SHUTDOWN:
            if (!parse_num("--shutdown-timeout", optarg, 0, 86400, &o->shutdown_timeout)) return -1;
            break;
        case OPT_TEMPLATE:
            o->chat_template = optarg;
            break;
        case OPT_NO_PREFIX:
            o->no_prefix_caching = true;
            break;
        case OPT_BODY:
            if (!parse_num("--max-body-bytes", optarg, 1024, 1e10, &d)) return -1;
            o->max_body_bytes = (long)d;
            break;
        case OPT_HEADER:
            if (!parse_int("--max-header-bytes", optarg, 4096, 16 << 20, &o->max_header_bytes))
                return -1;
            break;
        case OPT_CONNS:
            if (!parse_int("--max-connections", optarg, 1, 1 << 20, &o->max_connections)) return -1;
            break;
        case OPT_CONNS_IP:
            if (!parse_int("--max-connections-per-ip", optarg, 0, 1 << 20,
                           &o->max_connections_per_ip))
                return -1;
            break;
        case OPT_REQ_TIMEOUT:
            if (!parse_int("--request-timeout", optarg, 0, 86400, &o->request_timeout)) return -1;
            break;
        case OPT_NNODES:
            if (!parse_int("--nnodes", optarg, 1, 1024, &o->nnodes)) return -1;
            break;
        case OPT_NODE_RANK:
            if (!parse_int("--node-rank", optarg, 0, 1023, &o->node_rank)) return -1;
            break;
        case OPT_MASTER_ADDR:
            o->master_addr = optarg;
            break;
        case OPT_MASTER_PORT:
            /* P + NODE_COMM_PORT_OFFSET must be a port too */
            if (!parse_int("--master-port", optarg, 1, 65535 - NODE_COMM_PORT_OFFSET,
                           &o->master_port))
                return -1;
            break;
        case OPT_NODE_TIMEOUT:
            if (!parse_num("--node-timeout", optarg, 0.1, 86400, &o->node_timeout)) return -1;
            break;
        case OPT_HELP:
        case 'h':
            return 1;
        default:
            fprintf(stderr, "evalserver: unknown or incomplete option '%s' (see --help)\n",
                    argv[optind - 1]);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "evalserver: unexpected argument '%s' (see --help)\n", argv[optind]);
        return -1;
    }
    if (!o->model) {
        fprintf(stderr, "evalserver: --model DIR is required (see --help)\n");
        return -1;
    }
    if (strcmp(o->device, "cpu") != 0 && strcmp(o->device, "cuda") != 0) {
        fprintf(stderr, "evalserver: --device must be cpu or cuda, got '%s'\n", o->device);
        return -1;
    }
    if (o->pp > 1 && strcmp(o->device, "cuda") == 0) {
        fprintf(stderr, "evalserver: --pp > 1 with --device cuda is not built yet (cpu only)\n");
        return -1;
    }
#ifndef HAVE_CUDA
    if (strcmp(o->device, "cuda") == 0) {
        fprintf(stderr, "evalserver: --device cuda: this build has no CUDA backend\n");
        return -1;
    }
#endif
#ifndef HAVE_NCCL
    if (o->tp > 1 && strcmp(o->device, "cuda") == 0) {
        fprintf(stderr, "evalserver: --tp > 1 with --device cuda needs NCCL, which this build "
                        "lacks\n");
        return -1;
    }
#endif
    if (o->pp > 1 && o->nnodes > 1) {
        fprintf(stderr, "evalserver: --pp with --nnodes is not supported: the stages are "
                        "threads of one process\n");
        return -1;
    }
    return check_nodes(o) ? 0 : -1;
}

static int parse_log_level(const char *s, enum log_level *out)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    return -1;
}

/* ---------------------------------------------------------------- fingerprint */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t hash_file(uint64_t h, const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return fnv1a(h, "-", 1);
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        h = fnv1a(h, buf, n);
    fclose(f);
    return h;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *read_text_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    struct strbuf sb = {0};
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        sb_append(&sb, buf, n);
    fclose(f);
    return sb_steal(&sb);
}

/* Model config, tokenizer, weight file names and sizes. */
static uint64_t hash_model_files(const struct options *o)
{
    uint64_t h = 0xcbf29ce484222325ull;
    h = hash_file(h, o->model, "config.json");
    h = hash_file(h, o->model, "generation_config.json");
    h = hash_file(h, o->model, "tokenizer.json");
    h = hash_file(h, o->model, "tokenizer_config.json");
    DIR *d = opendir(o->model);
    char *names[1024];
    int n = 0;
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) && n < 1024) {
            size_t l = strlen(de->d_name);
            if (l > 12 && strcmp(de->d_name + l - 12, ".safetensors") == 0)
                names[n++] = strdup(de->d_name);
        }
        closedir(d);
    }
    qsort(names, (size_t)n, sizeof(char *), cmp_str);
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", o->model, names[i]);
        struct stat st;
        long long size = stat(path, &st) == 0 ? (long long)st.st_size : -1;
        char line[512];
        int len = snprintf(line, sizeof(line), "%s:%lld;", names[i], size);
        h = fnv1a(h, line, (size_t)len);
        free(names[i]);
    }
    return h;
}

/* What the API reports: the model files, the version and the settings
 * that change results. */
static uint64_t served_fingerprint(const struct options *o)
{
    uint64_t h = hash_model_files(o);
    if (o->chat_template) {
        char *t = read_text_file(o->chat_template);
        if (t) h = fnv1a(h, t, strlen(t));
        free(t);
    }
    char settings[256];
    int len = snprintf(settings, sizeof(settings), "v=%s;device=%s;tp=%d;block=%d;prefix=%d",
                       API_VERSION, o->device, o->tp, KV_BLOCK_SIZE, o->no_prefix_caching ? 0 : 1);
    return fnv1a(h, settings, (size_t)len);
}

/* What every node of a multi-node group must agree on: the model files,
 * the version and the limits the backends size their buffers by. */
static uint64_t node_fingerprint(const struct options *o)
{
    char settings[256];
    int len =
        snprintf(settings, sizeof(settings), "v=%s;device=%s;tp=%d;nnodes=%d;mml=%d;mnbt=%d;mns=%d",
                 API_VERSION, o->device, o->tp, o->nnodes, o->max_model_len,
                 o->max_num_batched_tokens, o->max_num_seqs);
    return fnv1a(hash_model_files(o), settings, (size_t)len);
}

static struct node_shape node_shape_of(const struct options *o)
{
    return (struct node_shape){.nnodes = o->nnodes,
                               .node_rank = o->node_rank,
                               .tp_size = o->tp,
                               .block_size = KV_BLOCK_SIZE,
                               .fingerprint = node_fingerprint(o)};
}

/* ---------------------------------------------------------------- loading */

struct loaded {
    struct model_config mc;
    struct tokenizer *tok;
    struct chat_template *ct;
    int n_replicas;            /* --dp */
    struct backend **be;       /* [n_replicas], loaded or NULL */
    struct engine **engines;   /* [n_replicas] until the router owns them */
    struct router *router;
};

/* A built-in template when the tokenizer ships none, chosen by its
 * special tokens. */
static const char *fallback_template(const struct tokenizer *tok)
{
    if (tok_piece_to_id(tok, "<|start_header_id|>") >= 0) return ct_builtin("llama3");
    if (tok_piece_to_id(tok, "<|im_start|>") >= 0) return ct_builtin("chatml");
    if (tok_piece_to_id(tok, "<s>") >= 0) return ct_builtin("llama2");
    return ct_builtin("plain");
}

static enum es_status check_tp_heads(const struct options *o, const struct model_config *mc,
                                     struct es_err *err)
{
    if (mc->num_heads % o->tp != 0 || mc->num_kv_heads % o->tp != 0)
        return es_fail(err, ES_EINVAL,
                       "--tp %d must divide the model's %d attention heads and %d KV heads", o->tp,
                       mc->num_heads, mc->num_kv_heads);
    return ES_OK;
}

static int resolved_max_model_len(const struct options *o, const struct model_config *mc)
{
    int len = o->max_model_len > 0 ? o->max_model_len : mc->max_position_embeddings;
    return len > 0 ? len : 2048;
}

/* One replica's backend options; with --tp > 1, tpc (this node's ranks of
 * the group) is filled in and hooked into them. */
static void replica_backend_opts(const struct options *o, int max_model_len,
                                 struct backend_opts *bo, struct tp_config *tpc)
{
    *bo = (struct backend_opts){0};
    bo->block_size = KV_BLOCK_SIZE;
    bo->max_num_batched_tokens = o->max_num_batched_tokens;
    bo->max_num_seqs = o->max_num_seqs;
    bo->max_model_len = max_model_len;
    bo->kv_cache_bytes = (size_t)(o->kv_cache_gb * (double)(1ull << 30));
    bo->gpu_memory_utilization = o->gpu_memory_utilization;
    /* --dp: the CPU threads are split between the replicas. */
    int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    bo->num_threads = threads / o->dp > 0 ? threads / o->dp : 1;
    /* --tp: each replica is a group of o->tp ranks, threads of this
     * process, or with --nnodes spread evenly over the nodes. */
    int local = o->tp / o->nnodes;
    *tpc = (struct tp_config){.inner = &backend_cpu_ops,
                              .tp_size = o->tp,
                              .first_rank = o->node_rank * local,
                              .local_ranks = local,
                              .master_addr = o->master_addr,
                              .master_port = o->master_port + NODE_COMM_PORT_OFFSET,
                              .connect_timeout_s = o->node_timeout};
#ifdef HAVE_CUDA
    if (strcmp(o->device, "cuda") == 0) tpc->inner = &backend_cuda_ops;
#endif
    if (o->tp > 1) bo->tp = tpc;
}

/* Node 0 of a multi-node group: waits for the other nodes and returns
 * the remote that mirrors each step to them. */
static enum es_status join_nodes(const struct options *o, struct tp_remote **remote,
                                 struct es_err *err)
{
    struct node_shape shape = node_shape_of(o);
    int fds[1024];
    LOG_MAIN("node 0 of %d: waiting up to %.0f s for the other nodes on %s:%d", o->nnodes,
             o->node_timeout, o->master_addr, o->master_port);
    enum es_status st =
        node_control_accept(&shape, o->master_addr, o->master_port, o->node_timeout, fds, err);
    if (st != ES_OK) return st;
    return node_remote_create(o->nnodes, fds, KV_BLOCK_SIZE, remote, err);
}

static enum es_status load_all(const struct options *o, struct loaded *L, struct es_err *err)
{
    enum es_status st = mc_load(o->model, &L->mc, err);
    if (st != ES_OK) return st;
    if ((st = check_tp_heads(o, &L->mc, err)) != ES_OK) return st;
    st = tok_load(o->model, &L->tok, err);
    if (st != ES_OK) return st;

    char *tmpl_owned = NULL;
    const char *tmpl = NULL;
    if (o->chat_template) {
        tmpl = tmpl_owned = read_text_file(o->chat_template);
        if (!tmpl) return es_fail(err, ES_EIO, "--chat-template %s: cannot read", o->chat_template);
    } else {
        tmpl = tok_chat_template(L->tok);
    }
    if (tmpl) {
        struct es_err cerr = {{0}};
        if (ct_compile(tmpl, &L->ct, &cerr) != ES_OK) {
            if (o->chat_template) {
                free(tmpl_owned);
                return es_fail(err, ES_EFORMAT, "--chat-template: %s", cerr.msg);
            }
            LOG_W("main",
                  "the tokenizer's chat template does not compile (%s); using a "
                  "built-in one",
                  cerr.msg);
            tmpl = NULL;
        }
    }
    free(tmpl_owned);
    if (!L->ct) {
        const char *fb = fallback_template(L->tok);
        if (fb && ct_compile(fb, &L->ct, err) != ES_OK) {
            LOG_W("main", "no usable chat template: /v1/chat/completions will answer 400");
            L->ct = NULL;
            es_err_clear(err);
        }
    }

    int max_model_len = resolved_max_model_len(o, &L->mc);
    struct backend_opts bo;
    struct tp_config tpc;
    replica_backend_opts(o, max_model_len, &bo, &tpc);
    /* --pp: each replica is a pipeline of o->pp stages, each stage a
     * plain backend or (--tp) a TP group. */
    struct pp_config ppc = {.stage_ops = o->tp > 1 ? &backend_tp_ops : &backend_cpu_ops,
                            .tp = &tpc,
                            .pp_size = o->pp};
    if (o->pp > 1) bo.pp = &ppc;
    /* --nnodes: the group (one replica) owns the remote once loaded. */
    if (o->nnodes > 1 && (st = join_nodes(o, &tpc.remote, err)) != ES_OK) return st;
    L->n_replicas = o->dp;
    L->be = calloc((size_t)o->dp, sizeof(*L->be));
    L->engines = calloc((size_t)o->dp, sizeof(*L->engines));
    if (!L->be || !L->engines) st = es_fail(err, ES_ENOMEM, "out of memory");
    for (int i = 0; st == ES_OK && i < o->dp; i++) {
        L->be[i] = calloc(1, sizeof(*L->be[i]));
        if (!L->be[i]) {
            st = es_fail(err, ES_ENOMEM, "out of memory");
            break;
        }
        L->be[i]->ops = o->tp > 1 ? &backend_tp_ops : &backend_cpu_ops;
        if (o->pp > 1) L->be[i]->ops = &backend_pp_ops;
#ifdef HAVE_CUDA
        if (strcmp(o->device, "cuda") == 0 && o->tp == 1) L->be[i]->ops = &backend_cuda_ops;
#endif
        bo.device_id = i;
        tpc.first_device = i * tpc.local_ranks; /* cuda --tp: replica i's GPUs */
        st = L->be[i]->ops->load(L->be[i], &L->mc, o->model, &bo, err);
        if (st != ES_OK) es_wrap(err, st, "replica %d: ", i);
    }
    if (st != ES_OK) {
        if (tpc.remote) tpc.remote->close(tpc.remote); /* not loaded: still ours */
        return st;
    }

    struct engine_opts eo;
    engine_opts_defaults(&eo);
    eo.max_num_batched_tokens = o->max_num_batched_tokens;
    eo.max_num_seqs = o->max_num_seqs;
    eo.max_model_len = max_model_len;
    eo.max_waiting = o->max_queue;
    eo.enable_prefix_caching = !o->no_prefix_caching;
    for (int i = 0; i < o->dp; i++) {
        eo.replica_index = i;
        st = engine_create(L->be[i], L->tok, &eo, &L->engines[i], err);
        if (st != ES_OK) return st;
    }
    st = router_create(L->engines, o->dp, NULL, &L->router, err);
    if (st != ES_OK) return st;
    memset(L->engines, 0, (size_t)o->dp * sizeof(*L->engines)); /* the router owns them */
    return router_start(L->router);
}

static void unload_all(struct loaded *L)
{
    router_destroy(L->router); /* its engines, and their backends' contents */
    for (int i = 0; i < L->n_replicas; i++) {
        if (L->engines && L->engines[i])
            engine_destroy(L->engines[i]); /* created before a failure */
        else if (!L->router && L->be && L->be[i] && L->be[i]->impl && L->be[i]->ops->destroy)
            L->be[i]->ops->destroy(L->be[i]);
        if (L->be) free(L->be[i]);
    }
    free(L->engines);
    free(L->be);
    ct_free(L->ct);
    tok_free(L->tok);
}

/* ---------------------------------------------------------------- other nodes */

/* A node other than 0 of a multi-node group: no HTTP, tokenizer or
 * engine. Loads its ranks' shards, replays node 0's steps until node 0
 * says stop, and returns the exit status: 0 after STOP, 1 when anything
 * failed (node 0 gone included). SIGTERM and SIGINT keep their default
 * action: the process ends, and its peers see it gone. */
static int run_worker_node(const struct options *o)
{
    signal(SIGPIPE, SIG_IGN);
    struct es_err err = {{0}};
    struct model_config mc;
    struct backend be = {.ops = &backend_tp_ops};
    struct backend_opts bo;
    struct tp_config tpc;
    int control_fd = -1;
    LOG_MAIN("node %d of %d: worker for %d of %d tensor-parallel ranks of %s (node 0 at %s:%d)",
             o->node_rank, o->nnodes, o->tp / o->nnodes, o->tp, o->model, o->master_addr,
             o->master_port);
    enum es_status st = mc_load(o->model, &mc, &err);
    if (st == ES_OK) st = check_tp_heads(o, &mc, &err);
    if (st == ES_OK) {
        struct node_shape shape = node_shape_of(o);
        st = node_control_connect(&shape, o->master_addr, o->master_port, o->node_timeout,
                                  &control_fd, &err);
    }
    if (st == ES_OK) {
        replica_backend_opts(o, resolved_max_model_len(o, &mc), &bo, &tpc);
        st = be.ops->load(&be, &mc, o->model, &bo, &err);
    }
    if (st == ES_OK) {
        st = node_worker_run(&be, control_fd, &err);
        be.ops->destroy(&be);
    }
    if (control_fd >= 0) nio_close(control_fd);
    if (st != ES_OK) {
        fprintf(stderr, "evalserver: node %d of %d: %s\n", o->node_rank, o->nnodes, err.msg);
        return 1;
    }
    LOG_MAIN("node %d: bye", o->node_rank);
    return 0;
}

/* ---------------------------------------------------------------- main */

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Waits until no generation request is in flight or the deadline passes. */
static bool wait_idle(struct api_server *srv, double deadline)
{
    while (atomic_load(&srv->http_inflight) > 0) {
        if (mono_now() >= deadline) return false;
        usleep(20 * 1000);
    }
    return true;
}

int main(int argc, char **argv)
{
    struct options o = {
        .host = "127.0.0.1",
        .port = 8000,
        .device = "cpu",
        .tp = 1,
        .pp = 1,
        .dp = 1,
        .max_num_seqs = 256,
        .max_num_batched_tokens = 2048,
        .max_queue = 4096,
        .http_threads = 4,
        .log_level = NULL, /* default: EVAL_LOG_LEVEL, else info (log.c) */
        .kv_cache_gb = 2.0,
        .gpu_memory_utilization = 0.9,
        .shutdown_timeout = 30.0,
        .max_connections_per_ip = -1, /* -1: the default of api_config_defaults */
        .request_timeout = -1,
        .nnodes = 1,
        .master_addr = "127.0.0.1",
        .master_port = 29500,
        .node_timeout = 300.0,
    };
    int pr = parse_args(argc, argv, &o);
    if (pr == 1) {
        usage(stdout);
        return 0;
    }
    if (pr < 0) return 2;
    enum log_level lvl;
    if (o.log_level) {
        if (parse_log_level(o.log_level, &lvl) != 0) {
            fprintf(stderr, "evalserver: --log-level must be error, warn, info or debug\n");
            return 2;
        }
        log_set_level(lvl);
    }
    if (o.node_rank > 0) return run_worker_node(&o);
    char *key_from_file = NULL;
    if (!o.api_key && o.api_key_file) {
        key_from_file = read_text_file(o.api_key_file);
        if (!key_from_file) {
            fprintf(stderr, "evalserver: --api-key-file %s: cannot read\n", o.api_key_file);
            return 2;
        }
        size_t n = strlen(key_from_file);
        while (n > 0 && (key_from_file[n - 1] == '\n' || key_from_file[n - 1] == '\r' ||
                         key_from_file[n - 1] == ' '))
            key_from_file[--n] = '\0';
        if (n == 0) {
            fprintf(stderr, "evalserver: --api-key-file %s is empty\n", o.api_key_file);
            free(key_from_file);
            return 2;
        }
        o.api_key = key_from_file;
    }
    if (!o.api_key) o.api_key = getenv("EVALSERVER_API_KEY");

    /* Signals are taken by this thread only, synchronously. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct api_server srv;
    memset(&srv, 0, sizeof(srv));
    api_config_defaults(&srv.cfg);
    srv.cfg.served_model_name = o.served_model_name ? o.served_model_name : o.model;
    srv.cfg.model_dir = o.model;
    srv.cfg.api_key = o.api_key && o.api_key[0] ? o.api_key : NULL;
    srv.cfg.http_threads = o.http_threads;
    if (o.max_body_bytes > 0) srv.cfg.max_body_bytes = (size_t)o.max_body_bytes;
    if (o.max_header_bytes > 0) srv.cfg.max_header_bytes = (size_t)o.max_header_bytes;
    if (o.max_connections > 0) srv.cfg.max_connections = o.max_connections;
    if (o.max_connections_per_ip >= 0) srv.cfg.max_connections_per_ip = o.max_connections_per_ip;
    if (o.request_timeout >= 0) srv.cfg.request_timeout_s = o.request_timeout;
    srv.created = (long)time(NULL);
    pthread_mutex_init(&srv.jobs_lock, NULL);
    srv.metrics = metrics_create();
    api_set_state(&srv, API_LOADING);

    struct es_err err = {{0}};
    if (http_start(&srv, o.host, o.port, &err) != ES_OK) {
        fprintf(stderr, "evalserver: %s\n", err.msg);
        metrics_free(srv.metrics);
        free(key_from_file);
        return 1;
    }

    struct loaded L;
    memset(&L, 0, sizeof(L));
    double t0 = mono_now();
    LOG_MAIN("loading %s on %s (tensor parallel %d, data parallel %d)", o.model, o.device, o.tp,
             o.dp);
    if (load_all(&o, &L, &err) != ES_OK) {
        fprintf(stderr, "evalserver: loading %s failed: %s\n", o.model, err.msg);
        http_stop(&srv);
        unload_all(&L);
        metrics_free(srv.metrics);
        free(key_from_file);
        return 1;
    }
    srv.router = L.router;
    srv.tok = L.tok;
    srv.ct = L.ct;
    srv.mc = &L.mc;
    srv.max_model_len = router_max_model_len(L.router);
    int32_t tv = tok_vocab_size(L.tok);
    srv.vocab_limit = L.mc.vocab_size < tv ? L.mc.vocab_size : tv;
    for (int32_t id = 0; id < tv; id++) {
        const char *piece = tok_id_to_piece(L.tok, id);
        size_t len = piece ? strlen(piece) : 0;
        if (len > srv.max_token_bytes) srv.max_token_bytes = len;
    }
    snprintf(srv.fingerprint, sizeof(srv.fingerprint), "fp_%016llx",
             (unsigned long long)served_fingerprint(&o));
    api_set_state(&srv, API_SERVING);
    LOG_MAIN("serving '%s' on http://%s:%d (loaded in %.1f s, max_model_len %d, %s)",
             srv.cfg.served_model_name, o.host, o.port, mono_now() - t0, srv.max_model_len,
             srv.fingerprint);

    int exit_code = 0;
    for (;;) {
        struct timespec tick = {0, 100 * 1000 * 1000};
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT) {
            LOG_MAIN("signal %d: draining (up to %.0f s)", sig, o.shutdown_timeout);
            break;
        }
        job_check_disconnects(&srv);
        http_check_deadlines(&srv);
        /* One failed replica ends the process (exit 1) so that systemd or
         * Kubernetes restarts it whole. The failed replica has already
         * answered its requests with errors; new work gets 503 and the
         * healthy replicas finish theirs within --shutdown-timeout, as on
         * SIGTERM, so that no good answer is cut short. */
        if (!router_healthy(L.router)) {
            LOG_E("main",
                  "%d of %d engine replicas failed (see above); refusing new work, "
                  "finishing in-flight requests (up to %.0f s), then exiting with status 1",
                  router_num_replicas(L.router) - router_num_healthy(L.router),
                  router_num_replicas(L.router), o.shutdown_timeout);
            exit_code = 1;
            break;
        }
    }
    api_set_state(&srv, API_DRAINING);
    double deadline = mono_now() + o.shutdown_timeout;
    while (atomic_load(&srv.http_inflight) > 0 && mono_now() < deadline) {
        job_check_disconnects(&srv);
        http_check_deadlines(&srv);
        usleep(20 * 1000);
    }
    if (!wait_idle(&srv, mono_now())) {
        LOG_W("main", "%d requests still running after the timeout: aborting them",
              atomic_load(&srv.http_inflight));
        job_resume_all(&srv, true);
        wait_idle(&srv, mono_now() + 5.0);
    }
    http_stop(&srv);
    router_stop(L.router, false);
    unload_all(&L);
    metrics_free(srv.metrics);
    pthread_mutex_destroy(&srv.jobs_lock);
    free(key_from_file);
    LOG_MAIN("bye");
    return exit_code;
}
