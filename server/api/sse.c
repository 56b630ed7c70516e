/*
 * sse.c - Server-Sent Events for streaming responses.
 *
 * A streaming job's response is an MHD callback response of unknown size
 * (chunked). MHD pulls bytes through sse_read: it hands out what is queued
 * in job->out, asks the endpoint to render what is new, and when there is
 * nothing, suspends the connection (allowed from a content reader) and
 * returns 0. job_on_update, on the engine thread, resumes it. No thread
 * ever sleeps waiting for tokens. Owns nothing beyond the bytes it queues.
 */
#include <string.h>

#include <microhttpd.h>

#include "api.h"

void sse_event(struct strbuf *out, char *json)
{
    if (!json) return;
    sb_puts(out, "data: ");
    sb_puts(out, json);
    sb_puts(out, "\n\n");
    cJSON_free(json);
}

void sse_done(struct strbuf *out)
{
    sb_puts(out, "data: [DONE]\n\n");
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct api_job *job = cls;
    (void)pos;
    pthread_mutex_lock(&job->lock);
    if (job->out_pos >= job->out.len) {
        sb_clear(&job->out);
        job->out_pos = 0;
        if (!job->stream_done) {
            if (job->kind == JOB_CHAT)
                api_chat_stream(job);
            else
                api_completions_stream(job);
        }
    }
    size_t avail = job->out.len - job->out_pos;
    if (avail == 0) {
        if (job->stream_done) {
            pthread_mutex_unlock(&job->lock);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (atomic_load(&job->srv->closing)) { /* never park while the daemon stops */
            pthread_mutex_unlock(&job->lock);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        job->suspended = true;
        MHD_suspend_connection(job->conn);
        pthread_mutex_unlock(&job->lock);
        return 0;
    }
    size_t n = avail < max ? avail : max;
    memcpy(buf, job->out.s + job->out_pos, n);
    job->out_pos += n;
    pthread_mutex_unlock(&job->lock);
    return (ssize_t)n;
}

struct MHD_Response *sse_response(struct api_job *job)
{
    return MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_read, job, NULL);
}
