/* Everything measured besides throughput: CPU and memory of process trees (from /proc), the
 * time to a new user's first result (pool warm or empty), a kernel's start broken into steps,
 * gateway and worker memory at N sessions, and how many sessions the machine holds before
 * requests fail. Also two helpers run.sh uses between phases: `wait` (the pool has settled:
 * nothing starting or stopping) and `quiet` (the machine's CPUs are idle again). */
#include "bench.h"

#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <sys/wait.h>

/* ---- /proc ---------------------------------------------------------------------------- */

static long clk_tck(void) {
    static long t;
    if (!t)
        t = sysconf(_SC_CLK_TCK);
    return t > 0 ? t : 100;
}

/* ppid and utime+stime (ticks) of pid, from /proc/pid/stat. */
static int proc_stat(pid_t pid, pid_t *ret_ppid, uint64_t *ret_ticks) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may contain spaces and parentheses */
    if (!p)
        return -EINVAL;
    int ppid;
    unsigned long long ut, st;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
     * stime */
    if (sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ppid, &ut, &st) != 3)
        return -EINVAL;
    if (ret_ppid)
        *ret_ppid = ppid;
    if (ret_ticks)
        *ret_ticks = ut + st;
    return 0;
}

typedef struct {
    pid_t pid, ppid;
    uint64_t ticks;
} pinfo_t;

/* All processes; *ret is malloc'd. */
static int proc_all(pinfo_t **ret, size_t *ret_n) {
    DIR *d = opendir("/proc");
    if (!d)
        return -errno;
    size_t n = 0, cap = 1024;
    pinfo_t *v = malloc(cap * sizeof *v);
    struct dirent *e;
    while (v && (e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        pinfo_t pi = {.pid = (pid_t)atoi(e->d_name)};
        if (proc_stat(pi.pid, &pi.ppid, &pi.ticks) < 0)
            continue;
        if (n == cap) {
            pinfo_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv) {
                free(v);
                v = NULL;
                break;
            }
            v = nv;
        }
        v[n++] = pi;
    }
    closedir(d);
    if (!v)
        return -ENOMEM;
    *ret = v;
    *ret_n = n;
    return 0;
}

static bool is_descendant(const pinfo_t *v, size_t n, pid_t pid, pid_t root) {
    for (int depth = 0; depth < 64 && pid > 1; depth++) {
        pid_t pp = 0;
        for (size_t i = 0; i < n; i++)
            if (v[i].pid == pid) {
                pp = v[i].ppid;
                break;
            }
        if (pp == root)
            return true;
        pid = pp;
    }
    return false;
}

int bench_proc_cpu(pid_t pid, bench_cpu_t *ret) {
    pinfo_t *v = NULL;
    size_t n = 0;
    int r = proc_all(&v, &n);
    if (r < 0)
        return r;
    bench_cpu_t c = {0};
    double ms_per_tick = 1000.0 / (double)clk_tck();
    for (size_t i = 0; i < n; i++) {
        if (v[i].pid == pid)
            c.self_ms = (double)v[i].ticks * ms_per_tick;
        else if (is_descendant(v, n, v[i].pid, pid)) {
            c.descendants_ms += (double)v[i].ticks * ms_per_tick;
            c.ndescendants++;
        }
    }
    free(v);
    /* Our own threads: /proc/self/stat covers every thread of the process. */
    *ret = c;
    return 0;
}

int bench_machine_cpu(uint64_t *ret_busy, uint64_t *ret_total) {
    FILE *f = fopen("/proc/stat", "re");
    if (!f)
        return -errno;
    unsigned long long u = 0, ni = 0, sy = 0, id = 0, io = 0, irq = 0, sirq = 0, st = 0;
    int k = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &u, &ni, &sy, &id, &io, &irq,
                   &sirq, &st);
    fclose(f);
    if (k < 4)
        return -EINVAL;
    uint64_t total = u + ni + sy + id + io + irq + sirq + st;
    *ret_total = total;
    *ret_busy = total - id - io;
    return 0;
}

static long field_kb(const char *path, const char *key) {
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0) {
            v = atol(line + kl);
            break;
        }
    fclose(f);
    return v;
}

int bench_proc_mem(pid_t pid, long *ret_rss_kb, long *ret_pss_kb) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    long rss = field_kb(path, "VmRSS:");
    if (rss < 0)
        return -ESRCH;
    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
    long pss = field_kb(path, "Pss:");
    *ret_rss_kb = rss;
    *ret_pss_kb = pss < 0 ? rss : pss;
    return 0;
}

