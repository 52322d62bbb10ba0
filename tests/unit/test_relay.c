/* The guarded relay between the gateway's sockets and a kernel's (gateway/relay.c,
 * gateway/zguard.c): the stream check on hand-made ZMTP bytes, then the relay between real
 * libzmq sockets, against a raw peer that sends a message without end, and against a
 * stranger trying its listener. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "loop.h"
#include "relay.h"
#include "util.h"
#include "zguard.h"

#include <arpa/inet.h>
#include <czmq.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- zguard ---------------------------------------------------------------------------- */

typedef struct {
    uint8_t b[4096];
    size_t n;
} bytes_t;

static void put(bytes_t *s, const void *p, size_t n) {
    assert_true(s->n + n <= sizeof s->b);
    memcpy(s->b + s->n, p, n);
    s->n += n;
}

static void greeting(bytes_t *s, const char *mech, uint8_t major) {
    uint8_t g[ZGUARD_GREETING] = {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, major, 1};
    for (size_t i = 0; mech[i]; i++) /* padded with zeros, not terminated */
        g[12 + i] = (uint8_t)mech[i];
    put(s, g, sizeof g);
}

/* A frame header: short or long size, then `size` bytes of body (only when body). */
static void frame(bytes_t *s, uint8_t flags, uint64_t size, bool body) {
    put(s, &flags, 1);
    if (flags & 0x02) {
        for (int i = 7; i >= 0; i--) {
            uint8_t b = (uint8_t)(size >> (8 * i));
            put(s, &b, 1);
        }
    } else {
        uint8_t b = (uint8_t)size;
        put(s, &b, 1);
    }
    for (uint64_t i = 0; body && i < size; i++)
        put(s, "x", 1);
}

static void ready(bytes_t *s) {
    static const char cmd[] = "\x05READY\x0bSocket-Type\0\0\0\x03PUB";
    frame(s, 0x04, sizeof cmd - 1, false);
    put(s, cmd, sizeof cmd - 1);
}

/* Fed whole, one byte at a time and in uneven pieces, the verdict is the same. */
static int feed_all_ways(const bytes_t *s, uint64_t max_bytes, uint32_t max_frames) {
    zguard_t g;
    zguard_init(&g, max_bytes, max_frames);
    int whole = zguard_feed(&g, s->b, s->n);
    zguard_init(&g, max_bytes, max_frames);
    int r = 0;
    for (size_t i = 0; i < s->n && r == 0; i++)
        r = zguard_feed(&g, s->b + i, 1);
    assert_int_equal(r, whole);
    zguard_init(&g, max_bytes, max_frames);
    r = 0;
    for (size_t i = 0, step = 1; i < s->n && r == 0; i += step, step = step % 7 + 3)
        r = zguard_feed(&g, s->b + i, step < s->n - i ? step : s->n - i);
    assert_int_equal(r, whole);
    return whole;
}

static void test_guard_accepts_messages_within_limits(void **state) {
    bytes_t s = {0};
    greeting(&s, "NULL", 3);
    ready(&s);
    frame(&s, 0x01, 10, true); /* three frames, 10 + 200 + 90 = 300 bytes */
    frame(&s, 0x01, 200, true);
    frame(&s, 0x00, 90, true);
    frame(&s, 0x04, 4, true); /* a command between messages (PING) */
    frame(&s, 0x01, 100, true);
    frame(&s, 0x04, 4, true); /* one between a message's frames (libzmq's heartbeat) */
    frame(&s, 0x00, 200, true);
    frame(&s, 0x03, 300, true); /* long-size frames count the same */
    frame(&s, 0x00, 0, false);
    assert_int_equal(feed_all_ways(&s, 300, 3), 0);
}

