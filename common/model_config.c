/*
 * model_config.c - reads Hugging Face config.json / generation_config.json
 * into struct model_config for the four supported decoder architectures.
 *
 * Both serialisations are understood: transformers 4 (rope_theta and
 * rope_scaling at the top level, torch_dtype) and transformers 5
 * (rope_parameters {rope_type, rope_theta, factor, ...}, possibly keyed by
 * layer type, and dtype). Defaults follow the transformers config classes.
 * Anything the engines could not run faithfully (unknown architecture,
 * unsupported rope type, biases where the engines have none, per-layer
 * sliding windows) is rejected with a message naming the field: a model that
 * loads is a model that computes what transformers computes.
 *
 * Owns nothing after return (the struct is plain data).
 */
#include "model_config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define MC_MAX_DIM (1 << 20) /* hidden / intermediate / vocab upper bounds */
#define MC_MAX_LAYERS 4096
#define MC_MAX_HEADS 4096

static const struct {
    const char *arch_name;
    const char *model_type;
    enum model_arch arch;
} known_archs[] = {
    {"LlamaForCausalLM", "llama", ARCH_LLAMA},
    {"MistralForCausalLM", "mistral", ARCH_MISTRAL},
    {"Qwen2ForCausalLM", "qwen2", ARCH_QWEN2},
    {"Qwen3ForCausalLM", "qwen3", ARCH_QWEN3},
};
#define N_KNOWN_ARCHS (sizeof known_archs / sizeof *known_archs)

const char *mc_arch_name(enum model_arch arch)
{
    for (size_t i = 0; i < N_KNOWN_ARCHS; i++)
        if (known_archs[i].arch == arch) return known_archs[i].arch_name;
    return "unknown";
}

static enum es_status pick_arch(const cJSON *cfg, struct model_config *out, struct es_err *err)
{
    const cJSON *archs = NULL;
    enum es_status st = js_get_arr(cfg, "architectures", false, &archs, err);
    if (st != ES_OK) return st;
    if (archs) {
        if (cJSON_GetArraySize(archs) != 1)
            return es_fail(err, ES_EUNSUPPORTED,
                           "'architectures' must name exactly one architecture, got %d",
                           cJSON_GetArraySize(archs));
        const cJSON *a = cJSON_GetArrayItem(archs, 0);
        if (!cJSON_IsString(a))
            return es_fail(err, ES_EINVAL, "'architectures[0]' must be a string, got %s",
                           js_type_name(a));
        for (size_t i = 0; i < N_KNOWN_ARCHS; i++) {
            if (strcmp(a->valuestring, known_archs[i].arch_name) == 0) {
                out->arch = known_archs[i].arch;
                snprintf(out->arch_name, sizeof out->arch_name, "%s", known_archs[i].arch_name);
                return ES_OK;
            }
        }
        return es_fail(err, ES_EUNSUPPORTED,
                       "unsupported architecture '%.100s' (supported: LlamaForCausalLM, "
                       "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)",
                       a->valuestring);
    }
    /* No architectures list: fall back to model_type, as AutoModel does. */
    const char *mt = NULL;
    st = js_get_str(cfg, "model_type", false, &mt, err);
    if (st != ES_OK) return st;
    if (!mt) return es_fail(err, ES_EINVAL, "'architectures' is required");
    for (size_t i = 0; i < N_KNOWN_ARCHS; i++) {
        if (strcmp(mt, known_archs[i].model_type) == 0) {
            out->arch = known_archs[i].arch;
            snprintf(out->arch_name, sizeof out->arch_name, "%s", known_archs[i].arch_name);
            return ES_OK;
        }
    }
    return es_fail(err, ES_EUNSUPPORTED, "unsupported model_type '%.100s'", mt);
}

/* Reads a required or optional int field into an int, keeping *out when
 * absent. */
static enum es_status get_int(const cJSON *obj, const char *field, bool required, int64_t min,
                              int64_t max, int *out, struct es_err *err)
{
    int64_t v = *out;
    enum es_status st = js_get_int(obj, field, required, min, max, &v, err);
    if (st == ES_OK) *out = (int)v;
    return st;
}

/* Adds one eos id (deduplicated). */
static enum es_status add_eos(struct model_config *out, int64_t id, struct es_err *err)
{
    for (int i = 0; i < out->n_eos_token_ids; i++)
        if (out->eos_token_ids[i] == id) return ES_OK;
    if (out->n_eos_token_ids >= MC_MAX_EOS)
        return es_fail(err, ES_ERANGE, "more than %d distinct eos_token_id values", MC_MAX_EOS);
    out->eos_token_ids[out->n_eos_token_ids++] = (int32_t)id;
    return ES_OK;
}

