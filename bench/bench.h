/* kbox-bench internals: the seed's scenarios, latency statistics, the three targets a virtual
 * user can drive (POST /execute, the Jupyter kernels API over WebSocket, ZeroMQ straight to a
 * kernel) and the probes (start times, memory, capacity). One header for one tool: these are
 * not a library anyone else links.
 *
 * Model: one thread per virtual user, each with its own blocking connection. The generator
 * spends microseconds per request, threads keep each user's script sequential and readable,
 * and nothing is shared between users but the start barrier. */
#pragma once

#include "util.h"

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- random numbers (xoshiro128** is overkill; splitmix64 is enough and seedable) -------- */

typedef struct {
    uint64_t s;
} bench_rng_t;

void bench_rng_seed(bench_rng_t *r, uint64_t seed);
uint64_t bench_rng_next(bench_rng_t *r);
/* Uniform integer in [lo, hi], both inclusive (Python's random.randint). */
int bench_rng_int(bench_rng_t *r, int lo, int hi);
/* Uniform real in [lo, hi). */
double bench_rng_real(bench_rng_t *r, double lo, double hi);

/* ---- the seed's scenarios (scenario.c) -------------------------------------------------- */

typedef enum { SCEN_ARITH, SCEN_LIST, SCEN_NUMPY, SCEN_N } bench_scen_kind_t;

typedef struct {
    bench_scen_kind_t kind;
    long long x;        /* arithmetic: the running value */
    long long list_sum; /* list: sum of my_list */
    long long arr[3];   /* numpy: the array's current values */
} bench_scen_t;

/* Picks one scenario at random, as the seed's users do. */
void bench_scen_init(bench_scen_t *s, bench_rng_t *rng);
/* The code of step i (0-based) into buf; *ret_has_expected says whether a value is printed
 * and *ret_expected what it must be. 0, or -ENAMETOOLONG. */
int bench_scen_step(bench_scen_t *s, bench_rng_t *rng, int i, char *buf, size_t len,
                    bool *ret_has_expected, double *ret_expected);
const char *bench_scen_name(bench_scen_kind_t k);
/* The seed's check: float(result_text.strip()) equals expected within relative 1e-9. */
bool bench_value_matches(const char *result_text, double expected);

/* ---- statistics (stats.c) --------------------------------------------------------------- */

typedef struct {
    double *lat_ms;
    size_t n, cap;
    size_t ok;       /* HTTP 200 / complete Jupyter reply */
    size_t verified; /* ok and the value (where one is expected) matched */
} bench_stats_t;

int bench_stats_add(bench_stats_t *st, double ms, bool ok, bool verified);
int bench_stats_merge(bench_stats_t *dst, const bench_stats_t *src);
void bench_stats_free(bench_stats_t *st);
/* sorted[int(n*q)], clamped to the last element; sorted must be ascending. 0 when n == 0. */
double bench_pct(const double *sorted, size_t n, double q);
/* Sorts st->lat_ms in place and returns {requests, wall_s, rps, success_pct, verified_pct,
 * lat_ms:{min,p50,p95,p99,max,mean}}; a new reference. */
json_t *bench_stats_summary(bench_stats_t *st, double wall_s);
double bench_median(double *v, size_t n); /* sorts v */

/* ---- HTTP client (httpc.c) -------------------------------------------------------------- */

typedef struct httpc httpc_t;

/* TCP connect to host (IPv4 literal or "localhost"):port with send/receive timeouts; the fd
 * (O_CLOEXEC, TCP_NODELAY) or -errno. */
int bench_tcp_connect(const char *host, int port, int timeout_ms);
/* Parses "http://host:port" into host and port; -EINVAL otherwise. */
int bench_url_parse(const char *url, char *host, size_t hostlen, int *ret_port);