long bench_mem_available_kb(void) {
    return field_kb("/proc/meminfo", "MemAvailable:");
}

static double read_num(const char *path, const char *key) {
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    char line[256];
    double v = -1;
    size_t kl = key ? strlen(key) : 0;
    while (fgets(line, sizeof line, f))
        if (!key || strncmp(line, key, kl) == 0) {
            v = strtod(line + kl, NULL);
            break;
        }
    fclose(f);
    return v;
}

double bench_cgroup_cpu_ms(const char *name) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "/sys/fs/cgroup/cpuacct/%s/cpuacct.usage", name);
    double ns = read_num(path, NULL);
    if (ns >= 0)
        return ns / 1e6;
    snprintf(path, sizeof path, "/sys/fs/cgroup/%s/cpu.stat", name);
    double us = read_num(path, "usage_usec ");
    if (us < 0) {
        snprintf(path, sizeof path, "/sys/fs/cgroup/unified/%s/cpu.stat", name);
        us = read_num(path, "usage_usec ");
    }
    return us >= 0 ? us / 1e3 : -1;
}

long bench_cgroup_mem_kb(const char *name) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "/sys/fs/cgroup/memory/%s/memory.usage_in_bytes", name);
    double b = read_num(path, NULL);
    if (b < 0) {
        snprintf(path, sizeof path, "/sys/fs/cgroup/%s/memory.current", name);
        b = read_num(path, NULL);
    }
    return b >= 0 ? (long)(b / 1024) : -1;
}

static bool cmdline_has(pid_t pid, const char *needle) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i++)
        if (!buf[i])
            buf[i] = ' ';
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

static bool cgroup_has(pid_t pid, const char *needle) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/cgroup", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

typedef struct {
    int kernels;         /* kernel processes found (ipykernel or native) */
    long rss_kb, pss_kb; /* summed over every process of the workers */
    const char *method;
} workers_mem_t;

/* The gateway's workers: its descendants (process launcher); failing that (runc: containers
 * are not the gateway's children), the kernels in the gateway's cgroup parent: ipykernel
 * processes and their kernel-host parents, or native kernels (kernel-host in its kernel role,
 * "--kernel native"; the container's init, "kernel-host -- ...", is not counted). */
static int workers_mem(pid_t gw, const char *cgroup, workers_mem_t *ret) {
    pinfo_t *v = NULL;
    size_t n = 0;
    int r = proc_all(&v, &n);
    if (r < 0)
        return r;
    workers_mem_t w = {.method = "descendants of the gateway"};
    for (size_t i = 0; i < n; i++) {
        if (!is_descendant(v, n, v[i].pid, gw))
            continue;
        long rss, pss;
        if (bench_proc_mem(v[i].pid, &rss, &pss) < 0)
            continue;
        w.rss_kb += rss;
        w.pss_kb += pss;
        w.kernels += cmdline_has(v[i].pid, "ipykernel_launcher") ||
                     cmdline_has(v[i].pid, "kbox-kernel-host");
    }
    if (w.kernels == 0) {
        char needle[128];
        snprintf(needle, sizeof needle, "/%s/", cgroup ? cgroup : "kbox");
        w = (workers_mem_t){.method = "kernel + kernel-host processes in the gateway's cgroup"};
        for (size_t i = 0; i < n; i++) {
            bool ipk = cmdline_has(v[i].pid, "ipykernel_launcher") &&
                       !cmdline_has(v[i].pid, "kernel-host");
            bool native = cmdline_has(v[i].pid, "--kernel native") &&
                          !cmdline_has(v[i].pid, "kernel-host -- "); /* not the init */
            if (!(ipk || native) || !cgroup_has(v[i].pid, needle))
                continue;
            long rss, pss;
            if (bench_proc_mem(v[i].pid, &rss, &pss) < 0)
                continue;
            w.rss_kb += rss;
            w.pss_kb += pss;
            w.kernels++;
            if (ipk && cmdline_has(v[i].ppid, "kbox-kernel-host") &&
                bench_proc_mem(v[i].ppid, &rss, &pss) >= 0) {
                w.rss_kb += rss;
                w.pss_kb += pss;
            }
        }
    }
    free(v);
    *ret = w;
    return 0;
}

/* ---- pool status --------------------------------------------------------------------------- */

