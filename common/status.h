/*
 * status.h - the project's one set of status codes, and an error message
 * carrier.
 *
 * Every fallible function returns an enum es_status (ES_OK == 0) and, where
 * a caller will want to show the reason to a person, fills a struct es_err.
 * Nothing on a server path ever calls exit(): errors travel back up.
 */
#ifndef ES_STATUS_H
#define ES_STATUS_H

#include <stddef.h>

enum es_status {
    ES_OK = 0,
    ES_ERR = -1,         /* generic failure */
    ES_EINVAL = -2,      /* bad argument or bad input data */
    ES_ENOMEM = -3,      /* allocation failed */
    ES_EIO = -4,         /* file or socket error */
    ES_EFORMAT = -5,     /* malformed file (JSON, safetensors, ...) */
    ES_EUNSUPPORTED = -6,/* valid input that this build does not handle */
    ES_ENOTFOUND = -7,   /* missing file, tensor, token, route */
    ES_EFULL = -8,       /* a queue or a pool is at its limit */
    ES_ERANGE = -9,      /* a number out of its allowed range */
    ES_EDEVICE = -10,    /* a CUDA / cuBLAS / NCCL call failed */
};

/* A human-readable reason, filled by the function that failed first.
 * Always declare it zeroed (`struct es_err err = {0};`): es_fail keeps a
 * message that is already there, so stack garbage would hide the reason. */
struct es_err {
    char msg[512];
};

const char *es_status_str(enum es_status st);

/* Formats the message into err (if err != NULL) and returns st. Later calls
 * on an already-filled err prepend nothing: the first, most precise reason
 * wins unless es_err_clear() is called. */
enum es_status es_fail(struct es_err *err, enum es_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes an existing message with context ("config.json: " + msg). */
enum es_status es_wrap(struct es_err *err, enum es_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline void es_err_clear(struct es_err *err)
{
    if (err) err->msg[0] = '\0';
}

#endif
