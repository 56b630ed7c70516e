/*
 * model_config.h - the parts of a Hugging Face config.json (and
 * generation_config.json) that the engines need, for LlamaForCausalLM,
 * MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM. Accepts both the
 * transformers 4 layout (rope_theta, rope_scaling at top level) and the
 * transformers 5 layout (rope_parameters). Other architectures are rejected
 * with a message naming them.
 */
#ifndef ES_MODEL_CONFIG_H
#define ES_MODEL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "status.h"

enum model_arch { ARCH_LLAMA, ARCH_MISTRAL, ARCH_QWEN2, ARCH_QWEN3 };

enum rope_scaling_type { ROPE_NONE, ROPE_LLAMA3, ROPE_LINEAR };

#define MC_MAX_EOS 8

struct model_config {
    enum model_arch arch;
    char arch_name[64];          /* "LlamaForCausalLM" */
    int hidden_size;             /* d_model */
    int intermediate_size;       /* MLP inner width */
    int num_layers;
    int num_heads;               /* query heads */
    int num_kv_heads;            /* key/value heads (GQA) */
    int head_dim;                /* defaults to hidden_size / num_heads */
    int vocab_size;
    int max_position_embeddings;
    double rms_norm_eps;
    double rope_theta;
    enum rope_scaling_type rope_scaling;
    double rope_factor;          /* llama3 / linear */
    double rope_low_freq_factor; /* llama3 */
    double rope_high_freq_factor;
    int rope_original_max_position_embeddings;
    bool tie_word_embeddings;
    bool attention_bias;         /* q/k/v projections carry a bias (Qwen2) */
    bool qk_norm;                /* per-head RMSNorm on q and k (Qwen3) */
    int sliding_window;          /* 0 = none */
    char torch_dtype[16];        /* "bfloat16", "float16", "float32" */
    int32_t bos_token_id;        /* -1 if not declared */
    int32_t eos_token_ids[MC_MAX_EOS]; /* config.json + generation_config.json, deduplicated */
    int n_eos_token_ids;
};

/* Reads dir/config.json and, if present, dir/generation_config.json. */
enum es_status mc_load(const char *dir, struct model_config *out, struct es_err *err);
/* Parses a config.json text (generation config separately, may be NULL). */
enum es_status mc_parse(const char *config_json, const char *generation_config_json,
                        struct model_config *out, struct es_err *err);
const char *mc_arch_name(enum model_arch arch);

#endif