/* A keep-alive HTTP/1.1 client for one server; connects lazily. NULL on ENOMEM. */
httpc_t *httpc_new(const char *host, int port, int timeout_ms);
void httpc_destroy(httpc_t **self_p);
/* One request, whole response. extra_headers: "Name: value\r\n"... or NULL. A kept
 * connection that the server closed meanwhile is reopened once. ret_body (may be NULL) gets a
 * malloc'd NUL-terminated body. 0, -ETIMEDOUT, -ECONNRESET, -EPROTO or another -errno. */
int httpc_request(httpc_t *self, const char *method, const char *path, const char *extra_headers,
                  const char *body, size_t body_len, int *ret_status, char **ret_body);

/* One-shot helpers on a fresh client: GET/POST with the X-Auth-Token and JSON body. ret_json
 * gets the parsed body (NULL if not JSON). */
int bench_http_json(const char *url, const char *token, const char *method, const char *path,
                    json_t *body, int timeout_ms, int *ret_status, json_t **ret_json);

/* ---- WebSocket client for Jupyter channels (wsc.c) -------------------------------------- */

typedef struct wsc wsc_t;

/* Handshake (GET path, Upgrade) with extra_headers (e.g. "Authorization: token T\r\n").
 * NULL on failure, with a reason in err. */
wsc_t *wsc_connect(const char *host, int port, const char *path, const char *extra_headers,
                   int timeout_ms, char *err, size_t errlen);
int wsc_send_text(wsc_t *self, const char *data, size_t len);
/* Next whole message; waits up to timeout_ms. ret gets a malloc'd NUL-terminated copy.
 * 0, -ETIMEDOUT, -ECONNRESET (closed) or -EPROTO. */
int wsc_recv(wsc_t *self, int timeout_ms, char **ret, size_t *ret_len);
/* Sends a close frame (best effort) and frees. NULL-safe. */
void wsc_destroy(wsc_t **self_p);

/* ---- a kernel of our own, spoken to over ZeroMQ (kclient.c) ----------------------------- */

typedef struct kclient kclient_t;

typedef struct {
    double conn_file_ms; /* connection file written */
    double spawn_ms;     /* fork + exec returned */
    double sockets_ms;   /* the kernel's five ipc sockets exist (interpreter up, imports done) */
    double info_ms;      /* first kernel_info_reply */
    double iopub_ms;     /* iopub flows (a message parented to our kernel_info_request) */
} kclient_times_t;

/* Starts `python -m ipykernel_launcher -f <dir>/kernel.json`, or with kernel_host set the native
 * kernel (`kernel_host --kernel native -f ...`), ipc transport, signed, as the gateway does;
 * connects shell, iopub and control, and waits until kernel_info is answered
 * and iopub flows. nudge_ms: how often kernel_info is re-sent until then. times may be NULL.
 * NULL on failure with a reason in err (the kernel is killed). */
kclient_t *kclient_start(const char *python, const char *kernel_host, const char *dir,
                         int timeout_ms, int nudge_ms, kclient_times_t *times, char *err,
                         size_t errlen);
pid_t kclient_pid(const kclient_t *self);
/* Shutdown request on control, then SIGKILL after a grace; reaps; removes the files.
 * NULL-safe. */
void kclient_destroy(kclient_t **self_p);

/* ---- what one execution returned, whatever the target ----------------------------------- */

typedef struct {
    int status;    /* HTTP status; 200 for a complete Jupyter reply (reply + idle); 0 = no answer */
    char *text;    /* result_text: stream text, then text/plain results, then the error */
    bool error;    /* the kernel reported an error */
    char why[160]; /* when status != 200: what went wrong */
} bench_reply_t;

void bench_reply_clear(bench_reply_t *r);

/* Collects one execution's answer from Jupyter messages (WebSocket or ZeroMQ): feed every
 * message whose parent is the request; done when both the execute_reply and the idle status
 * have been seen. */
typedef struct {
    char *text;
    size_t len, cap;
    bool got_reply, got_idle, error;
} bench_collect_t;

