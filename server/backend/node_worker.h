/*
 * node_worker.h - the control channel of a group spread over several
 * processes ("nodes"). Tensor parallelism over nodes (--tp with
 * --nnodes): node 0 mirrors every step to the other nodes, and on each
 * other node a loop replays it on that node's local ranks. Pipeline
 * parallelism over nodes (--pp with --nnodes): each other node runs
 * whole pipeline stages, and node 0 calls it for each micro-batch
 * (node_remote_call, through node_stage.h's stage backend), the
 * residual stream going with the call and coming back in the answer.
 *
 * Node 0 serves HTTP and runs the engine; its backend_tp group calls the
 * struct tp_remote made here before each forward() and copy_blocks().
 * Every other node connects one control socket to node 0, loads its own
 * backend_tp group (local ranks only, no remote) and runs
 * node_worker_run() until node 0 says STOP or goes away. The step data
 * travels as step_wire.h messages; the ranks' collectives travel through
 * comm_tcp on a port of their own (NODE_COMM_PORT_OFFSET). Steps are not
 * acknowledged: the collectives of the step keep the nodes in lockstep,
 * and a node that fails or dies breaks them, so every node's step fails
 * instead of hanging.
 *
 * Between steps the channel carries heartbeats, so that a node that dies
 * while node 0 is idle is noticed at once, not at the next request: node
 * 0's watchdog (node_remote_watch) sends a HEARTBEAT to each node once the
 * channel has been quiet for NODE_HEARTBEAT_INTERVAL_S, the node answers
 * with one, and a connection that ends (EOF, reset) or a heartbeat left
 * unanswered for the node timeout fails node 0's group. A worker likewise
 * gives up when node 0 ends the connection or sends nothing (no step, no
 * heartbeat) for the node timeout past a heartbeat's due time. Heartbeats
 * are whole messages written under the same lock as the steps, so they
 * never split one; a node reads them in order, between steps, so a step
 * that runs longer than the node timeout counts as a hung node.
 *
 * The handshake (node_control_accept / node_control_connect) checks the
 * protocol version and the group's shape (node count, tensor-parallel
 * size, block size, the caller's fingerprint) and that node ranks are
 * unique; a mismatch or a node that never arrives fails on every node
 * with a message naming it. Once the group is complete, node 0 keeps its
 * control port open for its whole life and turns every later node away
 * (a second process with a rank already taken, a node of another shape)
 * with the reason, which that node prints before it exits; the group runs
 * on undisturbed.
 */
#ifndef ES_NODE_WORKER_H
#define ES_NODE_WORKER_H

#include <stdint.h>

#include "backend.h"
#include "backend_tp.h"

/* The ranks' comm_tcp group listens on the control port + this. */
#define NODE_COMM_PORT_OFFSET 1

/* Node 0 sends a heartbeat to a node when nothing went to it for this long. */
#define NODE_HEARTBEAT_INTERVAL_S 1.0

/* What every node of one group must agree on. */
struct node_shape {
    int nnodes;           /* processes in the group; node 0 serves HTTP */
    int node_rank;        /* this process, 0 .. nnodes - 1 */
    int tp_size;          /* tensor-parallel ranks over all nodes */
    int pp_size;          /* pipeline stages over all nodes */
    int block_size;       /* KV tokens per block (the wire trims block tables by it) */
    uint64_t fingerprint; /* the caller's hash of anything else that must agree
                             (model, context limits); compared as is */
};

/* Node 0: listens on addr:port and admits nnodes - 1 nodes within
 * timeout_s. fds_out[0 .. nnodes) gets node r's socket at r (fds_out[0] =
 * -1). A connection that is not an evalserver node is dropped; a node
 * whose hello disagrees with self, a second node of a rank that joined
 * already, or a node missing at the deadline fails the whole group, and
 * every node that joined is told why. On success *listen_fd_out (unless
 * NULL; else it is closed) gets the listening socket, left open for
 * node_remote_create; -1 on failure. */
enum es_status node_control_accept(const struct node_shape *self, const char *addr, int port,
                                   double timeout_s, int *fds_out, int *listen_fd_out,
                                   struct es_err *err);

