/* Worker lifecycle: prepare a run directory and connection file, start the kernel through the
 * launcher (off the loop), connect the five channels, wait until the kernel answers
 * kernel_info on shell and its iopub flows, then watch it by pidfd and heartbeat.
 *
 * Hostile-kernel rules applied here: a socket file is opened without following symlinks,
 * checked to be a socket and connected through that very file (relay.c), and reconnection is
 * disabled so a socket swapped later is never followed; every incoming message is
 * size-bounded as a whole before libzmq buffers it (each channel goes through a guarded
 * relay, relay.h), then signed and replay-checked by jwire; a kernel that misses heartbeats
 * or exits is replaced. */
#include "gw.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#define NUDGE_MS         200
#define NUDGE_FIRST_MS   20
#define KERNEL_MAX_FRAMS 256
/* A channel's connection closing first and the process exit following is the usual order
 * when a kernel dies; wait this long for the exit so the reason given is the right one. */
#define CHANNEL_LOST_GRACE_MS 300
/* A kernel's last messages (the reply and idle of a cell that called exit(), a shutdown_reply)
 * can still be on their way through its relays when its exit is seen: they count. */
#define EXIT_DRAIN_MS         100
#define IOPUB_REOPENS_PER_MIN 10 /* beyond this the kernel does it on purpose: it is lost */

static jwire_limits_t kernel_limits(const gw_t *gw) {
    return (jwire_limits_t){.max_bytes = (size_t)gw->cfg.kernel_max_message_mb << 20,
                            .max_frames = KERNEL_MAX_FRAMS};
}

/* Monitors first: a socket's own close must not read as the kernel's channel closing. */
static void close_channel(gw_worker_t *w, int c);

static void close_channels(gw_worker_t *w) {
    for (int c = 0; c < JWIRE_NCHANNELS; c++)
        close_channel(w, c);
    loop_watch_del(w->gw->loop, &w->lost_timer);
    loop_watch_del(w->gw->loop, &w->exit_timer);
}

static void worker_free(gw_worker_t *w) {
    close_channels(w);
    loop_watch_del(w->gw->loop, &w->pid_watch);
    loop_watch_del(w->gw->loop, &w->start_timer);
    loop_watch_del(w->gw->loop, &w->nudge_timer);
    loop_watch_del(w->gw->loop, &w->hb_timer);
    if (w->proc.pidfd >= 0)
        close(w->proc.pidfd);
    jwire_signer_destroy(&w->signer);
    jwire_replay_destroy(&w->replay);
    json_decref(w->kernel_info);
    free(w);
}

/* ---- start ------------------------------------------------------------------------------ */

/* Where a worker's kernel listens, from our configuration alone: tcp, the worker's end of the
 * slot's link and the firewall's ports; ipc, socket files "<dir>/k-<n>". */
static int set_endpoints(const gw_t *gw, uint32_t slot, const char *dir, jwire_conn_t *conn) {
    if (gw->fw.mode == FW_MODE_TCP) {
        /* The kernel binds the worker's end of its veth; the gateway connects from the host
         * end, the only address the worker's firewall lets in. Same ports in every worker. */
        fw_link_addrs_t link;
        int r = fw_pool_addrs(&gw->fw.pool, slot, &link);
        if (r < 0)
            return r;
        snprintf(conn->transport, sizeof conn->transport, "tcp");
        inet_ntop(AF_INET, &link.worker4, conn->ip, sizeof conn->ip);
        for (int c = 0; c < JWIRE_NCHANNELS; c++)
            conn->ports[c] = gw->fw.port_min + c;
        return 0;
    }
    snprintf(conn->transport, sizeof conn->transport, "ipc");
    for (int c = 0; c < JWIRE_NCHANNELS; c++)
        conn->ports[c] = c + 1;
    return xsnprintf(conn->ip, sizeof conn->ip, "%s/k", dir);
}

/* 0 once something listens on addr:port, -ECONNREFUSED if nothing does yet, other -errno if
 * it cannot be known (the worker's link is down or firewalled). A refused connection on a
 * veth is answered in microseconds; timeout_ms bounds the rest. */
static int tcp_listening(const char *addr, int port, int timeout_ms) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        return -EINVAL;
    _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return -errno;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int n = poll(&p, 1, timeout_ms);
    if (n == 0)
        return -ETIMEDOUT;
    if (n < 0)
        return -errno;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return -errno;
    return -err;
}

