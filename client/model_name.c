/*
 * model_name.c - the model name and output folder evalclient uses when the
 * command line leaves them out (see model_name.h). One synchronous GET
 * before any request is sent; owns nothing beyond the returned string.
 */
#include "model_name.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "strbuf.h"

enum es_status model_name_from_server(struct hc *hc, int server, char **name, struct es_err *err)
{
    struct strbuf body = {0}, ids = {0};
    *name = NULL;
    enum es_status st = hc_get_sync(hc, server, "/v1/models", &body, err);
    if (st != ES_OK) {
        es_wrap(err, st, "no --model given, and asking the server failed: ");
        sb_free(&body);
        return st;
    }
    cJSON *root = js_parse(sb_cstr(&body), body.len, 0, err);
    const cJSON *data = root ? cJSON_GetObjectItemCaseSensitive(root, "data") : NULL;
    const cJSON *list = cJSON_IsArray(data) ? data : NULL, *m, *only = NULL;
    int n = 0;
    cJSON_ArrayForEach(m, list)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
        if (!cJSON_IsString(id)) continue;
        only = id;
        sb_printf(&ids, "%s'%s'", n++ ? ", " : "", id->valuestring);
    }
    if (!root)
        st = es_wrap(err, ES_EFORMAT, "no --model given, and GET /v1/models answered no JSON: ");
    else if (n == 0)
        st = es_fail(err, ES_EFORMAT, "no --model given, and GET /v1/models lists no model");
    else if (n > 1)
        st = es_fail(err, ES_EINVAL, "the server serves %d models (%s): choose one with --model", n,
                     sb_cstr(&ids));
    else if (!(*name = strdup(only->valuestring)))
        st = es_fail(err, ES_ENOMEM, "out of memory");
    cJSON_Delete(root);
    sb_free(&body);
    sb_free(&ids);
    return st;
}

bool model_name_default_out(const char *model, char *out, size_t cap)
{
    int n = snprintf(out, cap, "evalclient-results/%s", model);
    if (n < 0 || (size_t)n >= cap) return false;
    for (char *p = out + strlen("evalclient-results/"); *p; p++) {
        char ch = *p;
        bool keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
        if (!keep) *p = '_';
    }
    /* "." or ".." as the whole name would not be a folder of its own */
    const char *leaf = out + strlen("evalclient-results/");
    if (strcmp(leaf, ".") == 0 || strcmp(leaf, "..") == 0 || !*leaf) return false;
    return true;
}
