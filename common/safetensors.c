/*
 * safetensors.c - validating, read-only mmap loader for safetensors files
 * and sharded checkpoints (model.safetensors.index.json).
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of
 * JSON ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}), then the data section. Every number in the header
 * is checked before use: the header fits in the file, offsets lie inside the
 * data section, tensors neither overlap nor leave holes, byte sizes equal
 * product(shape) * element size (with overflow checks), names are unique
 * across all shards, and each tensor is aligned to its element size so that
 * callers may read it through a typed pointer.
 *
 * Owns: the mappings (one per file), the tensor table, the name strings and
 * a hash index. Never writes to a mapping and never trusts a header field
 * that has not been range-checked; a corrupt file returns ES_EFORMAT.
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"

/* The reference implementation refuses headers above 100 MB. */
#define ST_MAX_HEADER_BYTES (100u * 1000u * 1000u)
/* A header is a flat object of flat objects: depth 3 is enough. */
#define ST_HEADER_DEPTH 4
#define ST_MAX_SHARDS 4096

struct st_mapping {
    void *addr; /* mmap base, or NULL for a caller-owned buffer */
    size_t len; /* bytes mapped */
};

struct st_model {
    struct st_mapping *maps; /* [n_maps] */
    size_t n_maps, cap_maps;
    struct st_tensor *tensors; /* [n_tensors]; names owned (malloc) */
    size_t n_tensors, cap_tensors;
    uint32_t *slots; /* hash index [n_slots]: tensor index + 1, 0 = empty */
    size_t n_slots;  /* power of two, >= 2 * n_tensors */
};

/* ---- element conversion ---- */

size_t st_dtype_size(enum st_dtype dt)
{
    switch (dt) {
    case ST_BF16:
        return 2;
    case ST_F16:
        return 2;
    case ST_F32:
        return 4;
    }
    return 0;
}

const char *st_dtype_name(enum st_dtype dt)
{
    switch (dt) {
    case ST_BF16:
        return "BF16";
    case ST_F16:
        return "F16";
    case ST_F32:
        return "F32";
    }
    return "?";
}

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

float st_bf16_to_f32(uint16_t v)
{
    return bits_to_f32((uint32_t)v << 16);
}

uint16_t st_f32_to_bf16(float f)
{
    uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)((u + rounding) >> 16);
}

