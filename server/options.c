/*
 * options.c - evalserver's command line (see options.h): the defaults,
 * the --help text, getopt_long parsing, the range check of every number
 * and the checks across options (device, build, multi-node layout, tool
 * call parsing).
 *
 * Owns no memory but the API key string read from --api-key-file, which
 * it hands to the caller. Every message goes to stderr prefixed with
 * "evalserver: "; it never exits, the caller turns a failure into exit
 * status 2.
 */
#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "node_worker.h"
#include "textfile.h"
#include "tool_calls.h"

void options_defaults(struct options *o)
{
    *o = (struct options){
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
        .step_timeout = -1.0,
        .async_scheduling = "auto",
    };
}

void options_usage(FILE *f)
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
            "  --pp N                       pipeline stages per replica, threads of this\n"
            "                               process (with --nnodes: N / nnodes per node),\n"
            "                               each holding 1/N of the layers (cuda: one GPU\n"
            "                               each); with --tp each stage is a --tp group;\n"
            "                               N <= the model's layers\n"
            "  --pp-micro-batches M         most micro-batches a step is cut into (by\n"
            "                               sequences) to keep the stages busy (default: --pp)\n"
            "  --dp N                       data-parallel replicas behind one port, each\n"
            "                               its own engine and KV cache (cpu: --threads\n"
            "                               split between them; cuda: replica i on the\n"
            "                               devices [i tp pp, (i + 1) tp pp))\n"
            "  --nnodes N                   processes (nodes) one replica spans (default 1);\n"
            "                               --dp must be 1. Without --pp each node runs\n"
            "                               --tp / N ranks; with --pp each runs --pp / N whole\n"
            "                               stages (node 0 the last ones), --tp ranks each\n"
            "  --node-rank R                this node, 0 .. N-1 (default 0): node 0 serves HTTP\n"
            "                               and schedules, the others only compute their ranks\n"
            "                               or stages and ignore the HTTP options\n"
            "  --master-addr ADDR           node 0's address, the same on every node\n"
            "                               (default 127.0.0.1)\n"
            "  --master-port P              node 0's control port (default 29500); the ranks'\n"
            "                               collectives use P+1\n"
            "  --node-timeout S             seconds for every node to join, for a node to\n"
            "                               answer a heartbeat, and with --pp to answer a\n"
            "                               micro-batch (default 300)\n"
            "  --step-timeout S             a forward running longer than S seconds counts as\n"
            "                               a hung device or peer: its replica fails (errors,\n"
            "                               /health 503, exit 1) instead of hanging (default\n"
            "                               600 with cuda, none on cpu; 0: none); a worker\n"
            "                               node (--node-rank > 0) exits 1 likewise, and\n"
            "                               when node 0 goes away during its step\n"
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
            "  --trust-request-chat-template\n"
            "                               use a request's own \"chat_template\" (vLLM's\n"
            "                               extension) for that request, in the sandboxed\n"
            "                               template engine (no file access, bounded renders);\n"
            "                               without it such a request gets 400\n"
            "  --enable-auto-tool-choice    with tools and tool_choice \"auto\" (or none given),\n"
            "                               parse the chat answer's tool calls into\n"
            "                               message.tool_calls (vLLM's flag); needs\n"
            "                               --tool-call-parser. \"required\" and named\n"
            "                               functions stay refused (no constrained decoding)\n"
            "  --tool-call-parser NAME      hermes (Qwen2.5/Qwen3, Hermes: <tool_call> JSON\n"
            "                               </tool_call>) or llama3_json (Llama 3.1/3.2 JSON\n"
            "                               calls); needs --enable-auto-tool-choice\n"
            "  --no-prefix-caching          disable automatic prefix caching\n"
            "  --batch-invariant            a request's logprobs and tokens do not depend on\n"
            "                               the other requests in its steps or on how its\n"
            "                               prompt is chunked (cpu: always so; cuda: one\n"
            "                               attention kernel for every token, unsplit, and\n"
            "                               one GEMM algorithm per shape without split-K;\n"
            "                               slower prefill; not across --tp ranks' NCCL)\n"
            "  --precision P                bf16 (default) or high. cuda, high: activations\n"
            "                               reach every matrix product as two bf16 terms,\n"
            "                               q and the KV cache keep their bf16 remainders,\n"
            "                               attention in fp32 (SIMT kernels): logprobs within\n"
            "                               about 1e-4 nats of fp32, for every product run\n"
            "                               twice and twice the KV memory (cpu: always fp32)\n"
            "  --async-scheduling MODE      on, off or auto (default): build the next step\n"
            "                               while one runs; auto: on with cuda, and on the cpu\n"
            "                               backend when its threads leave a core free\n"
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
    OPT_PP_MICRO,
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
    OPT_TRUST_REQUEST_TEMPLATE,
    OPT_AUTO_TOOL_CHOICE,
    OPT_TOOL_CALL_PARSER,
    OPT_NO_PREFIX,
    OPT_BATCH_INVARIANT,
    OPT_PRECISION,
    OPT_ASYNC,
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
    OPT_STEP_TIMEOUT,
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
    if (o->pp > 1 && o->pp % o->nnodes != 0) {
        fprintf(stderr,
                "evalserver: --pp %d must be a multiple of --nnodes %d (each node runs "
                "--pp / --nnodes whole stages, each with all --tp ranks)\n",
                o->pp, o->nnodes);
        return false;
    }
    if (o->pp == 1 && o->tp % o->nnodes != 0) {
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

/* What one option did to the parse. */
enum parse_step {
    STEP_OK,
    STEP_HELP,
    STEP_INVALID, /* already reported */
    STEP_UNKNOWN, /* not an option of ours, or its argument is missing */
};

/* The options that take a string, or none (STEP_INVALID: a value they
 * do not take, already reported). */
static enum parse_step apply_text_option(int c, const char *arg, struct options *o)
{
    switch (c) {
    case OPT_MODEL:
        o->model = arg;
        return STEP_OK;
    case OPT_NAME:
        o->served_model_name = arg;
        return STEP_OK;
    case OPT_HOST:
        o->host = arg;
        return STEP_OK;
    case OPT_DEVICE:
        o->device = arg;
        return STEP_OK;
    case OPT_KEY_FILE:
        o->api_key_file = arg;
        return STEP_OK;
    case OPT_KEY:
        o->api_key = arg;
        return STEP_OK;
    case OPT_LOG:
        o->log_level = arg;
        return STEP_OK;
    case OPT_TEMPLATE:
        o->chat_template = arg;
        return STEP_OK;
    case OPT_TRUST_REQUEST_TEMPLATE:
        o->trust_request_chat_template = true;
        return STEP_OK;
    case OPT_AUTO_TOOL_CHOICE:
        o->enable_auto_tool_choice = true;
        return STEP_OK;
    case OPT_TOOL_CALL_PARSER:
        o->tool_call_parser = arg;
        return STEP_OK;
    case OPT_NO_PREFIX:
        o->no_prefix_caching = true;
        return STEP_OK;
    case OPT_BATCH_INVARIANT:
        o->batch_invariant = true;
        return STEP_OK;
    case OPT_PRECISION:
        if (strcmp(arg, "bf16") != 0 && strcmp(arg, "high") != 0) {
            fprintf(stderr, "evalserver: --precision must be bf16 or high, got '%s'\n", arg);
            return STEP_INVALID;
        }
        o->high_precision = strcmp(arg, "high") == 0;
        return STEP_OK;
    case OPT_ASYNC:
        if (strcmp(arg, "on") != 0 && strcmp(arg, "off") != 0 && strcmp(arg, "auto") != 0) {
            fprintf(stderr, "evalserver: --async-scheduling must be on, off or auto, got '%s'\n",
                    arg);
            return STEP_INVALID;
        }
        o->async_scheduling = arg;
        return STEP_OK;
    case OPT_MASTER_ADDR:
        o->master_addr = arg;
        return STEP_OK;
    default:
        return STEP_UNKNOWN;
    }
}

/* The numbers that shape the model's replicas and their engines. */
static enum parse_step apply_engine_number(int c, const char *arg, struct options *o)
{
    bool ok;
    switch (c) {
    case OPT_TP:
        ok = parse_int("--tp", arg, 1, 1024, &o->tp);
        break;
    case OPT_PP_MICRO:
        ok = parse_int("--pp-micro-batches", arg, 1, 1024, &o->pp_micro_batches);
        break;
    case OPT_PP:
        ok = parse_int("--pp", arg, 1, 1024, &o->pp);
        break;
    case OPT_DP:
        ok = parse_int("--dp", arg, 1, 1024, &o->dp);
        break;
    case OPT_MML:
        ok = parse_int("--max-model-len", arg, 1, 1 << 24, &o->max_model_len);
        break;
    case OPT_MNS:
        ok = parse_int("--max-num-seqs", arg, 1, 1 << 20, &o->max_num_seqs);
        break;
    case OPT_MNBT:
        ok = parse_int("--max-num-batched-tokens", arg, 1, 1 << 24, &o->max_num_batched_tokens);
        break;
    case OPT_QUEUE:
        ok = parse_int("--max-queue", arg, 1, 1 << 24, &o->max_queue);
        break;
    case OPT_THREADS:
        ok = parse_int("--threads", arg, 0, 4096, &o->threads);
        break;
    case OPT_KV:
        ok = parse_num("--kv-cache-gb", arg, 0.001, 1 << 20, &o->kv_cache_gb);
        break;
    case OPT_GPU:
        ok = parse_num("--gpu-memory-utilization", arg, 0.01, 1.0, &o->gpu_memory_utilization);
        break;
    case OPT_NNODES:
        ok = parse_int("--nnodes", arg, 1, 1024, &o->nnodes);
        break;
    case OPT_NODE_RANK:
        ok = parse_int("--node-rank", arg, 0, 1023, &o->node_rank);
        break;
    case OPT_MASTER_PORT:
        /* P + NODE_COMM_PORT_OFFSET must be a port too */
        ok = parse_int("--master-port", arg, 1, 65535 - NODE_COMM_PORT_OFFSET, &o->master_port);
        break;
    case OPT_STEP_TIMEOUT:
        ok = parse_num("--step-timeout", arg, 0, 86400, &o->step_timeout);
        break;
    case OPT_NODE_TIMEOUT:
        ok = parse_num("--node-timeout", arg, 0.1, 86400, &o->node_timeout);
        break;
    default:
        return STEP_UNKNOWN;
    }
    return ok ? STEP_OK : STEP_INVALID;
}

/* The numbers of the HTTP server and of its shutdown. */
static enum parse_step apply_server_number(int c, const char *arg, struct options *o)
{
    bool ok;
    double d;
    switch (c) {
    case OPT_PORT:
        ok = parse_int("--port", arg, 0, 65535, &o->port);
        break;
    case OPT_HTTP_THREADS:
        ok = parse_int("--http-threads", arg, 1, 256, &o->http_threads);
        break;
    case OPT_SHUTDOWN:
        ok = parse_num("--shutdown-timeout", arg, 0, 86400, &o->shutdown_timeout);
        break;
    case OPT_BODY:
        ok = parse_num("--max-body-bytes", arg, 1024, 1e10, &d);
        if (ok) o->max_body_bytes = (long)d;
        break;
    case OPT_HEADER:
        ok = parse_int("--max-header-bytes", arg, 4096, 16 << 20, &o->max_header_bytes);
        break;
    case OPT_CONNS:
        ok = parse_int("--max-connections", arg, 1, 1 << 20, &o->max_connections);
        break;
    case OPT_CONNS_IP:
        ok = parse_int("--max-connections-per-ip", arg, 0, 1 << 20, &o->max_connections_per_ip);
        break;
    case OPT_REQ_TIMEOUT:
        ok = parse_int("--request-timeout", arg, 0, 86400, &o->request_timeout);
        break;
    default:
        return STEP_UNKNOWN;
    }
    return ok ? STEP_OK : STEP_INVALID;
}

static enum parse_step apply_option(int c, const char *arg, struct options *o)
{
    if (c == OPT_HELP || c == 'h') return STEP_HELP;
    enum parse_step step = apply_text_option(c, arg, o);
    if (step != STEP_UNKNOWN) return step;
    step = apply_engine_number(c, arg, o);
    if (step != STEP_UNKNOWN) return step;
    return apply_server_number(c, arg, o);
}

/* The device is one this build can run with the parallel layout asked for. */
static bool check_device(const struct options *o)
{
    if (strcmp(o->device, "cpu") != 0 && strcmp(o->device, "cuda") != 0) {
        fprintf(stderr, "evalserver: --device must be cpu or cuda, got '%s'\n", o->device);
        return false;
    }
#ifndef HAVE_CUDA
    if (strcmp(o->device, "cuda") == 0) {
        fprintf(stderr, "evalserver: --device cuda: this build has no CUDA backend\n");
        return false;
    }
#endif
#ifndef HAVE_NCCL
    if (o->tp > 1 && strcmp(o->device, "cuda") == 0) {
        fprintf(stderr, "evalserver: --tp > 1 with --device cuda needs NCCL, which this build "
                        "lacks\n");
        return false;
    }
#endif
    return true;
}

/* --enable-auto-tool-choice and --tool-call-parser come together, the
 * parser one that tool_calls.c has. */
static bool check_tool_calls(const struct options *o)
{
    enum tool_parser parser;
    if (o->enable_auto_tool_choice && !o->tool_call_parser) {
        fprintf(stderr,
                "evalserver: --enable-auto-tool-choice needs --tool-call-parser NAME "
                "(%s)\n",
                tool_parser_names());
        return false;
    }
    if (o->tool_call_parser && !o->enable_auto_tool_choice) {
        fprintf(stderr, "evalserver: --tool-call-parser needs --enable-auto-tool-choice\n");
        return false;
    }
    if (o->tool_call_parser && !tool_parser_from_name(o->tool_call_parser, &parser)) {
        fprintf(stderr, "evalserver: --tool-call-parser must be one of %s, got '%s'\n",
                tool_parser_names(), o->tool_call_parser);
        return false;
    }
    return true;
}

/* The checks across options, once every option is read. */
static bool check_options(const struct options *o)
{
    if (!o->model) {
        fprintf(stderr, "evalserver: --model DIR is required (see --help)\n");
        return false;
    }
    if (!check_device(o) || !check_tool_calls(o)) return false;
    return check_nodes(o);
}

enum options_result options_parse(int argc, char **argv, struct options *o)
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
        {"pp-micro-batches", required_argument, NULL, OPT_PP_MICRO},
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
        {"trust-request-chat-template", no_argument, NULL, OPT_TRUST_REQUEST_TEMPLATE},
        {"enable-auto-tool-choice", no_argument, NULL, OPT_AUTO_TOOL_CHOICE},
        {"tool-call-parser", required_argument, NULL, OPT_TOOL_CALL_PARSER},
        {"no-prefix-caching", no_argument, NULL, OPT_NO_PREFIX},
        {"batch-invariant", no_argument, NULL, OPT_BATCH_INVARIANT},
        {"precision", required_argument, NULL, OPT_PRECISION},
        {"async-scheduling", required_argument, NULL, OPT_ASYNC},
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
        {"step-timeout", required_argument, NULL, OPT_STEP_TIMEOUT},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        enum parse_step step = apply_option(c, optarg, o);
        if (step == STEP_HELP) return OPTIONS_HELP;
        if (step == STEP_INVALID) return OPTIONS_INVALID;
        if (step == STEP_UNKNOWN) {
            fprintf(stderr, "evalserver: unknown or incomplete option '%s' (see --help)\n",
                    argv[optind - 1]);
            return OPTIONS_INVALID;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "evalserver: unexpected argument '%s' (see --help)\n", argv[optind]);
        return OPTIONS_INVALID;
    }
    return check_options(o) ? OPTIONS_RUN : OPTIONS_INVALID;
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

bool options_apply_log_level(const struct options *o)
{
    if (!o->log_level) return true;
    enum log_level lvl;
    if (parse_log_level(o->log_level, &lvl) != 0) {
        fprintf(stderr, "evalserver: --log-level must be error, warn, info or debug\n");
        return false;
    }
    log_set_level(lvl);
    return true;
}

bool options_resolve_api_key(struct options *o, char **key_from_file)
{
    *key_from_file = NULL;
    if (!o->api_key && o->api_key_file) {
        char *key = textfile_read(o->api_key_file);
        if (!key) {
            fprintf(stderr, "evalserver: --api-key-file %s: cannot read\n", o->api_key_file);
            return false;
        }
        size_t n = strlen(key);
        while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r' || key[n - 1] == ' '))
            key[--n] = '\0';
        if (n == 0) {
            fprintf(stderr, "evalserver: --api-key-file %s is empty\n", o->api_key_file);
            free(key);
            return false;
        }
        o->api_key = *key_from_file = key;
    }
    if (!o->api_key) o->api_key = getenv("EVALSERVER_API_KEY");
    return true;
}
