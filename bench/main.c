/* kbox-bench: the load generator behind bench/run.sh and docs/BENCHMARKS.md.
 *
 *   kbox-bench run --target execute|kernels|zmq ...   workloads 1, 2, 3 (one JSON line)
 *   kbox-bench first | kstart | mem | wait | quiet | gwlog | report | handoff | freeport
 *
 * `run` is the seed's stateful load test: U users, each on its own thread with a fresh random
 * user_uuid, a random scenario and R sequential steps; all users start together at a barrier
 * once their connection (or kernel) is open, and the wall time runs from that barrier to the
 * last user's last answer. Releases happen after the clock stops and are not counted. */
#include "bench.h"

#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sodium.h>
#include <time.h>

double bench_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void bench_sleep_ms(double ms) {
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(fmod(ms, 1000.0) * 1e6)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* `kbox-bench --kernel K COMMAND`: the kernel the measured gateway (or kernels) ran, stamped on
 * every JSON line the command prints (run.sh runs each workload once per kernel). */
static const char *emit_kernel;

void bench_emit(json_t *j) {
    if (emit_kernel && json_is_object(j) && !json_object_get(j, "kernel"))
        json_object_set_new(j, "kernel", json_string(emit_kernel));
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(j);
    if (s) {
        printf("%s\n", s);
        fflush(stdout);
        free(s);
    }
}

void bench_note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kbox-bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

int bench_opts(int argc, char **argv, const char *const *names, const char **vals) {
    size_t n = 0;
    while (names[n])
        vals[n++] = NULL;
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!startswith(arg, "--")) {
            bench_note("unexpected argument '%s'", arg);
            return -EINVAL;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        size_t i;
        for (i = 0; i < n; i++)
            if (strlen(names[i]) == nlen && strncmp(names[i], name, nlen) == 0)
                break;
        if (i == n) {
            bench_note("unknown option '%s'", arg);
            return -EINVAL;
        }
        const char *v = eq ? eq + 1 : (a + 1 < argc ? argv[++a] : NULL);
        if (!v) {
            bench_note("option --%s needs a value", names[i]);
            return -EINVAL;
        }
        vals[i] = v;
    }
    return 0;
}

double bench_opt_num(const char *v, double def) {
    if (!v)
        return def;
    char *end;
    double d = strtod(v, &end);
    return end != v && !*end ? d : def;
}

/* ---- run: workloads 1, 2 and 3 ----------------------------------------------------------- */

typedef struct {
    const bench_target_t *target;
    const bench_target_cfg_t *cfg;
    pthread_barrier_t *start, *stop, *done;
    int requests;
    double think_min_s, think_max_s;
} run_ctx_t;

typedef struct {
    const run_ctx_t *ctx;
    pthread_t thread;
    char uuid[40];
    bench_rng_t rng;
    bench_scen_t scen;
    void *conn;
    int open_err;
    char err[256];
    double open_ms;
    bench_stats_t st;
    size_t failures;
    char first_failure[200];
} vuser_t;

static void *user_main(void *arg) {
    vuser_t *u = arg;
    const run_ctx_t *ctx = u->ctx;
    double t = bench_now_ms();
    u->open_err = ctx->target->open(ctx->cfg, u->uuid, &u->conn, u->err, sizeof u->err);
    u->open_ms = bench_now_ms() - t;
    pthread_barrier_wait(ctx->start);
    for (int i = 0; u->open_err >= 0 && i < ctx->requests; i++) {
        char code[256];
        bool has = false;
        double expected = 0;
        if (bench_scen_step(&u->scen, &u->rng, i, code, sizeof code, &has, &expected) < 0)
            break;
        bench_reply_t rep = {0};
        double t0 = bench_now_ms();
        int r = ctx->target->exec(u->conn, u->uuid, code, &rep);
        double ms = bench_now_ms() - t0;
        bool ok = r >= 0 && rep.status == 200;
        bool verified = ok && (!has || bench_value_matches(rep.text, expected));
        bench_stats_add(&u->st, ms, ok, verified);
        if (!verified && u->failures++ == 0) {
            char wrong[96];
            snprintf(wrong, sizeof wrong, "wrong value %.40s (expected %.10g)",
                     rep.text ? rep.text : "(none)", expected);
            for (char *p = wrong; *p; p++)
                if (*p == '\n' || *p == '"')
                    *p = ' ';
            snprintf(u->first_failure, sizeof u->first_failure, "step %d (%s): %s", i,
                     bench_scen_name(u->scen.kind),
                     !ok ? (rep.why[0] ? rep.why : strerror(-r)) : wrong);
        }
        bench_reply_clear(&rep);
        if (ctx->think_max_s > 0 && i + 1 < ctx->requests)
            bench_sleep_ms(1000 * bench_rng_real(&u->rng, ctx->think_min_s, ctx->think_max_s));
    }
    pthread_barrier_wait(ctx->stop);
    /* The main thread reads the clocks and CPU counters now; then each user releases its own
     * session (not counted), in parallel, from the thread that opened it (a kernel we forked
     * is tied to this thread by PDEATHSIG). */
    pthread_barrier_wait(ctx->done);
    if (u->open_err >= 0 && u->conn)
        ctx->target->close(u->conn, u->uuid);
    u->conn = NULL;
    return NULL;
}