static void test_guard_limits(void **state) {
    bytes_t s = {0};
    greeting(&s, "NULL", 3);
    frame(&s, 0x01, 200, true);
    frame(&s, 0x00, 101, true); /* 301 > 300 */
    assert_int_equal(feed_all_ways(&s, 300, 8), -EMSGSIZE);

    bytes_t f = {0};
    greeting(&f, "NULL", 3);
    for (int i = 0; i < 4; i++)
        frame(&f, 0x01, 0, false); /* empty frames cost libzmq memory too */
    assert_int_equal(feed_all_ways(&f, 300, 3), -EMSGSIZE);

    /* A size near 2^64 must not wrap the message's sum below the limit. */
    bytes_t w = {0};
    greeting(&w, "NULL", 3);
    frame(&w, 0x01, 100, true);
    frame(&w, 0x03, UINT64_MAX - 50, false);
    assert_int_equal(feed_all_ways(&w, 300, 8), -EMSGSIZE);

    /* The limit is per message: many messages just under it pass. */
    bytes_t m = {0};
    greeting(&m, "NULL", 3);
    for (int i = 0; i < 10; i++) {
        frame(&m, 0x01, 150, true);
        frame(&m, 0x00, 150, true);
    }
    assert_int_equal(feed_all_ways(&m, 300, 2), 0);
}

static void test_guard_protocol_errors(void **state) {
    bytes_t s = {0};
    greeting(&s, "CURVE", 3);
    assert_int_equal(feed_all_ways(&s, 300, 8), -EPROTO);

    bytes_t old = {0};
    greeting(&old, "NULL", 2);
    assert_int_equal(feed_all_ways(&old, 300, 8), -EPROTO);

    /* A stranger's first bytes fail at the signature, before 64 bytes have come. */
    zguard_t g;
    zguard_init(&g, 300, 8);
    assert_int_equal(zguard_feed(&g, (const uint8_t *)"GET / HTTP/1.1\r\n", 16), -EPROTO);
    assert_non_null(g.why);
    assert_int_equal(zguard_feed(&g, (const uint8_t *)"x", 1), -EPROTO); /* and stays failed */

    bytes_t r = {0};
    greeting(&r, "NULL", 3);
    frame(&r, 0x08, 1, true); /* reserved flag bit */
    assert_int_equal(feed_all_ways(&r, 300, 8), -EPROTO);

    bytes_t c = {0};
    greeting(&c, "NULL", 3);
    frame(&c, 0x05, 4, true); /* a command with MORE */
    assert_int_equal(feed_all_ways(&c, 300, 8), -EPROTO);

    bytes_t big = {0};
    greeting(&big, "NULL", 3);
    frame(&big, 0x06, 301, false); /* a command over the limit */
    assert_int_equal(feed_all_ways(&big, 300, 8), -EMSGSIZE);
}

/* ---- the relay, with real sockets ------------------------------------------------------- */

static char tmpdir[64];

static int setup_dir(void **state) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kbox-relay-test-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return 0;
}

static int teardown_dir(void **state) {
    rm_rf(tmpdir);
    return 0;
}

static void on_stop(loop_t *loop, loop_watch_t *w, void *arg) {
    loop_stop(loop);
}

/* Runs the loop for about ms. */
static void spin(loop_t *loop, unsigned ms) {
    loop_watch_t *t = loop_timer_add(loop, ms, 0, on_stop, NULL);
    assert_non_null(t);
    assert_int_equal(loop_run(loop), 0);
    loop_watch_del(loop, &t);
}

/* Receives a message on sock while the relay runs, up to ~5 s. */
static zmsg_t *recv_relayed(loop_t *loop, zsock_t *sock) {
    for (int i = 0; i < 500; i++) {
        zmsg_t *m = zmsg_recv_nowait(sock);
        if (m)
            return m;
        spin(loop, 10);
    }
    return NULL;
}

/* A "kernel" socket of the given type bound in the test dir, and a relay to it; rep gets the
 * address the gateway's side connects to. */