/* eos_token_id: an int, a list of ints, or null/absent. */
static enum es_status read_eos(const cJSON *obj, struct model_config *out, struct es_err *err)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(obj, "eos_token_id");
    if (!e || cJSON_IsNull(e)) return ES_OK;
    int64_t id;
    if (cJSON_IsArray(e)) {
        const cJSON *x;
        int i = 0;
        cJSON_ArrayForEach(x, e)
        {
            char what[48];
            snprintf(what, sizeof what, "'eos_token_id[%d]'", i++);
            enum es_status st = js_as_int(x, what, 0, out->vocab_size - 1, &id, err);
            if (st == ES_OK) st = add_eos(out, id, err);
            if (st != ES_OK) return st;
        }
        return ES_OK;
    }
    enum es_status st = js_as_int(e, "'eos_token_id'", 0, out->vocab_size - 1, &id, err);
    if (st != ES_OK) return st;
    return add_eos(out, id, err);
}

/* The rope block: transformers 5 rope_parameters (flat, or keyed by layer
 * type), else transformers 4 rope_scaling. theta may sit in either place. */
static enum es_status read_rope(const cJSON *cfg, struct model_config *out, struct es_err *err)
{
    const cJSON *rp = NULL;
    const char *where = "rope_parameters";
    enum es_status st = js_get_obj(cfg, "rope_parameters", false, &rp, err);
    if (st != ES_OK) return st;
    if (rp && !cJSON_GetObjectItemCaseSensitive(rp, "rope_type") &&
        !cJSON_GetObjectItemCaseSensitive(rp, "rope_theta") &&
        !cJSON_GetObjectItemCaseSensitive(rp, "type")) {
        /* Per-layer-type form; the four supported models use full attention. */
        const cJSON *full = NULL;
        st = js_get_obj(rp, "full_attention", false, &full, err);
        if (st != ES_OK) return es_wrap(err, st, "rope_parameters: ");
        if (!full || cJSON_GetArraySize(rp) != 1)
            return es_fail(err, ES_EUNSUPPORTED,
                           "rope_parameters: only a flat block or one 'full_attention' block "
                           "is supported");
        rp = full;
    }
    if (!rp) {
        where = "rope_scaling";
        st = js_get_obj(cfg, "rope_scaling", false, &rp, err);
        if (st != ES_OK) return st;
    }

    out->rope_theta = 10000.0;
    st = js_get_num(cfg, "rope_theta", false, 1e-3, 1e12, &out->rope_theta, err);
    if (st == ES_OK && rp)
        st = js_get_num(rp, "rope_theta", false, 1e-3, 1e12, &out->rope_theta, err);
    if (st != ES_OK) return st;
    out->rope_scaling = ROPE_NONE;
    out->rope_factor = 1.0;
    if (!rp) return ES_OK;

    const char *type = NULL;
    st = js_get_str(rp, "rope_type", false, &type, err);
    if (st == ES_OK && !type) st = js_get_str(rp, "type", false, &type, err);
    if (st != ES_OK) return es_wrap(err, st, "%s: ", where);
    if (!type || strcmp(type, "default") == 0) return ES_OK;

    if (strcmp(type, "linear") == 0) {
        out->rope_scaling = ROPE_LINEAR;
        st = js_get_num(rp, "factor", true, 1e-6, 1e6, &out->rope_factor, err);
        if (st != ES_OK) return es_wrap(err, st, "%s: ", where);
        return ES_OK;
    }
    if (strcmp(type, "llama3") == 0) {
        out->rope_scaling = ROPE_LLAMA3;
        st = js_get_num(rp, "factor", true, 1.0, 1e6, &out->rope_factor, err);
        if (st == ES_OK)
            st =
                js_get_num(rp, "low_freq_factor", true, 1e-6, 1e6, &out->rope_low_freq_factor, err);
        if (st == ES_OK)
            st = js_get_num(rp, "high_freq_factor", true, 1e-6, 1e6, &out->rope_high_freq_factor,
                            err);
        if (st == ES_OK)
            st = get_int(rp, "original_max_position_embeddings", true, 1, INT32_MAX,
                         &out->rope_original_max_position_embeddings, err);
        if (st != ES_OK) return es_wrap(err, st, "%s: ", where);
        if (out->rope_high_freq_factor <= out->rope_low_freq_factor)
            return es_fail(err, ES_EINVAL, "%s: high_freq_factor must exceed low_freq_factor",
                           where);
        return ES_OK;
    }
    return es_fail(err, ES_EUNSUPPORTED,
                   "%s: rope type '%.40s' is not supported (default, "
                   "linear, llama3)",
                   where, type);
}