static double rusage_ms(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec * 1e3 + (double)ru.ru_utime.tv_usec / 1e3 +
           (double)ru.ru_stime.tv_sec * 1e3 + (double)ru.ru_stime.tv_usec / 1e3;
}

enum {
    R_TARGET,
    R_URL,
    R_TOKEN,
    R_USERS,
    R_REQUESTS,
    R_THINK_MIN,
    R_THINK_MAX,
    R_TIMEOUT,
    R_SEED,
    R_PYTHON,
    R_WORKDIR,
    R_CPU_PID,
    R_LABEL,
    R_SERVER,
    R_REP,
    R_LAUNCHER,
    R_CGROUP,
    R_SCENARIO,
    R_KERNEL_HOST,
    R_N
};

static int cmd_run(int argc, char **argv) {
    static const char *const names[R_N + 1] = {
        "target",      "url",        "token", "users",    "requests",       "think-min",
        "think-max",   "timeout-ms", "seed",  "python",   "workdir",        "cpu-pid",
        "label",       "server",     "rep",   "launcher", "kernels-cgroup", "scenario",
        "kernel-host", NULL};
    const char *v[R_N];
    if (bench_opts(argc, argv, names, v) < 0)
        return 2;
    const char *tname = v[R_TARGET] ? v[R_TARGET] : "execute";
    const bench_target_t *target = streq(tname, "execute")   ? &bench_target_execute
                                   : streq(tname, "kernels") ? &bench_target_kernels
                                   : streq(tname, "zmq")     ? &bench_target_zmq
                                                             : NULL;
    if (!target) {
        bench_note("--target must be execute, kernels or zmq");
        return 2;
    }
    int users = (int)bench_opt_num(v[R_USERS], 25);
    int requests = (int)bench_opt_num(v[R_REQUESTS], 100);
    double think_min = bench_opt_num(v[R_THINK_MIN], 0);
    double think_max = bench_opt_num(v[R_THINK_MAX], think_min);
    if (users < 1 || users > 5000 || requests < 1 || think_min < 0 || think_max < think_min) {
        bench_note("--users 1..5000, --requests >= 1, 0 <= --think-min <= --think-max");
        return 2;
    }
    /* One scenario for every user: where a request's time goes without the mix's variance
     * (how many users import numpy changes a run's CPU per request by a third). */
    int only = -1;
    for (int k = 0; v[R_SCENARIO] && k < SCEN_N; k++)
        if (streq(v[R_SCENARIO], bench_scen_name((bench_scen_kind_t)k)))
            only = k;
    if (v[R_SCENARIO] && only < 0) {
        bench_note("--scenario must be arithmetic, list or numpy");
        return 2;
    }
    /* The kernels start in their own directories: a relative path would not find the binary. */
    char kernel_host[PATH_MAX];
    if (v[R_KERNEL_HOST] && !realpath(v[R_KERNEL_HOST], kernel_host)) {
        bench_note("--kernel-host %s: %s", v[R_KERNEL_HOST], strerror(errno));
        return 2;
    }
    char workdir[PATH_MAX];
    snprintf(workdir, sizeof workdir, "%s", v[R_WORKDIR] ? v[R_WORKDIR] : "/tmp/kbox-bench-k");
    if (target == &bench_target_zmq) {
        /* A directory of its own per run: nothing of an earlier run is ever reused. */
        char rnd[17];
        random_hex(rnd, 8);
        size_t n = strlen(workdir);
        snprintf(workdir + n, sizeof workdir - n, "/%s", rnd);
        if (mkdir_p(workdir, 0700) < 0) {
            bench_note("cannot create %s", workdir);
            return 1;
        }
    }
    bench_target_cfg_t cfg = {.url = v[R_URL] ? v[R_URL] : "http://127.0.0.1:3874",
                              .token = v[R_TOKEN] ? v[R_TOKEN] : "",
                              .python = v[R_PYTHON] ? v[R_PYTHON] : "/usr/bin/python3",
                              .kernel_host = v[R_KERNEL_HOST] ? kernel_host : NULL,
                              .workdir = workdir,
                              .timeout_ms = (int)bench_opt_num(v[R_TIMEOUT], 60000)};
    uint64_t seed = 0;
    if (v[R_SEED])
        seed = strtoull(v[R_SEED], NULL, 0);
    else
        randombytes_buf(&seed, sizeof seed);
    pid_t cpu_pid = (pid_t)bench_opt_num(v[R_CPU_PID], 0);
    const char *cgroup = v[R_CGROUP];
    if (target == &bench_target_zmq && cpu_pid == 0)
        cpu_pid = getpid(); /* the client is the only thing between the user and the kernels */

    pthread_barrier_t start, stop, done;
    pthread_barrier_init(&start, NULL, (unsigned)users + 1);
    pthread_barrier_init(&stop, NULL, (unsigned)users + 1);
    pthread_barrier_init(&done, NULL, (unsigned)users + 1);
    run_ctx_t ctx = {.target = target,
                     .cfg = &cfg,
                     .start = &start,
                     .stop = &stop,
                     .done = &done,
                     .requests = requests,
                     .think_min_s = think_min,
                     .think_max_s = think_max};
    vuser_t *us = calloc((size_t)users, sizeof *us);
    if (!us)
        return 1;
    int scen_count[SCEN_N] = {0};
    for (int i = 0; i < users; i++) {
        vuser_t *u = &us[i];
        u->ctx = &ctx;
        bench_rng_seed(&u->rng, seed + 0x1000193ull * (uint64_t)(i + 1));
        snprintf(u->uuid, sizeof u->uuid, "bench-");
        random_hex(u->uuid + 6, 8);
        bench_scen_init(&u->scen, &u->rng);
        if (only >= 0)
            u->scen.kind = (bench_scen_kind_t)only;
        scen_count[u->scen.kind]++;
    }
    bench_note("%s: %d users x %d requests, think %.2f-%.2f s, target %s %s",
               v[R_LABEL] ? v[R_LABEL] : "run", users, requests, think_min, think_max, tname,
               cfg.url);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int started = 0;
    for (int i = 0; i < users; i++) {
        if (pthread_create(&us[i].thread, &attr, user_main, &us[i]) != 0) {
            bench_note("cannot start thread %d", i);
            break;
        }
        started++;
    }
    pthread_attr_destroy(&attr);
    if (started < users) {
        /* Let the started ones through the barriers: they cannot complete otherwise. */
        bench_note("aborting");
        _exit(1);
    }
    pthread_barrier_wait(&start);
    bench_cpu_t cpu0 = {0}, cpu1 = {0};
    uint64_t busy0 = 0, tot0 = 0, busy1 = 0, tot1 = 0;
    if (cpu_pid > 0)
        bench_proc_cpu(cpu_pid, &cpu0);
    bench_machine_cpu(&busy0, &tot0);
    double cg0 = cgroup ? bench_cgroup_cpu_ms(cgroup) : -1;
    double self0 = rusage_ms();
    double t0 = bench_now_ms();
    pthread_barrier_wait(&stop);
    double wall_s = (bench_now_ms() - t0) / 1000;
    double self1 = rusage_ms();
    bench_machine_cpu(&busy1, &tot1);
    if (cpu_pid > 0)
        bench_proc_cpu(cpu_pid, &cpu1);
    double cg1 = cgroup ? bench_cgroup_cpu_ms(cgroup) : -1;
    pthread_barrier_wait(&done);
    for (int i = 0; i < users; i++)
        pthread_join(us[i].thread, NULL);

    bench_stats_t all = {0};
    double opens[5000];
    int nopen = 0, open_failed = 0;
    size_t failures = 0;
    const char *first_failure = NULL;
    for (int i = 0; i < users; i++) {
        vuser_t *u = &us[i];
        if (u->open_err < 0) {
            open_failed++;
            if (!first_failure)
                first_failure = u->err;
        } else {
            opens[nopen++] = u->open_ms;
        }
        bench_stats_merge(&all, &u->st);
        failures += u->failures;
        if (!first_failure && u->failures)
            first_failure = u->first_failure;
    }
    json_t *res = bench_stats_summary(&all, wall_s);
    double planned = (double)users * requests;
    /* Requests that were never sent (a user whose kernel did not open) count as failed. */
    json_object_set_new(res, "success_pct", json_real(100.0 * (double)all.ok / planned));
    json_object_set_new(res, "verified_pct", json_real(100.0 * (double)all.verified / planned));
    json_object_set_new(res, "kind", json_string("run"));
    json_object_set_new(res, "label", json_string(v[R_LABEL] ? v[R_LABEL] : tname));
    json_object_set_new(res, "target", json_string(tname));
    json_object_set_new(res, "server", json_string(v[R_SERVER] ? v[R_SERVER] : ""));
    json_object_set_new(res, "launcher", json_string(v[R_LAUNCHER] ? v[R_LAUNCHER] : ""));
    json_object_set_new(res, "rep", json_integer((json_int_t)bench_opt_num(v[R_REP], 1)));
    json_object_set_new(res, "users", json_integer(users));
    json_object_set_new(res, "requests_per_user", json_integer(requests));
    json_object_set_new(res, "think_s", json_pack("[f,f]", think_min, think_max));
    json_object_set_new(res, "seed", json_integer((json_int_t)(seed & 0x7fffffffffffffffull)));
    json_object_set_new(res, "scenarios",
                        json_pack("{s:i,s:i,s:i}", "arithmetic", scen_count[SCEN_ARITH], "list",
                                  scen_count[SCEN_LIST], "numpy", scen_count[SCEN_NUMPY]));
    json_object_set_new(res, "open_failed", json_integer(open_failed));
    json_object_set_new(res, "open_ms_p50", json_real(bench_median(opens, (size_t)nopen)));
    json_object_set_new(res, "open_ms_max", json_real(nopen ? opens[nopen - 1] : 0.0));
    json_object_set_new(res, "failures", json_integer((json_int_t)failures));
    if (first_failure)
        json_object_set_new(res, "first_failure", json_string(first_failure));
    double n = all.n ? (double)all.n : 1;
    double tick_ms = 1000.0 / (double)sysconf(_SC_CLK_TCK);
    double busy_ms = (double)(busy1 - busy0) * tick_ms, total_ms = (double)(tot1 - tot0) * tick_ms;
    double gen_ms = self1 - self0, server_ms = 0, kernels_ms = 0;
    json_t *cpu = json_pack("{s:f,s:f}", "loadgen_ms_per_req", gen_ms / n, "machine_busy_pct",
                            total_ms > 0 ? 100.0 * busy_ms / total_ms : 0.0);
    if (cpu_pid > 0) {
        server_ms = cpu1.self_ms - cpu0.self_ms;
        kernels_ms = cpu1.descendants_ms - cpu0.descendants_ms;
        json_object_set_new(cpu, "children", json_integer(cpu1.ndescendants));
    }
    if (cg0 >= 0 && cg1 >= 0) /* sandboxed kernels are not the gateway's descendants */
        kernels_ms = cg1 - cg0;
    if (cpu_pid > 0 || cg0 >= 0) {
        json_object_set_new(cpu, "server_ms_per_req", json_real(server_ms / n));
        json_object_set_new(cpu, "children_ms_per_req", json_real(kernels_ms / n));
    }
    /* What the rest of the machine took meanwhile: a noise indicator (other tenants, and
     * helpers we cannot attribute such as runc). */
    double ours = (cpu_pid == getpid() ? 0 : gen_ms) + server_ms + kernels_ms;
    json_object_set_new(cpu, "other_busy_pct",
                        json_real(total_ms > 0 ? 100.0 * (busy_ms - ours) / total_ms : 0.0));
    json_object_set_new(res, "cpu", cpu);
    bench_stats_free(&all);

    for (int i = 0; i < users; i++)
        bench_stats_free(&us[i].st);
    if (target == &bench_target_zmq)
        rm_rf(workdir);
    free(us);
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&stop);
    pthread_barrier_destroy(&done);
    bench_note("%s: %.0f requests in %.2f s, %.1f RPS, verified %.1f%%, P95 %.1f ms",
               v[R_LABEL] ? v[R_LABEL] : tname, json_number_value(json_object_get(res, "requests")),
               wall_s, json_number_value(json_object_get(res, "rps")),
               json_number_value(json_object_get(res, "verified_pct")),
               json_number_value(json_object_get(json_object_get(res, "lat_ms"), "p95")));
    bench_emit(res);
    return 0;
}

