/*
 * mkmodel.c - writes a deterministic random-weight model directory in
 * Hugging Face layout, and verifies one.
 *
 *   mkmodel --shape NAME --tokenizer DIR --out DIR [--seed N] [--threads N]
 *   mkmodel --shape custom --hidden H --layers L --heads A --kv-heads K
 *           --intermediate I [--head-dim D] [--vocab V]
 *           [--arch llama|mistral|qwen2|qwen3] [--tie] [--dtype bf16|f16|f32] ...
 *   mkmodel --verify DIR
 *
 * Writes config.json (transformers 4 layout), generation_config.json,
 * model.safetensors (or shards above 5 GB plus model.safetensors.index.json)
 * and copies the tokenizer files. --verify reloads a directory through
 * common/'s model_config and safetensors loaders, checks every expected
 * tensor's name, dtype and shape, and prints a one-line JSON summary.
 *
 * Only main() exits; everything else returns a status with a message.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "mkmodel.h"
#include "strbuf.h"

#define SHARD_BYTES 5000000000ull /* transformers' default max_shard_size "5GB" */

struct named_shape {
    const char *name;
    int hidden, layers, heads, kv_heads, intermediate, head_dim;
    bool tie;
    double rope_factor;
    double rms_norm_eps;
};

/* BENCH.md's shapes; the real Llama-3.x configs' rope settings. */
static const struct named_shape shapes[] = {
    {"tiny", 64, 2, 4, 2, 128, 16, true, 8.0, 1e-5},
    {"llama-3.2-1b", 2048, 16, 32, 8, 8192, 64, true, 32.0, 1e-5},
    {"llama-3.1-8b", 4096, 32, 32, 8, 14336, 128, false, 8.0, 1e-5},
    {"llama-3.1-70b", 8192, 80, 64, 8, 28672, 128, false, 8.0, 1e-5},
};

struct tok_info {
    int vocab_size; /* max id + 1 over the model vocab and added tokens */
    int bos_id;     /* -1 when none */
    int eos_id;     /* -1 when none */
    int gen_eos[8]; /* eos_id plus well-known end markers present */
    int n_gen_eos;
};

/* ---- tokenizer directory ---- */

/* Looks a token's text up among the added (special) tokens only. */
static int added_token_id(const cJSON *tok, const char *text)
{
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(tok, "added_tokens");
    const cJSON *a;
    cJSON_ArrayForEach(a, added)
    {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(a, "content");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
        if (cJSON_IsString(c) && cJSON_IsNumber(id) && strcmp(c->valuestring, text) == 0)
            return id->valueint;
    }
    return -1;
}

/* Looks a token's text up: added tokens first, then the model vocab. */
static int token_id(const cJSON *tok, const char *text)
{
    int added = added_token_id(tok, text);
    if (added >= 0) return added;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(tok, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *id = cJSON_IsObject(vocab) ? cJSON_GetObjectItemCaseSensitive(vocab, text) : NULL;
    return cJSON_IsNumber(id) ? id->valueint : -1;
}

/* tokenizer_config.json names special tokens as a string or {"content"}. */
static const char *special_text(const cJSON *cfg, const char *field)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, field);
    if (cJSON_IsString(v)) return v->valuestring;
    const cJSON *c = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "content") : NULL;
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