static enum es_status read_dtype(const cJSON *cfg, struct model_config *out, struct es_err *err)
{
    const char *dt = NULL;
    enum es_status st = js_get_str(cfg, "dtype", false, &dt, err);
    if (st == ES_OK && !dt) st = js_get_str(cfg, "torch_dtype", false, &dt, err);
    if (st != ES_OK) return st;
    if (!dt) dt = "bfloat16";
    if (strcmp(dt, "bfloat16") && strcmp(dt, "float16") && strcmp(dt, "float32"))
        return es_fail(err, ES_EUNSUPPORTED,
                       "dtype '%.32s' is not supported (bfloat16, float16, "
                       "float32)",
                       dt);
    snprintf(out->torch_dtype, sizeof out->torch_dtype, "%s", dt);
    return ES_OK;
}

/* Architecture-specific switches: biases, q/k norm, sliding window. */
static enum es_status read_arch_features(const cJSON *cfg, struct model_config *out,
                                         struct es_err *err)
{
    bool flag = false;
    enum es_status st;
    const char *act = "silu";
    st = js_get_str(cfg, "hidden_act", false, &act, err);
    if (st != ES_OK) return st;
    if (strcmp(act, "silu") != 0)
        return es_fail(err, ES_EUNSUPPORTED, "hidden_act '%.32s' is not supported (silu)", act);
    st = js_get_bool(cfg, "mlp_bias", false, &flag, err);
    if (st != ES_OK) return st;
    if (flag) return es_fail(err, ES_EUNSUPPORTED, "mlp_bias = true is not supported");

    out->attention_bias = out->arch == ARCH_QWEN2; /* Qwen2 always has q/k/v biases */
    out->qk_norm = out->arch == ARCH_QWEN3;
    if (out->arch != ARCH_QWEN2) {
        /* Llama/Mistral/Qwen3 attention_bias also adds an o_proj bias. */
        flag = false;
        st = js_get_bool(cfg, "attention_bias", false, &flag, err);
        if (st != ES_OK) return st;
        if (flag)
            return es_fail(err, ES_EUNSUPPORTED,
                           "attention_bias = true is not supported for %s (o_proj bias)",
                           out->arch_name);
    }

    out->sliding_window = 0;
    if (out->arch == ARCH_MISTRAL) {
        const cJSON *sw = cJSON_GetObjectItemCaseSensitive(cfg, "sliding_window");
        if (!sw)
            out->sliding_window = 4096; /* MistralConfig's default */
        else if (!cJSON_IsNull(sw))
            st = get_int(cfg, "sliding_window", false, 1, INT32_MAX, &out->sliding_window, err);
    } else if (out->arch == ARCH_QWEN2 || out->arch == ARCH_QWEN3) {
        flag = false;
        st = js_get_bool(cfg, "use_sliding_window", false, &flag, err);
        if (st == ES_OK && flag)
            st = es_fail(err, ES_EUNSUPPORTED,
                         "use_sliding_window = true (per-layer windows) is not supported");
    }
    return st;
}

/* Structural sanity: every size positive and the heads consistent. */
static enum es_status check_shapes(bool head_dim_given, struct model_config *out,
                                   struct es_err *err)
{
    if (out->num_heads % out->num_kv_heads != 0)
        return es_fail(err, ES_EINVAL,
                       "num_key_value_heads (%d) must divide num_attention_heads (%d)",
                       out->num_kv_heads, out->num_heads);
    /* A derived head_dim is hidden_size / num_heads (Qwen2 always derives
     * it: transformers' Qwen2 ignores a head_dim key). */
    if (!head_dim_given && out->hidden_size % out->num_heads != 0)
        return es_fail(err, ES_EINVAL, "num_attention_heads (%d) must divide hidden_size (%d)",
                       out->num_heads, out->hidden_size);
    if (out->head_dim < 2 || out->head_dim % 2 != 0)
        return es_fail(err, ES_EINVAL,
                       "head_dim (%d) must be even and at least 2 for rotary embeddings",
                       out->head_dim);
    if ((int64_t)out->head_dim * out->num_heads > MC_MAX_DIM)
        return es_fail(err, ES_ERANGE, "num_attention_heads * head_dim is too large");
    return ES_OK;
}

static enum es_status parse_config(const cJSON *cfg, const cJSON *gen, struct model_config *out,
                                   struct es_err *err)
{
    enum es_status st;
    memset(out, 0, sizeof *out);
    if (!cJSON_IsObject(cfg)) return es_fail(err, ES_EINVAL, "config.json must be an object");
    if ((st = pick_arch(cfg, out, err)) != ES_OK) return st;