/* Node r > 0: connects to node 0 (retrying until timeout_s), sends its
 * hello and waits for node 0's verdict on the whole group. */
enum es_status node_control_connect(const struct node_shape *self, const char *addr, int port,
                                    double timeout_s, int *fd_out, struct es_err *err);

/* Node 0 of the group self: the tp_remote that writes each command to
 * fds[1 .. self->nnodes), trimming block tables by self->block_size.
 * Owns those sockets and listen_fd (node_control_accept's; -1: none) from
 * this call on, on failure too. Until close(), a thread of its own
 * answers each new connection to listen_fd and closes it: a node is
 * refused with why (its rank is taken: "the group is already complete",
 * naming where that node joined from; or what does not fit, as at
 * startup), anything else is dropped after at most a second; the joined
 * nodes are not disturbed. Its close() sends STOP to every node, stops
 * that thread and closes every socket. */
enum es_status node_remote_create(const struct node_shape *self, const int *fds, int listen_fd,
                                  struct tp_remote **out, struct es_err *err);

/* Called once, from the watchdog's thread, when a node is found gone;
 * why names the node and the reason. */
typedef void (*node_lost_fn)(void *ctx, const char *why);

/* Node 0: starts the watchdog over r's control channel (r made by
 * node_remote_create; at most one watch). Its thread sends the heartbeats
 * and reads the answers; when a node's connection ends or a heartbeat
 * stays unanswered for timeout_s, it logs which node and why, shuts every
 * control connection down (a step being sent fails at once, the other
 * nodes see EOF), calls on_lost(ctx, why) and stops; later sends fail
 * with that reason. r's close() stops the watchdog before sending STOP. */
enum es_status node_remote_watch(struct tp_remote *r, double timeout_s, node_lost_fn on_lost,
                                 void *ctx, struct es_err *err);

/* Node 0 of a pipeline over nodes: sends msg (NULL: nothing, only wait)
 * to node `node` alone and reads its answer (READY, HIDDEN, DONE or
 * ERROR) into answer, taking heartbeat answers that come first. Once the
 * watchdog runs, an answer to a message is due within its timeout;
 * before, and for msg NULL, no limit but the connection's end. Calls to
 * different nodes may run at once, from different threads; a failure
 * breaks the remote as a failed send does. */
struct sw_buf;
struct sw_cmd;
enum es_status node_remote_call(struct tp_remote *r, int node, const struct sw_buf *msg,
                                struct sw_cmd *answer, struct es_err *err);

/* What a node other than 0 runs. */
enum node_role {
    NODE_TP_RANKS,  /* its ranks of every step; nothing is answered */
    NODE_PP_STAGES, /* its pipeline stages; every step command is answered */
};

/* Node r > 0 running pipeline stages, once its group has loaded (or
 * failed to): READY with the group's KV blocks and block size, or ERROR
 * with load_err's message. */
enum es_status node_worker_report_load(int control_fd, const struct backend *group,
                                       enum es_status load_st, const struct es_err *load_err,
                                       struct es_err *err);

/* Node r > 0: reads commands from control_fd and runs them on
 * local_group (forward with a scratch result, copy_blocks; a HEARTBEAT
 * is answered at once) until STOP: ES_OK. With NODE_PP_STAGES a FORWARD
 * takes its incoming stream from the message and is answered with HIDDEN
 * (or DONE when node 0 wants no stream), COPY_BLOCKS with DONE, and a
 * failed command with ERROR before the loop ends. EOF before STOP, a
 * corrupt message, a failed call, or (timeout_s > 0) nothing from node 0
 * for NODE_HEARTBEAT_INTERVAL_S + timeout_s return that error. Each step
 * runs under node_step_guard.h: node 0 closing the connection while it
 * runs, or (step_timeout_s > 0) a step running that long, fails too, with
 * *abandoned set: the step's thread still uses local_group, which must
 * then not be destroyed. The test switches of fault.h apply to this
 * node's forwards (replica 0). Leaves control_fd open and local_group
 * loaded. */
enum es_status node_worker_run(struct backend *local_group, int control_fd, double timeout_s,
                               double step_timeout_s, enum node_role role, bool *abandoned,
                               struct es_err *err);

#endif