static zsock_t *relayed_kernel(loop_t *loop, int type, const char *name, uint64_t max_bytes,
                               uint32_t max_frames, char rep[64], gw_relay_t **relay) {
    char kep[128];
    snprintf(kep, sizeof kep, "ipc://%s/%s", tmpdir, name);
    zsock_t *kernel = zsock_new(type);
    assert_non_null(kernel);
    assert_int_equal(zsock_bind(kernel, "%s", kep), 0);
    assert_int_equal(gw_relay_open(loop, kep, max_bytes, max_frames, rep, 64, relay), 0);
    return kernel;
}

static void test_relay_carries_both_ways(void **state) {
    loop_t *loop = loop_new(0);
    assert_non_null(loop);
    char rep[64];
    gw_relay_t *relay = NULL;
    zsock_t *kernel = relayed_kernel(loop, ZMQ_ROUTER, "k-1", 4u << 20, 8, rep, &relay);
    assert_true(strncmp(rep, "ipc://@kbox-relay-", 18) == 0);
    zsock_t *client = zsock_new(ZMQ_DEALER);
    zsock_set_reconnect_ivl(client, -1); /* as the gateway's */
    assert_int_equal(zsock_connect(client, "%s", rep), 0);

    assert_int_equal(zstr_sendm(client, "hello"), 0);
    assert_int_equal(zstr_send(client, "kernel"), 0);
    zmsg_t *m = recv_relayed(loop, kernel);
    assert_non_null(m);
    assert_int_equal(zmsg_size(m), 3); /* routing id, "hello", "kernel" */
    zframe_t *id = zmsg_pop(m);
    zmsg_destroy(&m);

    /* 3 MiB in three frames, under the 4 MiB limit: more than the relay's buffer, so it also
     * goes through the partial writes and back-pressure. */
    zmsg_t *reply = zmsg_new();
    zmsg_append(reply, &id);
    char *chunk = malloc(1u << 20);
    assert_non_null(chunk);
    for (int i = 0; i < 3; i++) {
        memset(chunk, 'a' + i, 1u << 20);
        zmsg_addmem(reply, chunk, 1u << 20);
    }
    free(chunk);
    assert_int_equal(zmsg_send(&reply, kernel), 0);
    m = recv_relayed(loop, client);
    assert_non_null(m);
    assert_int_equal(zmsg_size(m), 3);
    for (zframe_t *f = zmsg_first(m); f; f = zmsg_next(m)) {
        assert_int_equal(zframe_size(f), 1u << 20);
        assert_int_equal(zframe_data(f)[12345], zframe_data(f)[0]);
    }
    zmsg_destroy(&m);
    assert_null(gw_relay_why(relay));

    /* A kernel's last words before it exits arrive, even to a gateway that reads them only a
     * moment later: libzmq drops what it has not handed over when the connection closes. */
    zsock_set_linger(kernel, 1000);
    id = NULL;
    assert_int_equal(zstr_send(client, "bye"), 0);
    m = recv_relayed(loop, kernel);
    assert_non_null(m);
    id = zmsg_pop(m);
    zmsg_destroy(&m);
    reply = zmsg_new();
    zmsg_append(reply, &id);
    zmsg_addstr(reply, "last");
    assert_int_equal(zmsg_send(&reply, kernel), 0);
    zsock_destroy(&kernel);
    spin(loop, 100);
    (void)zsock_events(client); /* as the gateway's loop asks before it reads */
    m = recv_relayed(loop, client);
    assert_non_null(m);
    char *s = zmsg_popstr(m);
    assert_string_equal(s, "last");
    free(s);
    zmsg_destroy(&m);

    zsock_destroy(&client);
    gw_relay_close(&relay);
    gw_relay_close(&relay); /* NULL-safe */
    loop_destroy(&loop);
}

