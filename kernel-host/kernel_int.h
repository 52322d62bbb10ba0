/* What the native kernel's two halves share (internal to kernel-host/).
 *
 *   kernel.c: the sockets, the I/O thread,      pyshell.c: the main thread; CPython and
 *   the pipes behind fds 1 and 2; never takes   IPython's shell; the only thread that runs
 *   the GIL                                     user code
 *
 * The sockets belong to whichever thread owns them (kernel.c explains why and when): the
 * Python thread between requests and during a request's first millisecond, the I/O thread
 * while a longer request runs, so heartbeat, control and output flow while user code runs.
 *
 *           req_q:   requests (shell messages, shutdown)   socket owner -> Python
 *           stdin_q: input_reply messages                  I/O thread -> Python
 *           out_q:   messages to send, in order            Python -> socket owner
 *
 * Output order: bytes in the stdout/stderr pipes and messages in out_q are two channels;
 * they are put in one order by kstreams_t's mutex. Whoever reads the pipes (the I/O thread
 * while a cell runs, the Python thread just before it queues an iopub message) turns what
 * it read into stream messages queued on out_q under that mutex, so every message follows
 * the output written before it, under the right parent.
 *
 * Everything else they both see is immutable after start (kernel_info, session, fds).
 * JSON values cross threads only by ownership transfer, or read-only with jansson's atomic
 * reference counts (request headers used as parent_header). */
#pragma once

#include "jwire.h"
#include "kq.h"
#include "kstream.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Requests handed to the Python thread. */
typedef enum {
    KREQ_MSG,      /* a shell-channel message */
    KREQ_SHUTDOWN, /* run atexit handlers, then exit (kio_py_exit) */
} kreq_kind_t;

typedef struct {
    kreq_kind_t kind;
    jwire_channel_t ch; /* where it came from and its reply goes: shell (or control) */
    jwire_msg_t *msg;   /* KREQ_MSG: owned */
    uint64_t seq;       /* arrival order of shell requests (for stop_on_error aborts) */
} kreq_t;

/* Items the Python thread hands to the I/O thread. */
typedef enum {
    KOUT_MSG,      /* send a message */
    KOUT_PY_READY, /* Python and IPython are initialized */
} kout_kind_t;

enum {
    /* Output read after this iopub message is queued goes under its parent. */
    KOUT_F_STREAM_PARENT = 1u,
    /* The last message of a shell request (its idle status). */
    KOUT_F_REQUEST_DONE = 2u,
};

typedef struct {
    kout_kind_t kind;
    unsigned flags;
    jwire_channel_t ch;   /* JWIRE_SHELL, JWIRE_IOPUB or JWIRE_STDIN */
    const char *msg_type; /* static string */
    json_t *parent;       /* reference, or NULL for {} */
    zmsg_t *ids;          /* owned routing ids (shell, stdin), or NULL */
    json_t *content;      /* owned */
    json_t *metadata;     /* owned, or NULL for {} */
    zmsg_t *buffers;      /* owned binary buffers (comm messages), or NULL */
} kout_t;

kout_t *kout_new(kout_kind_t kind, jwire_channel_t ch, const char *msg_type, json_t *parent,
                 const zmsg_t *ids, json_t *content, json_t *metadata, unsigned flags);
void kout_free(void *item);
void kreq_free(void *item);

typedef struct {
    pthread_mutex_t mu;
    int pipe_r[2];     /* non-blocking read ends of the pipes at fds 1 and 2 */
    kstream_t *buf[2]; /* bytes read, not yet queued (a partial UTF-8 sequence at most) */
    json_t *parent;    /* parent of stream output: the current (or last) request's header */
} kstreams_t;

typedef struct {
    kstreams_t st;
    kq_t *req_q;
    kq_t *stdin_q;
    kq_t *out_q;
    json_t *kernel_info; /* kernel_info_reply content, immutable */
    char session[37];
    const char *conn_file;     /* as given (-f), for IPython's config */
    _Atomic uint64_t last_seq; /* seq of the newest shell request queued for Python */
    int log_fd;                /* the kernel host's own stderr (fd 2 is the user's pipe) */
    int out_w[2];              /* private copies of the pipes behind fds 1 and 2 */
    dev_t out_dev[2];
    ino_t out_ino[2];
    pthread_t main_thread;
    uint64_t start_us;  /* monotonic, when the kernel process started */
    atomic_bool forked; /* this is a child of os.fork() in user code: touch no socket */
} kshared_t;

/* With sh->st.mu held: reads what the pipes hold (at most max bytes) and queues it as
 * stream messages, under st.parent, behind everything queued before. force: a partial UTF-8
 * sequence at the end goes too. */
void kstreams_drain_locked(kshared_t *sh, size_t max, bool force);

/* Queues an iopub message after the output written before it (drains the pipes first);
 * with KOUT_F_STREAM_PARENT its parent becomes the parent of later output. Never blocks:
 * a producer that respects the bound waits for room (kq_wait_room) before calling. */
void kout_publish_ordered(kshared_t *sh, kout_t *it, size_t bytes);

/* Logging of the kernel host itself: a JSON line on sh->log_fd. Never user code. */
void klog(int level, const char *msg, const char *ctx_fmt, ...);

/* The Python thread's side of socket ownership (kernel.c explains it). All are called with
 * the GIL held and never block on the I/O thread for long. */
/* If it owns them: handles control and stdin traffic, queues the next shell request on
 * req_q (answering kernel_info and shutdown itself), sends what out_q and the pipes hold. */
void kio_py_service(kshared_t *sh);
/* stop_on_error: reads every shell request already waiting into req_q, so they get aborted. */
void kio_py_pull_shell(kshared_t *sh);
/* The fds to sleep on between requests (at most 8); wake on any, then kio_py_service(). */
int kio_py_wait_fds(kshared_t *sh, struct pollfd *fds);
/* Around each request, and each pass of the asyncio loop between requests: start arms the
 * takeover timer; end sends what it produced (or lets the I/O thread do it, if it took over). */
void kio_py_request_start(kshared_t *sh);
void kio_py_request_end(kshared_t *sh);
/* input(): the I/O thread must own the sockets (to send input_request, read stdin). */
void kio_py_need_io(kshared_t *sh);
/* Shutdown after the atexit handlers: sends what is queued, closes, exits 0. */
_Noreturn void kio_py_exit(kshared_t *sh);

/* Any thread: a cell has run past the takeover delay, so the Python side flushes partial
 * lines of output periodically while it runs (pyshell.c, the flusher). */
void kpy_flusher_kick(void);

/* Py_GetVersion(), callable before Python is initialized. */
const char *kpy_version(void);

/* The main thread's part: initializes CPython + IPython, then serves requests forever. Returns
 * only if Python could not be started (-errno); the process then exits. */
int kpy_run(kshared_t *sh);
