/*
 * json.h - typed accessors over cJSON with errors that name the field.
 *
 * Conventions: a field that is absent or JSON null counts as "not given";
 * for an optional field the accessor then returns ES_OK and leaves *out
 * untouched (callers set defaults first). A present field of the wrong type,
 * a non-finite or out-of-range number, or a fractional value where an integer
 * is wanted returns ES_EINVAL with a message such as
 * "'max_tokens' must be an integer, got string".
 */
#ifndef ES_JSON_H
#define ES_JSON_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "status.h"

/* Deepest nesting js_parse accepts; deeper documents are rejected before
 * cJSON sees them, so no input can exhaust the stack. */
#define JS_MAX_DEPTH 128

/* Parses exactly len bytes (no NUL needed). Rejects trailing garbage,
 * nesting deeper than max_depth (0 = JS_MAX_DEPTH) and invalid UTF-8 in
 * strings. Returns NULL and fills err on failure. */
cJSON *js_parse(const char *buf, size_t len, int max_depth, struct es_err *err);

/* Reads a whole file and parses it. */
cJSON *js_parse_file(const char *path, struct es_err *err);

const char *js_type_name(const cJSON *item);

enum es_status js_get_str(const cJSON *obj, const char *field, bool required, const char **out,
                          struct es_err *err);
enum es_status js_get_int(const cJSON *obj, const char *field, bool required, int64_t min,
                          int64_t max, int64_t *out, struct es_err *err);
enum es_status js_get_num(const cJSON *obj, const char *field, bool required, double min,
                          double max, double *out, struct es_err *err);
enum es_status js_get_bool(const cJSON *obj, const char *field, bool required, bool *out,
                           struct es_err *err);
enum es_status js_get_arr(const cJSON *obj, const char *field, bool required, const cJSON **out,
                          struct es_err *err);
enum es_status js_get_obj(const cJSON *obj, const char *field, bool required, const cJSON **out,
                          struct es_err *err);

/* Value checks on an item already in hand (array elements); `what` names it
 * in the error ("'prompt[3]'"). */
enum es_status js_as_int(const cJSON *item, const char *what, int64_t min, int64_t max,
                         int64_t *out, struct es_err *err);
enum es_status js_as_num(const cJSON *item, const char *what, double min, double max, double *out,
                         struct es_err *err);

/* Returns true when the field is present and not null. */
bool js_has(const cJSON *obj, const char *field);

#endif
