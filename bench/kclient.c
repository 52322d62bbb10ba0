/* A kernel of the benchmark's own, with no gateway in between (workload 3 and the kernel start
 * probe). It is started the way the gateway's process launcher starts one (same interpreter,
 * same environment, ipc transport, a 64-byte hex key, HMAC-SHA256) and spoken to with our own
 * wire library, so the only thing missing compared with workload 1 is the gateway. */
#include "bench.h"
#include "jwire.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

struct kclient {
    char dir[PATH_MAX];
    pid_t pid;
    jwire_conn_t conn;
    jwire_signer_t *signer;
    jwire_replay_t *replay;
    char session[40];
    zsock_t *shell, *iopub, *control;
};

pid_t kclient_pid(const kclient_t *k) {
    return k ? k->pid : -1;
}

static bool sockets_ready(const kclient_t *k) {
    for (int c = 0; c < JWIRE_NCHANNELS; c++) {
        char path[PATH_MAX + 16];
        snprintf(path, sizeof path, "%s-%d", k->conn.ip, k->conn.ports[c]);
        struct stat st;
        if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
            return false;
    }
    return true;
}

static zsock_t *channel(kclient_t *k, jwire_channel_t ch, int type) {
    char ep[PATH_MAX + 32];
    if (jwire_conn_endpoint(&k->conn, ch, ep, sizeof ep) < 0)
        return NULL;
    zsock_t *s = zsock_new(type);
    if (!s)
        return NULL;
    zsock_set_linger(s, 0);
    zsock_set_rcvhwm(s, 100000);
    zsock_set_sndhwm(s, 100000);
    if (type == ZMQ_DEALER)
        zsock_set_identity(s, k->session);
    if (type == ZMQ_SUB)
        zsock_set_subscribe(s, "");
    if (zsock_connect(s, "%s", ep) < 0) {
        zsock_destroy(&s);
        return NULL;
    }
    return s;
}

static int send_msg(kclient_t *k, zsock_t *sock, const char *type, json_t *content,
                    char ret_id[40]) {
    jwire_msg_t *m = jwire_msg_new(type, k->session, "bench", NULL, content);
    if (!m)
        return -ENOMEM;
    if (ret_id)
        snprintf(ret_id, 40, "%s", jwire_msg_id(m));
    int r = jwire_msg_send(m, k->signer, sock);
    jwire_msg_destroy(&m);
    return r;
}

/* ipykernel through python, or (kernel_host set) the native kernel as its kernelspec starts it:
 * the kernel host's init with the kernel as its child, as in a worker. */
static pid_t spawn(const char *python, const char *kernel_host, const char *home,
                   const char *conn_file) {
    char env_home[PATH_MAX + 32], env_mpl[PATH_MAX + 32];
    snprintf(env_home, sizeof env_home, "HOME=%s", home);
    snprintf(env_mpl, sizeof env_mpl, "MPLCONFIGDIR=%s", home);
    char *py_argv[] = {(char *)python, "-m", "ipykernel_launcher", "-f", (char *)conn_file, NULL};
    char *kh_argv[] = {(char *)kernel_host, "--kernel", "native", "-f", (char *)conn_file, NULL};
    char **argv = kernel_host ? kh_argv : py_argv;
    char *envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin",
                    env_home,
                    env_mpl,
                    "LANG=C.UTF-8",
                    "MPLBACKEND=module://matplotlib_inline.backend_inline",
                    "PYTHONUNBUFFERED=1",
                    NULL};
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* Child of a threaded process: async-signal-safe calls only. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    setsid();
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGINT, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    int nul = open("/dev/null", O_RDWR);
    if (nul >= 0) {
        dup2(nul, 0);
        dup2(nul, 1);
        dup2(nul, 2);
    }
    if (chdir(home) < 0)
        _exit(127);
    execve(argv[0], argv, envp);
    _exit(127);
}

static void reap(kclient_t *k, int grace_ms) {
    if (k->pid <= 0)
        return;
    for (int waited = 0; waited < grace_ms; waited += 5) {
        if (waitpid(k->pid, NULL, WNOHANG) == k->pid) {
            kill(-k->pid, SIGKILL); /* anything the kernel left in its group */
            k->pid = -1;
            return;
        }
        bench_sleep_ms(5);
    }
    kill(-k->pid, SIGKILL);
    kill(k->pid, SIGKILL);
    waitpid(k->pid, NULL, 0);
    k->pid = -1;
}