    if ((st = get_int(cfg, "hidden_size", true, 1, MC_MAX_DIM, &out->hidden_size, err)) ||
        (st = get_int(cfg, "intermediate_size", true, 1, 4 * MC_MAX_DIM, &out->intermediate_size,
                      err)) ||
        (st = get_int(cfg, "num_hidden_layers", true, 1, MC_MAX_LAYERS, &out->num_layers, err)) ||
        (st = get_int(cfg, "num_attention_heads", true, 1, MC_MAX_HEADS, &out->num_heads, err)) ||
        (st = get_int(cfg, "vocab_size", true, 1, 16 * MC_MAX_DIM, &out->vocab_size, err)))
        return st;
    out->num_kv_heads = out->num_heads;
    if ((st = get_int(cfg, "num_key_value_heads", false, 1, MC_MAX_HEADS, &out->num_kv_heads, err)))
        return st;
    /* Qwen3Config defaults head_dim to 128; the others derive it. */
    out->head_dim = out->arch == ARCH_QWEN3 ? 128 : out->hidden_size / out->num_heads;
    if (out->arch != ARCH_QWEN2 &&
        (st = get_int(cfg, "head_dim", false, 1, 65536, &out->head_dim, err)))
        return st;
    bool head_dim_given = out->arch != ARCH_QWEN2 && js_has(cfg, "head_dim");
    if ((st = check_shapes(head_dim_given, out, err))) return st;

    out->max_position_embeddings = out->arch == ARCH_LLAMA     ? 2048
                                   : out->arch == ARCH_MISTRAL ? 4096 * 32
                                                               : 32768;
    out->rms_norm_eps = 1e-6;
    out->tie_word_embeddings = false;
    if ((st = get_int(cfg, "max_position_embeddings", false, 1, INT32_MAX,
                      &out->max_position_embeddings, err)) ||
        (st = js_get_num(cfg, "rms_norm_eps", false, 1e-12, 1.0, &out->rms_norm_eps, err)) ||
        (st = js_get_bool(cfg, "tie_word_embeddings", false, &out->tie_word_embeddings, err)) ||
        (st = read_rope(cfg, out, err)) || (st = read_dtype(cfg, out, err)) ||
        (st = read_arch_features(cfg, out, err)))
        return st;

    out->bos_token_id = -1;
    int64_t bos = -1;
    if ((st = js_get_int(cfg, "bos_token_id", false, 0, out->vocab_size - 1, &bos, err))) return st;
    out->bos_token_id = (int32_t)bos;
    if ((st = read_eos(cfg, out, err))) return st;
    if (gen) {
        if (!cJSON_IsObject(gen))
            return es_fail(err, ES_EINVAL, "generation_config.json must be an object");
        if ((st = read_eos(gen, out, err))) return es_wrap(err, st, "generation_config.json: ");
    }
    return ES_OK;
}

enum es_status mc_parse(const char *config_json, const char *generation_config_json,
                        struct model_config *out, struct es_err *err)
{
    cJSON *cfg = NULL, *gen = NULL;
    enum es_status st = ES_OK;
    if (!config_json) return es_fail(err, ES_EINVAL, "config.json text is NULL");
    cfg = js_parse(config_json, strlen(config_json), 0, err);
    if (!cfg) {
        st = es_wrap(err, ES_EFORMAT, "config.json: ");
        goto err;
    }
    if (generation_config_json) {
        gen = js_parse(generation_config_json, strlen(generation_config_json), 0, err);
        if (!gen) {
            st = es_wrap(err, ES_EFORMAT, "generation_config.json: ");
            goto err;
        }
    }
    st = parse_config(cfg, gen, out, err);
err:
    cJSON_Delete(cfg);
    cJSON_Delete(gen);
    return st;
}

enum es_status mc_load(const char *dir, struct model_config *out, struct es_err *err)
{
    char path[4096];
    cJSON *cfg = NULL, *gen = NULL;
    enum es_status st = ES_OK;
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", dir) >= sizeof path)
        return es_fail(err, ES_EINVAL, "%s: path too long", dir);
    FILE *probe = fopen(path, "rb");
    if (!probe) return es_fail(err, ES_ENOTFOUND, "%s: %s", path, strerror(errno));
    fclose(probe);
    cfg = js_parse_file(path, err);
    if (!cfg) return ES_EFORMAT;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    probe = fopen(path, "rb");
    if (probe) {
        fclose(probe);
        gen = js_parse_file(path, err);
        if (!gen) {
            st = ES_EFORMAT;
            goto err;
        }
    }
    st = parse_config(cfg, gen, out, err);
    if (st != ES_OK) {
        snprintf(path, sizeof path, "%s/config.json", dir);
        es_wrap(err, st, "%s: ", path);
    }
err:
    cJSON_Delete(cfg);
    cJSON_Delete(gen);
    return st;
}
