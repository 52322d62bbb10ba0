/* The native kernel's process and its sockets (see kernel.h, kernel_int.h).
 *
 * Process setup: fd 0 is /dev/null; fds 1 and 2 are pipes whose read ends belong to the
 * kernel, so output of Python code, of C extensions and of every child process reaches iopub
 * as `stream` messages while the cell runs. The kernel host's own log goes to the stderr it
 * was started with (saved before the swap). Heartbeat is a ROUTER echoed by zmq_proxy() in a
 * thread of its own (ipykernel's design): it never waits for anything else.
 *
 * Who serves the shell, control, stdin and iopub sockets: on a small VM, waking a sleeping
 * thread costs ~30 us of CPU (an eventfd ping-pong between two threads measures 64 us per
 * round trip here), more than everything else a trivial execute_request costs the kernel
 * host. So the sockets have an owner, `owner`:
 *   - PY: the Python thread, while it is idle (it sleeps in poll() on the sockets, the pipes
 *     and out_q) and during the first KIO_TAKEOVER_US (5 ms) of a request. A request that ends
 *     within that (a trivial execute) is read, run and answered by the Python thread alone:
 *     the only other thread that wakes is libzmq's own;
 *   - IO: the I/O thread, from the moment a request has run for KIO_TAKEOVER_US (its timerfd
 *     fires; the Python thread armed it and released the sockets before running user code),
 *     or needs stdin; and at start, until Python is ready. Then control (interrupt,
 *     shutdown, kernel_info), stream output from the pipes and display messages flow while
 *     user code runs, exactly as with a dedicated I/O thread; when the Python thread has
 *     nothing left in flight, the I/O thread hands the sockets back.
 * sock_mu serializes every use of a socket between the two; neither holds it while it
 * sleeps, and the Python thread never holds it while user code runs (it is released before
 * the cell starts), so control never waits for the GIL. Messages built by the Python side
 * always go through out_q (kout_t); whoever owns the sockets sends them.
 *
 * Any failure of the I/O thread's loop or of the heartbeat thread ends the process: a
 * kernel that cannot serve must die where the gateway sees it, never hang. */
#include "kernel.h"
#include "kernel_int.h"
#include "kjson.h"
#include "kmsg.h"
#include "kstream.h"

#include "log.h"
#include "loop.h"
#include "util.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <zmq.h>

#define KIO_TAKEOVER_US   5000                        /* a request runs this long alone */
#define KIO_FLUSH_MS      5u                          /* stream coalescing window (IO owner) */
#define KIO_STREAM_CAP    ((size_t)64 * 1024)         /* bytes per stream message at most */
#define KIO_PIPE_SIZE     (256 * 1024)                /* kernel pipe buffer per stream */
#define KIO_DRAIN_MAX     ((size_t)1024 * 1024)       /* read per drain: floods can't livelock */
#define KIO_MAX_MSG       ((int64_t)64 * 1024 * 1024) /* largest request accepted */
#define KIO_REPLAY_CAP    16384u
#define KIO_MAX_PENDING   1024u /* shell requests queued before we stop reading shell */
#define KIO_MAX_REJECTED  64    /* invalid messages skipped per receive */
#define KIO_EXIT_GRACE_MS 1500  /* shutdown: atexit handlers get this long */
#define KIO_LINGER_MS     1000
#define KIO_GAP_US        2000 /* between a request's last output, its reply and its idle */
#define KQ_REQ_CAP        (KIO_MAX_PENDING + 16)
#define KQ_STDIN_CAP      16u
#define KQ_OUT_CAP        1024u
#define KQ_OUT_BYTES      ((size_t)16 * 1024 * 1024)
#define KIO_IOPUB_HWM     256 /* iopub messages libzmq holds per subscriber (SNDHWM) */
#define KIO_IOPUB_RETRY   50u /* ms: blocked iopub is retried this often anyway */
#define KIO_ENC_KEEP      ((size_t)256 * 1024) /* the encode buffer kept between messages */

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
    json_t *line =
        json_pack("{s:s, s:s, s:s, s:s}", "ts", ts, "level",
                  names[level < 0 || level > 3 ? 1 : level], "module", "kernel", "msg", msg);
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
    *it = (kout_t){.kind = kind,
                   .flags = flags,
                   .ch = ch,
                   .msg_type = msg_type,
                   .parent = json_incref(parent),
                   .content = content,
                   .metadata = metadata};
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
    zmsg_destroy(&it->buffers);
    free(it);
}

void kreq_free(void *item) {
    kreq_t *r = item;
    if (!r)
        return;
    jwire_msg_destroy(&r->msg);
    free(r);
}

/* ---- state --------------------------------------------------------------------------------- */

enum { OWNER_IO = 0, OWNER_PY = 1 };

typedef struct {
    kshared_t *sh;
    jwire_conn_t conn;
    jwire_signer_t *signer;
    jwire_replay_t *replay;
    void *ctx;
    void *sock[JWIRE_NCHANNELS]; /* the heartbeat socket belongs to hb_thread once started */
    int sock_fd[JWIRE_NCHANNELS];
    pthread_t hb_thread;
    pthread_mutex_t sock_mu; /* every use of a socket (and of the fields below it) */
    atomic_int owner;
    atomic_bool in_request; /* the Python thread is serving a request */
    atomic_bool need_io;    /* the Python thread asks the I/O thread to take over (stdin) */
    atomic_uint py_pending; /* requests read and not yet answered (their idle not sent) */
    atomic_bool py_ready;
    bool shutting_down;
    bool iopub_blocked; /* a subscriber's queue is full: out_q waits (see iopub_block) */
    bool rejects_left;  /* recv_msg stopped at its bound of invalid messages (sock_mu) */
    uint64_t msg_count;
    char msgid_prefix[64];
    json_t *empty;       /* {} for messages without metadata or parent */
    kjbuf_t enc;         /* the frames of the message being sent */
    json_t *parent_key;  /* the parent whose text parent_text holds (a reference) */
    kjbuf_t parent_text; /* see encode_parent */
    uint64_t date_secs;  /* the second date_prefix holds */
    char date_prefix[32];
    /* I/O thread only */
    loop_t *loop;
    loop_watch_t *watch[JWIRE_NCHANNELS];
    loop_watch_t *out_watch, *pipe_watch[2], *flush_timer;
    loop_watch_t *takeover_watch, *exit_watch;
    int takeover_fd, exit_fd;
    bool pipe_paused[2];
    bool shell_paused;
    loop_watch_t *iopub_watch, *iopub_timer; /* while iopub_blocked, owner IO */
    uint64_t last_flush_us;
    loop_watch_t *gap_watch;
    int gap_fd;
    uint64_t gap_until_us;
    jwire_channel_t last_ch; /* of the previous message sent in a gapped batch */
    /* start handshake with the main thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int start_result; /* 1 = running, < 0 = failed */
} kio_t;