static enum es_status read_tokenizer(const char *dir, struct tok_info *ti, struct es_err *err)
{
    char path[4096];
    enum es_status st = ES_OK;
    cJSON *cfg = NULL;
    memset(ti, 0, sizeof *ti);
    ti->bos_id = ti->eos_id = -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    cJSON *tok = js_parse_file(path, err);
    if (!tok) return ES_EIO;
    int max_id = -1;
    const cJSON *x;
    const cJSON *vocab =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tok, "model"), "vocab");
    if (cJSON_IsObject(vocab))
        cJSON_ArrayForEach(x, vocab) if (cJSON_IsNumber(x) && x->valueint > max_id) max_id =
            x->valueint;
    if (cJSON_IsArray(vocab)) max_id = cJSON_GetArraySize(vocab) - 1; /* unigram [piece, score] */
    cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(tok, "added_tokens"))
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(x, "id");
        if (cJSON_IsNumber(id) && id->valueint > max_id) max_id = id->valueint;
    }
    if (max_id < 0) {
        st = es_fail(err, ES_EFORMAT, "%s: no vocabulary found", path);
        goto err;
    }
    ti->vocab_size = max_id + 1;

    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (access(path, F_OK) == 0) {
        cfg = js_parse_file(path, err);
        if (!cfg) {
            st = ES_EFORMAT;
            goto err;
        }
        const char *bos = special_text(cfg, "bos_token"), *eos = special_text(cfg, "eos_token");
        if (bos) ti->bos_id = token_id(tok, bos);
        if (eos) ti->eos_id = token_id(tok, eos);
    }
    if (ti->eos_id >= 0) ti->gen_eos[ti->n_gen_eos++] = ti->eos_id;
    /* Chat models stop on several markers; list the ones this vocabulary
     * has, as the real generation_config.json files do. */
    static const char *markers[] = {"<|end_of_text|>", "<|eom_id|>", "<|eot_id|>",
                                    "<|endoftext|>",   "<|im_end|>", "</s>"};
    for (size_t i = 0; i < sizeof markers / sizeof *markers && ti->n_gen_eos < 8; i++) {
        int id = added_token_id(tok, markers[i]); /* "</s>" is plain text in some vocabularies */
        bool dup = id < 0;
        for (int j = 0; j < ti->n_gen_eos && !dup; j++)
            dup = ti->gen_eos[j] == id;
        if (!dup) ti->gen_eos[ti->n_gen_eos++] = id;
    }
err:
    cJSON_Delete(tok);
    cJSON_Delete(cfg);
    return st;
}

static enum es_status copy_file(const char *from, const char *to, struct es_err *err)
{
    FILE *in = fopen(from, "rb");
    if (!in) return es_fail(err, ES_EIO, "%s: %s", from, strerror(errno));
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return es_fail(err, ES_EIO, "%s: %s", to, strerror(errno));
    }
    char buf[1 << 16];
    size_t n;
    bool ok = true;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, out) == n;
    ok = ok && !ferror(in);
    fclose(in);
    ok = (fclose(out) == 0) && ok;
    return ok ? ES_OK : es_fail(err, ES_EIO, "copying %s to %s failed", from, to);
}

/* ---- config files ---- */

/* A JSON float that Python reads back as float (always with '.' or 'e'). */
static enum es_status put_float(struct strbuf *sb, double v)
{
    char tmp[40];
    /* Prefer the shortest form that round-trips. */
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    if (strpbrk(tmp, "eE") && v == floor(v) && fabs(v) < 1e15) snprintf(tmp, sizeof tmp, "%.1f", v);
    enum es_status st = sb_puts(sb, tmp);
    if (st == ES_OK && !strpbrk(tmp, ".eEn")) st = sb_puts(sb, ".0");
    return st;
}

static enum es_status write_text(const char *dir, const char *name, const struct strbuf *sb,
                                 struct es_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
    bool ok = fwrite(sb->s, 1, sb->len, f) == sb->len;
    ok = (fclose(f) == 0) && ok;
    return ok ? ES_OK : es_fail(err, ES_EIO, "%s: write failed", path);
}

static const char *model_type(enum model_arch a)
{
    switch (a) {
    case ARCH_LLAMA:
        return "llama";
    case ARCH_MISTRAL:
        return "mistral";
    case ARCH_QWEN2:
        return "qwen2";
    case ARCH_QWEN3:
        return "qwen3";
    }
    return "llama";
}