static int get_status(const char *url, const char *token, json_t **ret) {
    int status = 0;
    json_t *j = NULL;
    int r = bench_http_json(url, token, "GET", "/status", NULL, 10000, &status, &j);
    if (r < 0)
        return r;
    if (status != 200 || !j) {
        json_decref(j);
        return -EPROTO;
    }
    *ret = j;
    return 0;
}

static int st_int(const json_t *st, const char *k) {
    return (int)json_integer_value(json_object_get(st, k));
}

/* Nothing starting or stopping, and at least min_idle idle (-1: the gateway's own min). */
static int wait_settled(const char *url, const char *token, int min_idle, double timeout_s,
                        json_t **ret_status) {
    double deadline = bench_now_ms() + timeout_s * 1000;
    json_t *st = NULL;
    for (;;) {
        json_decref(st);
        st = NULL;
        int r = get_status(url, token, &st);
        if (r >= 0) {
            int want = min_idle >= 0 ? min_idle : st_int(st, "min_idle_workers");
            if (st_int(st, "starting_workers") == 0 && st_int(st, "stopping_workers") == 0 &&
                st_int(st, "idle_workers") >= want && st_int(st, "queued_requests") == 0) {
                if (ret_status)
                    *ret_status = st;
                else
                    json_decref(st);
                return 0;
            }
        }
        if (bench_now_ms() > deadline) {
            if (ret_status)
                *ret_status = st;
            else
                json_decref(st);
            return -ETIMEDOUT;
        }
        bench_sleep_ms(50);
    }
}

/* Until the machine's CPUs have been mostly idle for a 300 ms window (other tenants and the
 * previous phase's cleanup), at most timeout_s. */
static void wait_quiet(double busy_pct, double timeout_s) {
    /* run.sh --quick caps every such wait: a smoke run checks the tooling, not the figures. */
    const char *cap = getenv("KBOX_BENCH_MAX_QUIET_S");
    if (cap && *cap && atof(cap) < timeout_s)
        timeout_s = atof(cap);
    if (timeout_s <= 0)
        return;
    double deadline = bench_now_ms() + timeout_s * 1000;
    for (;;) {
        uint64_t b0, t0, b1, t1;
        bench_machine_cpu(&b0, &t0);
        bench_sleep_ms(300);
        bench_machine_cpu(&b1, &t1);
        double pct = t1 > t0 ? 100.0 * (double)(b1 - b0) / (double)(t1 - t0) : 0;
        if (pct <= busy_pct)
            return;
        if (bench_now_ms() > deadline) {
            bench_note("machine still %.0f%% busy after %.0f s; going on", pct, timeout_s);
            return;
        }
    }
}

int bench_cmd_wait(int argc, char **argv) {
    static const char *const names[] = {"url", "token", "idle", "timeout", NULL};
    const char *v[4];
    if (bench_opts(argc, argv, names, v) < 0 || !v[0])
        return 2;
    json_t *st = NULL;
    int r = wait_settled(v[0], v[1], (int)bench_opt_num(v[2], -1), bench_opt_num(v[3], 120), &st);
    char *s = st ? json_dumps(st, JSON_COMPACT) : NULL;
    if (r < 0)
        bench_note("pool did not settle: %s", s ? s : "no status");
    free(s);
    json_decref(st);
    return r < 0 ? 1 : 0;
}

int bench_cmd_quiet(int argc, char **argv) {
    static const char *const names[] = {"busy-pct", "timeout", NULL};
    const char *v[2];
    if (bench_opts(argc, argv, names, v) < 0)
        return 2;
    wait_quiet(bench_opt_num(v[0], 15), bench_opt_num(v[1], 20));
    return 0;
}

/* ---- first result for a new user ------------------------------------------------------------ */

static int post_execute(httpc_t *c, const char *hdr, const char *user, const char *code,
                        double *ret_ms, int *ret_status, char *why, size_t whylen) {
    json_t *b = json_pack("{s:s,s:s}", "user_uuid", user, "code", code);
    _cleanup_free_ char *body = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    _cleanup_free_ char *resp = NULL;
    double t0 = bench_now_ms();
    int r =
        httpc_request(c, "POST", "/execute", hdr, body, body ? strlen(body) : 0, ret_status, &resp);
    *ret_ms = bench_now_ms() - t0;
    if (r < 0) {
        snprintf(why, whylen, "%s", strerror(-r));
        return r;
    }
    if (*ret_status != 200)
        snprintf(why, whylen, "HTTP %d %.120s", *ret_status, resp ? resp : "");
    return 0;
}

