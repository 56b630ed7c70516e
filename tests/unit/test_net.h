/*
 * test_net.h - a free loopback TCP port for the unit tests that open real
 * sockets (comm_tcp, node_worker, backend_tp). Test-only; the port is free
 * a moment after the call, which is all these tests need.
 */
#ifndef ES_TEST_NET_H
#define ES_TEST_NET_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* A port that was free a moment ago (bound to port 0, then released). */
static inline int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        perror("free_port");
        exit(1);
    }
    close(fd);
    return ntohs(sa.sin_port);
}

#endif
