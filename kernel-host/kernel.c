/* The native kernel's process and its I/O thread (see kernel.h, kernel_int.h).
 *
 * Process setup: fd 0 is /dev/null; fds 1 and 2 are pipes whose read ends belong to the I/O
 * thread, so output of Python code, of C extensions and of every child process reaches iopub
 * as `stream` messages while the cell runs. The kernel host's own log goes to the stderr it
 * was started with (saved before the swap). Then the I/O thread binds the five sockets and
 * the main thread starts Python (pyshell.c).
 *
 * The I/O thread runs the event loop (common/loop.h) and never takes the GIL:
 *   - heartbeat: a ROUTER echoed by zmq_proxy() in a thread of its own, as ipykernel does;
 *   - control: kernel_info, interrupt (SIGINT to the Python thread and the kernel's process
 *     group), shutdown, comm_info, answered at once even while a cell runs;
 *   - shell: kernel_info is answered here when nothing is queued (so a client gets it while
 *     Python is still importing IPython); every other request goes to the Python thread;
 *   - stdin: input_reply goes to the Python thread waiting in input();
 *   - out_q: messages from the Python thread, sent in order; before each iopub message, what
 *     the pipes hold is published first, so prints come before the result that follows them;
 *   - pipes: read as they fill, coalesced for KIO_FLUSH_MS, bounded (a writer that outruns
 *     iopub blocks on the full pipe).
 * Any failure of the loop or the heartbeat thread ends the process: a kernel that cannot
 * serve must die where the gateway sees it, never hang. */
#include "kernel.h"
#include "kernel_int.h"
#include "kmsg.h"
#include "kstream.h"

#include "log.h"
#include "loop.h"
#include "util.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <zmq.h>

#define KIO_FLUSH_MS        5u                          /* stream coalescing window */
#define KIO_STREAM_CAP      ((size_t)64 * 1024)         /* bytes per stream message at most */
#define KIO_PIPE_SIZE       (256 * 1024)                /* kernel pipe buffer per stream */
#define KIO_DRAIN_MAX       ((size_t)1024 * 1024)       /* read per drain, so floods can't livelock */
#define KIO_MAX_MSG         ((int64_t)64 * 1024 * 1024) /* largest request accepted */
#define KIO_REPLAY_CAP      16384u
#define KIO_MAX_PENDING     1024u /* shell requests queued before we stop reading shell */
#define KIO_EXIT_GRACE_MS   1500u /* shutdown: atexit handlers get this long */
#define KIO_LINGER_MS       1000
#define KQ_REQ_CAP          (KIO_MAX_PENDING + 16)
#define KQ_STDIN_CAP        16u
#define KQ_OUT_CAP          8192u
#define KQ_OUT_BYTES        ((size_t)64 * 1024 * 1024)

static const jwire_limits_t limits = {.max_bytes = (size_t)KIO_MAX_MSG, .max_frames = 64};
static const char *const stream_names[2] = {"stdout", "stderr"};

/* ---- logging ------------------------------------------------------------------------------ */

static int log_fd = 2;

void klog(int level, const char *msg, const char *ctx_fmt, ...) {
    static const char *const names[] = {"debug", "info", "warn", "error"};
    if (level < log_get_level())
        return;
    char ts[32];
    jwire_now_iso8601(ts);
    json_t *line = json_pack("{s:s, s:s, s:s, s:s}", "ts", ts, "level",
                             names[level < 0 || level > 3 ? 1 : level], "module", "kernel", "msg",
                             msg);
    if (!line)
        return;
    if (ctx_fmt) {
        va_list ap;
        va_start(ap, ctx_fmt);
        json_t *ctx = json_vpack_ex(NULL, 0, ctx_fmt, ap);
        va_end(ap);
        if (ctx)
            json_object_update_new(line, ctx);
    }
    char *text = json_dumps(line, JSON_COMPACT);
    json_decref(line);
    if (!text)
        return;
    size_t n = strlen(text);
    text[n] = '\n'; /* replaces the NUL: one write per line */
    (void)write_all(log_fd, text, n + 1);
    free(text);
}