static int cmd_freeport(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        return 1;
    printf("%d\n", ntohs(sa.sin_port));
    close(fd);
    return 0;
}

/* The cgroup parent a gateway with this state dir gives its sandboxed workers: "kbox-w" and
 * two bytes of the state dir's BLAKE2b tag (gateway.c / sandbox.c). */
static int cmd_cgname(int argc, char **argv) {
    static const char *const names[] = {"state-dir", NULL};
    const char *v[1];
    if (bench_opts(argc, argv, names, v) < 0 || !v[0])
        return 2;
    unsigned char tag[crypto_generichash_BYTES_MIN];
    crypto_generichash(tag, sizeof tag, (const unsigned char *)v[0], strlen(v[0]), NULL, 0);
    printf("kbox-w%02x%02x\n", tag[0], tag[1]);
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: kbox-bench [--kernel K] COMMAND [--option value]...\n"
            "  --kernel K   stamp \"kernel\":K on every JSON line (ipykernel, native)\n"
            "  run      --target execute|kernels|zmq --url U --token T --users N --requests N\n"
            "           [--think-min S --think-max S --timeout-ms MS --seed N --python P\n"
            "           --workdir D --cpu-pid PID --kernels-cgroup CG --label L --server S\n"
            "           --rep N --launcher L --scenario arithmetic|list|numpy\n"
            "           --kernel-host BIN (zmq: the native kernel, not ipykernel)]\n"
            "  first    --url U --token T --mode warm|cold --samples N [--min-idle N]\n"
            "  kstart   --python P --samples N [--workdir D]\n"
            "  mem      --url U --token T --gw-pid PID --at 25,200 --max N [--batch N\n"
            "           --reserve-mb MB --kernels-cgroup CG]\n"
            "  wait     --url U --token T [--idle N] [--timeout S]   pool settled\n"
            "  quiet    [--idle-pct P] [--timeout S]                   machine quiet\n"
            "  gwlog    --file LOG                                     worker start steps\n"
            "  report   --file RESULTS.jsonl [--meta K=V]...           the table\n"
            "  cgname   --state-dir D          cgroup of a gateway's sandboxed workers\n"
            "  handoff  [--n N --reps R --workdir D]   CPU of a round trip: libzmq ipc, unix\n"
            "  freeport\n");
}