static enum es_status write_configs(const char *dir, const struct mk_shape *s,
                                    const struct tok_info *ti, struct es_err *err)
{
    struct strbuf sb = {0};
    enum es_status st;
    const char *dtype = s->dtype == ST_BF16  ? "bfloat16"
                        : s->dtype == ST_F16 ? "float16"
                                             : "float32";
    bool bos_ok = ti->bos_id >= 0 && ti->bos_id < s->vocab_size;
    bool eos_ok = ti->eos_id >= 0 && ti->eos_id < s->vocab_size;

    st = sb_printf(&sb, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n",
                   mc_arch_name(s->arch), model_type(s->arch));
    if (s->arch != ARCH_QWEN2 && !st) st = sb_puts(&sb, "  \"attention_bias\": false,\n");
    if (!st) st = sb_puts(&sb, "  \"attention_dropout\": 0.0,\n");
    if (!st && bos_ok) st = sb_printf(&sb, "  \"bos_token_id\": %d,\n", ti->bos_id);
    if (!st && eos_ok) st = sb_printf(&sb, "  \"eos_token_id\": %d,\n", ti->eos_id);
    if (!st && s->arch != ARCH_QWEN2) st = sb_printf(&sb, "  \"head_dim\": %d,\n", s->head_dim);
    if (!st)
        st = sb_printf(&sb,
                       "  \"hidden_act\": \"silu\",\n  \"hidden_size\": %d,\n"
                       "  \"initializer_range\": 0.02,\n  \"intermediate_size\": %d,\n"
                       "  \"max_position_embeddings\": %d,\n",
                       s->hidden_size, s->intermediate_size, s->max_position_embeddings);
    if (!st && s->arch == ARCH_LLAMA)
        st = sb_puts(&sb, "  \"mlp_bias\": false,\n  \"pretraining_tp\": 1,\n");
    if (!st)
        st = sb_printf(&sb,
                       "  \"num_attention_heads\": %d,\n  \"num_hidden_layers\": %d,\n"
                       "  \"num_key_value_heads\": %d,\n  \"rms_norm_eps\": ",
                       s->num_heads, s->num_layers, s->num_kv_heads);
    if (!st) st = put_float(&sb, s->rms_norm_eps);
    if (!st && s->rope_llama3) {
        st = sb_puts(&sb, ",\n  \"rope_scaling\": {\n    \"factor\": ");
        if (!st) st = put_float(&sb, s->rope_factor);
        if (!st)
            st = sb_puts(&sb, ",\n    \"high_freq_factor\": 4.0,\n    \"low_freq_factor\": 1.0,\n"
                              "    \"original_max_position_embeddings\": 8192,\n"
                              "    \"rope_type\": \"llama3\"\n  }");
    } else if (!st) {
        st = sb_puts(&sb, ",\n  \"rope_scaling\": null");
    }
    if (!st) st = sb_puts(&sb, ",\n  \"rope_theta\": ");
    if (!st) st = put_float(&sb, s->rope_theta);
    if (!st && s->arch == ARCH_MISTRAL) st = sb_puts(&sb, ",\n  \"sliding_window\": null");
    if (!st && (s->arch == ARCH_QWEN2 || s->arch == ARCH_QWEN3))
        st = sb_printf(&sb,
                       ",\n  \"max_window_layers\": %d,\n  \"sliding_window\": null,\n"
                       "  \"use_sliding_window\": false",
                       s->num_layers);
    if (!st)
        st = sb_printf(&sb,
                       ",\n  \"tie_word_embeddings\": %s,\n  \"torch_dtype\": \"%s\",\n"
                       "  \"transformers_version\": \"4.46.0\",\n  \"use_cache\": true,\n"
                       "  \"vocab_size\": %d\n}\n",
                       s->tie_word_embeddings ? "true" : "false", dtype, s->vocab_size);
    if (!st) st = write_text(dir, "config.json", &sb, err);
    if (st) goto err;

    sb_clear(&sb);
    st = sb_puts(&sb, "{\n");
    if (!st && bos_ok) st = sb_printf(&sb, "  \"bos_token_id\": %d,\n", ti->bos_id);
    if (!st && ti->n_gen_eos) {
        st = sb_puts(&sb, "  \"eos_token_id\": [");
        bool first = true;
        for (int i = 0; i < ti->n_gen_eos && !st; i++) {
            if (ti->gen_eos[i] >= s->vocab_size) continue;
            st = sb_printf(&sb, "%s%d", first ? "" : ", ", ti->gen_eos[i]);
            first = false;
        }
        if (!st) st = sb_puts(&sb, "],\n");
    }
    if (!st)
        st = sb_puts(&sb, "  \"do_sample\": false,\n  \"transformers_version\": \"4.46.0\"\n}\n");
    if (!st) st = write_text(dir, "generation_config.json", &sb, err);
err:
    sb_free(&sb);
    if (st == ES_ENOMEM) es_fail(err, st, "out of memory");
    return st;
}