static void test_relay_cuts_an_oversized_message(void **state) {
    loop_t *loop = loop_new(0);
    char rep[64];
    gw_relay_t *relay = NULL;
    zsock_t *kernel = relayed_kernel(loop, ZMQ_PUB, "k-2", 1u << 20, 64, rep, &relay);
    zsock_t *client = zsock_new(ZMQ_SUB);
    zsock_set_subscribe(client, "");
    assert_int_equal(zsock_connect(client, "%s", rep), 0);
    /* Until the subscription is through, a PUB drops what it sends. */
    zmsg_t *m = NULL;
    for (int i = 0; i < 100 && !m; i++) {
        zstr_send(kernel, "small");
        m = recv_relayed(loop, client);
    }
    assert_non_null(m);
    zmsg_destroy(&m);
    /* Two frames of 600 KiB: each under the limit (libzmq's own ZMQ_MAXMSGSIZE would let
     * them through), together over it. */
    char *chunk = calloc(1, 600u << 10);
    zmsg_t *big = zmsg_new();
    zmsg_addmem(big, chunk, 600u << 10);
    zmsg_addmem(big, chunk, 600u << 10);
    free(chunk);
    assert_int_equal(zmsg_send(&big, kernel), 0);
    for (int i = 0; i < 200 && !gw_relay_why(relay); i++)
        spin(loop, 10);
    assert_non_null(gw_relay_why(relay));
    assert_non_null(strstr(gw_relay_why(relay), "size limit"));
    assert_null(zmsg_recv_nowait(client));
    zsock_destroy(&client);
    zsock_destroy(&kernel);
    gw_relay_close(&relay);
    loop_destroy(&loop);
}

/* Reads n bytes or more from a non-blocking fd while the relay runs (~5 s at most). */
static void read_at_least(loop_t *loop, int fd, size_t n) {
    size_t got = 0;
    for (int i = 0; i < 500 && got < n; i++) {
        uint8_t b[256];
        ssize_t k = read(fd, b, sizeof b);
        if (k > 0)
            got += (size_t)k;
        else
            spin(loop, 10);
    }
    assert_true(got >= n);
}

/* The attack the relay is for: a raw peer that starts a message and never ends it. Without
 * the relay libzmq keeps every frame; with it, the peer is cut off at the limit. */
static void test_relay_cuts_an_endless_message(void **state) {
    loop_t *loop = loop_new(0);
    char path[100], kep[140], rep[64];
    snprintf(path, sizeof path, "%s/k-3", tmpdir);
    snprintf(kep, sizeof kep, "ipc://%s", path);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof un.sun_path, "%s", path);
    assert_int_equal(bind(lfd, (struct sockaddr *)&un, sizeof un), 0);
    assert_int_equal(listen(lfd, 4), 0);
    gw_relay_t *relay = NULL;
    assert_int_equal(gw_relay_open(loop, kep, 1u << 20, 256, rep, sizeof rep, &relay), 0);
    zsock_t *client = zsock_new(ZMQ_SUB);
    zsock_set_subscribe(client, "");
    assert_int_equal(zsock_connect(client, "%s", rep), 0);
    int peer = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    assert_true(peer >= 0);

    /* The handshake as a ZMTP peer does it: greetings both ways, then READY both ways (a
     * READY sent before the client's greeting came made libzmq fail the handshake now and
     * then: "unexpected command"). */
    bytes_t hello = {0}, rdy = {0};
    greeting(&hello, "NULL", 3);
    ready(&rdy);
    assert_int_equal(send(peer, hello.b, hello.n, MSG_NOSIGNAL), (ssize_t)hello.n);
    read_at_least(loop, peer, ZGUARD_GREETING);
    assert_int_equal(send(peer, rdy.b, rdy.n, MSG_NOSIGNAL), (ssize_t)rdy.n);
    read_at_least(loop, peer, 1); /* the client's READY */
    static uint8_t f[9 + (64u << 10)];
    bytes_t hdr = {0};
    frame(&hdr, 0x03, 64u << 10, false); /* MORE | LONG, 64 KiB, again and again */
    memcpy(f, hdr.b, hdr.n);
    size_t sent = 0;
    bool cut = false;
    for (int i = 0; i < 2000 && !cut; i++) {
        size_t off = 0;
        while (off < sizeof f) {
            ssize_t n = send(peer, f + off, sizeof f - off, MSG_NOSIGNAL);
            if (n < 0 && errno == EAGAIN) {
                spin(loop, 2);
                continue;
            }
            if (n < 0) {
                cut = true; /* EPIPE or ECONNRESET: the relay hung up on us */
                break;
            }
            off += (size_t)n;
            sent += (size_t)n;
        }
        spin(loop, 0);
    }
    assert_true(cut);
    assert_true(sent < (8u << 20)); /* cut near the 1 MiB limit, not after 125 MiB */
    assert_non_null(gw_relay_why(relay));
    close(peer);
    close(lfd);
    zsock_destroy(&client);
    gw_relay_close(&relay);
    loop_destroy(&loop);
}