static void post_release(httpc_t *c, const char *hdr, const char *user) {
    json_t *b = json_pack("{s:s}", "user_uuid", user);
    char *body = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    int status;
    if (body)
        httpc_request(c, "POST", "/release", hdr, body, strlen(body), &status, NULL);
    free(body);
}

static json_t *dist(double *v, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_real(v[i]));
    double s[1024];
    size_t m = n < 1024 ? n : 1024;
    memcpy(s, v, m * sizeof *s);
    double med = bench_median(s, m); /* sorts s */
    return json_pack("{s:o,s:f,s:f,s:f,s:f}", "samples", arr, "p50", med, "p95",
                     bench_pct(s, m, 0.95), "min", m ? s[0] : 0.0, "max", m ? s[m - 1] : 0.0);
}

int bench_cmd_first(int argc, char **argv) {
    static const char *const names[] = {"url", "token", "mode", "samples", "label", NULL};
    const char *v[5];
    if (bench_opts(argc, argv, names, v) < 0 || !v[0])
        return 2;
    const char *url = v[0], *token = v[1] ? v[1] : "", *mode = v[2] ? v[2] : "warm";
    int samples = (int)bench_opt_num(v[3], 10);
    if (samples < 1 || samples > 1000)
        return 2;
    char host[64], hdr[300];
    int port;
    if (bench_url_parse(url, host, sizeof host, &port) < 0)
        return 2;
    snprintf(hdr, sizeof hdr, "X-Auth-Token: %s\r\n", token);
    httpc_t *c = httpc_new(host, port, 120000);
    double *first = calloc((size_t)samples, sizeof *first);
    double *warm = calloc((size_t)samples, sizeof *warm);
    double *delta = calloc((size_t)samples, sizeof *delta);
    if (!c || !first || !warm || !delta)
        return 1;
    int n = 0, failed = 0;
    char why[200] = "";
    for (int i = 0; i < samples; i++) {
        if (wait_settled(url, token, -1, 120, NULL) < 0)
            bench_note("first: pool not settled; measuring anyway");
        wait_quiet(20, 3);
        char user[40] = "bench-first-";
        random_hex(user + strlen(user), 8);
        double ms, wms[3];
        int status;
        if (post_execute(c, hdr, user, "x = 1; print(x)", &ms, &status, why, sizeof why) < 0 ||
            status != 200) {
            failed++;
            post_release(c, hdr, user);
            continue;
        }
        /* The pool replaces the worker the user took: let that finish before the warm
         * requests, so they measure a warm request and not a kernel start. */
        wait_settled(url, token, -1, 120, NULL);
        wait_quiet(20, 3);
        bool ok = true;
        for (int k = 0; k < 3 && ok; k++)
            ok = post_execute(c, hdr, user, "x += 1; print(x)", &wms[k], &status, why,
                              sizeof why) >= 0 &&
                 status == 200;
        post_release(c, hdr, user);
        if (!ok) {
            failed++;
            continue;
        }
        first[n] = ms;
        warm[n] = bench_median(wms, 3);
        delta[n] = first[n] - warm[n];
        bench_note("first (%s) %d/%d: first %.1f ms, warm %.1f ms", mode, i + 1, samples, first[n],
                   warm[n]);
        n++;
    }
    httpc_destroy(&c);
    wait_settled(url, token, -1, 120, NULL);
    json_t *res =
        json_pack("{s:s,s:s,s:s,s:i,s:i,s:o,s:o,s:o}", "kind", "first", "label", v[4] ? v[4] : mode,
                  "mode", mode, "samples", n, "failed", failed, "first_ms", dist(first, (size_t)n),
                  "warm_ms", dist(warm, (size_t)n), "delta_ms", dist(delta, (size_t)n));
    if (failed)
        json_object_set_new(res, "why", json_string(why));
    bench_emit(res);
    free(first);
    free(warm);
    free(delta);
    return 0;
}

/* ---- kernel start, step by step --------------------------------------------------------- */

static double time_cmd(char *const argv[]) {
    double t0 = bench_now_ms();
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 1);
            dup2(nul, 2);
        }
        char *envp[] = {"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/tmp", NULL};
        execve(argv[0], argv, envp);
        _exit(127);
    }
    if (pid < 0)
        return -1;
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? bench_now_ms() - t0 : -1;
}