float st_f16_to_f32(uint16_t v)
{
    uint32_t sign = (uint32_t)(v & 0x8000u) << 16;
    uint32_t exp = (v >> 10) & 0x1fu;
    uint32_t mant = v & 0x3ffu;
    if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mant << 13)); /* inf / NaN */
    if (exp == 0) {
        if (mant == 0) return bits_to_f32(sign);
        /* subnormal: mant * 2^-24 is exact in float */
        float f = (float)mant * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    return bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t st_f32_to_f16(float f)
{
    uint32_t u = f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to inf */
    if (absu < 0x38800000u) {                                   /* f16 subnormal or 0 */
        /* value / 2^-24, rounded to nearest even by the FPU */
        float scaled = bits_to_f32(absu) * 16777216.0f;
        float r = nearbyintf(scaled);
        return (uint16_t)(sign | (uint16_t)r);
    }
    uint32_t mant_rounded = absu + 0xfffu + ((absu >> 13) & 1u);
    return (uint16_t)(sign | (uint16_t)((mant_rounded - 0x38000000u) >> 13));
}

/* ---- the model table ---- */

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static enum es_status index_rebuild(struct st_model *m, size_t n_slots)
{
    uint32_t *slots = calloc(n_slots, sizeof *slots);
    if (!slots) return ES_ENOMEM;
    for (size_t i = 0; i < m->n_tensors; i++) {
        size_t pos = (size_t)hash_name(m->tensors[i].name) & (n_slots - 1);
        while (slots[pos])
            pos = (pos + 1) & (n_slots - 1);
        slots[pos] = (uint32_t)(i + 1);
    }
    free(m->slots);
    m->slots = slots;
    m->n_slots = n_slots;
    return ES_OK;
}

const struct st_tensor *st_find(const struct st_model *m, const char *name)
{
    if (!m || !name || !m->n_slots) return NULL;
    size_t pos = (size_t)hash_name(name) & (m->n_slots - 1);
    while (m->slots[pos]) {
        const struct st_tensor *t = &m->tensors[m->slots[pos] - 1];
        if (strcmp(t->name, name) == 0) return t;
        pos = (pos + 1) & (m->n_slots - 1);
    }
    return NULL;
}

size_t st_count(const struct st_model *m)
{
    return m ? m->n_tensors : 0;
}

const struct st_tensor *st_get(const struct st_model *m, size_t i)
{
    return m && i < m->n_tensors ? &m->tensors[i] : NULL;
}

/* Appends a tensor (taking ownership of name) and indexes it; a name that is
 * already present is a format error. */
static enum es_status add_tensor(struct st_model *m, struct st_tensor *t, struct es_err *err)
{
    if (st_find(m, t->name)) {
        enum es_status st = es_fail(err, ES_EFORMAT, "duplicate tensor name '%s'", t->name);
        free((char *)t->name);
        return st;
    }
    if (m->n_tensors >= UINT32_MAX - 1) {
        free((char *)t->name);
        return es_fail(err, ES_EFORMAT, "too many tensors");
    }
    if (m->n_tensors == m->cap_tensors) {
        size_t cap = m->cap_tensors ? m->cap_tensors * 2 : 64;
        struct st_tensor *nt = realloc(m->tensors, cap * sizeof *nt);
        if (!nt) {
            free((char *)t->name);
            return es_fail(err, ES_ENOMEM, "out of memory indexing tensors");
        }
        m->tensors = nt;
        m->cap_tensors = cap;
    }
    m->tensors[m->n_tensors++] = *t;
    if (m->n_tensors * 2 > m->n_slots) {
        if (index_rebuild(m, m->n_slots ? m->n_slots * 2 : 128) != ES_OK) {
            m->n_tensors--;
            free((char *)t->name);
            return es_fail(err, ES_ENOMEM, "out of memory indexing tensors");
        }
    } else {
        size_t pos = (size_t)hash_name(t->name) & (m->n_slots - 1);
        while (m->slots[pos])
            pos = (pos + 1) & (m->n_slots - 1);
        m->slots[pos] = (uint32_t)m->n_tensors;
    }
    return ES_OK;
}

static enum es_status add_mapping(struct st_model *m, void *addr, size_t len)
{
    if (m->n_maps == m->cap_maps) {
        size_t cap = m->cap_maps ? m->cap_maps * 2 : 4;
        struct st_mapping *nm = realloc(m->maps, cap * sizeof *nm);
        if (!nm) return ES_ENOMEM;
        m->maps = nm;
        m->cap_maps = cap;
    }
    m->maps[m->n_maps++] = (struct st_mapping){addr, len};
    return ES_OK;
}

void st_close(struct st_model *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->n_tensors; i++)
        free((char *)m->tensors[i].name);
    for (size_t i = 0; i < m->n_maps; i++)
        if (m->maps[i].addr) munmap(m->maps[i].addr, m->maps[i].len);
    free(m->tensors);
    free(m->slots);
    free(m->maps);
    free(m);
}

/* ---- header validation ---- */

static enum es_status parse_dtype(const char *s, const char *name, enum st_dtype *out,
                                  struct es_err *err)
{
    if (strcmp(s, "BF16") == 0)
        *out = ST_BF16;
    else if (strcmp(s, "F16") == 0)
        *out = ST_F16;
    else if (strcmp(s, "F32") == 0)
        *out = ST_F32;
    else {
        static const char *known[] = {"F64",     "I64", "I32",     "I16",     "I8",      "U64",
                                      "U32",     "U16", "U8",      "BOOL",    "F8_E4M3", "F8_E5M2",
                                      "F8_E8M0", "F4",  "F6_E2M3", "F6_E3M2", "C64"};
        for (size_t i = 0; i < sizeof known / sizeof *known; i++)
            if (strcmp(s, known[i]) == 0)
                return es_fail(err, ES_EUNSUPPORTED,
                               "tensor '%s': dtype %s is not supported (BF16, F16, F32 only)", name,
                               s);
        return es_fail(err, ES_EFORMAT, "tensor '%s': unknown dtype '%.32s'", name, s);
    }
    return ES_OK;
}