static void kclient_free(kclient_t *k, int grace_ms) {
    if (k->control && k->pid > 0 && grace_ms > 0)
        send_msg(k, k->control, "shutdown_request", json_pack("{s:b}", "restart", 0), NULL);
    zsock_destroy(&k->shell);
    zsock_destroy(&k->iopub);
    zsock_destroy(&k->control);
    reap(k, grace_ms);
    jwire_signer_destroy(&k->signer);
    jwire_replay_destroy(&k->replay);
    if (k->dir[0])
        rm_rf(k->dir);
    free(k);
}

void kclient_destroy(kclient_t **self_p) {
    kclient_t *k = self_p ? *self_p : NULL;
    if (!k)
        return;
    *self_p = NULL;
    kclient_free(k, 2000);
}

/* Reads whatever is waiting on sock; feeds messages parented to parent_id into col (if any)
 * and notes kernel_info replies / iopub traffic for the start handshake. */
static int drain(kclient_t *k, zsock_t *sock, const char *chname, const char *parent_id,
                 bench_collect_t *col, bool *got_info, bool *got_iopub) {
    for (;;) {
        jwire_msg_t *m = NULL;
        int r = jwire_msg_recv(sock, k->signer, k->replay, NULL, &m);
        if (r == -EAGAIN)
            return 0;
        if (r < 0)
            return r;
        const char *type = jwire_msg_type(m);
        if (got_info && streq(chname, "shell") && streq(type, "kernel_info_reply"))
            *got_info = true;
        if (got_iopub && streq(chname, "iopub") &&
            streq(jwire_msg_parent_type(m), "kernel_info_request"))
            *got_iopub = true;
        if (col && parent_id && streq(jwire_msg_parent_id(m), parent_id))
            bench_collect_feed(col, chname, type, m->content);
        jwire_msg_destroy(&m);
    }
}