int bench_cmd_kstart(int argc, char **argv) {
    static const char *const names[] = {"python", "samples", "workdir", NULL};
    const char *v[3];
    if (bench_opts(argc, argv, names, v) < 0)
        return 2;
    const char *py = v[0] ? v[0] : "/usr/bin/python3";
    int samples = (int)bench_opt_num(v[1], 5);
    if (samples < 1 || samples > 100)
        return 2;
    const char *wd = v[2] ? v[2] : "/tmp/kbox-bench-kstart";
    enum { PY, IMP, CONN, SPAWN, SOCK, INFO, IOPUB, EX1, EX2, NSTEP };
    static const char *const step_names[NSTEP] = {
        "python_startup",    "import_ipykernel", "conn_file",     "fork_exec",     "sockets_bound",
        "kernel_info_reply", "iopub_flowing",    "first_execute", "second_execute"};
    double *vals[NSTEP];
    for (int s = 0; s < NSTEP; s++)
        vals[s] = calloc((size_t)samples, sizeof(double));
    int n = 0;
    char err[256] = "";
    for (int i = 0; i < samples; i++) {
        wait_quiet(20, 3);
        char *a1[] = {(char *)py, "-c", "pass", NULL};
        char *a2[] = {(char *)py, "-c", "import ipykernel.kernelapp", NULL};
        double py_ms = time_cmd(a1), imp_ms = time_cmd(a2);
        char dir[PATH_MAX], rnd[17];
        random_hex(rnd, 8);
        snprintf(dir, sizeof dir, "%s/%s", wd, rnd);
        kclient_times_t t;
        wait_quiet(20, 3);
        kclient_t *k = kclient_start(py, NULL, dir, 60000, 10, &t, err, sizeof err);
        if (!k) {
            bench_note("kstart: %s", err);
            continue;
        }
        bench_reply_t r1 = {0}, r2 = {0};
        double t0 = bench_now_ms();
        int e1 = kclient_execute(k, "x = 1; print(x)", 60000, &r1);
        double t1 = bench_now_ms();
        int e2 = kclient_execute(k, "x += 1; print(x)", 60000, &r2);
        double t2 = bench_now_ms();
        bench_reply_clear(&r1);
        bench_reply_clear(&r2);
        kclient_destroy(&k);
        if (e1 < 0 || e2 < 0)
            continue;
        double row[NSTEP] = {py_ms,     imp_ms,     t.conn_file_ms, t.spawn_ms, t.sockets_ms,
                             t.info_ms, t.iopub_ms, t1 - t0,        t2 - t1};
        for (int s = 0; s < NSTEP; s++)
            vals[s][n] = row[s];
        n++;
        bench_note("kstart %d/%d: sockets %.0f ms, kernel_info %.0f ms, iopub %.0f ms", i + 1,
                   samples, t.sockets_ms, t.info_ms, t.iopub_ms);
    }
    rm_rf(wd);
    json_t *steps = json_object();
    for (int s = 0; s < NSTEP; s++) {
        json_object_set_new(steps, step_names[s], json_real(bench_median(vals[s], (size_t)n)));
        free(vals[s]);
    }
    bench_emit(json_pack("{s:s,s:i,s:s,s:o}", "kind", "kstart", "samples", n, "note",
                         "milliseconds, medians; conn_file..iopub_flowing cumulative from the "
                         "start; python_startup and import_ipykernel are separate processes",
                         "steps_ms", steps));
    return 0;
}

/* ---- memory at N sessions, and capacity ------------------------------------------------- */

typedef struct {
    const char *url, *token;
    char user[40];
    int status;
    double ms;
    char why[200];
    pthread_t th;
} newsess_t;

static void *newsess_main(void *arg) {
    newsess_t *s = arg;
    char host[64], hdr[300];
    int port;
    bench_url_parse(s->url, host, sizeof host, &port);
    snprintf(hdr, sizeof hdr, "X-Auth-Token: %s\r\n", s->token);
    httpc_t *c = httpc_new(host, port, 180000);
    if (c && post_execute(c, hdr, s->user, "x = 1", &s->ms, &s->status, s->why, sizeof s->why) < 0)
        s->status = 0;
    httpc_destroy(&c);
    return NULL;
}