static kio_t io_state;
static atomic_bool terminating;

static _Noreturn void die(const char *why) {
    klog(LOG_LVL_ERROR, "kernel host fatal error, exiting", "{s:s}", "error", why);
    _exit(70);
}

static void timer_set(int fd, long usec) {
    struct itimerspec its = {
        .it_value = {.tv_sec = usec / 1000000, .tv_nsec = usec % 1000000 * 1000}};
    (void)timerfd_settime(fd, 0, &its, NULL);
}

/* ---- sending (sock_mu held) ---------------------------------------------------------------- */

#define KJBUF_LIT(b, lit) kjbuf_append((b), (lit), sizeof(lit) - 1)

/* ISO 8601 of now, as jwire_now_iso8601() writes it; the date and time up to the second are
 * formatted once per second (sock_mu held). */
static void io_now_iso8601(kio_t *io, char ret[32]) {
    uint64_t us = now_wall_us();
    uint64_t secs = us / 1000000u;
    if (secs != io->date_secs || !io->date_prefix[0]) {
        time_t t = (time_t)secs;
        struct tm tm;
        gmtime_r(&t, &tm);
        if (strftime(io->date_prefix, sizeof io->date_prefix, "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
            jwire_now_iso8601(ret);
            io->date_prefix[0] = '\0';
            return;
        }
        io->date_secs = secs;
    }
    size_t n = strlen(io->date_prefix);
    memcpy(ret, io->date_prefix, n);
    unsigned frac = (unsigned)(us % 1000000u);
    ret[n++] = '.';
    for (int i = 5; i >= 0; i--, frac /= 10)
        ret[n + (size_t)i] = (char)('0' + frac % 10);
    n += 6;
    ret[n++] = 'Z';
    ret[n] = '\0';
}

/* The header frame: {msg_id, session, username, date, msg_type, version}, the text
 * jwire_msg_send() would serialize from json_pack of those fields. */
static int encode_header(kio_t *io, kjbuf_t *b, const char *msg_type) {
    char id[96], date[32];
    snprintf(id, sizeof id, "%s%llu", io->msgid_prefix, (unsigned long long)io->msg_count + 1);
    io_now_iso8601(io, date);
    int r;
    if ((r = KJBUF_LIT(b, "{\"msg_id\":")) < 0 ||
        (r = kjson_append_string(b, id, strlen(id))) < 0 ||
        (r = KJBUF_LIT(b, ",\"session\":")) < 0 ||
        (r = kjson_append_string(b, io->sh->session, strlen(io->sh->session))) < 0 ||
        (r = KJBUF_LIT(b, ",\"username\":")) < 0 ||
        (r = kjson_append_string(b, KMSG_USERNAME, strlen(KMSG_USERNAME))) < 0 ||
        (r = KJBUF_LIT(b, ",\"date\":")) < 0 ||
        (r = kjson_append_string(b, date, strlen(date))) < 0 ||
        (r = KJBUF_LIT(b, ",\"msg_type\":")) < 0 ||
        (r = kjson_append_string(b, msg_type, strlen(msg_type))) < 0 ||
        (r = KJBUF_LIT(b, ",\"version\":")) < 0 ||
        (r = kjson_append_string(b, JWIRE_PROTOCOL_VERSION, strlen(JWIRE_PROTOCOL_VERSION))) < 0)
        return r;
    return KJBUF_LIT(b, "}");
}

/* The parent_header frame. Every message of a request has the same parent (the request's
 * header, never modified once received): its text is kept, with a reference that keeps the
 * address from being reused by another header while it is the key. */
static int encode_parent(kio_t *io, kjbuf_t *b, json_t *parent) {
    if (parent != io->parent_key) {
        io->parent_text.len = 0;
        int r = kjson_append_object(&io->parent_text, parent);
        json_decref(io->parent_key);
        io->parent_key = r < 0 ? NULL : json_incref(parent);
        if (r < 0)
            return r;
    }
    return kjbuf_append(b, io->parent_text.data, io->parent_text.len);
}

/* Sends one message; everything borrowed (content, metadata NULL: {}). -EAGAIN on iopub:
 * a subscriber's queue is full (ZMQ_XPUB_NODROP, send timeout 0) and nothing was sent.
 * The four JSON frames are encoded straight into one reusable buffer (kjson.h: the same
 * bytes json_dumps would give) and signed and sent by jwire_send_frames(). */
static int io_send_msg(kio_t *io, jwire_channel_t ch, const char *msg_type, json_t *parent,
                       zmsg_t *ids, json_t *content, json_t *metadata, zmsg_t *buffers) {
    kjbuf_t *b = &io->enc;
    size_t off[5];
    b->len = 0;
    off[0] = 0;
    int r = encode_header(io, b, msg_type);
    off[1] = b->len;
    if (r >= 0)
        r = encode_parent(io, b, parent ? parent : io->empty);
    off[2] = b->len;
    if (r >= 0)
        r = kjson_append_object(b, metadata ? metadata : io->empty);
    off[3] = b->len;
    if (r >= 0)
        r = kjson_append_object(b, content ? content : io->empty);
    off[4] = b->len;
    if (r >= 0) {
        const void *const parts[4] = {b->data + off[0], b->data + off[1], b->data + off[2],
                                      b->data + off[3]};
        const size_t lens[4] = {off[1] - off[0], off[2] - off[1], off[3] - off[2], off[4] - off[3]};
        r = jwire_send_frames(io->sock[ch], io->signer, ids, parts, lens, buffers);
    }
    /* A large message's buffer is not kept for the life of the kernel. */
    if (b->cap > KIO_ENC_KEEP)
        kjbuf_free(b);
    if (r == 0)
        io->msg_count++;
    /* A send can swallow the ZMQ_FD edge that announced input: the I/O thread's loop
     * re-checks; the Python thread receives on every socket until none has a message before
     * it sleeps. */
    if (io->watch[ch] && atomic_load(&io->owner) == OWNER_IO)
        loop_zmq_kick(io->loop, io->watch[ch]);
    if (r < 0 && r != -EAGAIN)
        klog(LOG_LVL_WARN, "send failed", "{s:s, s:s, s:s}", "channel", jwire_channel_name(ch),
             "msg_type", msg_type, "error", strerror(-r));
    return r;
}

static void iopub_block(kio_t *io);

/* Sends a message the kernel host makes itself (content and metadata stolen). One for iopub
 * goes through out_q when iopub is blocked (or turns out to be): never lost, never ahead of
 * what is waiting there. */
static void io_send(kio_t *io, jwire_channel_t ch, const char *msg_type, json_t *parent,
                    zmsg_t *ids, json_t *content, json_t *metadata) {
    if (ch == JWIRE_IOPUB &&
        (io->iopub_blocked ||
         io_send_msg(io, ch, msg_type, parent, ids, content, metadata, NULL) == -EAGAIN)) {
        kout_t *it = kout_new(KOUT_MSG, ch, msg_type, parent, NULL, content, metadata, 0);
        if (it)
            kq_push_force(io->sh->out_q, it, 256);
        iopub_block(io);
        return;
    }
    if (ch != JWIRE_IOPUB)
        (void)io_send_msg(io, ch, msg_type, parent, ids, content, metadata, NULL);
    json_decref(content);
    json_decref(metadata);
}

/* ---- output streams ------------------------------------------------------------------------ */

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
    /* One poll() for both pipes: they are usually empty, and a syscall saved per message
     * adds up over the six messages of a request. */
    struct pollfd p[2] = {{.fd = st->pipe_r[0], .events = POLLIN},
                          {.fd = st->pipe_r[1], .events = POLLIN}};
    bool ready[2] = {true, true};
    if (poll(p, 2, 0) >= 0)
        for (int i = 0; i < 2; i++)
            ready[i] = p[i].revents != 0;
    for (int i = 0; i < 2; i++) {
        size_t total = 0;
        while (ready[i] && total < max) {
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
    /* A request's last output goes before its idle whole: a partial UTF-8 sequence left at
     * its end (a cut-off write) shows as U+FFFD in this cell, not in the next one's. */
    kstreams_drain_locked(sh, KIO_DRAIN_MAX, it->flags & KOUT_F_REQUEST_DONE);
    if (it->flags & KOUT_F_STREAM_PARENT) {
        json_decref(sh->st.parent);
        sh->st.parent = json_incref(it->parent);
    }
    kq_push_force(sh->out_q, it, bytes);
    pthread_mutex_unlock(&sh->st.mu);
}

static _Noreturn void finish(kio_t *io);
static void shell_pause_update(kio_t *io);

/* One item from out_q (sock_mu held): 0, or -EAGAIN when iopub is full (the item is kept). */
static int handle_out(kio_t *io, kout_t *it) {
    switch (it->kind) {
    case KOUT_PY_READY:
        atomic_store(&io->py_ready, true);
        klog(LOG_LVL_INFO, "python ready", "{s:I}", "start_ms",
             (json_int_t)((now_mono_us() - io->sh->start_us) / 1000));
        break;
    case KOUT_MSG:
        if (io_send_msg(io, it->ch, it->msg_type, it->parent, it->ids, it->content, it->metadata,
                        it->buffers) == -EAGAIN &&
            it->ch == JWIRE_IOPUB)
            return -EAGAIN;
        if (it->flags & KOUT_F_REQUEST_DONE) {
            unsigned p = atomic_load(&io->py_pending);
            while (p > 0 && !atomic_compare_exchange_weak(&io->py_pending, &p, p - 1))
                ;
            if (atomic_load(&io->owner) == OWNER_IO)
                shell_pause_update(io);
        }
        break;
    }
    kout_free(it);
    return 0;
}

/* Shell and iopub are two sockets: nothing orders a reply against the status and output
 * around it once they are on the wire, and a gateway or frontend may relay them as they
 * come. ipykernel's messages arrive as output, reply, idle because it is slow; a fast kernel
 * sending all three at once lets libzmq write the idle (queued on iopub behind the output)
 * before the reply. On the I/O thread, i.e. for requests that ran longer than
 * KIO_TAKEOVER_US, a gap of KIO_GAP_US before a reply that follows output, and before an
 * idle that follows its reply, gives clients that order in practice. A short request (the
 * Python thread sends its messages itself) gets no gap: its client waits for both anyway,
 * as the protocol says, and the gateway's /execute does. */
static bool needs_gap(kio_t *io, const kout_t *it) {
    if (it->kind != KOUT_MSG)
        return false;
    if (it->ch == JWIRE_SHELL && io->last_ch == JWIRE_IOPUB)
        return true;
    return (it->flags & KOUT_F_REQUEST_DONE) && io->last_ch == JWIRE_SHELL;
}

/* ---- iopub back-pressure -------------------------------------------------------------------
 *
 * iopub is a PUB with ZMQ_XPUB_NODROP, a bounded SNDHWM and a send timeout of 0: when a
 * subscriber (the gateway, which reads at its client's pace) has KIO_IOPUB_HWM messages
 * queued, a send fails with EAGAIN instead of dropping (with no subscriber at all, messages
 * go nowhere, as before). The message stays at the head of out_q and iopub is *blocked*:
 *   - the I/O thread owns the sockets (the Python thread asks it to take over) and waits
 *     for libzmq's ZMQ_FD (the mailbox that carries the reader's progress) or a retry timer,
 *     with sock_mu released: heartbeat, control and stdin are served meanwhile;
 *   - the pipes behind fds 1 and 2 are no longer read, so they fill and user code's writes
 *     block (the Python thread waits in write(), where SIGINT interrupts it);
 *   - the Python thread's display messages wait for room in the bounded out_q (interruptibly,
 *     pyshell.c). So memory stays bounded and user code runs at the reader's pace.
 * A PUB never reports POLLOUT truthfully (it is always "writable"), hence ZMQ_FD and a retry.
 * A subscriber that never reads keeps the cell blocked: an interrupt ends it (its last
 * messages wait for the reader), as does the gateway's timeout. */

static void pipes_update(kio_t *io);
static void on_iopub_fd(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg);
static void on_iopub_timer(loop_t *loop, loop_watch_t *w, void *arg);

/* I/O thread: wait for iopub while it is blocked (sock_mu held, owner IO). */
static void iopub_watch_start(kio_t *io) {
    if (!io->iopub_watch)
        io->iopub_watch =
            loop_io_add(io->loop, io->sock_fd[JWIRE_IOPUB], LOOP_READ, on_iopub_fd, io);
    if (!io->iopub_timer)
        io->iopub_timer =
            loop_timer_add(io->loop, KIO_IOPUB_RETRY, KIO_IOPUB_RETRY, on_iopub_timer, io);
    if (!io->iopub_watch && !io->iopub_timer)
        die("cannot watch iopub");
    pipes_update(io);
}

static void iopub_watch_stop(kio_t *io) {
    loop_watch_del(io->loop, &io->iopub_watch);
    loop_watch_del(io->loop, &io->iopub_timer);
}

/* A send on iopub would block (sock_mu held). */
static void iopub_block(kio_t *io) {
    bool was = io->iopub_blocked;
    io->iopub_blocked = true;
    if (atomic_load(&io->owner) == OWNER_IO) {
        if (!was)
            iopub_watch_start(io);
    } else {
        /* The Python thread must not wait holding the sockets: the I/O thread takes them
         * (asked again each time: kio_py_request_* re-arm the takeover timer). */
        atomic_store(&io->need_io, true);
        timer_set(io->takeover_fd, 1);
    }
}

static void iopub_unblock(kio_t *io) {
    if (!io->iopub_blocked)
        return;
    io->iopub_blocked = false;
    if (atomic_load(&io->owner) == OWNER_IO) {
        iopub_watch_stop(io);
        pipes_update(io);
    }
}

/* Sends what out_q holds (sock_mu held); at most `max` items, true if some are left to send
 * now. gaps: the I/O thread's ordering gaps (above). */
static bool out_send(kio_t *io, int max, bool gaps) {
    kq_ack(io->sh->out_q);
    if (gaps && now_mono_us() < io->gap_until_us)
        return false; /* the gap timer sends the rest */
    bool was_blocked = io->iopub_blocked;
    for (int n = 0; n < max; n++) {
        kout_t *it = kq_pop(io->sh->out_q);
        if (!it) {
            io->last_ch = JWIRE_HB; /* none */
            if (was_blocked)
                iopub_unblock(io); /* what blocked went (or was a direct send) */
            return false;
        }
        if (gaps && needs_gap(io, it)) {
            kq_unpop(io->sh->out_q, it, 0);
            kq_ack(io->sh->out_q);
            io->gap_until_us = now_mono_us() + KIO_GAP_US;
            io->last_ch = JWIRE_HB;
            timer_set(io->gap_fd, KIO_GAP_US);
            return false;
        }
        int ch = it->kind == KOUT_MSG ? (int)it->ch : -1;
        if (handle_out(io, it) == -EAGAIN) {
            kq_unpop(io->sh->out_q, it, 0);
            kq_ack(io->sh->out_q);
            iopub_block(io);
            return false;
        }
        if (ch >= 0)
            io->last_ch = (jwire_channel_t)ch;
        if (was_blocked && ch == JWIRE_IOPUB) {
            iopub_unblock(io);
            was_blocked = false;
        }
    }
    return true;
}

/* Pipes, then out_q: everything written and queued so far goes out (sock_mu held). */
static void flush_all(kio_t *io, bool force) {
    /* While iopub is blocked the pipes stay full: that is what holds user code back. */
    if (!io->iopub_blocked || force) {
        pthread_mutex_lock(&io->sh->st.mu);
        kstreams_drain_locked(io->sh, KIO_DRAIN_MAX, force);
        pthread_mutex_unlock(&io->sh->st.mu);
    }
    io->last_flush_us = now_mono_us();
    while (out_send(io, 1024, false))
        ;
}

/* ---- replies the kernel host makes without Python (sock_mu held) ---------------------------- */

static void send_status(kio_t *io, const char *state, json_t *parent) {
    io_send(io, JWIRE_IOPUB, "status", parent, NULL, kmsg_status(state), NULL);
}

/* A reply to msg on ch, with busy/idle around it when no request is in flight (a status
 * published while a cell runs would tell clients the kernel is idle). */
static void reply_direct(kio_t *io, jwire_channel_t ch, jwire_msg_t *msg, const char *reply_type,
                         json_t *content) {
    bool status = atomic_load(&io->py_pending) == 0;
    if (status)
        send_status(io, "busy", msg->header);
    io_send(io, ch, reply_type, msg->header, msg->ids, content, NULL);
    if (status)
        send_status(io, "idle", msg->header);
}

static void interrupt_kernel(kio_t *io) {
    /* Like ipykernel: the whole process group when we lead it (so `!cmd` children stop
     * too), and the Python thread by name, so its blocking call returns EINTR even if a
     * process-directed signal would land in a user thread. The Python thread gets exactly
     * one: a second one arriving after the first was raised (it sleeps in a syscall, e.g. a
     * write blocked by iopub back-pressure, and wakes at once) would interrupt IPython's own
     * handling of the first and lose the cell's error message. So the other processes of
     * the group get theirs one by one. */
    pid_t me = getpid();
    if (getpgid(0) == me) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            char *end;
            long pid = strtol(e->d_name, &end, 10);
            if (*end == '\0' && pid > 0 && pid != me && getpgid((pid_t)pid) == me)
                (void)kill((pid_t)pid, SIGINT);
        }
        if (d)
            closedir(d);
    }
    (void)pthread_kill(io->sh->main_thread, SIGINT);
}

