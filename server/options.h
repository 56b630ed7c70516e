/*
 * options.h - evalserver's command line: the options, their defaults, the
 * --help text, parsing and the checks that the options fit together.
 *
 * Owns nothing but the struct options it fills (its strings point into
 * argv or the environment, or, for the API key read from --api-key-file,
 * into a string the caller frees). Reports every mistake on stderr with
 * an "evalserver: " prefix and lets the caller exit 2; it never exits
 * itself and never loads a model.
 */
#ifndef ES_OPTIONS_H
#define ES_OPTIONS_H

#include <stdbool.h>
#include <stdio.h>

struct options {
    const char *model;
    const char *served_model_name;
    const char *host;
    int port;
    const char *device;
    int tp, dp;
    int pp;               /* pipeline stages per replica */
    int pp_micro_batches; /* most micro-batches a step is cut into; 0: --pp */
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
    bool trust_request_chat_template; /* a request's "chat_template" is used, not refused */
    bool enable_auto_tool_choice;     /* tool calls parsed out of chat answers (with a parser) */
    const char *tool_call_parser;     /* hermes or llama3_json; NULL: none */
    bool no_prefix_caching;
    bool batch_invariant;         /* results independent of what else is in a step */
    bool high_precision;          /* --precision high (cuda: near-fp32 activations and KV cache) */
    const char *async_scheduling; /* on, off or auto */
    /* multi-node tensor parallelism */
    int nnodes, node_rank;
    const char *master_addr;
    int master_port;     /* node 0's control channel; the ranks' comm uses the next port */
    double node_timeout; /* seconds for every node to join, and to answer a heartbeat */
    double step_timeout; /* a forward running longer fails its replica; 0: never; < 0: the
                            device's default (cuda 600 s, cpu never) */
};

enum options_result {
    OPTIONS_RUN,     /* parsed and consistent: go on */
    OPTIONS_HELP,    /* --help: print options_usage(stdout), exit 0 */
    OPTIONS_INVALID, /* reported on stderr: exit 2 */
};

/* The defaults of every option. */
void options_defaults(struct options *o);

/* The --help text. */
void options_usage(FILE *f);

/* Parses argv into o (filled with options_defaults first) and checks
 * that the options fit together. */
enum options_result options_parse(int argc, char **argv, struct options *o);

/* Applies --log-level, if given; false (reported) when it names no level. */
bool options_apply_log_level(const struct options *o);

/* Sets o->api_key from --api-key, else --api-key-file (trailing newlines
 * and spaces cut), else $EVALSERVER_API_KEY. *key_from_file receives the
 * string read from the file (NULL if none), which the caller frees after
 * the last use of o->api_key. False (reported) when the file cannot be
 * read or is empty. */
bool options_resolve_api_key(struct options *o, char **key_from_file);

#endif
