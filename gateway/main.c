/* kbox-gateway: parse the configuration, build the gateway, run its loop until SIGTERM or
 * SIGINT, then shut down in order. Everything else lives in the library. */
#include "gw.h"
#include "log.h"
#include "util.h"

#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sodium.h>

static void on_signal(loop_t *loop, int signo, void *arg) {
    gw_t *gw = arg;
    log_info("gateway", "signal received", "{s:i}", "signal", signo);
    gw_shutdown(gw);
}

int main(int argc, char **argv) {
    gw_config_t cfg;
    char err[512];
    int r = gw_config_load(&cfg, argc, argv, NULL, err, sizeof err);
    if (r == 1) {
        fputs(gw_config_usage(), stdout);
        return 0;
    }
    if (r < 0) {
        fprintf(stderr, "kbox-gateway: %s\n", err);
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "kbox-gateway: libsodium failed to initialise\n");
        return 1;
    }
    zsys_handler_set(NULL); /* our loop owns SIGINT/SIGTERM */
    /* Per worker five ZeroMQ sockets and four disconnect monitors (two sockets each), plus HTTP
     * connections: ZeroMQ's default of 1024 sockets (and a 1024 fd soft limit) would be hit near
     * 200 workers, and czmq aborts when a socket cannot be made. Size both for max_total_workers up
     * front. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    zsys_set_max_sockets((size_t)cfg.max_total_workers * 14 + 1024);
    /* libzmq's I/O thread wakes for every message the loop thread hands it (and the loop
     * thread for every batch it passes up). As SCHED_BATCH it does not preempt the loop
     * thread that woke it and is still answering or sending: it runs once that thread
     * sleeps, or on the other core. Each preemption is two context switches, and on this
     * project's VMs a switch costs more than the work it interrupts (docs/BENCHMARKS.md). */
    zsys_set_thread_sched_policy(SCHED_BATCH);
    signal(SIGPIPE, SIG_IGN);

    gw_t *gw = NULL;
    r = gw_new(&cfg, &gw);
    if (r < 0) {
        log_error("gateway", "cannot initialise", "{s:s,s:s}", "error", strerror(-r), "state_dir",
                  cfg.state_dir);
        return 1;
    }
    loop_watch_t *sig_term = loop_signal_add(gw->loop, SIGTERM, on_signal, gw);
    loop_watch_t *sig_int = loop_signal_add(gw->loop, SIGINT, on_signal, gw);
    r = gw_start(gw);
    if (r < 0) {
        log_error("gateway", "cannot listen", "{s:s,s:s,s:i}", "error", strerror(-r), "host",
                  cfg.host, "port", (int)cfg.port);
        gw_shutdown(gw);
    }
    loop_run(gw->loop);
    loop_watch_del(gw->loop, &sig_term);
    loop_watch_del(gw->loop, &sig_int);
    gw_destroy(&gw);
    log_info("gateway", "stopped", NULL);
    return r < 0 ? 1 : 0;
}