/* One [begin, end) range of the data section, for the overlap check. */
struct span {
    uint64_t begin, end;
    const char *name;
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Parses one tensor entry into t (name not yet set). data is the first byte
 * of the data section, data_len its size. */
static enum es_status parse_entry(const cJSON *e, const char *name, const uint8_t *data,
                                  uint64_t data_len, struct st_tensor *t, struct span *sp,
                                  struct es_err *err)
{
    if (!cJSON_IsObject(e))
        return es_fail(err, ES_EFORMAT, "tensor '%s': entry must be an object, got %s", name,
                       js_type_name(e));
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) return es_fail(err, ES_EFORMAT, "tensor '%s': 'dtype' missing", name);
    if (!cJSON_IsArray(shape))
        return es_fail(err, ES_EFORMAT, "tensor '%s': 'shape' must be an array", name);
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return es_fail(err, ES_EFORMAT, "tensor '%s': 'data_offsets' must be [begin, end]", name);
    enum es_status st = parse_dtype(dt->valuestring, name, &t->dtype, err);
    if (st != ES_OK) return st;

    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS)
        return es_fail(err, ES_EFORMAT, "tensor '%s': %d dimensions (at most %d)", name, ndim,
                       ST_MAX_DIMS);
    t->ndim = ndim;
    uint64_t numel = 1;
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape)
    {
        int64_t v = 0;
        struct es_err sub = {{0}};
        if (js_as_int(dim, "dimension", 0, INT64_MAX / 2, &v, &sub) != ES_OK)
            return es_fail(err, ES_EFORMAT, "tensor '%s': shape[%d]: %s", name, d, sub.msg);
        if (__builtin_mul_overflow(numel, (uint64_t)v, &numel))
            return es_fail(err, ES_EFORMAT, "tensor '%s': shape overflows", name);
        t->shape[d++] = v;
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)st_dtype_size(t->dtype), &nbytes))
        return es_fail(err, ES_EFORMAT, "tensor '%s': byte size overflows", name);

    int64_t begin = 0, end = 0;
    struct es_err sub = {{0}};
    if (js_as_int(cJSON_GetArrayItem(offs, 0), "data_offsets[0]", 0, INT64_MAX, &begin, &sub) !=
            ES_OK ||
        js_as_int(cJSON_GetArrayItem(offs, 1), "data_offsets[1]", 0, INT64_MAX, &end, &sub) !=
            ES_OK)
        return es_fail(err, ES_EFORMAT, "tensor '%s': %s", name, sub.msg);
    if (begin > end)
        return es_fail(err, ES_EFORMAT, "tensor '%s': data_offsets begin %lld > end %lld", name,
                       (long long)begin, (long long)end);
    if ((uint64_t)end > data_len)
        return es_fail(err, ES_EFORMAT,
                       "tensor '%s': data_offsets end %lld beyond the data section (%llu bytes)",
                       name, (long long)end, (unsigned long long)data_len);
    if ((uint64_t)(end - begin) != nbytes)
        return es_fail(err, ES_EFORMAT,
                       "tensor '%s': %llu bytes in data_offsets, shape and dtype need %llu", name,
                       (unsigned long long)(end - begin), (unsigned long long)nbytes);
    const uint8_t *p = data + begin;
    if ((uintptr_t)p % st_dtype_size(t->dtype) != 0)
        return es_fail(err, ES_EFORMAT, "tensor '%s': data not aligned to its %zu-byte elements",
                       name, st_dtype_size(t->dtype));
    t->data = p;
    t->nbytes = (size_t)nbytes;
    sp->begin = (uint64_t)begin;
    sp->end = (uint64_t)end;
    return ES_OK;
}

/* Validates one file image and appends its tensors to m. label names the
 * file in messages. */
