/*
 * model_name.h - what evalclient does when --model or --out is left out:
 * asks the server which model it serves (GET /v1/models) and names a
 * default output folder after it.
 */
#ifndef EC_MODEL_NAME_H
#define EC_MODEL_NAME_H

#include <stddef.h>

#include "http_client.h"
#include "status.h"

/* The id of the one model that server `server` of hc lists under /v1/models
 * (malloc'd into *name). Fails, naming the choices, when it lists none or
 * several: then --model must say which. */
enum es_status model_name_from_server(struct hc *hc, int server, char **name, struct es_err *err);

/* The default output folder for a model: "evalclient-results/NAME", with
 * every byte of NAME other than [A-Za-z0-9._-] written as '_' (so "org/m"
 * stays one folder). Returns false when it does not fit in out[cap]. */
bool model_name_default_out(const char *model, char *out, size_t cap);

#endif
