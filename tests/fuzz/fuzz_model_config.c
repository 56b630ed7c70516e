/*
 * fuzz_model_config.c - libFuzzer target for mc_parse
 * (common/model_config.c) on arbitrary config.json text.
 *
 * Input layout: config.json text, optionally followed by a NUL byte and a
 * generation_config.json text (without a NUL there is no generation config).
 * A config that parses must describe a model the engines can size without
 * dividing by zero or indexing out of range; those promises are checked
 * below (abort on violation).
 * Never does: file I/O.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_config.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_model_config: invariant failed at line %d: %s\n", __LINE__,      \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_config(const struct model_config *c)
{
    CHECK(c->arch == ARCH_LLAMA || c->arch == ARCH_MISTRAL || c->arch == ARCH_QWEN2 ||
          c->arch == ARCH_QWEN3);
    CHECK(memchr(c->arch_name, 0, sizeof c->arch_name) != NULL);
    CHECK(strcmp(c->arch_name, mc_arch_name(c->arch)) == 0);
    CHECK(c->hidden_size >= 1 && c->intermediate_size >= 1 && c->num_layers >= 1);
    CHECK(c->num_heads >= 1 && c->num_kv_heads >= 1 && c->num_heads % c->num_kv_heads == 0);
    CHECK(c->head_dim >= 2 && c->head_dim % 2 == 0);
    CHECK(c->vocab_size >= 1 && c->max_position_embeddings >= 1);
    CHECK(isfinite(c->rms_norm_eps) && c->rms_norm_eps > 0);
    CHECK(isfinite(c->rope_theta) && c->rope_theta > 0);
    CHECK(c->rope_scaling == ROPE_NONE || c->rope_scaling == ROPE_LLAMA3 ||
          c->rope_scaling == ROPE_LINEAR);
    CHECK(isfinite(c->rope_factor) && c->rope_factor > 0);
    if (c->rope_scaling == ROPE_LLAMA3) {
        CHECK(c->rope_high_freq_factor > c->rope_low_freq_factor && c->rope_low_freq_factor > 0);
        CHECK(c->rope_original_max_position_embeddings >= 1);
    }
    CHECK(memchr(c->torch_dtype, 0, sizeof c->torch_dtype) != NULL);
    CHECK(strcmp(c->torch_dtype, "bfloat16") == 0 || strcmp(c->torch_dtype, "float16") == 0 ||
          strcmp(c->torch_dtype, "float32") == 0);
    CHECK(c->bos_token_id == -1 || (c->bos_token_id >= 0 && c->bos_token_id < c->vocab_size));
    CHECK(c->n_eos_token_ids >= 0 && c->n_eos_token_ids <= MC_MAX_EOS);
    for (int i = 0; i < c->n_eos_token_ids; i++) {
        CHECK(c->eos_token_ids[i] >= 0 && c->eos_token_ids[i] < c->vocab_size);
        for (int j = 0; j < i; j++)
            CHECK(c->eos_token_ids[i] != c->eos_token_ids[j]);
    }
    CHECK(c->sliding_window >= 0);
    /* What the engines compute from it must not overflow an int64. */
    int64_t q_width = (int64_t)c->num_heads * c->head_dim;
    CHECK(q_width > 0 && q_width <= (int64_t)1 << 31);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* NUL-terminated copies; the config ends at the first NUL. */
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    size_t cfg_len = strlen(text);
    const char *gen = cfg_len < size ? text + cfg_len + 1 : NULL;

    struct model_config c;
    memset(&c, 0xA5, sizeof c);
    struct es_err err = {{0}};
    enum es_status st = mc_parse(text, gen, &c, &err);
    if (st == ES_OK) check_config(&c);
    else CHECK(err.msg[0] != '\0');
    free(text);
    return 0;
}
