/*
 * fuzz_client_sse.c - libFuzzer target for the client's reply parsing in
 * client/http_client.c: the SSE stream of a streamed request (data: lines,
 * [DONE], chunks, usage, errors) and the JSON body of a plain one.
 *
 * Those parsers are internal to http_client.c, so the target drives the
 * real transport: a loopback HTTP server thread started once in
 * LLVMFuzzerInitialize answers each request with bytes from the input, and
 * hc_submit + hc_run fetch them with libcurl. Input layout:
 *   byte 0: bit 0 streamed request; bits 1-2 status (200, 200, 500, 404);
 *           bit 3 chunked transfer encoding (else Content-Length)
 *   byte 1: chunk size - 1 (chunked only)
 *   rest:   the reply body.
 * Invariants (abort on violation): the callback runs exactly once; ES_OK
 * only for a 2xx (with parsed JSON when not streamed); a failure carries a
 * message; every string field is NUL-terminated; the streamed text (JSON
 * strings concatenated) is valid UTF-8; chunk timestamps fit their array.
 * Never does: talk to anything but its own loopback listener.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_client.h"
#include "strbuf.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_client_sse: invariant failed at line %d: %s\n", __LINE__,        \
                    #cond);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static int listen_fd = -1;
static char base_url[64];
static struct hc *client;

/* The reply for the next connection, set by the fuzzing thread. */
static pthread_mutex_t reply_lock = PTHREAD_MUTEX_INITIALIZER;
static struct strbuf reply;

static bool write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Reads one request (headers, then Content-Length bytes) and discards it. */
static bool read_request(int fd)
{
    char buf[8192];
    size_t have = 0;
    char *end = NULL;
    while (!end) {
        if (have == sizeof buf - 1) return false;
        ssize_t r = read(fd, buf + have, sizeof buf - 1 - have);
        if (r <= 0) return false;
        have += (size_t)r;
        buf[have] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    size_t body_have = have - (size_t)(end + 4 - buf), body_len = 0;
    const char *cl = strcasestr(buf, "\r\ncontent-length:");
    if (cl) body_len = strtoul(cl + 17, NULL, 10);
    while (body_have < body_len) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) return false;
        body_have += (size_t)r;
    }
    return true;
}

static void *server_main(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0) continue;
        if (read_request(fd)) {
            pthread_mutex_lock(&reply_lock);
            write_all(fd, sb_cstr(&reply), reply.len);
            pthread_mutex_unlock(&reply_lock);
        }
        shutdown(fd, SHUT_WR);
        char sink[512];
        while (read(fd, sink, sizeof sink) > 0) {
        }
        close(fd);
    }
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* The loopback server must be reached directly. */
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    setenv("no_proxy", "127.0.0.1", 1);
    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(listen_fd, 16) != 0 || getsockname(listen_fd, (struct sockaddr *)&a, &al) != 0) {
        perror("fuzz_client_sse: loopback listener");
        exit(1);
    }
    snprintf(base_url, sizeof base_url, "http://127.0.0.1:%d", ntohs(a.sin_port));
    pthread_t th;
    if (pthread_create(&th, NULL, server_main, NULL) != 0) {
        perror("fuzz_client_sse: server thread");
        exit(1);
    }
    pthread_detach(th);
    const char *urls[1] = {base_url};
    struct hc_opts o = {.urls = urls, .n_urls = 1, .max_inflight = 1, .timeout_s = 10,
                        .retries = 0};
    struct es_err err = {{0}};
    client = hc_create(&o, &err);
    if (!client) {
        fprintf(stderr, "fuzz_client_sse: hc_create: %s\n", err.msg);
        exit(1);
    }
    return 0;
}

struct outcome {
    int calls;
    bool stream;
    long status_sent;
};

static bool terminated(const char *s, size_t cap)
{
    return memchr(s, 0, cap) != NULL;
}

static void on_done(struct hc_result *res, void *ud)
{
    struct outcome *oc = ud;
    oc->calls++;
    CHECK(terminated(res->error, sizeof res->error));
    CHECK(terminated(res->finish_reason, sizeof res->finish_reason));
    CHECK(terminated(res->fingerprint, sizeof res->fingerprint));
    CHECK(res->attempts == 1);
    if (res->st == ES_OK) {
        CHECK(res->http_status == oc->status_sent);
        CHECK(res->http_status >= 200 && res->http_status < 300);
        if (!oc->stream) CHECK(res->json != NULL);
    } else {
        CHECK(res->error[0] != '\0');
    }
    if (oc->status_sent >= 300) CHECK(res->st != ES_OK);
    CHECK(res->n_chunks <= res->cap_chunks);
    if (oc->stream) {
        CHECK(utf8_valid_prefix(sb_cstr(&res->text), res->text.len) == res->text.len);
        CHECK(res->n_chunks == 0 || res->text.len > 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    static const long statuses[4] = {200, 200, 500, 404};
    bool stream = data[0] & 1, chunked = data[0] & 8;
    long status = statuses[(data[0] >> 1) & 3];
    size_t chunk = (size_t)data[1] + 1;
    const char *body = (const char *)data + 2;
    size_t n = size - 2;

    pthread_mutex_lock(&reply_lock);
    sb_clear(&reply);
    sb_printf(&reply,
              "HTTP/1.1 %ld X\r\nContent-Type: %s\r\nConnection: close\r\n", status,
              stream ? "text/event-stream" : "application/json");
    if (chunked) {
        sb_puts(&reply, "Transfer-Encoding: chunked\r\n\r\n");
        for (size_t i = 0; i < n; i += chunk) {
            size_t k = n - i < chunk ? n - i : chunk;
            sb_printf(&reply, "%zx\r\n", k);
            sb_append(&reply, body + i, k);
            sb_puts(&reply, "\r\n");
        }
        sb_puts(&reply, "0\r\n\r\n");
    } else {
        sb_printf(&reply, "Content-Length: %zu\r\n\r\n", n);
        sb_append(&reply, body, n);
    }
    pthread_mutex_unlock(&reply_lock);

    struct outcome oc = {.stream = stream, .status_sent = status};
    CHECK(hc_submit(client, 0, stream ? "/v1/chat/completions" : "/v1/completions", "{}", stream,
                    false, on_done, &oc) == ES_OK);
    struct es_err err = {{0}};
    CHECK(hc_run(client, &err) == ES_OK);
    CHECK(oc.calls == 1);
    return 0;
}