static enum es_status parse_image(struct st_model *m, const uint8_t *buf, size_t len,
                                  const char *label, struct es_err *err)
{
    enum es_status st = ES_OK;
    cJSON *root = NULL;
    struct span *spans = NULL;
    size_t n_spans = 0;

    if (len < 8) {
        st = es_fail(err, ES_EFORMAT, "file of %zu bytes is too short for a header", len);
        goto err;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    if (hlen > ST_MAX_HEADER_BYTES) {
        st = es_fail(err, ES_EFORMAT, "header length %llu is absurd (limit %u)",
                     (unsigned long long)hlen, ST_MAX_HEADER_BYTES);
        goto err;
    }
    if (hlen < 2 || hlen > len - 8) {
        st = es_fail(err, ES_EFORMAT, "header length %llu does not fit a file of %zu bytes",
                     (unsigned long long)hlen, len);
        goto err;
    }
    if (buf[8] != '{') {
        st = es_fail(err, ES_EFORMAT, "header does not start with '{'");
        goto err;
    }
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;

    struct es_err jerr = {{0}};
    root = js_parse((const char *)buf + 8, (size_t)hlen, ST_HEADER_DEPTH, &jerr);
    if (!root) {
        st = es_fail(err, ES_EFORMAT, "header JSON: %s", jerr.msg);
        goto err;
    }
    if (!cJSON_IsObject(root)) {
        st = es_fail(err, ES_EFORMAT, "header must be a JSON object");
        goto err;
    }
    int n_entries = cJSON_GetArraySize(root);
    spans = calloc((size_t)n_entries + 1, sizeof *spans);
    if (!spans) {
        st = es_fail(err, ES_ENOMEM, "out of memory");
        goto err;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        if (!e->string) continue;
        if (strcmp(e->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                st = es_fail(err, ES_EFORMAT, "'__metadata__' must be an object");
                goto err;
            }
            continue;
        }
        if (e->string[0] == '\0') {
            st = es_fail(err, ES_EFORMAT, "empty tensor name");
            goto err;
        }
        struct st_tensor t = {0};
        st = parse_entry(e, e->string, data, data_len, &t, &spans[n_spans], err);
        if (st != ES_OK) goto err;
        t.name = strdup(e->string);
        if (!t.name) {
            st = es_fail(err, ES_ENOMEM, "out of memory");
            goto err;
        }
        st = add_tensor(m, &t, err);
        if (st != ES_OK) goto err;
        spans[n_spans].name = t.name;
        n_spans++;
    }
    /* The data section must be covered exactly: sorted ranges, each starting
     * where the previous ended, the last ending at the end of the file. */
    qsort(spans, n_spans, sizeof *spans, span_cmp);
    uint64_t pos = 0;
    for (size_t i = 0; i < n_spans; i++) {
        if (spans[i].begin < pos) {
            st = es_fail(err, ES_EFORMAT, "tensor '%s' overlaps the tensor before it",
                         spans[i].name);
            goto err;
        }
        if (spans[i].begin > pos) {
            st = es_fail(err, ES_EFORMAT, "hole of %llu bytes before tensor '%s'",
                         (unsigned long long)(spans[i].begin - pos), spans[i].name);
            goto err;
        }
        pos = spans[i].end;
    }
    if (pos != data_len) {
        st = es_fail(err, ES_EFORMAT, "%llu bytes after the last tensor",
                     (unsigned long long)(data_len - pos));
        goto err;
    }
    free(spans);
    cJSON_Delete(root);
    return ES_OK;
err:
    free(spans);
    cJSON_Delete(root);
    return es_wrap(err, st, "%s: ", label);
}

/* ---- entry points ---- */

static struct st_model *model_new(void)
{
    return calloc(1, sizeof(struct st_model));
}

enum es_status st_parse_buffer(const uint8_t *buf, size_t len, struct st_model **out,
                               struct es_err *err)
{
    *out = NULL;
    struct st_model *m = model_new();
    if (!m) return es_fail(err, ES_ENOMEM, "out of memory");
    enum es_status st = parse_image(m, buf, len, "safetensors", err);
    if (st != ES_OK) {
        st_close(m);
        return st;
    }
    *out = m;
    return ES_OK;
}

/* Maps path read-only and appends its tensors to m. */
static enum es_status load_file(struct st_model *m, const char *path, struct es_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return es_fail(err, ES_ENOTFOUND, "%s: no such file", path);
        return es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
    }
    struct stat sbuf;
    if (fstat(fd, &sbuf) != 0) {
        enum es_status st = es_fail(err, ES_EIO, "%s: %s", path, strerror(errno));
        close(fd);
        return st;
    }
    if (!S_ISREG(sbuf.st_mode)) {
        close(fd);
        return es_fail(err, ES_EIO, "%s: not a regular file", path);
    }
    size_t len = (size_t)sbuf.st_size;
    if (len < 8) {
        close(fd);
        return es_fail(err, ES_EFORMAT, "%s: file of %zu bytes is too short for a header", path,
                       len);
    }
    void *addr = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    close(fd);
    if (addr == MAP_FAILED) return es_fail(err, ES_EIO, "%s: mmap: %s", path, strerror(saved));
    if (add_mapping(m, addr, len) != ES_OK) {
        munmap(addr, len);
        return es_fail(err, ES_ENOMEM, "out of memory");
    }
    return parse_image(m, addr, len, path, err);
}