/* Another process that finds the relay's abstract address first is turned away; the
 * gateway's own socket still gets through. */
static void test_relay_refuses_strangers(void **state) {
    loop_t *loop = loop_new(0);
    char rep[64];
    gw_relay_t *relay = NULL;
    zsock_t *kernel = relayed_kernel(loop, ZMQ_ROUTER, "k-4", 1u << 20, 8, rep, &relay);

    int sv[2];
    assert_int_equal(pipe(sv), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        const char *name = rep + strlen("ipc://@");
        memcpy(un.sun_path + 1, name, strlen(name));
        socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&un, len) < 0)
            _exit(2);
        char c;
        (void)!write(sv[1], "c", 1);
        /* Turned away: the relay closes the connection (0), it never sends anything. */
        _exit(read(fd, &c, 1) == 0 ? 0 : 1);
    }
    close(sv[1]);
    char c;
    assert_int_equal(read(sv[0], &c, 1), 1);
    close(sv[0]);
    int status = 0;
    for (int i = 0; i < 500; i++) {
        spin(loop, 10);
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    zsock_t *client = zsock_new(ZMQ_DEALER);
    assert_int_equal(zsock_connect(client, "%s", rep), 0);
    assert_int_equal(zstr_send(client, "mine"), 0);
    zmsg_t *m = recv_relayed(loop, kernel);
    assert_non_null(m);
    zmsg_destroy(&m);
    zsock_destroy(&client);
    zsock_destroy(&kernel);
    gw_relay_close(&relay);
    loop_destroy(&loop);
}

/* The gateway's socket must learn that the kernel's side is gone even when that happened
 * before it connected: libzmq, with reconnection off, never reports a connect that failed. */
static bool disconnect_seen(loop_t *loop, zsock_t *mon) {
    for (int i = 0; i < 300; i++) {
        zmsg_t *e = zmsg_recv_nowait(mon);
        if (e) {
            uint16_t ev = 0;
            memcpy(&ev, zframe_data(zmsg_first(e)), sizeof ev);
            zmsg_destroy(&e);
            if (ev == ZMQ_EVENT_DISCONNECTED)
                return true;
            continue;
        }
        spin(loop, 10);
    }
    return false;
}

/* A gateway-like socket (reconnection off) connected to the relay sees its peer hang up. */
static void expect_hang_up(loop_t *loop, const char *rep, const char *mon_ep) {
    zsock_t *client = zsock_new(ZMQ_DEALER);
    zsock_set_reconnect_ivl(client, -1);
    assert_int_equal(zmq_socket_monitor(zsock_resolve(client), mon_ep, ZMQ_EVENT_DISCONNECTED), 0);
    zsock_t *mon = zsock_new(ZMQ_PAIR);
    assert_int_equal(zsock_connect(mon, "%s", mon_ep), 0);
    assert_int_equal(zsock_connect(client, "%s", rep), 0);
    assert_true(disconnect_seen(loop, mon));
    zmq_socket_monitor(zsock_resolve(client), NULL, 0);
    zsock_destroy(&mon);
    zsock_destroy(&client);
}

