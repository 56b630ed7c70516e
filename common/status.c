/*
 * status.c - names of status codes and the es_err formatting helpers.
 */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *es_status_str(enum es_status st)
{
    switch (st) {
    case ES_OK: return "ok";
    case ES_ERR: return "error";
    case ES_EINVAL: return "invalid argument";
    case ES_ENOMEM: return "out of memory";
    case ES_EIO: return "i/o error";
    case ES_EFORMAT: return "malformed data";
    case ES_EUNSUPPORTED: return "unsupported";
    case ES_ENOTFOUND: return "not found";
    case ES_EFULL: return "resource full";
    case ES_ERANGE: return "out of range";
    case ES_EDEVICE: return "device error";
    }
    return "unknown status";
}

enum es_status es_fail(struct es_err *err, enum es_status st, const char *fmt, ...)
{
    if (!err || err->msg[0]) return st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return st;
}

enum es_status es_wrap(struct es_err *err, enum es_status st, const char *fmt, ...)
{
    if (!err) return st;
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[sizeof err->msg];
    memcpy(old, err->msg, sizeof old);
    /* The wrapped message is cut to what still fits after the prefix. */
    size_t used = strnlen(prefix, sizeof prefix);
    snprintf(err->msg, sizeof err->msg, "%s%.*s", prefix, (int)(sizeof err->msg - 1 - used),
             old[0] ? old : es_status_str(st));
    return st;
}
