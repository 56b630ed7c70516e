/*
 * netio.c - blocking TCP helpers with deadlines (netio.h).
 *
 * Every socket it hands out has TCP_NODELAY (collectives are small,
 * latency-bound messages) and keepalive probes tight enough that a peer
 * host that vanished without closing is noticed in about half a minute
 * instead of hours. It never allocates; it never retries a read or write
 * that made no progress except on EINTR.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "netio.h"

#define NIO_RETRY_MS 200 /* between refused connection attempts */

double nio_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Milliseconds left before deadline for poll(): -1 = forever. */
static int ms_left(double deadline)
{
    if (deadline <= 0) return -1;
    double left = deadline - nio_now();
    if (left <= 0) return 0;
    return left > 1e6 ? 1000000000 : (int)(left * 1000.0) + 1;
}

static void tune(int fd)
{
    int one = 1, idle = 10, intvl = 5, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

static int is_loopback_name(const char *host)
{
    return !strcmp(host, "127.0.0.1") || !strcmp(host, "localhost") || !strcmp(host, "::1");
}

enum es_status nio_listen(const char *host, int port, int *fd_out, struct es_err *err)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    int rc = getaddrinfo(is_loopback_name(host) ? host : NULL, service, &hints, &res);
    if (rc != 0) return es_fail(err, ES_EIO, "cannot resolve %s: %s", host, gai_strerror(rc));
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 64) == 0) break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return es_fail(err, ES_EIO, "cannot listen on port %d (%s): %s", port,
                       is_loopback_name(host) ? host : "all interfaces", strerror(saved));
    *fd_out = fd;
    return ES_OK;
}

static void format_peer(const struct sockaddr_storage *sa, char *out, size_t cap)
{
    char addr[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, addr, sizeof(addr));
        port = ntohs(in->sin_port);
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, addr, sizeof(addr));
        port = ntohs(in6->sin6_port);
    }
    snprintf(out, cap, "%s:%d", addr, port);
}

enum es_status nio_accept(int listen_fd, double deadline, int *fd_out, char *peer, size_t peer_cap,
                          int *timed_out, struct es_err *err)
{
    *timed_out = 0;
    for (;;) {
        struct pollfd p = {.fd = listen_fd, .events = POLLIN};
        int n = poll(&p, 1, ms_left(deadline));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return es_fail(err, ES_EIO, "poll: %s", strerror(errno));
        if (n == 0) {
            *timed_out = 1;
            return ES_EIO;
        }
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);
        int fd = accept4(listen_fd, (struct sockaddr *)&sa, &len, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
            return es_fail(err, ES_EIO, "accept: %s", strerror(errno));
        }
        tune(fd);
        if (peer) format_peer(&sa, peer, peer_cap);
        *fd_out = fd;
        return ES_OK;
    }
}

/* Connects fd without blocking past deadline (a SYN to a host that is
 * down otherwise waits the kernel's two minutes). 0 or -1 with errno. */
static int connect_before(int fd, const struct sockaddr *sa, socklen_t len, double deadline)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return -1;
    int rc = connect(fd, sa, len);
    if (rc != 0 && (errno == EINPROGRESS || errno == EINTR)) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int n;
        do
            n = poll(&p, 1, ms_left(deadline));
        while (n < 0 && errno == EINTR);
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (n == 0)
            soerr = ETIMEDOUT;
        else if (n < 0)
            soerr = errno;
        else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            soerr = errno;
        errno = soerr;
        rc = soerr ? -1 : 0;
    }
    if (rc == 0 && fcntl(fd, F_SETFL, flags) < 0) rc = -1;
    return rc;
}

/* One attempt over every address of host; returns the socket or -1 with
 * errno set. */
static int connect_once(const struct addrinfo *res, double deadline)
{
    int saved = ECONNREFUSED;
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        if (connect_before(fd, ai->ai_addr, ai->ai_addrlen, deadline) == 0) return fd;
        saved = errno;
        close(fd);
    }
    errno = saved;
    return -1;
}

enum es_status nio_connect(const char *host, int port, double deadline, int *fd_out,
                           struct es_err *err)
{
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    int last_errno = 0;
    const char *last_gai = NULL;
    for (;;) {
        struct addrinfo hints = {0}, *res = NULL;
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICSERV;
        /* Resolved again on every attempt: in Kubernetes the master's name
         * appears in DNS only once its pod exists. */
        int rc = getaddrinfo(host, service, &hints, &res);
        if (rc == 0) {
            int fd = connect_once(res, deadline);
            freeaddrinfo(res);
            if (fd >= 0) {
                tune(fd);
                *fd_out = fd;
                return ES_OK;
            }
            last_errno = errno;
            last_gai = NULL;
        } else {
            last_gai = gai_strerror(rc);
        }
        if (deadline > 0 && nio_now() + NIO_RETRY_MS / 1000.0 > deadline) break;
        usleep(NIO_RETRY_MS * 1000);
    }
    return es_fail(err, ES_EIO, "cannot connect to %s:%d (%s)", host, port,
                   last_gai ? last_gai : strerror(last_errno));
}

enum es_status nio_write_all(int fd, const void *buf, size_t n, const char *who, struct es_err *err)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return es_fail(err, ES_EIO, "sending to %s: %s", who,
                           w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return ES_OK;
}

enum es_status nio_write2(int fd, const void *a, size_t na, const void *b, size_t nb,
                          const char *who, struct es_err *err)
{
    struct iovec iov[2] = {{.iov_base = (void *)a, .iov_len = na},
                           {.iov_base = (void *)b, .iov_len = nb}};
    struct iovec *v = iov;
    int nv = nb > 0 ? 2 : 1;
    while (nv > 0) {
        struct msghdr mh = {.msg_iov = v, .msg_iovlen = (size_t)nv};
        ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return es_fail(err, ES_EIO, "sending to %s: %s", who,
                           w < 0 ? strerror(errno) : "no progress");
        size_t done = (size_t)w;
        while (nv > 0 && done >= v->iov_len) {
            done -= v->iov_len;
            v++;
            nv--;
        }
        if (nv > 0) {
            v->iov_base = (char *)v->iov_base + done;
            v->iov_len -= done;
        }
    }
    return ES_OK;
}

enum es_status nio_read_all(int fd, void *buf, size_t n, double deadline, const char *who,
                            struct es_err *err)
{
    char *p = buf;
    while (n > 0) {
        if (deadline > 0) {
            struct pollfd pf = {.fd = fd, .events = POLLIN};
            int pr = poll(&pf, 1, ms_left(deadline));
            if (pr < 0 && errno == EINTR) continue;
            if (pr == 0) return es_fail(err, ES_EIO, "%s did not answer in time", who);
        }
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) return es_fail(err, ES_EIO, "%s closed the connection", who);
        if (r < 0) return es_fail(err, ES_EIO, "receiving from %s: %s", who, strerror(errno));
        p += r;
        n -= (size_t)r;
    }
    return ES_OK;
}

enum es_status nio_wait_readable(int fd, double deadline, int *timed_out, struct es_err *err)
{
    *timed_out = 0;
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int n = poll(&pf, 1, ms_left(deadline));
        if (n > 0) return ES_OK;
        if (n == 0) {
            *timed_out = 1;
            return ES_OK;
        }
        if (errno != EINTR) return es_fail(err, ES_EIO, "poll: %s", strerror(errno));
    }
}

void nio_close(int fd)
{
    if (fd < 0) return;
    shutdown(fd, SHUT_RDWR);
    close(fd);
}
