/*
 * fingerprint.c - FNV-1a hashes of the model directory and the settings
 * (see fingerprint.h). Owns no memory past a call; never logs, never
 * fails: an unreadable file or directory hashes as a marker.
 */
#include "fingerprint.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api.h"
#include "textfile.h"

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

/* --precision high changes the numbers of the CUDA backend only (the CPU
 * backend is fp32 either way) */
static const char *precision_setting(const struct options *o)
{
    return o->high_precision && strcmp(o->device, "cuda") == 0 ? ";precision=high" : "";
}

uint64_t fingerprint_served(const struct options *o, int kv_block_size)
{
    uint64_t h = hash_model_files(o);
    if (o->chat_template) {
        char *t = textfile_read(o->chat_template);
        if (t) h = fnv1a(h, t, strlen(t));
        free(t);
    }
    char settings[256];
    int len = snprintf(settings, sizeof(settings), "v=%s;device=%s;tp=%d;block=%d;prefix=%d%s%s",
                       API_VERSION, o->device, o->tp, kv_block_size, o->no_prefix_caching ? 0 : 1,
                       o->batch_invariant ? ";batch-invariant" : "", precision_setting(o));
    return fnv1a(h, settings, (size_t)len);
}

uint64_t fingerprint_node(const struct options *o)
{
    char settings[256];
    int len = snprintf(
        settings, sizeof(settings), "v=%s;device=%s;tp=%d;nnodes=%d;mml=%d;mnbt=%d;mns=%d%s%s",
        API_VERSION, o->device, o->tp, o->nnodes, o->max_model_len, o->max_num_batched_tokens,
        o->max_num_seqs, o->batch_invariant ? ";batch-invariant" : "", precision_setting(o));
    return fnv1a(hash_model_files(o), settings, (size_t)len);
}