/* Ends the process after sending what is queued (sock_mu held). */
static _Noreturn void finish(kio_t *io) {
    flush_all(io, true);
    /* A reader that is behind gets up to the linger time to take the rest. */
    uint64_t until = now_mono_us() + KIO_LINGER_MS * 1000ull;
    while (kq_len(io->sh->out_q) > 0 && now_mono_us() < until) {
        struct pollfd p = {.fd = io->sock_fd[JWIRE_IOPUB], .events = POLLIN};
        (void)poll(&p, 1, 10);
        int ev = 0;
        size_t len = sizeof ev;
        (void)zmq_getsockopt(io->sock[JWIRE_IOPUB], ZMQ_EVENTS, &ev, &len);
        flush_all(io, true);
    }
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

static void queue_request(kio_t *io, kreq_t *r) {
    if (kq_push(io->sh->req_q, r, 0, false) < 0) {
        kreq_free(r);
        return;
    }
    atomic_fetch_add(&io->py_pending, 1);
    kq_kick(io->sh->req_q); /* wakes the Python thread if it sleeps */
}

static void do_shutdown(kio_t *io, jwire_channel_t ch, jwire_msg_t *msg) {
    bool restart = json_is_true(json_object_get(msg->content, "restart"));
    if (!io->shutting_down) {
        reply_direct(io, ch, msg, "shutdown_reply", kmsg_shutdown_reply(restart));
        /* ipykernel also broadcasts it, for other clients of the kernel. */
        io_send(io, JWIRE_IOPUB, "shutdown_reply", msg->header, NULL, kmsg_shutdown_reply(restart),
                NULL);
        flush_all(io, false);
        io->shutting_down = true;
        klog(LOG_LVL_INFO, "shutdown requested", "{s:b}", "restart", restart);
        /* The Python thread runs atexit handlers when it gets there, then exits; if a cell
         * keeps it busy, the exit timer ends the process anyway. */
        kreq_t *r = calloc(1, sizeof *r);
        if (r) {
            r->kind = KREQ_SHUTDOWN;
            if (kq_push(io->sh->req_q, r, 0, false) < 0)
                free(r);
            kq_kick(io->sh->req_q);
        }
        timer_set(io->exit_fd, KIO_EXIT_GRACE_MS * 1000L);
    }
    jwire_msg_destroy(&msg);
}

/* ---- reading requests (sock_mu held; either owner) ------------------------------------------ */

/* The next valid message, or NULL when none is waiting (the receive that found none re-arms
 * the socket's ZMQ_FD edge). A rejected message is logged and skipped, so a caller that
 * stops at NULL never leaves a valid message behind it unannounced. The bound keeps a flood
 * of bad ones from holding the thread; io->rejects_left tells the Python thread's loop to
 * look again (the I/O thread's loop looks at ZMQ_EVENTS before it sleeps anyway). */
static jwire_msg_t *recv_msg(kio_t *io, jwire_channel_t ch) {
    for (int rejected = 0; rejected < KIO_MAX_REJECTED; rejected++) {
        jwire_msg_t *m = NULL;
        int r = jwire_msg_recv(io->sock[ch], io->signer, io->replay, &limits, &m);
        if (r == 0)
            return m;
        if (r == -EAGAIN)
            return NULL;
        if (r == -EINTR) { /* a signal (SIGINT between requests) came first: nothing taken */
            rejected--;
            continue;
        }
        klog(LOG_LVL_WARN, "rejected message", "{s:s, s:s}", "channel", jwire_channel_name(ch),
             "error", strerror(-r));
    }
    io->rejects_left = true;
    return NULL;
}

static void handle_shell(kio_t *io, jwire_msg_t *m) {
    const char *type = jwire_msg_type(m);
    if (io->shutting_down) {
        jwire_msg_destroy(&m);
        return;
    }
    if (streq(type, "kernel_info_request") && atomic_load(&io->py_pending) == 0) {
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
    *r = (kreq_t){.kind = KREQ_MSG,
                  .ch = JWIRE_SHELL,
                  .msg = m,
                  .seq = atomic_fetch_add(&io->sh->last_seq, 1) + 1};
    queue_request(io, r);
}

static void handle_control(kio_t *io, jwire_msg_t *m) {
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
        /* The comms live in Python: answered there, in turn, on control. */
        kreq_t *r = calloc(1, sizeof *r);
        if (r) {
            *r = (kreq_t){.kind = KREQ_MSG, .ch = JWIRE_CONTROL, .msg = TAKE_PTR(m)};
            queue_request(io, r);
        }
    } else {
        klog(LOG_LVL_DEBUG, "unhandled control message", "{s:s}", "msg_type", type);
    }
    jwire_msg_destroy(&m);
}

static void handle_stdin(kio_t *io, jwire_msg_t *m) {
    if (streq(jwire_msg_type(m), "input_reply") && kq_push(io->sh->stdin_q, m, 0, false) == 0)
        return;
    jwire_msg_destroy(&m);
}

/* ---- the I/O thread ------------------------------------------------------------------------ */

#define IO_LOCKED(io, body)                                                                        \
    do {                                                                                           \
        pthread_mutex_lock(&(io)->sock_mu);                                                        \
        if (atomic_load(&(io)->owner) == OWNER_IO) {                                               \
            body;                                                                                  \
        }                                                                                          \
        pthread_mutex_unlock(&(io)->sock_mu);                                                      \
    } while (0)

static void on_shell(loop_t *loop, loop_watch_t *w, void *sock, void *arg);

/* Backpressure: with KIO_MAX_PENDING requests queued, stop reading shell (libzmq queues
 * further ones up to its HWM) until the Python thread catches up. */
static void shell_pause_update(kio_t *io) {
    bool want_pause = atomic_load(&io->py_pending) >= KIO_MAX_PENDING;
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

static void pipes_update(kio_t *io) {
    for (int i = 0; i < 2; i++)
        if (io->pipe_watch[i])
            loop_io_mod(io->loop, io->pipe_watch[i],
                        io->pipe_paused[i] || io->iopub_blocked ? 0 : LOOP_READ);
}

static void io_hand_back(kio_t *io);

static void on_shell(loop_t *loop, loop_watch_t *w, void *sock, void *arg) {
    kio_t *io = arg;
    IO_LOCKED(io, {
        jwire_msg_t *m = recv_msg(io, JWIRE_SHELL);
        if (m)
            handle_shell(io, m);
        shell_pause_update(io);
    });
}

static void on_control(loop_t *loop, loop_watch_t *w, void *sock, void *arg) {
    kio_t *io = arg;
    IO_LOCKED(io, {
        jwire_msg_t *m = recv_msg(io, JWIRE_CONTROL);
        if (m)
            handle_control(io, m);
    });
}

static void on_stdin(loop_t *loop, loop_watch_t *w, void *sock, void *arg) {
    kio_t *io = arg;
    IO_LOCKED(io, {
        jwire_msg_t *m = recv_msg(io, JWIRE_STDIN);
        if (m)
            handle_stdin(io, m);
    });
}

static void on_out(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    kio_t *io = arg;
    IO_LOCKED(io, {
        /* Bounded per wakeup so control and heartbeat never wait behind a flood of display
         * messages; the rest gets a kick. */
        if (out_send(io, 256, true))
            kq_kick(io->sh->out_q);
        io_hand_back(io);
    });
}

/* iopub's ZMQ_FD: libzmq has commands for the socket, maybe the reader's progress. */
static void on_iopub_fd(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    kio_t *io = arg;
    IO_LOCKED(io, {
        int ev = 0;
        size_t len = sizeof ev;
        /* Processes the commands (and so resets the fd) before the retry. */
        (void)zmq_getsockopt(io->sock[JWIRE_IOPUB], ZMQ_EVENTS, &ev, &len);
        if (io->iopub_blocked && out_send(io, 256, true))
            kq_kick(io->sh->out_q);
        io_hand_back(io);
    });
}

static void on_iopub_timer(loop_t *loop, loop_watch_t *w, void *arg) {
    on_iopub_fd(loop, w, -1, 0, arg);
}

static void on_flush_timer(loop_t *loop, loop_watch_t *w, void *arg) {
    kio_t *io = arg;
    loop_watch_del(loop, &io->flush_timer);
    io->pipe_paused[0] = io->pipe_paused[1] = false;
    pipes_update(io);
    IO_LOCKED(io, flush_all(io, false));
}

static void on_pipe(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    kio_t *io = arg;
    uint64_t since = now_mono_us() - io->last_flush_us;
    if (since >= KIO_FLUSH_MS * 1000u) {
        IO_LOCKED(io, flush_all(io, false)); /* the first output of a while goes at once */
        return;
    }
    /* More within the window: coalesce. Stop watching until the timer publishes. */
    int i = fd == io->sh->st.pipe_r[0] ? 0 : 1;
    io->pipe_paused[i] = true;
    pipes_update(io);
    if (!io->flush_timer) {
        uint64_t left_ms = (KIO_FLUSH_MS * 1000u - since + 999) / 1000;
        io->flush_timer = loop_timer_add(loop, left_ms ? left_ms : 1, 0, on_flush_timer, io);
        if (!io->flush_timer)
            on_flush_timer(loop, NULL, io);
    }
}

/* Takes the sockets from the Python thread: a request ran past KIO_TAKEOVER_US, or needs
 * stdin. Watches are added here and removed at hand-back, so only the owner polls. */
static void io_take_over(kio_t *io) {
    pthread_mutex_lock(&io->sock_mu);
    bool take = atomic_load(&io->owner) == OWNER_PY &&
                (atomic_load(&io->in_request) || atomic_load(&io->need_io));
    if (take) {
        if (atomic_load(&io->in_request))
            kpy_flusher_kick();
        atomic_store(&io->owner, OWNER_IO);
        atomic_store(&io->need_io, false);
        static const loop_zmq_fn fns[JWIRE_NCHANNELS] = {on_shell, NULL, on_stdin, on_control,
                                                         NULL};
        for (int c = 0; c < JWIRE_NCHANNELS; c++)
            if (fns[c] && !(io->watch[c] = loop_zmq_add(io->loop, io->sock[c], fns[c], io)))
                die("cannot watch a socket");
        io->shell_paused = false;
        io->out_watch = loop_io_add(io->loop, kq_fd(io->sh->out_q), LOOP_READ, on_out, io);
        for (int i = 0; i < 2; i++) {
            io->pipe_paused[i] = false;
            io->pipe_watch[i] = loop_io_add(io->loop, io->sh->st.pipe_r[i], LOOP_READ, on_pipe, io);
        }
        if (!io->out_watch || !io->pipe_watch[0] || !io->pipe_watch[1])
            die("cannot watch the output");
        if (io->iopub_blocked)
            iopub_watch_start(io);
        /* What the request published so far (busy, execute_input, output) goes now. */
        flush_all(io, false);
    }
    pthread_mutex_unlock(&io->sock_mu);
}

/* Gives the sockets back once nothing is in flight (sock_mu held, owner IO). */
static void io_hand_back(kio_t *io) {
    if (!atomic_load(&io->py_ready) || io->shutting_down || atomic_load(&io->in_request) ||
        atomic_load(&io->py_pending) > 0 || kq_len(io->sh->out_q) > 0 || io->iopub_blocked)
        return;
    iopub_watch_stop(io);
    for (int c = 0; c < JWIRE_NCHANNELS; c++)
        loop_watch_del(io->loop, &io->watch[c]);
    loop_watch_del(io->loop, &io->out_watch);
    loop_watch_del(io->loop, &io->pipe_watch[0]);
    loop_watch_del(io->loop, &io->pipe_watch[1]);
    loop_watch_del(io->loop, &io->flush_timer);
    atomic_store(&io->owner, OWNER_PY);
    kq_kick(io->sh->req_q); /* the Python thread sleeps on req_q while it does not own */
}

static void on_gap(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    kio_t *io = arg;
    uint64_t n;
    (void)!read(fd, &n, sizeof n);
    io->gap_until_us = 0;
    on_out(loop, w, fd, events, arg);
}

static void on_takeover(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    uint64_t n;
    (void)!read(fd, &n, sizeof n);
    io_take_over(arg);
}

static void on_exit_timer(loop_t *loop, loop_watch_t *w, int fd, unsigned events, void *arg) {
    kio_t *io = arg;
    pthread_mutex_lock(&io->sock_mu);
    finish(io);
}

/* ---- the Python thread's side (called with the GIL; see kernel_int.h) ----------------------- */

void kio_py_service(kshared_t *sh) {
    kio_t *io = &io_state;
    if (atomic_load(&sh->forked))
        return;
    pthread_mutex_lock(&io->sock_mu);
    if (atomic_load(&io->owner) != OWNER_PY) {
        pthread_mutex_unlock(&io->sock_mu);
        return;
    }
    /* ZMQ_FD is edge-like and a send can consume the edge of input that arrived meanwhile:
     * every send is followed by another receive on each socket, and the caller sleeps only
     * after a pass whose receives all found nothing (each such receive re-arms the edge). */
    for (;;) {
        flush_all(io, false);
        bool any = false;
        jwire_msg_t *m;
        /* Control first (an interrupt or shutdown may be waiting behind requests). */
        while ((m = recv_msg(io, JWIRE_CONTROL))) {
            handle_control(io, m);
            any = true;
        }
        /* No input() waits while we own the sockets: stale replies are dropped. */
        while ((m = recv_msg(io, JWIRE_STDIN))) {
            handle_stdin(io, m);
            any = true;
        }
        /* One request at a time: the rest stays in libzmq, so a flood cannot grow req_q. */
        if (kq_len(sh->req_q) > 0)
            break; /* the caller runs it, and comes back here before it sleeps */
        if ((m = recv_msg(io, JWIRE_SHELL))) {
            handle_shell(io, m);
            any = true;
        }
        if (io->rejects_left) {
            io->rejects_left = false;
            any = true;
        }
        /* Blocked iopub: the I/O thread takes the sockets and sends the rest. */
        if (!any && (kq_len(sh->out_q) == 0 || io->iopub_blocked))
            break;
    }
    pthread_mutex_unlock(&io->sock_mu);
}

void kio_py_pull_shell(kshared_t *sh) {
    kio_t *io = &io_state;
    if (atomic_load(&sh->forked))
        return;
    pthread_mutex_lock(&io->sock_mu);
    jwire_msg_t *m;
    if (atomic_load(&io->owner) == OWNER_PY)
        while (kq_len(sh->req_q) < KIO_MAX_PENDING && (m = recv_msg(io, JWIRE_SHELL)))
            handle_shell(io, m);
    pthread_mutex_unlock(&io->sock_mu);
}

int kio_py_wait_fds(kshared_t *sh, struct pollfd *fds) {
    kio_t *io = &io_state;
    int n = 0;
    if (atomic_load(&sh->forked))
        return 0;
    fds[n++] = (struct pollfd){.fd = kq_fd(sh->req_q), .events = POLLIN};
    if (atomic_load(&io->owner) == OWNER_PY) {
        fds[n++] = (struct pollfd){.fd = io->sock_fd[JWIRE_SHELL], .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = io->sock_fd[JWIRE_CONTROL], .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = io->sock_fd[JWIRE_STDIN], .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = kq_fd(sh->out_q), .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = sh->st.pipe_r[0], .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = sh->st.pipe_r[1], .events = POLLIN};
    }
    return n;
}

void kio_py_request_start(kshared_t *sh) {
    kio_t *io = &io_state;
    if (atomic_load(&sh->forked))
        return;
    atomic_store(&io->in_request, true);
    if (atomic_load(&io->owner) == OWNER_PY)
        timer_set(io->takeover_fd, KIO_TAKEOVER_US);
}

void kio_py_request_end(kshared_t *sh) {
    kio_t *io = &io_state;
    if (atomic_load(&sh->forked))
        return;
    pthread_mutex_lock(&io->sock_mu);
    atomic_store(&io->in_request, false);
    if (atomic_load(&io->owner) == OWNER_PY) {
        timer_set(io->takeover_fd, 0);
        flush_all(io, false);
    } else {
        kq_kick(sh->out_q); /* the I/O thread sends, then hands the sockets back */
    }
    pthread_mutex_unlock(&io->sock_mu);
}

void kio_py_need_io(kshared_t *sh) {
    kio_t *io = &io_state;
    if (atomic_load(&sh->forked))
        return;
    if (atomic_load(&io->owner) == OWNER_IO) {
        kq_kick(sh->out_q);
        return;
    }
    atomic_store(&io->need_io, true);
    timer_set(io->takeover_fd, 1); /* at once */
}

_Noreturn void kio_py_exit(kshared_t *sh) {
    if (atomic_load(&sh->forked))
        _exit(0);
    pthread_mutex_lock(&io_state.sock_mu);
    finish(&io_state);
}

/* ---- heartbeat ----------------------------------------------------------------------------- */

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

/* ---- start --------------------------------------------------------------------------------- */

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
    if (type == ZMQ_PUB) {
        /* Lossless and bounded: a full subscriber makes sends fail at once (EAGAIN), and
         * the kernel waits for it (see iopub_block). */
        int hwm = KIO_IOPUB_HWM;
        zmq_setsockopt(s, ZMQ_XPUB_NODROP, &one, sizeof one);
        zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
        zmq_setsockopt(s, ZMQ_SNDTIMEO, &zero, sizeof zero);
    }
    char ep[PATH_MAX + 32];
    if (jwire_conn_endpoint(&io->conn, ch, ep, sizeof ep) < 0 || zmq_bind(s, ep) < 0) {
        int saved = errno;
        klog(LOG_LVL_ERROR, "bind failed", "{s:s, s:s}", "channel", jwire_channel_name(ch), "error",
             strerror(saved));
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
    /* libzmq's I/O thread wakes for every batch the kernel sends; as SCHED_BATCH it does not
     * preempt the Python thread that is still building the batch (it runs right after, or
     * on the other core). */
    (void)zmq_ctx_set(io->ctx, ZMQ_THREAD_SCHED_POLICY, SCHED_BATCH);
    static const int types[JWIRE_NCHANNELS] = {ZMQ_ROUTER, ZMQ_PUB, ZMQ_ROUTER, ZMQ_ROUTER,
                                               ZMQ_ROUTER};
    for (int c = 0; c < JWIRE_NCHANNELS; c++) {
        if (!(io->sock[c] = zsock_of(io, types[c], (jwire_channel_t)c)))
            return -errno ? -errno : -EIO;
        size_t len = sizeof io->sock_fd[c];
        if (zmq_getsockopt(io->sock[c], ZMQ_FD, &io->sock_fd[c], &len) < 0)
            return -errno;
    }
    io->loop = loop_new(0);
    io->empty = json_object();
    io->takeover_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    io->exit_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    io->gap_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (!io->loop || !io->empty || io->takeover_fd < 0 || io->exit_fd < 0 || io->gap_fd < 0)
        return -ENOMEM;
    io->gap_watch = loop_io_add(io->loop, io->gap_fd, LOOP_READ, on_gap, io);
    if (!io->gap_watch)
        return -errno;
    io->takeover_watch = loop_io_add(io->loop, io->takeover_fd, LOOP_READ, on_takeover, io);
    io->exit_watch = loop_io_add(io->loop, io->exit_fd, LOOP_READ, on_exit_timer, io);
    if (!io->takeover_watch || !io->exit_watch)
        return -errno;
    /* The I/O thread owns the sockets until Python is ready. */
    atomic_store(&io->owner, OWNER_PY);
    atomic_store(&io->need_io, true);
    io_take_over(io);
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
    IO_LOCKED(io, send_status(io, "starting", NULL));
    r = loop_run(io->loop);
    die(r < 0 ? strerror(-r) : "event loop stopped");
}

/* ---- process setup ------------------------------------------------------------------------- */

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
    kio_t *io = &io_state;
    sh.start_us = now_mono_us();
    sh.main_thread = pthread_self();
    sh.conn_file = conn_file;
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    json_object_seed(0); /* before any thread: jansson seeds its hash lazily otherwise */

    /* Our own log stays on the stderr we were given; fd 2 becomes the user's pipe. */
    log_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
    if (log_fd < 0)
        log_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    sh.log_fd = log_fd;

    int r = jwire_conn_read(conn_file, &io->conn);
    if (r < 0) {
        klog(LOG_LVL_ERROR, "cannot read the connection file", "{s:s}", "error", strerror(-r));
        return r;
    }
    io->signer = jwire_signer_new(io->conn.signature_scheme, io->conn.key, strlen(io->conn.key));
    io->replay = jwire_replay_new(KIO_REPLAY_CAP);
    if (!io->signer || !io->replay) {
        klog(LOG_LVL_ERROR, "bad signature scheme", "{s:s}", "scheme", io->conn.signature_scheme);
        return -EINVAL;
    }
    /* The key is not needed in this form any more. */
    explicit_bzero(io->conn.key, sizeof io->conn.key);

    uuid4(sh.session);
    snprintf(io->msgid_prefix, sizeof io->msgid_prefix, "%.8s_%d_", sh.session, (int)getpid());
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
     * the Python thread, which is this one. It stays blocked here until Python has its
     * handler (kpy_run unblocks it): the I/O thread answers kernel_info at once, a client
     * may interrupt right after, and SIGINT's default action would end the kernel. */
    io->sh = &sh;
    pthread_mutex_init(&io->sock_mu, NULL);
    pthread_mutex_init(&io->mu, NULL);
    pthread_cond_init(&io->cv, NULL);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid;
    r = pthread_create(&tid, NULL, io_main, io);
    sigaddset(&old, SIGINT);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0)
        return -r;
    pthread_mutex_lock(&io->mu);
    while (io->start_result == 0)
        pthread_cond_wait(&io->cv, &io->mu);
    r = io->start_result;
    pthread_mutex_unlock(&io->mu);
    if (r < 0)
        return r;
    klog(LOG_LVL_DEBUG, "sockets bound", "{s:I}", "start_ms",
         (json_int_t)((now_mono_us() - sh.start_us) / 1000));

    r = kpy_run(&sh);
    klog(LOG_LVL_ERROR, "python failed to start", "{s:s}", "error", strerror(-r));
    _exit(71);
}