enum es_status st_open_file(const char *path, struct st_model **out, struct es_err *err)
{
    *out = NULL;
    struct st_model *m = model_new();
    if (!m) return es_fail(err, ES_ENOMEM, "out of memory");
    enum es_status st = load_file(m, path, err);
    if (st != ES_OK) {
        st_close(m);
        return st;
    }
    *out = m;
    return ES_OK;
}

/* A shard name from an index must be a plain file name inside the model
 * directory. */
static bool shard_name_ok(const char *s)
{
    return s[0] && s[0] != '.' && !strchr(s, '/') && !strchr(s, '\\') && strlen(s) < 256;
}

static enum es_status open_index(struct st_model *m, const char *dir, const char *index_path,
                                 struct es_err *err)
{
    enum es_status st = ES_OK;
    const char **shards = NULL;
    size_t n_shards = 0;
    struct es_err jerr = {{0}};
    cJSON *root = js_parse_file(index_path, &jerr);
    if (!root) return es_fail(err, ES_EFORMAT, "%s", jerr.msg);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        st = es_fail(err, ES_EFORMAT, "%s: 'weight_map' must be an object", index_path);
        goto err;
    }
    int n = cJSON_GetArraySize(wm);
    if (n == 0) {
        st = es_fail(err, ES_EFORMAT, "%s: 'weight_map' is empty", index_path);
        goto err;
    }
    shards = calloc((size_t)n, sizeof *shards);
    if (!shards) {
        st = es_fail(err, ES_ENOMEM, "out of memory");
        goto err;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm)
    {
        if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring)) {
            st = es_fail(err, ES_EFORMAT, "%s: weight_map['%s'] must be a file name in %s",
                         index_path, e->string ? e->string : "", dir);
            goto err;
        }
        bool seen = false;
        for (size_t i = 0; i < n_shards && !seen; i++)
            seen = strcmp(shards[i], e->valuestring) == 0;
        if (!seen) shards[n_shards++] = e->valuestring;
    }
    if (n_shards > ST_MAX_SHARDS) {
        st = es_fail(err, ES_EFORMAT, "%s: %zu shards (at most %d)", index_path, n_shards,
                     ST_MAX_SHARDS);
        goto err;
    }
    for (size_t i = 0; i < n_shards; i++) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, shards[i]) >= sizeof path) {
            st = es_fail(err, ES_EINVAL, "%s: path too long", dir);
            goto err;
        }
        st = load_file(m, path, err);
        if (st != ES_OK) goto err;
    }
    /* Every tensor the index promises must be where it says. */
    cJSON_ArrayForEach(e, wm)
    {
        const struct st_tensor *t = st_find(m, e->string);
        if (!t) {
            st = es_fail(err, ES_EFORMAT, "%s: tensor '%s' is not in %s", index_path, e->string,
                         e->valuestring);
            goto err;
        }
    }
    free(shards);
    cJSON_Delete(root);
    return ES_OK;
err:
    free(shards);
    cJSON_Delete(root);
    return st;
}

enum es_status st_open_dir(const char *dir, struct st_model **out, struct es_err *err)
{
    *out = NULL;
    char path[4096];
    struct st_model *m = model_new();
    if (!m) return es_fail(err, ES_ENOMEM, "out of memory");
    enum es_status st;
    if ((size_t)snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir) >=
        sizeof path) {
        st = es_fail(err, ES_EINVAL, "%s: path too long", dir);
        goto err;
    }
    if (access(path, F_OK) == 0) {
        st = open_index(m, dir, path, err);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, F_OK) != 0) {
            st = es_fail(err, ES_ENOTFOUND,
                         "%s: neither model.safetensors nor model.safetensors.index.json", dir);
            goto err;
        }
        st = load_file(m, path, err);
    }
    if (st != ES_OK) goto err;
    *out = m;
    return ES_OK;
err:
    st_close(m);
    return st;
}
