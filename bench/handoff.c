/* kbox-bench handoff: what one request/reply round trip between two processes costs in CPU,
 * through libzmq over ipc (a DEALER and a ROUTER, as the gateway and a kernel talk) against
 * the same bytes over a plain unix socket. libzmq moves every message through an I/O thread
 * on each end, so a round trip wakes four threads instead of two; on a VM where a wakeup is
 * expensive that difference is the price of the transport, and this measures it. */
#include "bench.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#define HANDOFF_MSG 600 /* about an execute_request's size */

static double cpu_s(const struct rusage *r) {
    return (double)r->ru_utime.tv_sec + (double)r->ru_utime.tv_usec / 1e6 +
           (double)r->ru_stime.tv_sec + (double)r->ru_stime.tv_usec / 1e6;
}

static int read_full(int fd, char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

/* The echoing side, in the child: returns the exit status. */
static int serve(bool zmq, const char *path, int listen_fd, int n) {
    char m[HANDOFF_MSG];
    if (!zmq) {
        int c = accept(listen_fd, NULL, NULL);
        if (c < 0)
            return 1;
        for (int i = 0; i < n; i++)
            if (read_full(c, m, sizeof m) < 0 || write_all(c, m, sizeof m) < 0)
                return 1;
        close(c);
        return 0;
    }
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_ROUTER);
    char ep[PATH_MAX + 8], id[256];
    snprintf(ep, sizeof ep, "ipc://%s", path);
    int linger = 1000, rc = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(s, ep) < 0)
        rc = 1;
    for (int i = 0; rc == 0 && i < n; i++) {
        int il = zmq_recv(s, id, sizeof id, 0);
        int ml = il < 0 ? -1 : zmq_recv(s, m, sizeof m, 0);
        if (ml < 0 || zmq_send(s, id, (size_t)il, ZMQ_SNDMORE) < 0 ||
            zmq_send(s, m, (size_t)ml, 0) < 0)
            rc = 1;
    }
    zmq_close(s);
    zmq_ctx_term(ctx);
    return rc;
}

/* One message out and its echo back, through the zmq socket s if not NULL, else fd. */
static int round_trip(void *s, int fd, const char *buf, char *m) {
    if (s ? zmq_send(s, buf, HANDOFF_MSG, 0) < 0 || zmq_recv(s, m, HANDOFF_MSG, 0) < 0
          : write_all(fd, buf, HANDOFF_MSG) < 0 || read_full(fd, m, HANDOFF_MSG) < 0)
        return -EIO;
    return 0;
}

/* n round trips; fills wall and CPU (both processes) per round trip, in microseconds. */
static int measure(bool zmq, const char *dir, int n, double *ret_wall_us, double *ret_cpu_us) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/handoff-%s.sock", dir, zmq ? "zmq" : "unix");
    unlink(path);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int lfd = -1;
    if (!zmq) {
        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4) < 0)
            return -errno;
    }
    struct rusage before;
    getrusage(RUSAGE_CHILDREN, &before);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0)
        _exit(serve(zmq, path, lfd, n + 1));
    if (lfd >= 0)
        close(lfd);
    char buf[HANDOFF_MSG], m[HANDOFF_MSG];
    memset(buf, 'x', sizeof buf);
    int r = 0;
    void *ctx = NULL, *s = NULL;
    int cfd = -1;
    if (zmq) {
        char ep[PATH_MAX + 8];
        snprintf(ep, sizeof ep, "ipc://%s", path);
        ctx = zmq_ctx_new();
        s = zmq_socket(ctx, ZMQ_DEALER);
        if (zmq_connect(s, ep) < 0) /* libzmq retries until the child has bound */
            r = -errno;
    } else {
        cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (cfd < 0 || connect(cfd, (struct sockaddr *)&sa, sizeof sa) < 0)
            r = -errno;
    }
    /* One untimed round trip first: the DEALER's connection completes (libzmq retries it
     * every 100 ms until the child has bound) before the clock starts. */
    if (r == 0)
        r = round_trip(s, cfd, buf, m);
    struct rusage self0;
    getrusage(RUSAGE_SELF, &self0);
    double t0 = bench_now_ms();
    for (int i = 0; r == 0 && i < n; i++)
        r = round_trip(s, cfd, buf, m);
    double wall_ms = bench_now_ms() - t0;
    struct rusage self1;
    getrusage(RUSAGE_SELF, &self1);
    if (zmq) {
        zmq_close(s);
        zmq_ctx_term(ctx);
    } else if (cfd >= 0) {
        close(cfd);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        r = r < 0 ? r : -EIO;
    struct rusage after;
    getrusage(RUSAGE_CHILDREN, &after);
    unlink(path);
    if (r < 0)
        return r;
    /* The child's CPU includes its setup; the client's is the loop alone. Setup is a few
     * hundred microseconds against n round trips of tens each. */
    *ret_wall_us = wall_ms * 1000.0 / n;
    *ret_cpu_us = (cpu_s(&self1) - cpu_s(&self0) + cpu_s(&after) - cpu_s(&before)) * 1e6 / n;
    return 0;
}

int bench_cmd_handoff(int argc, char **argv) {
    static const char *const names[] = {"n", "workdir", "reps", NULL};
    const char *v[3];
    if (bench_opts(argc, argv, names, v) < 0)
        return 2;
    int n = (int)bench_opt_num(v[0], 20000), reps = (int)bench_opt_num(v[2], 3);
    const char *dir = v[1] ? v[1] : "/tmp";
    if (n < 100 || reps < 1 || reps > 50)
        return 2;
    for (int rep = 1; rep <= reps; rep++) {
        double zw, zc, uw, uc;
        int r = measure(true, dir, n, &zw, &zc);
        if (r == 0)
            r = measure(false, dir, n, &uw, &uc);
        if (r < 0) {
            bench_note("handoff: %s", strerror(-r));
            return 1;
        }
        printf("{\"kind\":\"handoff\",\"rep\":%d,\"n\":%d,\"msg_bytes\":%d,"
               "\"zmq_ipc\":{\"wall_us\":%.1f,\"cpu_us\":%.1f},"
               "\"unix\":{\"wall_us\":%.1f,\"cpu_us\":%.1f}}\n",
               rep, n, HANDOFF_MSG, zw, zc, uw, uc);
        fflush(stdout);
    }
    return 0;
}