int main(int argc, char **argv) {
    if (argc >= 3 && streq(argv[1], "--kernel")) {
        emit_kernel = argv[2];
        argc -= 2;
        argv += 2;
    }
    if (argc < 2) {
        usage();
        return 2;
    }
    zsys_handler_set(NULL);
    zsys_init();
    if (sodium_init() < 0)
        return 1;
    const char *cmd = argv[1];
    argc--;
    argv++;
    if (streq(cmd, "run"))
        return cmd_run(argc, argv);
    if (streq(cmd, "first"))
        return bench_cmd_first(argc, argv);
    if (streq(cmd, "kstart"))
        return bench_cmd_kstart(argc, argv);
    if (streq(cmd, "mem"))
        return bench_cmd_mem(argc, argv);
    if (streq(cmd, "wait"))
        return bench_cmd_wait(argc, argv);
    if (streq(cmd, "quiet"))
        return bench_cmd_quiet(argc, argv);
    if (streq(cmd, "gwlog"))
        return bench_cmd_gwlog(argc, argv);
    if (streq(cmd, "report"))
        return bench_cmd_report(argc, argv);
    if (streq(cmd, "handoff"))
        return bench_cmd_handoff(argc, argv);
    if (streq(cmd, "cgname"))
        return cmd_cgname(argc, argv);
    if (streq(cmd, "freeport"))
        return cmd_freeport();
    usage();
    return 2;
}