/* ---- verify ---- */

static enum es_status verify(const char *dir, struct es_err *err)
{
    struct model_config mc;
    struct st_model *m = NULL;
    struct mk_tensor *plan = NULL;
    int n = 0;
    enum es_status st = mc_load(dir, &mc, err);
    if (st) return st;
    if ((st = st_open_dir(dir, &m, err))) return st;
    struct mk_shape s = {.arch = mc.arch,
                         .hidden_size = mc.hidden_size,
                         .intermediate_size = mc.intermediate_size,
                         .num_layers = mc.num_layers,
                         .num_heads = mc.num_heads,
                         .num_kv_heads = mc.num_kv_heads,
                         .head_dim = mc.head_dim,
                         .vocab_size = mc.vocab_size,
                         .tie_word_embeddings = mc.tie_word_embeddings};
    if ((st = mk_plan(&s, &plan, &n, err))) goto err;
    enum st_dtype want = strcmp(mc.torch_dtype, "float32") == 0   ? ST_F32
                         : strcmp(mc.torch_dtype, "float16") == 0 ? ST_F16
                                                                  : ST_BF16;
    uint64_t params = 0;
    for (int i = 0; i < n; i++) {
        const struct st_tensor *t = st_find(m, plan[i].name);
        if (!t) {
            st = es_fail(err, ES_ENOTFOUND, "tensor '%s' is missing", plan[i].name);
            goto err;
        }
        if (t->dtype != want || t->ndim != plan[i].ndim || t->shape[0] != plan[i].shape[0] ||
            (t->ndim == 2 && t->shape[1] != plan[i].shape[1])) {
            st = es_fail(err, ES_EFORMAT,
                         "tensor '%s': %s [%lld, %lld], config wants %s [%lld, %lld]", plan[i].name,
                         st_dtype_name(t->dtype), (long long)t->shape[0],
                         t->ndim == 2 ? (long long)t->shape[1] : 0LL, st_dtype_name(want),
                         (long long)plan[i].shape[0], (long long)plan[i].shape[1]);
            goto err;
        }
        params += plan[i].numel;
    }
    if (st_count(m) != (size_t)n) {
        st = es_fail(err, ES_EFORMAT, "%zu tensors in the checkpoint, config implies %d",
                     st_count(m), n);
        goto err;
    }
    printf("{\"architecture\": \"%s\", \"tensors\": %d, \"parameters\": %llu, \"vocab_size\": %d, "
           "\"head_dim\": %d, \"tie_word_embeddings\": %s, \"rope_theta\": %g, \"rope_scaling\": "
           "\"%s\", \"bos_token_id\": %d, \"eos_token_ids\": [",
           mc.arch_name, n, (unsigned long long)params, mc.vocab_size, mc.head_dim,
           mc.tie_word_embeddings ? "true" : "false", mc.rope_theta,
           mc.rope_scaling == ROPE_LLAMA3   ? "llama3"
           : mc.rope_scaling == ROPE_LINEAR ? "linear"
                                            : "none",
           mc.bos_token_id);
    for (int i = 0; i < mc.n_eos_token_ids; i++)
        printf("%s%d", i ? ", " : "", mc.eos_token_ids[i]);
    printf("]}\n");
err:
    free(plan);
    st_close(m);
    return st;
}

/* ---- command line ---- */

static void usage(FILE *f)
{
    fprintf(f, "usage: mkmodel --shape NAME --tokenizer DIR --out DIR [--seed N] [--threads N]\n"
               "       mkmodel --shape custom --hidden H --layers L --heads A --kv-heads K\n"
               "               --intermediate I [--head-dim D] [--vocab V] [--tie]\n"
               "               [--arch llama|mistral|qwen2|qwen3] [--dtype bf16|f16|f32]\n"
               "               --tokenizer DIR --out DIR [--seed N]\n"
               "       mkmodel --verify DIR\n"
               "shapes: tiny, llama-3.2-1b, llama-3.1-8b, llama-3.1-70b, custom\n");
}

