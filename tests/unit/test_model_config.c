/*
 * test_model_config.c - config.json parsing for the four architectures in
 * the transformers 4 and 5 layouts, eos merging with generation_config.json,
 * and rejection of unknown architectures and nonsensical values.
 *
 * The base configs are the published configs of real models (Llama-3.1-8B,
 * Llama-3.2-1B, Mistral-7B-v0.3, Qwen2.5-7B, Qwen3-0.6B), trimmed to the
 * fields that matter.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "model_config.h"
#include "testing.h"

static const char *LLAMA31_8B_V4 =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0.0,"
    "\"bos_token_id\":128000,\"eos_token_id\":[128001,128008,128009],\"hidden_act\":\"silu\","
    "\"hidden_size\":4096,\"initializer_range\":0.02,\"intermediate_size\":14336,"
    "\"max_position_embeddings\":131072,\"mlp_bias\":false,\"model_type\":\"llama\","
    "\"num_attention_heads\":32,\"num_hidden_layers\":32,\"num_key_value_heads\":8,"
    "\"pretraining_tp\":1,\"rms_norm_eps\":1e-05,\"rope_scaling\":{\"factor\":8.0,"
    "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,"
    "\"rope_type\":\"llama3\"},\"rope_theta\":500000.0,\"tie_word_embeddings\":false,"
    "\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.43.0.dev0\",\"use_cache\":true,"
    "\"vocab_size\":128256}";

static const char *LLAMA32_1B_V5 =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":false,\"bos_token_id\":128000,"
    "\"dtype\":\"bfloat16\",\"eos_token_id\":128001,\"head_dim\":64,\"hidden_act\":\"silu\","
    "\"hidden_size\":2048,\"intermediate_size\":8192,\"max_position_embeddings\":131072,"
    "\"mlp_bias\":false,\"model_type\":\"llama\",\"num_attention_heads\":32,"
    "\"num_hidden_layers\":16,\"num_key_value_heads\":8,\"rms_norm_eps\":1e-05,"
    "\"rope_parameters\":{\"factor\":32.0,\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
    "\"original_max_position_embeddings\":8192,\"rope_theta\":500000.0,\"rope_type\":\"llama3\"},"
    "\"tie_word_embeddings\":true,\"transformers_version\":\"5.0.0\",\"vocab_size\":128256}";

static const char *MISTRAL_7B =
    "{\"architectures\":[\"MistralForCausalLM\"],\"attention_dropout\":0.0,\"bos_token_id\":1,"
    "\"eos_token_id\":2,\"head_dim\":128,\"hidden_act\":\"silu\",\"hidden_size\":4096,"
    "\"intermediate_size\":14336,\"max_position_embeddings\":32768,\"model_type\":\"mistral\","
    "\"num_attention_heads\":32,\"num_hidden_layers\":32,\"num_key_value_heads\":8,"
    "\"rms_norm_eps\":1e-05,\"rope_theta\":1000000.0,\"sliding_window\":null,"
    "\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\",\"vocab_size\":32768}";

static const char *QWEN25_7B =
    "{\"architectures\":[\"Qwen2ForCausalLM\"],\"attention_dropout\":0.0,\"bos_token_id\":151643,"
    "\"eos_token_id\":151645,\"hidden_act\":\"silu\",\"hidden_size\":3584,"
    "\"intermediate_size\":18944,\"max_position_embeddings\":32768,\"max_window_layers\":28,"
    "\"model_type\":\"qwen2\",\"num_attention_heads\":28,\"num_hidden_layers\":28,"
    "\"num_key_value_heads\":4,\"rms_norm_eps\":1e-06,\"rope_theta\":1000000.0,"
    "\"sliding_window\":131072,\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\","
    "\"use_cache\":true,\"use_sliding_window\":false,\"vocab_size\":152064}";

static const char *QWEN3_06B =
    "{\"architectures\":[\"Qwen3ForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0.0,"
    "\"bos_token_id\":151643,\"eos_token_id\":151645,\"head_dim\":128,\"hidden_act\":\"silu\","
    "\"hidden_size\":1024,\"initializer_range\":0.02,\"intermediate_size\":3072,"
    "\"max_position_embeddings\":40960,\"max_window_layers\":28,\"model_type\":\"qwen3\","
    "\"num_attention_heads\":16,\"num_hidden_layers\":28,\"num_key_value_heads\":8,"
    "\"rms_norm_eps\":1e-06,\"rope_scaling\":null,\"rope_theta\":1000000,\"sliding_window\":null,"
    "\"tie_word_embeddings\":true,\"torch_dtype\":\"bfloat16\",\"use_cache\":true,"
    "\"use_sliding_window\":false,\"vocab_size\":151936}";

/* base with one field replaced (value is JSON text) or removed (NULL). */
static char *with(const char *base, const char *key, const char *value)
{
    cJSON *root = cJSON_Parse(base);
    cJSON_DeleteItemFromObjectCaseSensitive(root, key);
    if (value) cJSON_AddItemToObject(root, key, cJSON_Parse(value));
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

static enum es_status parse(const char *cfg, const char *gen, struct model_config *mc, char *msg)
{
    struct es_err err = {{0}};
    enum es_status st = mc_parse(cfg, gen, mc, &err);
    if (st != ES_OK) CHECK(err.msg[0] != '\0');
    if (msg) snprintf(msg, 512, "%s", err.msg);
    return st;
}

/* Expects base-with-change to fail with `want` and a message containing
 * `needle`. */
static void reject(const char *base, const char *key, const char *value, enum es_status want,
                   const char *needle, int line)
{
    char *cfg = with(base, key, value);
    struct model_config mc;
    char msg[512];
    enum es_status st = parse(cfg, NULL, &mc, msg);
    if (st != want || (needle && !strstr(msg, needle))) {
        fprintf(stderr, "line %d: %s=%s: got %d '%s', wanted %d with '%s'\n", line, key,
                value ? value : "(removed)", st, msg, want, needle ? needle : "");
        test_failures++;
    }
    free(cfg);
}
#define REJECT(base, key, value, want, needle) reject(base, key, value, want, needle, __LINE__)

static void test_llama_v4(void)
{
    struct model_config mc;
    const char *gen = "{\"bos_token_id\":128000,\"do_sample\":true,"
                      "\"eos_token_id\":[128001,128008,128009],\"temperature\":0.6}";
    CHECK(parse(LLAMA31_8B_V4, gen, &mc, NULL) == ES_OK);
    CHECK(mc.arch == ARCH_LLAMA);
    CHECK_STR(mc.arch_name, "LlamaForCausalLM");
    CHECK(mc.hidden_size == 4096 && mc.intermediate_size == 14336 && mc.num_layers == 32);
    CHECK(mc.num_heads == 32 && mc.num_kv_heads == 8 && mc.head_dim == 128);
    CHECK(mc.vocab_size == 128256 && mc.max_position_embeddings == 131072);
    CHECK(fabs(mc.rms_norm_eps - 1e-5) < 1e-12 && mc.rope_theta == 500000.0);
    CHECK(mc.rope_scaling == ROPE_LLAMA3 && mc.rope_factor == 8.0);
    CHECK(mc.rope_low_freq_factor == 1.0 && mc.rope_high_freq_factor == 4.0);
    CHECK(mc.rope_original_max_position_embeddings == 8192);
    CHECK(!mc.tie_word_embeddings && !mc.attention_bias && !mc.qk_norm && mc.sliding_window == 0);
    CHECK_STR(mc.torch_dtype, "bfloat16");
    CHECK(mc.bos_token_id == 128000);
    CHECK(mc.n_eos_token_ids == 3);
    CHECK(mc.eos_token_ids[0] == 128001 && mc.eos_token_ids[1] == 128008 &&
          mc.eos_token_ids[2] == 128009);
    CHECK_STR(mc_arch_name(ARCH_QWEN3), "Qwen3ForCausalLM");
}

static void test_llama_v5(void)
{
    struct model_config mc;
    CHECK(parse(LLAMA32_1B_V5, "{\"eos_token_id\":[128001,128008,128009]}", &mc, NULL) == ES_OK);
    CHECK(mc.hidden_size == 2048 && mc.num_layers == 16 && mc.head_dim == 64);
    CHECK(mc.tie_word_embeddings);
    CHECK(mc.rope_theta == 500000.0 && mc.rope_scaling == ROPE_LLAMA3 && mc.rope_factor == 32.0);
    CHECK(mc.rope_original_max_position_embeddings == 8192);
    CHECK_STR(mc.torch_dtype, "bfloat16");
    CHECK(mc.n_eos_token_ids == 3 && mc.eos_token_ids[0] == 128001 &&
          mc.eos_token_ids[2] == 128009);

    /* rope_parameters keyed by layer type */
    char *cfg = with(LLAMA32_1B_V5, "rope_parameters",
                     "{\"full_attention\":{\"rope_type\":\"llama3\",\"rope_theta\":250000.0,"
                     "\"factor\":16.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                     "\"original_max_position_embeddings\":8192}}");
    CHECK(parse(cfg, NULL, &mc, NULL) == ES_OK);
    CHECK(mc.rope_theta == 250000.0 && mc.rope_factor == 16.0 && mc.rope_scaling == ROPE_LLAMA3);
    free(cfg);
    /* default rope in v5: only theta */
    cfg = with(LLAMA32_1B_V5, "rope_parameters",
               "{\"rope_type\":\"default\",\"rope_theta\":10000.0}");
    CHECK(parse(cfg, NULL, &mc, NULL) == ES_OK);
    CHECK(mc.rope_theta == 10000.0 && mc.rope_scaling == ROPE_NONE);
    free(cfg);
    /* v4 linear scaling with the legacy "type" key */
    cfg = with(LLAMA31_8B_V4, "rope_scaling", "{\"type\":\"linear\",\"factor\":4.0}");
    CHECK(parse(cfg, NULL, &mc, NULL) == ES_OK);
    CHECK(mc.rope_scaling == ROPE_LINEAR && mc.rope_factor == 4.0 && mc.rope_theta == 500000.0);
    free(cfg);
    /* no rope fields at all: transformers' defaults */
    char *a = with(LLAMA31_8B_V4, "rope_scaling", NULL);
    char *b = with(a, "rope_theta", NULL);
    CHECK(parse(b, NULL, &mc, NULL) == ES_OK);
    CHECK(mc.rope_theta == 10000.0 && mc.rope_scaling == ROPE_NONE);
    free(a);
    free(b);
}

static void test_mistral(void)
{
    struct model_config mc;
    CHECK(parse(MISTRAL_7B, NULL, &mc, NULL) == ES_OK);
    CHECK(mc.arch == ARCH_MISTRAL && mc.head_dim == 128 && mc.sliding_window == 0);
    CHECK(mc.rope_theta == 1e6 && mc.vocab_size == 32768);
    CHECK(mc.bos_token_id == 1 && mc.n_eos_token_ids == 1 && mc.eos_token_ids[0] == 2);
    char *cfg = with(MISTRAL_7B, "sliding_window", "4096");
    CHECK(parse(cfg, NULL, &mc, NULL) == ES_OK && mc.sliding_window == 4096);
    free(cfg);
    cfg = with(MISTRAL_7B, "sliding_window", NULL);
    CHECK(parse(cfg, NULL, &mc, NULL) == ES_OK && mc.sliding_window == 4096);
    free(cfg);
    cfg = with(MISTRAL_7B, "head_dim", NULL);
    CHECK(parse(cfg, NULL, &mc, NULL) == ES_OK && mc.head_dim == 128);
    free(cfg);
}

static void test_qwen(void)
{
    struct model_config mc;
    CHECK(parse(QWEN25_7B, "{\"eos_token_id\":[151645,151643]}", &mc, NULL) == ES_OK);
    CHECK(mc.arch == ARCH_QWEN2 && mc.attention_bias && !mc.qk_norm);
    CHECK(mc.head_dim == 128 && mc.num_kv_heads == 4 && mc.sliding_window == 0);
    CHECK(fabs(mc.rms_norm_eps - 1e-6) < 1e-15);
    CHECK(mc.n_eos_token_ids == 2 && mc.eos_token_ids[0] == 151645 &&
          mc.eos_token_ids[1] == 151643);
    REJECT(QWEN25_7B, "use_sliding_window", "true", ES_EUNSUPPORTED, "use_sliding_window");
    /* Qwen2 derives head_dim from hidden_size / heads even when a head_dim
     * key is present (fuzz finding: hidden 4, 8 heads gave head_dim 0). */
    char *q2 = with(QWEN25_7B, "head_dim", "64");
    CHECK(parse(q2, NULL, &mc, NULL) == ES_OK && mc.head_dim == 128);
    REJECT(q2, "num_attention_heads", "24", ES_EINVAL, "divide hidden_size");
    REJECT(q2, "hidden_size", "4", ES_EINVAL, "divide hidden_size");
    free(q2);

    CHECK(parse(QWEN3_06B, NULL, &mc, NULL) == ES_OK);
    CHECK(mc.arch == ARCH_QWEN3 && mc.qk_norm && !mc.attention_bias);
    CHECK(mc.head_dim == 128 && mc.hidden_size == 1024 && mc.num_heads == 16);
    CHECK(mc.tie_word_embeddings && mc.rope_theta == 1e6 && mc.rope_scaling == ROPE_NONE);
    CHECK(mc.max_position_embeddings == 40960);
    char *cfg = with(QWEN3_06B, "head_dim", NULL); /* Qwen3Config's default is 128 */
    CHECK(parse(cfg, NULL, &mc, NULL) == ES_OK && mc.head_dim == 128);
    free(cfg);
    REJECT(QWEN3_06B, "attention_bias", "true", ES_EUNSUPPORTED, "attention_bias");
}

static void test_eos_and_generation(void)
{
    struct model_config mc;
    char msg[512];
    /* config int + generation list, deduplicated, config first */
    CHECK(parse(QWEN3_06B, "{\"eos_token_id\":[151645,151643],\"top_k\":20}", &mc, NULL) == ES_OK);
    CHECK(mc.n_eos_token_ids == 2 && mc.eos_token_ids[0] == 151645 &&
          mc.eos_token_ids[1] == 151643);
    CHECK(parse(QWEN3_06B, "{\"eos_token_id\":151643}", &mc, NULL) == ES_OK);
    CHECK(mc.n_eos_token_ids == 2);
    CHECK(parse(QWEN3_06B, "{}", &mc, NULL) == ES_OK && mc.n_eos_token_ids == 1);
    CHECK(parse(QWEN3_06B, "{\"eos_token_id\":null}", &mc, NULL) == ES_OK);
    char *cfg = with(QWEN3_06B, "eos_token_id", NULL);
    char *cfg2 = with(cfg, "bos_token_id", "null");
    CHECK(parse(cfg2, NULL, &mc, NULL) == ES_OK && mc.n_eos_token_ids == 0 &&
          mc.bos_token_id == -1);
    free(cfg);
    free(cfg2);
    CHECK(parse(QWEN3_06B, "{\"eos_token_id\":\"x\"}", &mc, msg) == ES_EINVAL);
    CHECK(strstr(msg, "generation_config.json") && strstr(msg, "eos_token_id"));
    CHECK(parse(QWEN3_06B, "{\"eos_token_id\":[1,2.5]}", &mc, msg) == ES_EINVAL);
    CHECK(parse(QWEN3_06B, "{\"eos_token_id\":[999999999]}", &mc, msg) == ES_ERANGE);
    CHECK(parse(QWEN3_06B, "{\"eos_token_id\":", &mc, msg) == ES_EFORMAT);
    CHECK(strstr(msg, "generation_config.json") != NULL);
    CHECK(parse(QWEN3_06B, "[1]", &mc, msg) == ES_EINVAL);
    CHECK(parse(QWEN3_06B, "{\"eos_token_id\":[1,2,3,4,5,6,7,8,9]}", &mc, msg) == ES_ERANGE);
    REJECT(QWEN3_06B, "eos_token_id", "[151645, -1]", ES_ERANGE, "eos_token_id[1]");
    REJECT(QWEN3_06B, "bos_token_id", "151936", ES_ERANGE, "bos_token_id");
}

static void test_rejections(void)
{
    struct model_config mc;
    char msg[512];
    REJECT(LLAMA31_8B_V4, "architectures", "[\"GPT2LMHeadModel\"]", ES_EUNSUPPORTED,
           "GPT2LMHeadModel");
    REJECT(LLAMA31_8B_V4, "architectures", "[\"LlamaForCausalLM\",\"X\"]", ES_EUNSUPPORTED,
           "exactly one");
    REJECT(LLAMA31_8B_V4, "architectures", "[3]", ES_EINVAL, "architectures");
    REJECT(LLAMA31_8B_V4, "architectures", "\"LlamaForCausalLM\"", ES_EINVAL, "architectures");
    /* no architectures: model_type decides, as AutoModel does */
    char *cfg = with(LLAMA31_8B_V4, "architectures", NULL);
    CHECK(parse(cfg, NULL, &mc, NULL) == ES_OK && mc.arch == ARCH_LLAMA);
    REJECT(cfg, "model_type", "\"gpt_neox\"", ES_EUNSUPPORTED, "gpt_neox");
    REJECT(cfg, "model_type", NULL, ES_EINVAL, "architectures");
    free(cfg);

    static const char *required[] = {"hidden_size", "intermediate_size", "num_hidden_layers",
                                     "num_attention_heads", "vocab_size"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        REJECT(LLAMA31_8B_V4, required[i], NULL, ES_EINVAL, required[i]);
        REJECT(LLAMA31_8B_V4, required[i], "0", ES_ERANGE, required[i]);
        REJECT(LLAMA31_8B_V4, required[i], "-4", ES_ERANGE, required[i]);
        REJECT(LLAMA31_8B_V4, required[i], "32.5", ES_EINVAL, required[i]);
        REJECT(LLAMA31_8B_V4, required[i], "\"32\"", ES_EINVAL, required[i]);
        REJECT(LLAMA31_8B_V4, required[i], "1e300", ES_ERANGE, required[i]);
    }
    REJECT(LLAMA31_8B_V4, "num_attention_heads", "24", ES_EINVAL, "divide hidden_size");
    REJECT(LLAMA31_8B_V4, "num_key_value_heads", "5", ES_EINVAL, "num_key_value_heads");
    REJECT(LLAMA31_8B_V4, "num_key_value_heads", "0", ES_ERANGE, "num_key_value_heads");
    REJECT(LLAMA31_8B_V4, "head_dim", "127", ES_EINVAL, "even");
    REJECT(LLAMA31_8B_V4, "rms_norm_eps", "-1", ES_ERANGE, "rms_norm_eps");
    REJECT(LLAMA31_8B_V4, "rope_theta", "\"big\"", ES_EINVAL, "rope_theta");
    REJECT(LLAMA31_8B_V4, "tie_word_embeddings", "1", ES_EINVAL, "tie_word_embeddings");
    REJECT(LLAMA31_8B_V4, "torch_dtype", "\"float64\"", ES_EUNSUPPORTED, "float64");
    REJECT(LLAMA31_8B_V4, "hidden_act", "\"gelu\"", ES_EUNSUPPORTED, "gelu");
    REJECT(LLAMA31_8B_V4, "mlp_bias", "true", ES_EUNSUPPORTED, "mlp_bias");
    REJECT(LLAMA31_8B_V4, "attention_bias", "true", ES_EUNSUPPORTED, "attention_bias");
    REJECT(LLAMA31_8B_V4, "rope_scaling", "{\"rope_type\":\"yarn\",\"factor\":4.0}",
           ES_EUNSUPPORTED, "yarn");
    REJECT(LLAMA31_8B_V4, "rope_scaling",
           "{\"rope_type\":\"llama3\",\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
           "\"original_max_position_embeddings\":8192}",
           ES_EINVAL, "factor");
    REJECT(LLAMA31_8B_V4, "rope_scaling",
           "{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":4.0,"
           "\"high_freq_factor\":1.0,\"original_max_position_embeddings\":8192}",
           ES_EINVAL, "high_freq_factor");
    REJECT(LLAMA31_8B_V4, "rope_scaling", "[1]", ES_EINVAL, "rope_scaling");
    REJECT(LLAMA32_1B_V5, "rope_parameters", "{\"sliding_attention\":{\"rope_theta\":1.0}}",
           ES_EUNSUPPORTED, "rope_parameters");
    REJECT(LLAMA32_1B_V5, "rope_parameters", "{\"rope_type\":\"dynamic\",\"factor\":2.0}",
           ES_EUNSUPPORTED, "dynamic");

    CHECK(parse("{\"architectures\":", NULL, &mc, msg) == ES_EFORMAT);
    CHECK(strstr(msg, "config.json") != NULL);
    CHECK(parse("[]", NULL, &mc, msg) == ES_EINVAL);
    CHECK(parse("", NULL, &mc, msg) == ES_EFORMAT);
    /* a deeply nested config is refused by the JSON layer, not the stack */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 1);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    deep[2 * depth] = 0;
    CHECK(parse(deep, NULL, &mc, msg) == ES_EFORMAT);
    free(deep);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void test_load(void)
{
    char dir[] = "/tmp/test_mc_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    struct model_config mc;
    struct es_err err = {{0}};
    CHECK(mc_load(dir, &mc, &err) == ES_ENOTFOUND && strstr(err.msg, "config.json"));
    write_text(dir, "config.json", QWEN3_06B);
    err.msg[0] = 0;
    CHECK(mc_load(dir, &mc, &err) == ES_OK && mc.arch == ARCH_QWEN3 && mc.n_eos_token_ids == 1);
    write_text(dir, "generation_config.json", "{\"eos_token_id\":[151645,151643]}");
    CHECK(mc_load(dir, &mc, &err) == ES_OK && mc.n_eos_token_ids == 2);
    write_text(dir, "generation_config.json", "{\"eos_token_id\":[151645,");
    err.msg[0] = 0;
    CHECK(mc_load(dir, &mc, &err) == ES_EFORMAT && strstr(err.msg, "generation_config.json"));
    write_text(dir, "config.json", "{\"architectures\":[\"BertModel\"]}");
    char path[600];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    unlink(path);
    err.msg[0] = 0;
    CHECK(mc_load(dir, &mc, &err) == ES_EUNSUPPORTED && strstr(err.msg, "BertModel") &&
          strstr(err.msg, "config.json"));
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    test_llama_v4();
    test_llama_v5();
    test_mistral();
    test_qwen();
    test_eos_and_generation();
    test_rejections();
    test_load();
    return test_result("test_model_config");
}