void bench_collect_feed(bench_collect_t *c, const char *channel, const char *msg_type,
                        const json_t *content);
/* Moves the text into r (status 200). */
void bench_collect_finish(bench_collect_t *c, bench_reply_t *r);
void bench_collect_free(bench_collect_t *c);
/* The content of an execute_request as the gateway sends it (new reference). */
json_t *bench_execute_content(const char *code);

int kclient_execute(kclient_t *self, const char *code, int timeout_ms, bench_reply_t *ret);

/* ---- targets (targets.c) ---------------------------------------------------------------- */

typedef struct {
    const char *url;         /* http://127.0.0.1:port of the gateway or Jupyter Server */
    const char *token;       /* its token */
    const char *python;      /* target zmq: ipykernel's interpreter */
    const char *kernel_host; /* target zmq: the native kernel's binary instead (NULL: ipykernel) */
    const char *workdir;     /* where target 3 puts its kernels' files */
    int timeout_ms;          /* per request */
} bench_target_cfg_t;

typedef struct {
    const char *name;
    /* Untimed: connect, create the kernel, wait until it answers. */
    int (*open)(const bench_target_cfg_t *cfg, const char *user_uuid, void **ret_conn, char *err,
                size_t errlen);
    /* Timed: one execution. */
    int (*exec)(void *conn, const char *user_uuid, const char *code, bench_reply_t *ret);
    /* Untimed: release the session / delete the kernel / stop it; frees conn. */
    void (*close)(void *conn, const char *user_uuid);
} bench_target_t;

extern const bench_target_t bench_target_execute; /* workload 1: POST /execute */
extern const bench_target_t bench_target_kernels; /* workload 2: /api/kernels + channels */
extern const bench_target_t bench_target_zmq;     /* workload 3: ZeroMQ, no gateway */

/* ---- process accounting and probes (probes.c) ------------------------------------------- */

typedef struct {
    double self_ms;        /* CPU (user+sys) of the process itself */
    double descendants_ms; /* CPU of its live descendants */
    int ndescendants;
} bench_cpu_t;

int bench_proc_cpu(pid_t pid, bench_cpu_t *ret);
/* Machine CPU: busy and total jiffies since boot, from /proc/stat. */
int bench_machine_cpu(uint64_t *ret_busy, uint64_t *ret_total);
/* VmRSS and Pss (smaps_rollup) of one process, KiB; -errno if it is gone. */
int bench_proc_mem(pid_t pid, long *ret_rss_kb, long *ret_pss_kb);
long bench_mem_available_kb(void);
/* CPU (ms) and memory (KiB) charged to a cgroup (v1 cpuacct/memory, else v2); -1 if absent. */
double bench_cgroup_cpu_ms(const char *name);
long bench_cgroup_mem_kb(const char *name);

/* Subcommands (each prints JSON lines on stdout, progress on stderr). */
int bench_cmd_first(int argc, char **argv);
int bench_cmd_kstart(int argc, char **argv);
int bench_cmd_mem(int argc, char **argv);
int bench_cmd_wait(int argc, char **argv);
int bench_cmd_quiet(int argc, char **argv);
int bench_cmd_gwlog(int argc, char **argv);
int bench_cmd_report(int argc, char **argv);
int bench_cmd_handoff(int argc, char **argv);

/* ---- small shared helpers (main.c) ------------------------------------------------------ */

double bench_now_ms(void);
void bench_sleep_ms(double ms);
/* A JSON line on stdout (flushed); steals j. */
void bench_emit(json_t *j);
/* A progress line on stderr. */
void bench_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Parses --name value / --name=value options from argv against names; values land in vals
 * (NULL when absent). Unknown options are an error (-EINVAL, message on stderr). */
int bench_opts(int argc, char **argv, const char *const *names, const char **vals);
double bench_opt_num(const char *v, double def);