kclient_t *kclient_start(const char *python, const char *kernel_host, const char *dir,
                         int timeout_ms, int nudge_ms, kclient_times_t *times, char *err,
                         size_t errlen) {
    double t0 = bench_now_ms(), deadline = t0 + timeout_ms;
    kclient_t *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    k->pid = -1;
    char home[PATH_MAX + 8], conn_file[PATH_MAX + 16];
    if (xsnprintf(k->dir, sizeof k->dir, "%s", dir) < 0 || mkdir_p(k->dir, 0700) < 0 ||
        xsnprintf(home, sizeof home, "%s/home", dir) < 0 || mkdir_p(home, 0700) < 0 ||
        xsnprintf(conn_file, sizeof conn_file, "%s/kernel.json", dir) < 0) {
        snprintf(err, errlen, "cannot prepare %s", dir);
        kclient_free(k, 0);
        return NULL;
    }
    snprintf(k->conn.transport, sizeof k->conn.transport, "ipc");
    snprintf(k->conn.signature_scheme, sizeof k->conn.signature_scheme, "hmac-sha256");
    snprintf(k->conn.kernel_name, sizeof k->conn.kernel_name, "python3");
    random_hex(k->conn.key, 64);
    snprintf(k->conn.ip, sizeof k->conn.ip, "%s/k", dir);
    for (int c = 0; c < JWIRE_NCHANNELS; c++)
        k->conn.ports[c] = c + 1;
    uuid4(k->session);
    k->signer = jwire_signer_new("hmac-sha256", k->conn.key, strlen(k->conn.key));
    k->replay = jwire_replay_new(4096);
    if (!k->signer || !k->replay || jwire_conn_write(conn_file, &k->conn) < 0) {
        snprintf(err, errlen, "cannot write the connection file");
        kclient_free(k, 0);
        return NULL;
    }
    double t_conn = bench_now_ms();
    k->pid = spawn(python, kernel_host, home, conn_file);
    if (k->pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        kclient_free(k, 0);
        return NULL;
    }
    double t_spawn = bench_now_ms();
    while (!sockets_ready(k)) {
        if (waitpid(k->pid, NULL, WNOHANG) == k->pid) {
            k->pid = -1;
            snprintf(err, errlen, "the kernel exited while starting");
            kclient_free(k, 0);
            return NULL;
        }
        if (bench_now_ms() > deadline) {
            snprintf(err, errlen, "the kernel did not bind its sockets in time");
            kclient_free(k, 0);
            return NULL;
        }
        bench_sleep_ms(1);
    }
    double t_sock = bench_now_ms();
    k->shell = channel(k, JWIRE_SHELL, ZMQ_DEALER);
    k->iopub = channel(k, JWIRE_IOPUB, ZMQ_SUB);
    k->control = channel(k, JWIRE_CONTROL, ZMQ_DEALER);
    if (!k->shell || !k->iopub || !k->control) {
        snprintf(err, errlen, "cannot connect to the kernel's sockets");
        kclient_free(k, 0);
        return NULL;
    }
    bool got_info = false, got_iopub = false;
    double t_info = 0, t_iopub = 0, next_nudge = 0;
    while (!got_info || !got_iopub) {
        double now = bench_now_ms();
        if (now > deadline) {
            snprintf(err, errlen, "no kernel_info_reply in time");
            kclient_free(k, 0);
            return NULL;
        }
        /* Until iopub flows our SUB may have joined after the status went out: ask again. */
        if (now >= next_nudge) {
            send_msg(k, k->shell, "kernel_info_request", NULL, NULL);
            next_nudge = now + nudge_ms;
        }
        zmq_pollitem_t items[2] = {{zsock_resolve(k->shell), 0, ZMQ_POLLIN, 0},
                                   {zsock_resolve(k->iopub), 0, ZMQ_POLLIN, 0}};
        zmq_poll(items, 2, (long)(next_nudge - now) + 1);
        bool had_info = got_info, had_iopub = got_iopub;
        drain(k, k->shell, "shell", NULL, NULL, &got_info, &got_iopub);
        drain(k, k->iopub, "iopub", NULL, NULL, &got_info, &got_iopub);
        if (got_info && !had_info)
            t_info = bench_now_ms();
        if (got_iopub && !had_iopub)
            t_iopub = bench_now_ms();
    }
    if (times)
        *times = (kclient_times_t){.conn_file_ms = t_conn - t0,
                                   .spawn_ms = t_spawn - t0,
                                   .sockets_ms = t_sock - t0,
                                   .info_ms = t_info - t0,
                                   .iopub_ms = t_iopub - t0};
    /* Late replies to the nudges must not be mistaken for an execution's messages: they are
     * parented to kernel_info requests, so they are simply ignored later. */
    return k;
}

int kclient_execute(kclient_t *k, const char *code, int timeout_ms, bench_reply_t *ret) {
    char id[40];
    memset(ret, 0, sizeof *ret);
    int r = send_msg(k, k->shell, "execute_request", bench_execute_content(code), id);
    if (r < 0) {
        snprintf(ret->why, sizeof ret->why, "send: %s", strerror(-r));
        return r;
    }
    bench_collect_t col = {0};
    double deadline = bench_now_ms() + timeout_ms;
    while (!col.got_reply || !col.got_idle) {
        int left = (int)(deadline - bench_now_ms());
        if (left <= 0) {
            bench_collect_free(&col);
            snprintf(ret->why, sizeof ret->why, "timed out");
            return -ETIMEDOUT;
        }
        zmq_pollitem_t items[2] = {{zsock_resolve(k->shell), 0, ZMQ_POLLIN, 0},
                                   {zsock_resolve(k->iopub), 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, left) < 0 && errno != EINTR) {
            bench_collect_free(&col);
            return -errno;
        }
        if ((r = drain(k, k->shell, "shell", id, &col, NULL, NULL)) < 0 ||
            (r = drain(k, k->iopub, "iopub", id, &col, NULL, NULL)) < 0) {
            bench_collect_free(&col);
            snprintf(ret->why, sizeof ret->why, "receive: %s", strerror(-r));
            return r;
        }
    }
    bench_collect_finish(&col, ret);
    return 0;
}