/* ---- queue items -------------------------------------------------------------------------- */

kout_t *kout_new(kout_kind_t kind, jwire_channel_t ch, const char *msg_type, json_t *parent,
                 const zmsg_t *ids, json_t *content, json_t *metadata, unsigned flags) {
    kout_t *it = calloc(1, sizeof *it);
    if (!it) {
        json_decref(content);
        json_decref(metadata);
        return NULL;
    }
    *it = (kout_t){.kind = kind, .flags = flags, .ch = ch, .msg_type = msg_type,
                   .parent = json_incref(parent), .content = content, .metadata = metadata};
    if (ids)
        it->ids = zmsg_dup((zmsg_t *)ids);
    return it;
}

void kout_free(void *item) {
    kout_t *it = item;
    if (!it)
        return;
    json_decref(it->parent);
    json_decref(it->content);
    json_decref(it->metadata);
    zmsg_destroy(&it->ids);
    free(it);
}

void kreq_free(void *item) {
    kreq_t *r = item;
    if (!r)
        return;
    jwire_msg_destroy(&r->msg);
    free(r);
}

/* ---- the I/O thread ----------------------------------------------------------------------- */

typedef struct {
    kshared_t *sh;
    jwire_conn_t conn;
    jwire_signer_t *signer;
    jwire_replay_t *replay;
    void *ctx;
    void *sock[JWIRE_NCHANNELS]; /* the heartbeat socket belongs to hb_thread once started */
    pthread_t hb_thread;
    loop_t *loop;
    loop_watch_t *watch[JWIRE_NCHANNELS];
    loop_watch_t *out_watch;
    loop_watch_t *pipe_watch[2];
    loop_watch_t *flush_timer;
    loop_watch_t *exit_timer;
    bool pipe_paused[2];
    uint64_t last_flush_us;
    json_t *empty; /* {} shared by messages without metadata or parent */
    unsigned py_pending;
    bool py_ready;
    bool shell_paused;
    bool shutting_down;
    uint64_t seq;
    uint64_t msg_count;
    char msgid_prefix[64];
    /* start handshake with the main thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int start_result; /* 1 = running, < 0 = failed */
} kio_t;

static atomic_bool terminating;

static _Noreturn void die(const char *why) {
    klog(LOG_LVL_ERROR, "kernel host fatal error, exiting", "{s:s}", "error", why);
    _exit(70);
}

/* Sends one message. content and metadata are stolen (NULL: {}); parent and ids borrowed. */
static int io_send(kio_t *io, jwire_channel_t ch, const char *msg_type, json_t *parent,
                   zmsg_t *ids, json_t *content, json_t *metadata) {
    char id[96], date[32];
    snprintf(id, sizeof id, "%s%llu", io->msgid_prefix, (unsigned long long)++io->msg_count);
    jwire_now_iso8601(date);
    jwire_msg_t m = {
        .ids = ids,
        .header = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "msg_id", id, "session",
                            io->sh->session, "username", KMSG_USERNAME, "date", date, "msg_type",
                            msg_type, "version", JWIRE_PROTOCOL_VERSION),
        .parent_header = parent ? parent : io->empty,
        .metadata = metadata ? metadata : io->empty,
        .content = content ? content : io->empty,
    };
    int r = m.header ? jwire_msg_send(&m, io->signer, io->sock[ch]) : -ENOMEM;
    json_decref(m.header);
    json_decref(content);
    json_decref(metadata);
    if (io->watch[ch])
        loop_zmq_kick(io->loop, io->watch[ch]);
    if (r < 0 && r != -EAGAIN)
        klog(LOG_LVL_WARN, "send failed", "{s:s, s:s, s:s}", "channel", jwire_channel_name(ch),
             "msg_type", msg_type, "error", strerror(-r));
    return r;
}

/* ---- output streams ----------------------------------------------------------------------- */