static void *release_main(void *arg) {
    newsess_t *s = arg;
    char host[64], hdr[300];
    int port;
    bench_url_parse(s->url, host, sizeof host, &port);
    snprintf(hdr, sizeof hdr, "X-Auth-Token: %s\r\n", s->token);
    httpc_t *c = httpc_new(host, port, 60000);
    if (c)
        post_release(c, hdr, s->user);
    httpc_destroy(&c);
    return NULL;
}

static int parse_list(const char *s, int *out, int max) {
    int n = 0;
    while (s && *s && n < max) {
        out[n++] = atoi(s);
        s = strchr(s, ',');
        if (s)
            s++;
    }
    return n;
}

int bench_cmd_mem(int argc, char **argv) {
    static const char *const names[] = {"url",   "token",      "gw-pid",         "at", "max",
                                        "batch", "reserve-mb", "kernels-cgroup", NULL};
    const char *v[8];
    if (bench_opts(argc, argv, names, v) < 0 || !v[0] || !v[2])
        return 2;
    const char *url = v[0], *token = v[1] ? v[1] : "";
    pid_t gw = (pid_t)bench_opt_num(v[2], 0);
    int at[16], nat = parse_list(v[3] ? v[3] : "25,200", at, 16);
    int cap = (int)bench_opt_num(v[4], at[nat - 1]);
    int batch = (int)bench_opt_num(v[5], 8);
    long reserve_kb = (long)bench_opt_num(v[6], 4096) * 1024;
    if (cap < 1 || batch < 1 || cap > 100000)
        return 2;
    newsess_t *ss = calloc((size_t)cap, sizeof *ss);
    if (!ss)
        return 1;
    wait_settled(url, token, -1, 120, NULL);
    wait_quiet(20, 10);
    long avail0 = bench_mem_available_kb();
    long gw_rss0 = 0, gw_pss0 = 0;
    bench_proc_mem(gw, &gw_rss0, &gw_pss0);
    int held = 0, created = 0, next_at = 0;
    const char *stopped_by = "cap";
    char failure[256] = "";
    double ramp_t0 = bench_now_ms();
    while (held < cap) {
        long avail = bench_mem_available_kb();
        if (avail >= 0 && avail < reserve_kb) {
            stopped_by = "memory reserve";
            break;
        }
        int goal = next_at < nat && at[next_at] > held ? at[next_at] : cap;
        int n = goal - held < batch ? goal - held : batch;
        if (created + n > cap)
            break;
        for (int i = 0; i < n; i++) {
            newsess_t *s = &ss[created + i];
            s->url = url;
            s->token = token;
            snprintf(s->user, sizeof s->user, "bench-mem-");
            random_hex(s->user + strlen(s->user), 8);
            pthread_create(&s->th, NULL, newsess_main, s);
        }
        int ok = 0;
        for (int i = 0; i < n; i++) {
            newsess_t *s = &ss[created + i];
            pthread_join(s->th, NULL);
            if (s->status == 200)
                ok++;
            else if (!failure[0])
                snprintf(failure, sizeof failure, "new session %d: %s", held + 1,
                         s->why[0] ? s->why : "no answer");
        }
        created += n;
        held += ok;
        if (ok < n) {
            stopped_by = "request failed";
            break;
        }
        if (next_at < nat && held >= at[next_at]) {
            wait_settled(url, token, 0, 300, NULL);
            wait_quiet(20, 15);
            long rss = 0, pss = 0;
            bench_proc_mem(gw, &rss, &pss);
            workers_mem_t wm = {0};
            workers_mem(gw, v[7], &wm);
            long cgkb = v[7] ? bench_cgroup_mem_kb(v[7]) : -1;
            long av = bench_mem_available_kb();
            /* Still serving: one request in each of 10 sessions spread over the ramp. */
            double lat[10];
            int nl = 0;
            char host[64], hdr[300];
            int port;
            bench_url_parse(url, host, sizeof host, &port);
            snprintf(hdr, sizeof hdr, "X-Auth-Token: %s\r\n", token);
            httpc_t *c = httpc_new(host, port, 60000);
            for (int i = 0; i < 10 && c; i++) {
                int st;
                char why[200];
                double ms;
                const newsess_t *s = &ss[(size_t)i * (size_t)created / 10];
                if (s->status == 200 &&
                    post_execute(c, hdr, s->user, "x += 1; print(x)", &ms, &st, why, sizeof why) >=
                        0 &&
                    st == 200)
                    lat[nl++] = ms;
            }
            httpc_destroy(&c);
            double k = wm.kernels ? (double)wm.kernels : 1;
            json_t *mj = json_pack(
                "{s:s,s:i,s:i,s:I,s:I,s:I,s:f,s:f,s:f,s:s,s:f,s:i,s:f}", "kind", "mem", "sessions",
                held, "workers", wm.kernels, "gw_rss_kb", (json_int_t)rss, "gw_pss_kb",
                (json_int_t)pss, "gw_rss_growth_kb", (json_int_t)(rss - gw_rss0), "worker_rss_kb",
                (double)wm.rss_kb / k, "worker_pss_kb", (double)wm.pss_kb / k,
                "memavail_drop_per_session_kb", (double)(avail0 - av) / (double)held, "method",
                wm.method, "ramp_s", (bench_now_ms() - ramp_t0) / 1000, "probe_ok", nl,
                "probe_p50_ms", bench_median(lat, (size_t)nl));
            if (cgkb >= 0)
                json_object_set_new(mj, "cgroup_kb_per_worker", json_real((double)cgkb / k));
            bench_emit(mj);
            bench_note("mem at %d sessions: gateway RSS %ld KiB, per worker PSS %.0f KiB", held,
                       rss, (double)wm.pss_kb / k);
            next_at++;
        }
    }
    long avail = bench_mem_available_kb();
    double per = held ? (double)(avail0 - avail) / held : 0;
    json_t *res = json_pack("{s:s,s:i,s:i,s:s,s:I,s:f,s:f}", "kind", "capacity", "held", held,
                            "cap", cap, "stopped_by", stopped_by, "memavail_kb", (json_int_t)avail,
                            "per_session_kb", per, "ramp_s", (bench_now_ms() - ramp_t0) / 1000);
    if (failure[0])
        json_object_set_new(res, "failure", json_string(failure));
    if (per > 0)
        json_object_set_new(res, "memory_bound_sessions",
                            json_integer((json_int_t)(held + (double)(avail - 1048576) / per)));
    bench_emit(res);
    /* Release everything that was asked for, failed or not, a batch at a time. */
    for (int i = 0; i < created; i += batch) {
        int n = created - i < batch ? created - i : batch;
        for (int j = 0; j < n; j++)
            pthread_create(&ss[i + j].th, NULL, release_main, &ss[i + j]);
        for (int j = 0; j < n; j++)
            pthread_join(ss[i + j].th, NULL);
    }
    free(ss);
    return 0;
}

