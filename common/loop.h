/* The event loop: one per socket-owning process (gateway, kernel host). epoll underneath,
 * with first-class ZeroMQ sockets (via ZMQ_FD, whose edge semantics are hidden here), timers
 * (a heap of deadlines that sets epoll_wait's timeout), signalfd signals, deferred calls, and
 * a small thread pool for blocking work (mkfs, container start) that reports back on the
 * loop thread. Callbacks always run on the loop thread, so the state they touch needs no
 * locks.
 *
 * Watches are handles: loop_*_add() returns one, loop_watch_del() frees it (NULL-safe, nulls
 * the pointer) and is safe to call from inside any callback, including the watch's own. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

typedef struct loop loop_t;
typedef struct loop_watch loop_watch_t;

enum { LOOP_READ = 1u, LOOP_WRITE = 2u, LOOP_HUP = 4u, LOOP_ERR = 8u };

typedef void (*loop_io_fn)(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg);
/* Called while the socket has a message to read; read at least one (ideally all) of them. */
typedef void (*loop_zmq_fn)(loop_t *loop, loop_watch_t *w, void *sock, void *arg);
typedef void (*loop_timer_fn)(loop_t *loop, loop_watch_t *w, void *arg);
typedef void (*loop_signal_fn)(loop_t *loop, int signo, void *arg);
typedef void (*loop_defer_fn)(loop_t *loop, void *arg);
typedef void (*loop_work_fn)(void *arg);               /* runs on a pool thread */
typedef void (*loop_done_fn)(loop_t *loop, void *arg); /* then this, on the loop thread */

/* nthreads: size of the blocking-work pool (0 = no pool). NULL on failure (errno set). */
loop_t *loop_new(unsigned nthreads);
/* Runs every queued blocking job to completion and calls its done callback (on the calling
 * thread), then frees every watch and timer/signal fd the loop created. NULL-safe. */
void loop_destroy(loop_t **loop_p);

loop_watch_t *loop_io_add(loop_t *loop, int fd, unsigned events, loop_io_fn fn, void *arg);
int loop_io_mod(loop_t *loop, loop_watch_t *w, unsigned events);

/* sock: a libzmq socket or a czmq zsock_t. The loop never reads from it itself. */
loop_watch_t *loop_zmq_add(loop_t *loop, void *sock, loop_zmq_fn fn, void *arg);
/* Call after sending on a watched socket: a send can consume the ZMQ_FD edge that announced
 * pending input, so the loop re-checks ZMQ_EVENTS before it sleeps. */
void loop_zmq_kick(loop_t *loop, loop_watch_t *w);

/* One-shot after after_ms (repeat_ms == 0) or periodic. */
loop_watch_t *loop_timer_add(loop_t *loop, uint64_t after_ms, uint64_t repeat_ms, loop_timer_fn fn,
                             void *arg);
int loop_timer_rearm(loop_t *loop, loop_watch_t *w, uint64_t after_ms, uint64_t repeat_ms);

/* Blocks signo for the process and delivers it through signalfd. */
loop_watch_t *loop_signal_add(loop_t *loop, int signo, loop_signal_fn fn, void *arg);

/* Removes and frees any kind of watch; never closes an fd it did not create. NULL-safe. */
void loop_watch_del(loop_t *loop, loop_watch_t **w_p);

/* Run fn(arg) on the loop thread at the start of the next iteration. -errno on failure. */
int loop_defer(loop_t *loop, loop_defer_fn fn, void *arg);

/* Run work(arg) on a pool thread, then done(loop, arg) on the loop thread. */
int loop_work_submit(loop_t *loop, loop_work_fn work, loop_done_fn done, void *arg);

/* Runs until loop_stop(); returns 0, or -errno if epoll itself failed. */
int loop_run(loop_t *loop);
void loop_stop(loop_t *loop);