static bool parse_long(const char *s, long long min, long long max, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || end == s || *end || v < min || v > max) return false;
    *out = v;
    return true;
}

static int mkdir_p(const char *dir)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) return -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *shape_name = NULL, *tok_dir = NULL, *out_dir = NULL, *verify_dir = NULL;
    const char *arch = "llama", *dtype = "bf16";
    long long seed = 0, threads = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0;
    long long inter = 0, head_dim = 0, vocab = 0;
    bool tie = false;
    struct es_err err = {{0}};

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long *num = NULL;
        long long lo = 1, hi = 1 << 20;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--tie")) {
            tie = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "mkmodel: %s needs a value\n", a);
            return 1;
        }
        i++;
        if (!strcmp(a, "--shape"))
            shape_name = v;
        else if (!strcmp(a, "--tokenizer"))
            tok_dir = v;
        else if (!strcmp(a, "--out"))
            out_dir = v;
        else if (!strcmp(a, "--verify"))
            verify_dir = v;
        else if (!strcmp(a, "--arch"))
            arch = v;
        else if (!strcmp(a, "--dtype"))
            dtype = v;
        else if (!strcmp(a, "--seed"))
            num = &seed, lo = 0, hi = INT64_MAX;
        else if (!strcmp(a, "--threads"))
            num = &threads, hi = 256;
        else if (!strcmp(a, "--hidden"))
            num = &hidden;
        else if (!strcmp(a, "--layers"))
            num = &layers, hi = 1024;
        else if (!strcmp(a, "--heads"))
            num = &heads, hi = 1024;
        else if (!strcmp(a, "--kv-heads"))
            num = &kv_heads, hi = 1024;
        else if (!strcmp(a, "--intermediate"))
            num = &inter;
        else if (!strcmp(a, "--head-dim"))
            num = &head_dim, hi = 4096;
        else if (!strcmp(a, "--vocab"))
            num = &vocab, hi = 1 << 22;
        else {
            fprintf(stderr, "mkmodel: unknown option '%s'\n", a);
            usage(stderr);
            return 1;
        }
        if (num && !parse_long(v, lo, hi, num)) {
            fprintf(stderr, "mkmodel: %s: '%s' is not an integer in [%lld, %lld]\n", a, v, lo, hi);
            return 1;
        }
    }

    if (verify_dir) {
        enum es_status st = verify(verify_dir, &err);
        if (st) {
            fprintf(stderr, "mkmodel: verify %s: %s\n", verify_dir, err.msg);
            return 1;
        }
        return 0;
    }
    if (!shape_name || !tok_dir || !out_dir) {
        usage(stderr);
        return 1;
    }

    struct mk_shape s = {.arch = ARCH_LLAMA,
                         .max_position_embeddings = 131072,
                         .rms_norm_eps = 1e-5,
                         .rope_theta = 500000.0,
                         .rope_llama3 = true,
                         .dtype = ST_BF16,
                         .seed = (uint64_t)seed};
    if (!strcmp(shape_name, "custom")) {
        if (!hidden || !layers || !heads || !inter) {
            fprintf(stderr, "mkmodel: --shape custom needs --hidden, --layers, --heads and "
                            "--intermediate\n");
            return 1;
        }
        s.hidden_size = (int)hidden;
        s.num_layers = (int)layers;
        s.num_heads = (int)heads;
        s.num_kv_heads = kv_heads ? (int)kv_heads : (int)heads;
        s.intermediate_size = (int)inter;
        s.tie_word_embeddings = tie;
        if (!strcmp(arch, "llama"))
            s.arch = ARCH_LLAMA;
        else if (!strcmp(arch, "mistral"))
            s.arch = ARCH_MISTRAL;
        else if (!strcmp(arch, "qwen2"))
            s.arch = ARCH_QWEN2;
        else if (!strcmp(arch, "qwen3"))
            s.arch = ARCH_QWEN3;
        else {
            fprintf(stderr, "mkmodel: unknown --arch '%s' (llama, mistral, qwen2, qwen3)\n", arch);
            return 1;
        }
        if (s.arch != ARCH_LLAMA) {
            s.rope_llama3 = false;
            s.rope_theta = 1000000.0;
            s.max_position_embeddings = 32768;
            s.rms_norm_eps = 1e-6;
        }
        s.rope_factor = 8.0;
        if (hidden % heads && !head_dim) {
            fprintf(stderr, "mkmodel: --heads must divide --hidden (or give --head-dim)\n");
            return 1;
        }
        s.head_dim = head_dim ? (int)head_dim : (int)(hidden / heads);
        if (s.arch == ARCH_QWEN2 && s.head_dim * s.num_heads != s.hidden_size) {
            fprintf(stderr,
                    "mkmodel: qwen2 has no head_dim field: heads * head_dim must be hidden\n");
            return 1;
        }
    } else {
        const struct named_shape *ns = NULL;
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
            if (!strcmp(shapes[i].name, shape_name)) ns = &shapes[i];
        if (!ns) {
            fprintf(stderr, "mkmodel: unknown shape '%s'\n", shape_name);
            usage(stderr);
            return 1;
        }
        s.hidden_size = ns->hidden;
        s.num_layers = ns->layers;
        s.num_heads = ns->heads;
        s.num_kv_heads = ns->kv_heads;
        s.intermediate_size = ns->intermediate;
        s.head_dim = ns->head_dim;
        s.tie_word_embeddings = ns->tie;
        s.rope_factor = ns->rope_factor;
        s.rms_norm_eps = ns->rms_norm_eps;
    }
    if (s.num_heads % s.num_kv_heads || s.head_dim % 2) {
        fprintf(stderr, "mkmodel: --kv-heads must divide --heads and head_dim must be even\n");
        return 1;
    }
    if (!strcmp(dtype, "bf16"))
        s.dtype = ST_BF16;
    else if (!strcmp(dtype, "f16"))
        s.dtype = ST_F16;
    else if (!strcmp(dtype, "f32"))
        s.dtype = ST_F32;
    else {
        fprintf(stderr, "mkmodel: unknown --dtype '%s' (bf16, f16, f32)\n", dtype);
        return 1;
    }

    struct tok_info ti;
    if (read_tokenizer(tok_dir, &ti, &err) != ES_OK) {
        fprintf(stderr, "mkmodel: tokenizer %s: %s\n", tok_dir, err.msg);
        return 1;
    }
    s.vocab_size = vocab ? (int)vocab : ti.vocab_size;

    if (mkdir_p(out_dir) != 0) {
        fprintf(stderr, "mkmodel: cannot create %s: %s\n", out_dir, strerror(errno));
        return 1;
    }
    /* A previous model in the directory must not shadow this one. */
    char path[4096], from[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", out_dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    unlink(path);

    struct mk_tensor *plan = NULL;
    int n = 0;
    if (!threads) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        threads = nc < 1 ? 1 : nc > 32 ? 32 : nc;
    }
    enum es_status st = mk_plan(&s, &plan, &n, &err);
    if (!st) st = write_configs(out_dir, &s, &ti, &err);
    if (!st) st = mk_write_weights(out_dir, &s, plan, n, SHARD_BYTES, (int)threads, &err);
    static const char *tok_files[] = {"tokenizer.json", "tokenizer_config.json",
                                      "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof tok_files / sizeof *tok_files && !st; i++) {
        snprintf(from, sizeof from, "%s/%s", tok_dir, tok_files[i]);
        snprintf(path, sizeof path, "%s/%s", out_dir, tok_files[i]);
        if (i == 0 || access(from, F_OK) == 0) st = copy_file(from, path, &err);
    }
    free(plan);
    if (st) {
        fprintf(stderr, "mkmodel: %s\n", err.msg[0] ? err.msg : es_status_str(st));
        return 1;
    }
    return 0;
}