/* ---- worker start steps as the gateway logs them ---------------------------------------- */

int bench_cmd_gwlog(int argc, char **argv) {
    static const char *const names[] = {"file", "label", NULL};
    const char *v[2];
    if (bench_opts(argc, argv, names, v) < 0 || !v[0])
        return 2;
    FILE *f = fopen(v[0], "re");
    if (!f)
        return 1;
    json_t *acc = json_object(); /* "msg: field" -> [values] */
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        if (!json_is_object(j)) {
            json_decref(j);
            continue;
        }
        const char *msg = json_string_value(json_object_get(j, "msg"));
        const char *k;
        json_t *val;
        json_object_foreach(j, k, val) {
            size_t kl = strlen(k);
            if (!msg || !json_is_number(val) || kl < 4 || strcmp(k + kl - 3, "_ms") != 0)
                continue;
            char key[256];
            snprintf(key, sizeof key, "%s: %s", msg, k);
            json_t *arr = json_object_get(acc, key);
            if (!arr) {
                arr = json_array();
                json_object_set_new(acc, key, arr);
            }
            json_array_append_new(arr, json_real(json_number_value(val)));
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    json_t *out = json_object();
    const char *k;
    json_t *arr;
    json_object_foreach(acc, k, arr) {
        size_t n = json_array_size(arr);
        double *x = calloc(n ? n : 1, sizeof *x);
        for (size_t i = 0; i < n; i++)
            x[i] = json_number_value(json_array_get(arr, i));
        double med = bench_median(x, n);
        json_object_set_new(
            out, k,
            json_pack("{s:i,s:f,s:f}", "n", (int)n, "p50", med, "p95", bench_pct(x, n, 0.95)));
        free(x);
    }
    json_decref(acc);
    bench_emit(
        json_pack("{s:s,s:s,s:o}", "kind", "gwlog", "label", v[1] ? v[1] : "", "steps", out));
    return 0;
}
