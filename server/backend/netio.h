/*
 * netio.h - the blocking TCP plumbing under the multi-node pieces
 * (comm_tcp.c, node_worker.c): listen, accept and connect with deadlines,
 * and whole-buffer reads and writes that survive EINTR and short
 * transfers.
 *
 * Owns nothing but the descriptors it hands out. Deadlines are absolute
 * times on nio_now()'s monotonic clock; a deadline of 0 means "wait as
 * long as it takes" (the step path: a dead peer shows up as EOF, a reset
 * or a keepalive failure, never as a hang of its own making).
 */
#ifndef ES_NETIO_H
#define ES_NETIO_H

#include <stddef.h>

#include "status.h"

/* Seconds on a monotonic clock. */
double nio_now(void);

/* Listens on host:port. A loopback host ("127.0.0.1", "localhost", "::1")
 * binds loopback only; any other host binds every interface, because a
 * node's own name may resolve to an address the other nodes cannot reach
 * (127.0.1.1 in /etc/hosts). */
enum es_status nio_listen(const char *host, int port, int *fd_out, struct es_err *err);

/* Accepts one connection before deadline; *timed_out tells a timeout (then
 * ES_EIO without a message) from a real failure. peer gets "addr:port". */
enum es_status nio_accept(int listen_fd, double deadline, int *fd_out, char *peer, size_t peer_cap,
                          int *timed_out, struct es_err *err);

/* Connects to host:port, retrying refused or unreachable attempts until
 * deadline (0: forever); one attempt never blocks past it either. */
enum es_status nio_connect(const char *host, int port, double deadline, int *fd_out,
                           struct es_err *err);

/* All of buf, or ES_EIO naming `who` ("rank 3", "node 1"). */
enum es_status nio_write_all(int fd, const void *buf, size_t n, const char *who,
                             struct es_err *err);

/* a[0..na) then b[0..nb) in as few segments as the kernel allows (a
 * message header and its payload). */
enum es_status nio_write2(int fd, const void *a, size_t na, const void *b, size_t nb,
                          const char *who, struct es_err *err);

/* Exactly n bytes before deadline (0: no deadline), or ES_EIO naming who:
 * "closed the connection" on EOF. */
enum es_status nio_read_all(int fd, void *buf, size_t n, double deadline, const char *who,
                            struct es_err *err);

/* Waits until fd has something to read (data, EOF or an error to collect)
 * or deadline passes (0: forever); *timed_out tells which. ES_EIO only if
 * poll itself fails. */
enum es_status nio_wait_readable(int fd, double deadline, int *timed_out, struct es_err *err);

/* Wakes any thread blocked on fd (shutdown both ways) and closes it. */
void nio_close(int fd);

#endif