/* Queues what buf i holds as stream messages (sh->st.mu held). */
static void stream_queue(kshared_t *sh, int i, bool force) {
    kstreams_t *st = &sh->st;
    for (;;) {
        char *text = NULL;
        size_t len = 0;
        if (kstream_take(st->buf[i], force, &text, &len) < 0 || !text)
            return;
        json_t *c = kmsg_stream(stream_names[i], text, len);
        free(text);
        kout_t *it = kout_new(KOUT_MSG, JWIRE_IOPUB, "stream", st->parent, NULL, c, NULL, 0);
        if (it)
            kq_push_force(sh->out_q, it, len);
    }
}

void kstreams_drain_locked(kshared_t *sh, size_t max, bool force) {
    kstreams_t *st = &sh->st;
    for (int i = 0; i < 2; i++) {
        size_t total = 0;
        while (total < max) {
            kstream_t *b = st->buf[i];
            if (kstream_space(b) == 0) {
                size_t before = kstream_len(b);
                stream_queue(sh, i, false);
                if (kstream_len(b) == before)
                    stream_queue(sh, i, true); /* only a stuck partial sequence is left */
            }
            ssize_t n = read(st->pipe_r[i], kstream_tail(b), kstream_space(b));
            if (n > 0) {
                kstream_commit(b, (size_t)n);
                total += (size_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            break; /* EAGAIN; EOF cannot happen while we hold the write ends */
        }
        stream_queue(sh, i, force);
    }
}

void kout_publish_ordered(kshared_t *sh, kout_t *it, size_t bytes) {
    if (!it)
        return;
    pthread_mutex_lock(&sh->st.mu);
    kstreams_drain_locked(sh, KIO_DRAIN_MAX, false);
    if (it->flags & KOUT_F_STREAM_PARENT) {
        json_decref(sh->st.parent);
        sh->st.parent = json_incref(it->parent);
    }
    kq_push_force(sh->out_q, it, bytes);
    pthread_mutex_unlock(&sh->st.mu);
}

static void handle_out(kio_t *io, kout_t *it);

/* Sends everything queued (bounded per call; the rest gets a wakeup). */
static void out_process(kio_t *io) {
    kq_ack(io->sh->out_q);
    /* Bounded per wakeup so control and heartbeat never wait behind a flood of display
     * messages. */
    for (int n = 0; n < 256; n++) {
        kout_t *it = kq_pop(io->sh->out_q);
        if (!it)
            return;
        handle_out(io, it);
    }
    kq_kick(io->sh->out_q);
}

/* Output written while a cell runs: queued and sent now. */
static void streams_flush(kio_t *io, bool force) {
    pthread_mutex_lock(&io->sh->st.mu);
    kstreams_drain_locked(io->sh, KIO_DRAIN_MAX, force);
    pthread_mutex_unlock(&io->sh->st.mu);
    io->last_flush_us = now_mono_us();
    out_process(io);
}

static void streams_resume(kio_t *io) {
    loop_watch_del(io->loop, &io->flush_timer);
    for (int i = 0; i < 2; i++)
        if (io->pipe_paused[i] && io->pipe_watch[i]) {
            loop_io_mod(io->loop, io->pipe_watch[i], LOOP_READ);
            io->pipe_paused[i] = false;
        }
}

static void on_flush_timer(loop_t *loop, loop_watch_t *w, void *arg) {
    kio_t *io = arg;
    streams_resume(io);
    streams_flush(io, false);
}

static void on_pipe(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    kio_t *io = arg;
    uint64_t since = now_mono_us() - io->last_flush_us;
    if (since >= KIO_FLUSH_MS * 1000u) {
        streams_flush(io, false); /* the first output of a while goes out at once */
        return;
    }
    /* More within the window: coalesce. Stop watching until the timer publishes. */
    int i = fd == io->sh->st.pipe_r[0] ? 0 : 1;
    loop_io_mod(loop, io->pipe_watch[i], 0);
    io->pipe_paused[i] = true;
    if (!io->flush_timer) {
        uint64_t left_ms = (KIO_FLUSH_MS * 1000u - since + 999) / 1000;
        io->flush_timer = loop_timer_add(loop, left_ms ? left_ms : 1, 0, on_flush_timer, io);
        if (!io->flush_timer)
            on_flush_timer(loop, NULL, io);
    }
}

/* ---- replies sent by the I/O thread itself ------------------------------------------------ */

static void send_status(kio_t *io, const char *state, json_t *parent) {
    io_send(io, JWIRE_IOPUB, "status", parent, NULL, kmsg_status(state), NULL);
}

/* A reply to msg on ch, with busy/idle around it when no shell request is in progress (a
 * status published while a cell runs would tell clients the kernel is idle). */
static void reply_direct(kio_t *io, jwire_channel_t ch, jwire_msg_t *msg, const char *reply_type,
                         json_t *content) {
    bool status = io->py_pending == 0;
    if (status)
        send_status(io, "busy", msg->header);
    io_send(io, ch, reply_type, msg->header, msg->ids, content, NULL);
    if (status)
        send_status(io, "idle", msg->header);
}

static void interrupt_kernel(kio_t *io) {
    /* Like ipykernel: the whole process group when we lead it (so `!cmd` children stop
     * too), and the Python thread by name, so its blocking call returns EINTR even if the
     * process-directed signal lands in a user thread. */
    pid_t me = getpid();
    if (getpgid(0) == me)
        (void)kill(-me, SIGINT);
    (void)pthread_kill(io->sh->main_thread, SIGINT);
}

static _Noreturn void finish(kio_t *io) {
    streams_flush(io, true);
    atomic_store(&terminating, true);
    int linger = KIO_LINGER_MS;
    for (int c = 0; c < JWIRE_NCHANNELS; c++) {
        if (c == JWIRE_HB || !io->sock[c])
            continue;
        zmq_setsockopt(io->sock[c], ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(io->sock[c]);
    }
    /* Waits for queued replies (up to the linger) and stops the heartbeat thread. */
    zmq_ctx_term(io->ctx);
    klog(LOG_LVL_INFO, "kernel shut down", NULL);
    _exit(0);
}

static void on_exit_timer(loop_t *loop, loop_watch_t *w, void *arg) {
    finish(arg);
}

static void do_shutdown(kio_t *io, jwire_channel_t ch, jwire_msg_t *msg) {
    bool restart = json_is_true(json_object_get(msg->content, "restart"));
    if (!io->shutting_down) {
        reply_direct(io, ch, msg, "shutdown_reply", kmsg_shutdown_reply(restart));
        /* ipykernel also broadcasts it, for other clients of the kernel. */
        io_send(io, JWIRE_IOPUB, "shutdown_reply", msg->header, NULL,
                kmsg_shutdown_reply(restart), NULL);
        io->shutting_down = true;
        klog(LOG_LVL_INFO, "shutdown requested", "{s:b}", "restart", restart);
        kreq_t *r = calloc(1, sizeof *r);
        if (r) {
            r->kind = KREQ_SHUTDOWN;
            if (kq_push(io->sh->req_q, r, 0, false) < 0)
                free(r);
        }
        io->exit_timer = loop_timer_add(io->loop, KIO_EXIT_GRACE_MS, 0, on_exit_timer, io);
        if (!io->exit_timer)
            finish(io);
    }
    jwire_msg_destroy(&msg);
}

/* ---- channels ----------------------------------------------------------------------------- */

static jwire_msg_t *recv_msg(kio_t *io, void *sock, jwire_channel_t ch) {
    jwire_msg_t *m = NULL;
    int r = jwire_msg_recv(sock, io->signer, io->replay, &limits, &m);
    if (r == -EAGAIN)
        return NULL;
    if (r < 0) {
        klog(LOG_LVL_WARN, "rejected message", "{s:s, s:s}", "channel", jwire_channel_name(ch),
             "error", strerror(-r));
        return NULL;
    }
    return m;
}

static void on_shell(loop_t *loop, loop_watch_t *w, void *sock, void *arg);

/* Backpressure: with KIO_MAX_PENDING requests queued, stop reading shell (libzmq queues
 * further ones up to its HWM) until the Python thread catches up. */
static void shell_pause_update(kio_t *io) {
    bool want_pause = io->py_pending >= KIO_MAX_PENDING;
    if (want_pause && !io->shell_paused) {
        loop_watch_del(io->loop, &io->watch[JWIRE_SHELL]);
        io->shell_paused = true;
    } else if (!want_pause && io->shell_paused) {
        io->watch[JWIRE_SHELL] = loop_zmq_add(io->loop, io->sock[JWIRE_SHELL], on_shell, io);
        if (!io->watch[JWIRE_SHELL])
            die("cannot watch the shell socket");
        io->shell_paused = false;
    }
}

static void handle_shell(kio_t *io, jwire_msg_t *m) {
    const char *type = jwire_msg_type(m);
    if (io->shutting_down) {
        jwire_msg_destroy(&m);
        return;
    }
    if (streq(type, "kernel_info_request") && io->py_pending == 0) {
        reply_direct(io, JWIRE_SHELL, m, "kernel_info_reply", json_incref(io->sh->kernel_info));
        jwire_msg_destroy(&m);
        return;
    }
    if (streq(type, "shutdown_request")) { /* protocol < 5.4 clients send it on shell */
        do_shutdown(io, JWIRE_SHELL, m);
        return;
    }
    kreq_t *r = calloc(1, sizeof *r);
    if (!r) {
        jwire_msg_destroy(&m);
        return;
    }
    *r = (kreq_t){.kind = KREQ_MSG, .msg = m, .seq = ++io->seq};
    atomic_store(&io->sh->last_seq, r->seq);
    if (kq_push(io->sh->req_q, r, 0, false) < 0) {
        kreq_free(r);
        return;
    }
    io->py_pending++;
    shell_pause_update(io);
}

static void on_shell(loop_t *loop, loop_watch_t *w, void *sock, void *arg) {
    kio_t *io = arg;
    jwire_msg_t *m = recv_msg(io, sock, JWIRE_SHELL);
    if (m)
        handle_shell(io, m);
}

static void on_control(loop_t *loop, loop_watch_t *w, void *sock, void *arg) {
    kio_t *io = arg;
    jwire_msg_t *m = recv_msg(io, sock, JWIRE_CONTROL);
    if (!m)
        return;
    const char *type = jwire_msg_type(m);
    if (streq(type, "shutdown_request")) {
        do_shutdown(io, JWIRE_CONTROL, m);
        return;
    }
    if (streq(type, "kernel_info_request")) {
        reply_direct(io, JWIRE_CONTROL, m, "kernel_info_reply", json_incref(io->sh->kernel_info));
    } else if (streq(type, "interrupt_request")) {
        klog(LOG_LVL_INFO, "interrupt requested", NULL);
        interrupt_kernel(io);
        reply_direct(io, JWIRE_CONTROL, m, "interrupt_reply", kmsg_ok());
    } else if (streq(type, "comm_info_request")) {
        reply_direct(io, JWIRE_CONTROL, m, "comm_info_reply", kmsg_comm_info());
    } else {
        klog(LOG_LVL_DEBUG, "unhandled control message", "{s:s}", "msg_type", type);
    }
    jwire_msg_destroy(&m);
}

static void on_stdin(loop_t *loop, loop_watch_t *w, void *sock, void *arg) {
    kio_t *io = arg;
    jwire_msg_t *m = recv_msg(io, sock, JWIRE_STDIN);
    if (!m)
        return;
    if (streq(jwire_msg_type(m), "input_reply") && kq_push(io->sh->stdin_q, m, 0, false) == 0)
        return;
    jwire_msg_destroy(&m);
}

/* ---- messages from the Python thread ------------------------------------------------------ */

static void handle_out(kio_t *io, kout_t *it) {
    switch (it->kind) {
    case KOUT_PY_READY:
        io->py_ready = true;
        klog(LOG_LVL_INFO, "python ready", "{s:I}", "start_ms",
             (json_int_t)((now_mono_us() - io->sh->start_us) / 1000));
        break;
    case KOUT_PY_EXITED:
        finish(io);
    case KOUT_MSG:
        io_send(io, it->ch, it->msg_type, it->parent, it->ids, TAKE_PTR(it->content),
                TAKE_PTR(it->metadata));
        if ((it->flags & KOUT_F_REQUEST_DONE) && io->py_pending > 0) {
            io->py_pending--;
            shell_pause_update(io);
        }
        break;
    }
    kout_free(it);
}

static void on_out(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    out_process(arg);
}

/* ---- heartbeat ---------------------------------------------------------------------------- */

static void *hb_main(void *arg) {
    void *sock = arg;
    /* A ROUTER proxied onto itself echoes every ping to its sender (ipykernel's design). It
     * returns only when the context terminates. */
    zmq_proxy(sock, sock, NULL);
    zmq_close(sock);
    if (!atomic_load(&terminating))
        die("heartbeat stopped");
    return NULL;
}

/* ---- start -------------------------------------------------------------------------------- */

static void *zsock_of(kio_t *io, int type, jwire_channel_t ch) {
    void *s = zmq_socket(io->ctx, type);
    if (!s)
        return NULL;
    int zero = 0, one = 1;
    int64_t maxmsg = KIO_MAX_MSG;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (type == ZMQ_ROUTER && ch != JWIRE_HB)
        zmq_setsockopt(s, ZMQ_ROUTER_HANDOVER, &one, sizeof one);
    char ep[PATH_MAX + 32];
    if (jwire_conn_endpoint(&io->conn, ch, ep, sizeof ep) < 0 || zmq_bind(s, ep) < 0) {
        int saved = errno;
        klog(LOG_LVL_ERROR, "bind failed", "{s:s, s:s}", "channel", jwire_channel_name(ch),
             "error", strerror(saved));
        zmq_close(s);
        errno = saved;
        return NULL;
    }
    return s;
}

static int io_setup(kio_t *io) {
    io->ctx = zmq_ctx_new();
    if (!io->ctx)
        return -ENOMEM;
    static const int types[JWIRE_NCHANNELS] = {ZMQ_ROUTER, ZMQ_PUB, ZMQ_ROUTER, ZMQ_ROUTER,
                                               ZMQ_ROUTER};
    for (int c = 0; c < JWIRE_NCHANNELS; c++)
        if (!(io->sock[c] = zsock_of(io, types[c], (jwire_channel_t)c)))
            return -errno ? -errno : -EIO;
    io->loop = loop_new(0);
    io->empty = json_object();
    if (!io->loop || !io->empty)
        return -ENOMEM;
    static const loop_zmq_fn fns[JWIRE_NCHANNELS] = {on_shell, NULL, on_stdin, on_control, NULL};
    for (int c = 0; c < JWIRE_NCHANNELS; c++) {
        if (c == JWIRE_IOPUB || c == JWIRE_HB)
            continue;
        if (!(io->watch[c] = loop_zmq_add(io->loop, io->sock[c], fns[c], io)))
            return -ENOMEM;
    }
    io->out_watch = loop_io_add(io->loop, kq_fd(io->sh->out_q), LOOP_READ, on_out, io);
    if (!io->out_watch)
        return -errno;
    for (int i = 0; i < 2; i++) {
        io->pipe_watch[i] = loop_io_add(io->loop, io->sh->st.pipe_r[i], LOOP_READ, on_pipe, io);
        if (!io->pipe_watch[i])
            return -ENOMEM;
    }
    void *hb = io->sock[JWIRE_HB];
    if (pthread_create(&io->hb_thread, NULL, hb_main, hb) != 0)
        return -EAGAIN;
    return 0;
}

static void *io_main(void *arg) {
    kio_t *io = arg;
    int r = io_setup(io);
    pthread_mutex_lock(&io->mu);
    io->start_result = r < 0 ? r : 1;
    pthread_cond_signal(&io->cv);
    pthread_mutex_unlock(&io->mu);
    if (r < 0)
        return NULL;
    send_status(io, "starting", NULL);
    r = loop_run(io->loop);
    die(r < 0 ? strerror(-r) : "event loop stopped");
}

/* ---- process setup ------------------------------------------------------------------------ */

static int stdio_setup(kshared_t *sh, int pipe_r[2]) {
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nul < 0)
        return -errno;
    if (nul != 0 && dup2(nul, 0) < 0) {
        close(nul);
        return -errno;
    }
    if (nul != 0)
        close(nul);
    for (int i = 0; i < 2; i++) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
            return -errno;
        (void)fcntl(p[0], F_SETPIPE_SZ, KIO_PIPE_SIZE);
        if (fcntl(p[0], F_SETFL, O_NONBLOCK) < 0)
            return -errno;
        pipe_r[i] = p[0];
        sh->out_w[i] = p[1];
        struct stat st;
        if (fstat(p[1], &st) < 0)
            return -errno;
        sh->out_dev[i] = st.st_dev;
        sh->out_ino[i] = st.st_ino;
        /* dup2 leaves the new fd without CLOEXEC: children inherit 1 and 2, not p[1]. */
        if (dup2(p[1], 1 + i) < 0)
            return -errno;
    }
    return 0;
}

int khost_kernel_run(const char *conn_file) {
    static kshared_t sh;
    static kio_t io;
    sh.start_us = now_mono_us();
    sh.main_thread = pthread_self();
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    json_object_seed(0); /* before any thread: jansson seeds its hash lazily otherwise */

    /* Our own log stays on the stderr we were given; fd 2 becomes the user's pipe. */
    log_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
    if (log_fd < 0)
        log_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    sh.log_fd = log_fd;

    int r = jwire_conn_read(conn_file, &io.conn);
    if (r < 0) {
        klog(LOG_LVL_ERROR, "cannot read the connection file", "{s:s}", "error", strerror(-r));
        return r;
    }
    io.signer = jwire_signer_new(io.conn.signature_scheme, io.conn.key, strlen(io.conn.key));
    io.replay = jwire_replay_new(KIO_REPLAY_CAP);
    if (!io.signer || !io.replay) {
        klog(LOG_LVL_ERROR, "bad signature scheme", "{s:s}", "scheme", io.conn.signature_scheme);
        return -EINVAL;
    }
    /* The key is not needed in this form any more. */
    explicit_bzero(io.conn.key, sizeof io.conn.key);

    uuid4(sh.session);
    snprintf(io.msgid_prefix, sizeof io.msgid_prefix, "%.8s_%d_", sh.session, (int)getpid());
    sh.req_q = kq_new(KQ_REQ_CAP, 0);
    sh.stdin_q = kq_new(KQ_STDIN_CAP, 0);
    sh.out_q = kq_new(KQ_OUT_CAP, KQ_OUT_BYTES);
    if (!sh.req_q || !sh.stdin_q || !sh.out_q)
        return -ENOMEM;
    sh.kernel_info = kmsg_kernel_info(kpy_version(), KHOST_VERSION);
    if (!sh.kernel_info)
        return -ENOMEM;

    pthread_mutex_init(&sh.st.mu, NULL);
    sh.st.buf[0] = kstream_new(KIO_STREAM_CAP);
    sh.st.buf[1] = kstream_new(KIO_STREAM_CAP);
    if (!sh.st.buf[0] || !sh.st.buf[1])
        return -ENOMEM;
    if ((r = stdio_setup(&sh, sh.st.pipe_r)) < 0) {
        klog(LOG_LVL_ERROR, "stdio setup failed", "{s:s}", "error", strerror(-r));
        return r;
    }

    /* The I/O and heartbeat threads (and libzmq's own) take no signals: SIGINT must reach
     * the Python thread, which is this one. */
    io.sh = &sh;
    pthread_mutex_init(&io.mu, NULL);
    pthread_cond_init(&io.cv, NULL);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid;
    r = pthread_create(&tid, NULL, io_main, &io);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0)
        return -r;
    pthread_mutex_lock(&io.mu);
    while (io.start_result == 0)
        pthread_cond_wait(&io.cv, &io.mu);
    r = io.start_result;
    pthread_mutex_unlock(&io.mu);
    if (r < 0)
        return r;
    klog(LOG_LVL_DEBUG, "sockets bound", "{s:I}", "start_ms",
         (json_int_t)((now_mono_us() - sh.start_us) / 1000));

    r = kpy_run(&sh);
    klog(LOG_LVL_ERROR, "python failed to start", "{s:s}", "error", strerror(-r));
    _exit(71);
}