/* The kernel's socket file at path accepts connections: 0, 1 while it does not yet (no file,
 * or bound but not listening: the file appears at bind(), before listen()), or -errno; -EPERM
 * for anything but a socket there (a symlink, a file: the kernel's uid owns the directory).
 * Connected through the descriptor of what was checked, never by name again, so a file
 * swapped in between cannot point the gateway (root) at another socket of the host. */
static int unix_listening(const char *path) {
    _cleanup_close_ int pfd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (pfd < 0)
        return errno == ENOENT ? 1 : errno == ELOOP ? -EPERM : -errno;
    struct stat st;
    if (fstat(pfd, &st) < 0)
        return -errno;
    if (!S_ISSOCK(st.st_mode))
        return -EPERM;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "/proc/self/fd/%d", pfd);
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 || errno == EAGAIN)
        return 0; /* EAGAIN: listening, its backlog full */
    return errno == ECONNREFUSED ? 1 : -errno;
}

/* Channel c's socket: 0 once it listens, 1 while it does not yet, or -errno. An ipc socket
 * is a file (never a symlink or a file in its place), a TCP one a listener on the worker's
 * address. */
static int probe_socket(const gw_worker_t *w, int c) {
    if (streq(w->conn.transport, "tcp")) {
        int r = tcp_listening(w->conn.ip, w->conn.ports[c], 500);
        return r == -ECONNREFUSED || r == -ETIMEDOUT ? 1 : r;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s-%d", w->conn.ip, w->conn.ports[c]);
    return unix_listening(path);
}

/* Waits until every socket of the kernel listens, it dies (-ECHILD) or timeout_ms passes. */
static int wait_for_sockets(const gw_worker_t *w, uint64_t timeout_ms) {
    uint64_t deadline = now_mono_ms() + timeout_ms;
    /* Sockets found listening are not probed again: each probe is a connection the kernel
     * accepts and drops. */
    unsigned seen = 0;
    for (;;) {
        int missing = 0;
        for (int c = 0; c < JWIRE_NCHANNELS; c++) {
            if (seen & (1u << c))
                continue;
            int r = probe_socket(w, c);
            if (r < 0)
                return r;
            if (r > 0)
                missing++;
            else
                seen |= 1u << c;
        }
        if (missing == 0)
            return 0;
        if (now_mono_ms() > deadline)
            return -ETIMEDOUT;
        /* The kernel binds its sockets within a second of starting; 2 ms polls cost nothing
         * measurable and keep the ready latency tight. The process may also have died. */
        if (w->proc.pidfd >= 0) {
            struct pollfd p = {.fd = w->proc.pidfd, .events = POLLIN};
            if (poll(&p, 1, 2) > 0)
                return -ECHILD;
        } else {
            usleep(2000);
        }
    }
}

static void launch_work(void *arg) {
    gw_worker_t *w = arg;
    gw_t *gw = w->gw;
    w->start_err = gw_sandbox_prepare(w);
    if (w->start_err < 0)
        return;
    uint64_t t0 = now_mono_us();
    w->start_tried = true;
    w->start_err = gw->launcher->start(gw->launcher, &w->spec, &w->proc);
    if (w->start_err < 0)
        return;
    w->launched = true;
    w->t_launch_us = now_mono_us() - t0;
    w->start_err = wait_for_sockets(w, gw->cfg.worker_start_timeout_ms);
}

static void send_kernel_info(gw_worker_t *w) {
    jwire_msg_t *m = gw_worker_msg(w, "kernel_info_request", NULL);
    if (!m)
        return;
    snprintf(w->info_msg_id, sizeof w->info_msg_id, "%s", jwire_msg_id(m));
    gw_worker_send(w, JWIRE_SHELL, m);
    jwire_msg_destroy(&m);
}

static void on_nudge(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_worker_t *w = arg;
    /* Until iopub flows, our SUB may have joined after the kernel's status went out: ask again,
     * as Jupyter Server does for a fresh connection. */
    send_kernel_info(w);
}

static void worker_died(gw_worker_t *w, const char *why) {
    gw_t *gw = w->gw;
    log_warn("worker", "worker lost", "{s:s,s:s,s:s*}", "worker", w->id, "reason", why, "kernel_id",
             w->session ? w->session->kernel_id : NULL);
    if (w->state == WORKER_STARTING) {
        gw->metrics.workers_failed++;
        gw_pool_on_worker_failed(gw, w);
        gw_worker_destroy(w, why);
        return;
    }
    gw->metrics.workers_died++;
    gw_session_t *s = w->session;
    if (s) {
        w->session = NULL;
        s->worker = NULL;
    }
    /* Destroy first: it marks the session's disk busy until this worker has let go of it, so
     * the replacement the session asks for next waits instead of finding it still mounted.
     * why may point into w: copied first. w itself is only a flag for the session. */
    char reason[sizeof w->lost_why];
    snprintf(reason, sizeof reason, "%s", why);
    gw_worker_destroy(w, reason); /* may free w at once if its cleanup cannot be queued */
    if (s)
        gw_session_on_worker_lost(s, w, reason);
}

static void check_ready(gw_worker_t *w) {
    if (w->state != WORKER_STARTING || !w->got_info_reply || !w->got_iopub)
        return;
    gw_t *gw = w->gw;
    w->state = WORKER_READY;
    w->ready_us = now_mono_us();
    loop_watch_del(gw->loop, &w->nudge_timer);
    loop_watch_del(gw->loop, &w->start_timer);
    double secs = (double)(w->ready_us - w->created_us) / 1e6;
    gw_hist_observe(&gw->metrics.worker_start_seconds, secs);
    gw->metrics.workers_started++;
    gw_journal_touch(gw);
    /* The start broken into its steps: what isolation costs against the kernel itself. */
    log_info("worker", "worker ready", "{s:s,s:f,s:f,s:f,s:f}", "worker", w->id, "start_ms",
             (double)(w->ready_us - w->created_us) / 1000.0, "disk_ms",
             (double)w->t_disk_us / 1000.0, "netns_ms", (double)w->t_netns_us / 1000.0,
             "container_ms", (double)w->t_launch_us / 1000.0);
    gw_pool_on_worker_ready(gw, w);
}

static void on_hb_timer(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_worker_t *w = arg;
    if (w->state != WORKER_READY)
        return;
    /* A kernel is hung only if it answers neither pings nor anything else for the whole
     * window: on a saturated machine a busy kernel's pong can be late, its output is not. */
    if (w->hb_outstanding && !w->seen_since_tick &&
        ++w->hb_misses >= (int)w->gw->cfg.heartbeat_misses) {
        worker_died(w, "heartbeat lost");
        return;
    }
    if (w->seen_since_tick)
        w->hb_misses = 0;
    w->seen_since_tick = false;
    if (w->hb_outstanding)
        return; /* a DEALER could queue another ping, but one in flight is enough */
    zmsg_t *m = zmsg_new();
    zmsg_addmem(m, NULL, 0); /* empty delimiter: works against REP and ROUTER-echo kernels */
    zmsg_addstr(m, "ping");
    /* A ping that cannot even be queued (the heartbeat connection is gone) counts as one
     * unanswered: it must not switch the heartbeat off. */
    zmsg_send(&m, w->sock[JWIRE_HB]);
    w->hb_outstanding = true;
    zmsg_destroy(&m);
    loop_zmq_kick(loop, w->watch[JWIRE_HB]);
}

static void on_hb(gw_worker_t *w, zsock_t *sock) {
    zmsg_t *m = zmsg_recv_nowait(sock);
    if (!m)
        return;
    zmsg_destroy(&m);
    w->hb_outstanding = false;
    w->hb_misses = 0;
    w->seen_since_tick = true;
}

static void handle_msg(gw_worker_t *w, jwire_channel_t ch, jwire_msg_t *msg) {
    if (w->state == WORKER_STARTING) {
        if (ch == JWIRE_SHELL && streq(jwire_msg_parent_id(msg), w->info_msg_id) &&
            streq(jwire_msg_type(msg), "kernel_info_reply")) {
            if (!w->kernel_info)
                w->kernel_info = json_incref(msg->content);
            w->got_info_reply = true;
        } else if (ch == JWIRE_IOPUB && streq(jwire_msg_parent_type(msg), "kernel_info_request")) {
            w->got_iopub = true;
        }
        jwire_msg_destroy(&msg);
        check_ready(w);
        return;
    }
    if (w->state == WORKER_READY && w->session) {
        gw_session_on_message(w->session, ch, msg);
        return;
    }
    jwire_msg_destroy(&msg);
}

static void on_sock(loop_t *loop, loop_watch_t *watch, void *sock, void *arg) {
    gw_worker_t *w = arg;
    jwire_channel_t ch = JWIRE_SHELL;
    for (int c = 0; c < JWIRE_NCHANNELS; c++)
        if (w->sock[c] == sock)
            ch = (jwire_channel_t)c;
    if (ch == JWIRE_HB) {
        on_hb(w, sock);
        return;
    }
    jwire_msg_t *msg = NULL;
    jwire_limits_t limits = kernel_limits(w->gw);
    int r = jwire_msg_recv(sock, w->signer, w->replay, &limits, &msg);
    if (r == -EAGAIN)
        return;
    w->seen_since_tick = true;
    if (r < 0) {
        log_warn("worker", "rejected kernel message", "{s:s,s:s,s:s}", "worker", w->id, "channel",
                 jwire_channel_name(ch), "error", strerror(-r));
        return;
    }
    handle_msg(w, ch, msg);
}

static void on_exit_drained(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_worker_t *w = arg;
    loop_watch_del(loop, &w->exit_timer);
    worker_died(w, "kernel exited");
}

static void on_pidfd(loop_t *loop, loop_watch_t *watch, int fd, unsigned events, void *arg) {
    gw_worker_t *w = arg;
    /* Not reaped here: the launcher's cleanup reaps after it has killed what is left. */
    loop_watch_del(loop, &w->pid_watch);
    loop_watch_del(loop, &w->lost_timer); /* the exit names the cause */
    w->exit_timer = loop_timer_add(loop, EXIT_DRAIN_MS, 0, on_exit_drained, w);
    if (!w->exit_timer)
        worker_died(w, "kernel exited");
}

static void on_start_timeout(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_worker_t *w = arg;
    loop_watch_del(loop, &w->start_timer);
    worker_died(w, "start timed out");
}

static int open_channel(gw_worker_t *w, int c);

static void close_channel(gw_worker_t *w, int c) {
    /* Stop the monitor before closing our end of it: libzmq's I/O thread sends monitor events
     * with a blocking send, and one sent to a monitor whose reader is gone stalls that thread,
     * and with it every ZeroMQ connection of the gateway. */
    if (w->mon[c] && w->sock[c])
        zmq_socket_monitor(zsock_resolve(w->sock[c]), NULL, 0);
    loop_watch_del(w->gw->loop, &w->mon_watch[c]);
    zsock_destroy(&w->mon[c]);
    loop_watch_del(w->gw->loop, &w->watch[c]);
    zsock_destroy(&w->sock[c]);
    gw_relay_close(&w->relay[c]);
}

/* iopub is lossy in Jupyter anyway: a kernel whose iopub connection was dropped (an output
 * message over the size limit) gets a fresh one, checked like the first, and the execution
 * running then is told its output is incomplete. Any other channel lost means the kernel. */
static void on_lost_timer(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_worker_t *w = arg;
    loop_watch_del(loop, &w->lost_timer);
    uint64_t now = now_mono_ms();
    if (now - w->iopub_drop_window_ms > 60000) {
        w->iopub_drop_window_ms = now;
        w->iopub_drops = 0;
    }
    if (w->lost_channels == (1u << JWIRE_IOPUB) && w->state == WORKER_READY &&
        ++w->iopub_drops <= IOPUB_REOPENS_PER_MIN) {
        w->lost_channels = 0;
        close_channel(w, JWIRE_IOPUB);
        /* ipc: the socket file is checked again (never a symlink). tcp: nothing to check, and
         * a connect probe could block this thread on a kernel that stalls its accept queue. */
        int r = streq(w->conn.transport, "tcp") ? 0 : wait_for_sockets(w, 0);
        if (r >= 0)
            r = open_channel(w, JWIRE_IOPUB);
        if (r >= 0) {
            log_warn("worker", "kernel output dropped; iopub reconnected", "{s:s,s:s}", "worker",
                     w->id, "reason", w->lost_why);
            if (w->session)
                gw_session_on_output_lost(w->session, w->lost_why);
            return;
        }
    }
    worker_died(w, w->lost_why);
}

/* A channel's connection closes when its relay cut it (a message over the limits), when
 * ZeroMQ finds the protocol broken, or when the kernel hangs up; with reconnection off (see
 * the top) that channel stays gone while the heartbeat may still answer: act now rather than
 * at a timeout. */
static void on_monitor(loop_t *loop, loop_watch_t *watch, void *sock, void *arg) {
    gw_worker_t *w = arg;
    zmsg_t *m = zmsg_recv_nowait(sock);
    if (!m)
        return;
    zframe_t *f = zmsg_first(m);
    uint16_t event = 0;
    if (f && zframe_size(f) >= sizeof event)
        memcpy(&event, zframe_data(f), sizeof event);
    zmsg_destroy(&m);
    if (event != ZMQ_EVENT_DISCONNECTED || w->state == WORKER_STOPPING)
        return;
    int c = 0;
    while (c < JWIRE_NCHANNELS && w->mon[c] != sock)
        c++;
    if (c == JWIRE_NCHANNELS)
        return;
    w->lost_channels |= 1u << c; /* all of them count when the grace ends */
    if (w->lost_timer || w->exit_timer)
        return;
    const char *cut = gw_relay_why(w->relay[c]);
    if (cut)
        snprintf(w->lost_why, sizeof w->lost_why,
                 "the kernel's %s connection was cut: %s (--kernel-max-message-mb=%" PRIu64
                 ", %d frames)",
                 jwire_channel_name((jwire_channel_t)c), cut, w->gw->cfg.kernel_max_message_mb,
                 KERNEL_MAX_FRAMS);
    else /* the relay cuts before libzmq could see a message over the limit */
        snprintf(w->lost_why, sizeof w->lost_why,
                 "the kernel's %s connection closed (the kernel hung up or broke the protocol)",
                 jwire_channel_name((jwire_channel_t)c));
    /* The usual cause is the kernel exiting; its pidfd then fires first and names it. */
    w->lost_timer = loop_timer_add(loop, CHANNEL_LOST_GRACE_MS, 0, on_lost_timer, w);
}

static int watch_disconnects(gw_worker_t *w, int c) {
    char ep[96];
    snprintf(ep, sizeof ep, "inproc://kbox-mon-%s-%d-%u", w->id, c, w->mon_gen++);
    if (zmq_socket_monitor(zsock_resolve(w->sock[c]), ep, ZMQ_EVENT_DISCONNECTED) < 0)
        return -errno;
    w->mon[c] = zsock_new(ZMQ_PAIR);
    if (!w->mon[c])
        return -ENOMEM;
    if (zsock_connect(w->mon[c], "%s", ep) < 0)
        return -ECONNREFUSED;
    w->mon_watch[c] = loop_zmq_add(w->gw->loop, w->mon[c], on_monitor, w);
    return w->mon_watch[c] ? 0 : -ENOMEM;
}

static int open_channel(gw_worker_t *w, int c) {
    static const int types[JWIRE_NCHANNELS] = {ZMQ_DEALER, ZMQ_SUB, ZMQ_DEALER, ZMQ_DEALER,
                                               ZMQ_DEALER};
    char ep[PATH_MAX + 16], relay_ep[64];
    int r = jwire_conn_endpoint(&w->conn, (jwire_channel_t)c, ep, sizeof ep);
    if (r < 0)
        return r;
    r = gw_relay_open(w->gw->loop, ep, (uint64_t)w->gw->cfg.kernel_max_message_mb << 20,
                      KERNEL_MAX_FRAMS, relay_ep, sizeof relay_ep, &w->relay[c]);
    if (r < 0)
        return r;
    zsock_t *s = zsock_new(types[c]);
    if (!s)
        return -ENOMEM;
    w->sock[c] = s;
    zsock_set_linger(s, 0);
    zsock_set_maxmsgsize(s, (int64_t)(w->gw->cfg.kernel_max_message_mb << 20));
    zsock_set_reconnect_ivl(s, -1);
    /* Messages waiting for us are bounded here; past it ZeroMQ stops reading the socket and
     * the back-pressure reaches the kernel, inside its own memory limit. */
    zsock_set_rcvhwm(s, (int)w->gw->cfg.kernel_queue_msgs);
    zsock_set_sndhwm(s, 1000);
    zsock_set_sndtimeo(s, 0); /* a stuck kernel must never stall the loop */
    if (c == JWIRE_SHELL || c == JWIRE_STDIN)
        zsock_set_identity(s, w->zsession); /* stdin requests are routed to our shell id */
    if (c == JWIRE_IOPUB)
        zsock_set_subscribe(s, "");
    if (c != JWIRE_HB && (r = watch_disconnects(w, c)) < 0)
        return r;
    if (zsock_connect(s, "%s", relay_ep) < 0)
        return -ECONNREFUSED;
    w->watch[c] = loop_zmq_add(w->gw->loop, s, on_sock, w);
    if (!w->watch[c])
        return -errno ? -errno : -ENOMEM;
    return 0;
}

static int connect_channels(gw_worker_t *w) {
    for (int c = 0; c < JWIRE_NCHANNELS; c++) {
        int r = open_channel(w, c);
        if (r < 0)
            return r;
    }
    return 0;
}

static void launch_done(loop_t *loop, void *arg);

int gw_worker_adopt(gw_t *gw, const char *id, const char *container, pid_t pid, int pidfd,
                    const char *disk, uint32_t uid_slot, bool has_uid_slot, gw_worker_t **ret) {
    gw_worker_t *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->gw = gw;
    w->proc.pid = -1;
    w->proc.pidfd = -1;
    snprintf(w->id, sizeof w->id, "%s", id);
    uuid4(w->zsession);
    w->created_us = now_mono_us();
    int r;
    if ((r = xsnprintf(w->run_dir, sizeof w->run_dir, "%s/%s", gw->run_root, w->id)) < 0 ||
        (r = xsnprintf(w->conn_file, sizeof w->conn_file, "%s/kernel.json", w->run_dir)) < 0 ||
        (r = jwire_conn_read(w->conn_file, &w->conn)) < 0)
        goto fail;
    /* The kernel's uid can rewrite its connection file: only the key comes from it; where to
     * connect comes from our configuration and the worker's slot, as when it was spawned. */
    snprintf(w->conn.signature_scheme, sizeof w->conn.signature_scheme, "hmac-sha256");
    if ((r = set_endpoints(gw, uid_slot, w->run_dir, &w->conn)) < 0)
        goto fail;
    if ((r = wait_for_sockets(w, 0)) < 0)
        goto fail;
    w->signer = jwire_signer_new(w->conn.signature_scheme, w->conn.key, strlen(w->conn.key));
    w->replay = jwire_replay_new(4096);
    if (!w->signer || !w->replay) {
        r = -ENOMEM;
        goto fail;
    }
    if (has_uid_slot && (r = gw_uid_slot_take(gw, uid_slot)) < 0)
        goto fail;
    w->uid_slot = uid_slot;
    w->has_uid_slot = has_uid_slot;
    snprintf(w->disk_name, sizeof w->disk_name, "%s", disk);
    w->disk_ready = true;
    w->netns_adopted = true;
    w->spec = (launcher_spec_t){.worker_id = w->id,
                                .run_dir = w->run_dir,
                                .conn_file = w->conn_file,
                                .kernel = gw->cfg.kernel,
                                .python = gw->cfg.python,
                                .uid = gw->cfg.uid_base + uid_slot};
    w->proc.pid = pid;
    w->proc.pidfd = pidfd;
    snprintf(w->proc.container_id, sizeof w->proc.container_id, "%s", container);
    w->launched = true;
    w->state = WORKER_STARTING;
    TAILQ_INSERT_TAIL(&gw->workers, w, link);
    gw->nworkers_live++;
    w->start_timer =
        loop_timer_add(gw->loop, gw->cfg.worker_start_timeout_ms, 0, on_start_timeout, w);
    launch_done(gw->loop, w);
    *ret = w;
    return 0;
fail:
    w->proc.pidfd = -1; /* the caller still owns it */
    worker_free(w);
    return r;
}

static void launch_done(loop_t *loop, void *arg) {
    gw_worker_t *w = arg;
    w->launching = false;
    if (w->proc.pidfd >= 0 && !w->pid_watch)
        w->pid_watch = loop_io_add(loop, w->proc.pidfd, LOOP_READ, on_pidfd, w);
    if (w->doomed) {
        w->doomed = false;
        w->state = WORKER_STARTING;
        gw_worker_destroy(w, "destroyed while starting");
        return;
    }
    int r = w->start_err;
    if (r >= 0)
        r = connect_channels(w);
    if (r < 0) {
        log_error("worker", "worker start failed", "{s:s,s:s,s:s}", "worker", w->id, "error",
                  strerror(-r), "detail", w->proc.error);
        worker_died(w, "start failed");
        return;
    }
    send_kernel_info(w);
    w->nudge_timer = loop_timer_add(loop, NUDGE_FIRST_MS, NUDGE_MS, on_nudge, w);
    w->hb_timer =
        loop_timer_add(loop, w->gw->cfg.heartbeat_ms, w->gw->cfg.heartbeat_ms, on_hb_timer, w);
}

int gw_worker_spawn(gw_t *gw, gw_session_t *for_session, gw_worker_t **ret) {
    gw_worker_t *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->gw = gw;
    w->proc.pidfd = -1;
    w->proc.pid = -1;
    /* Our prefix (from the state dir) then 12 random hex: names of namespaces and veths made
     * from it are recognisably ours in a start-up sweep, and no other gateway's. */
    snprintf(w->id, sizeof w->id, "%s", gw->id_prefix);
    random_hex(w->id + strlen(w->id), 6);
    uuid4(w->zsession);
    w->created_us = now_mono_us();
    int r;
    bool run_dir_made = false;
    if ((r = xsnprintf(w->run_dir, sizeof w->run_dir, "%s/%s", gw->run_root, w->id)) < 0 ||
        (r = xsnprintf(w->conn_file, sizeof w->conn_file, "%s/kernel.json", w->run_dir)) < 0 ||
        (r = gw_sandbox_run_dir_make(gw, w->run_dir)) < 0)
        goto fail;
    run_dir_made = true;

    if (gw->disks) {
        if (for_session && for_session->disk_name[0]) {
            /* A replacement: the session's disk and uid come along. */
            snprintf(w->disk_name, sizeof w->disk_name, "%s", for_session->disk_name);
            w->disk_attach = true;
            w->uid_slot = for_session->uid_slot;
            snprintf(w->reserved_for, sizeof w->reserved_for, "%s", for_session->kernel_id);
            snprintf(w->owner_kernel_id, sizeof w->owner_kernel_id, "%s", for_session->kernel_id);
        } else {
            if ((r = gw_uid_slot_alloc(gw, &w->uid_slot)) < 0)
                goto fail;
            w->has_uid_slot = true;
            snprintf(w->disk_name, sizeof w->disk_name, "%s", w->id);
        }
    }

    /* 64 random bytes as hex: a key longer than one HMAC block, as security.md asks. */
    jwire_conn_t kconn = {0};
    snprintf(kconn.transport, sizeof kconn.transport, "ipc");
    snprintf(kconn.signature_scheme, sizeof kconn.signature_scheme, "hmac-sha256");
    random_hex(kconn.key, 64);
    snprintf(kconn.kernel_name, sizeof kconn.kernel_name, "python3");
    /* The gateway's view of the endpoints, then the kernel's (ipc: its path of the run dir). */
    const char *kdir = gw->launcher->kernel_run_dir ? gw->launcher->kernel_run_dir : w->run_dir;
    w->conn = kconn;
    if ((r = set_endpoints(gw, w->uid_slot, w->run_dir, &w->conn)) < 0 ||
        (r = set_endpoints(gw, w->uid_slot, kdir, &kconn)) < 0)
        goto fail;
    if ((r = jwire_conn_write(w->conn_file, &kconn)) < 0)
        goto fail;
    w->signer = jwire_signer_new("hmac-sha256", w->conn.key, strlen(w->conn.key));
    w->replay = jwire_replay_new(4096);
    if (!w->signer || !w->replay) {
        r = -ENOMEM;
        goto fail;
    }

    w->spec = (launcher_spec_t){
        .worker_id = w->id,
        .run_dir = w->run_dir,
        .conn_file = w->conn_file,
        .kernel = gw->cfg.kernel,
        .python = gw->cfg.python,
        .cpu = gw->cfg.worker_cpu,
        .ram_mb = gw->cfg.worker_ram_mb,
        .pids_max = gw->cfg.worker_pids,
        .uid = 0,
    };
    w->state = WORKER_STARTING;
    TAILQ_INSERT_TAIL(&gw->workers, w, link);
    gw->nworkers_live++;
    w->start_timer =
        loop_timer_add(gw->loop, gw->cfg.worker_start_timeout_ms, 0, on_start_timeout, w);
    r = loop_work_submit(gw->loop, launch_work, launch_done, w);
    if (r < 0) {
        TAILQ_REMOVE(&gw->workers, w, link);
        gw->nworkers_live--;
        goto fail;
    }
    w->launching = true;
    if (ret)
        *ret = w;
    return 0;
fail:
    if (w->has_uid_slot)
        gw_uid_slot_free(gw, w->uid_slot);
    if (run_dir_made)
        gw_sandbox_run_dir_remove(w->run_dir);
    worker_free(w);
    return r;
}

/* ---- stop ------------------------------------------------------------------------------- */

static void cleanup_work(void *arg) {
    gw_worker_t *w = arg;
    gw_t *gw = w->gw;
    if (w->launched || w->start_tried)
        gw->launcher->cleanup(gw->launcher, &w->proc, &w->spec);
    gw_sandbox_release(w);
    gw_sandbox_run_dir_remove(w->run_dir);
}

static void cleanup_done(loop_t *loop, void *arg) {
    gw_worker_t *w = arg;
    gw_t *gw = w->gw;
    TAILQ_REMOVE(&gw->workers, w, link);
    gw->nworkers_live--;
    if (w->has_uid_slot)
        gw_uid_slot_free(gw, w->uid_slot);
    if (w->disk_keep) {
        /* The session's disk is free for its next worker now. */
        gw_session_t *s = gw_session_find_kernel(gw, w->owner_kernel_id);
        if (s) {
            s->disk_busy = false;
            if (s->waiting)
                gw_pool_top_up(gw);
        } else {
            gw_sandbox_remove_disk(gw, w->disk_name); /* released while we detached */
        }
    }
    worker_free(w);
    if (!gw->shutting_down)
        gw_pool_top_up(gw);
    gw_maybe_finish_shutdown(gw);
}

void gw_worker_destroy(gw_worker_t *w, const char *reason) {
    if (!w || w->state == WORKER_STOPPING)
        return;
    gw_t *gw = w->gw;
    if (w->in_idle) {
        TAILQ_REMOVE(&gw->idle, w, idle_link);
        w->in_idle = false;
    }
    if (w->session) {
        w->session->worker = NULL;
        w->session = NULL;
    }
    if (!w->disk_keep && w->owner_kernel_id[0]) {
        gw_session_t *owner = gw_session_find_kernel(gw, w->owner_kernel_id);
        if (owner && !owner->released) {
            w->disk_keep = true;
            owner->disk_busy = true;
        }
    }
    if (w->launching) {
        /* The launcher is still running on the pool: finish when it reports back. */
        w->doomed = true;
        return;
    }
    close_channels(w);
    loop_watch_del(gw->loop, &w->start_timer);
    loop_watch_del(gw->loop, &w->nudge_timer);
    loop_watch_del(gw->loop, &w->hb_timer);
    loop_watch_del(gw->loop, &w->pid_watch);
    if (w->launched)
        gw->launcher->kill(gw->launcher, &w->proc);
    w->state = WORKER_STOPPING;
    gw_journal_touch(gw);
    log_debug("worker", "worker stopping", "{s:s,s:s}", "worker", w->id, "reason", reason);
    if (loop_work_submit(gw->loop, cleanup_work, cleanup_done, w) < 0) {
        cleanup_work(w);
        cleanup_done(gw->loop, w);
    }
}

/* ---- messaging -------------------------------------------------------------------------- */

jwire_msg_t *gw_worker_msg(gw_worker_t *w, const char *msg_type, json_t *content) {
    return jwire_msg_new(msg_type, w->zsession, "kbox", NULL, content);
}

int gw_worker_send(gw_worker_t *w, jwire_channel_t ch, jwire_msg_t *msg) {
    if (!w->sock[ch])
        return -ENOTCONN;
    int r = jwire_msg_send(msg, w->signer, w->sock[ch]);
    loop_zmq_kick(w->gw->loop, w->watch[ch]);
    return r;
}

int gw_worker_interrupt(gw_worker_t *w) {
    if (!w || !w->launched || w->state == WORKER_STOPPING)
        return -ESRCH;
    return w->gw->launcher->interrupt(w->gw->launcher, &w->proc);
}