static void test_relay_reports_a_kernel_gone_early(void **state) {
    loop_t *loop = loop_new(0);
    char rep[64];
    gw_relay_t *relay = NULL;
    zsock_t *kernel = relayed_kernel(loop, ZMQ_ROUTER, "k-5", 1u << 20, 8, rep, &relay);
    zsock_destroy(&kernel); /* hangs up on the relay before the gateway's socket comes */
    spin(loop, 50);
    expect_hang_up(loop, rep, "inproc://relay-mon-5");
    gw_relay_close(&relay);

    /* The same for a tcp kernel whose connection is refused once the connect completes. */
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t slen = sizeof sa;
    assert_int_equal(bind(probe, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(probe, (struct sockaddr *)&sa, &slen), 0);
    close(probe); /* a port nobody listens on */
    char tep[64];
    snprintf(tep, sizeof tep, "tcp://127.0.0.1:%d", ntohs(sa.sin_port));
    int r = gw_relay_open(loop, tep, 1u << 20, 8, rep, sizeof rep, &relay);
    if (r == 0) /* refused later, not at once */
        expect_hang_up(loop, rep, "inproc://relay-mon-6");
    else
        assert_int_equal(r, -ECONNREFUSED);
    gw_relay_close(&relay);
    loop_destroy(&loop);
}

static void test_relay_bad_endpoints(void **state) {
    loop_t *loop = loop_new(0);
    char rep[64];
    gw_relay_t *relay = NULL;
    char missing[192];
    snprintf(missing, sizeof missing, "ipc://%s/nothing-here", tmpdir);
    assert_int_equal(gw_relay_open(loop, missing, 1, 1, rep, sizeof rep, &relay), -ENOENT);
    /* What the kernel could put where its socket should be: a symlink (to a socket of the
     * host, say) or a file. */
    char real[128], link[128];
    zsock_t *target = relayed_kernel(loop, ZMQ_ROUTER, "k-target", 1, 1, rep, &relay);
    gw_relay_close(&relay);
    snprintf(real, sizeof real, "%s/k-target", tmpdir);
    snprintf(link, sizeof link, "%s/k-link", tmpdir);
    assert_int_equal(symlink(real, link), 0);
    snprintf(missing, sizeof missing, "ipc://%s", link);
    assert_int_equal(gw_relay_open(loop, missing, 1, 1, rep, sizeof rep, &relay), -EPERM);
    snprintf(missing, sizeof missing, "ipc://%s/file", tmpdir);
    FILE *f = fopen(missing + 6, "w");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(gw_relay_open(loop, missing, 1, 1, rep, sizeof rep, &relay), -EPERM);
    zsock_destroy(&target);
    assert_int_equal(gw_relay_open(loop, "tcp://1.2.3:5", 1, 1, rep, sizeof rep, &relay), -EINVAL);
    assert_int_equal(gw_relay_open(loop, "tcp://127.0.0.1:99999", 1, 1, rep, sizeof rep, &relay),
                     -EINVAL);
    assert_int_equal(gw_relay_open(loop, "udp://127.0.0.1:5", 1, 1, rep, sizeof rep, &relay),
                     -EINVAL);
    assert_null(relay);
    loop_destroy(&loop);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_guard_accepts_messages_within_limits),
        cmocka_unit_test(test_guard_limits),
        cmocka_unit_test(test_guard_protocol_errors),
        cmocka_unit_test(test_relay_carries_both_ways),
        cmocka_unit_test(test_relay_cuts_an_oversized_message),
        cmocka_unit_test(test_relay_cuts_an_endless_message),
        cmocka_unit_test(test_relay_refuses_strangers),
        cmocka_unit_test(test_relay_reports_a_kernel_gone_early),
        cmocka_unit_test(test_relay_bad_endpoints),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
