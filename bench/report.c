/* The one table: reads the JSON lines every phase of run.sh appended, takes medians over
 * repetitions, ratios within each repetition (so machine noise mostly cancels), and checks
 * the targets. Figures, not assertions: the exit status is 0 whatever they are. */
#include "bench.h"

#include <math.h>

#define MAX_REPS 64

typedef struct {
    const char *label, *title;
} row_t;

static const row_t rows[] = {
    {"1a", "1a /execute, think 0.1-0.5 s"},  {"1b", "1b /execute, no think time"},
    {"2-kbox", "2  kernels API + WS, kbox"}, {"2-jupyter", "2  kernels API + WS, Jupyter Server"},
    {"3", "3  ZeroMQ direct, no gateway"},
};

/* The kernel a line was measured with; "" in results written before run.sh had --kernels. */
static const char *kernel_of(const json_t *j) {
    const char *k = json_string_value(json_object_get(j, "kernel"));
    return k ? k : "";
}

/* Runs of one workload; kernel NULL: whatever the kernel. */
static json_t *runs_of(json_t *all, const char *label, const char *kernel) {
    json_t *out = json_array();
    size_t i;
    json_t *j;
    json_array_foreach(all, i, j) {
        if (streq(json_string_value(json_object_get(j, "kind")), "run") &&
            streq(json_string_value(json_object_get(j, "label")), label) &&
            (!kernel || streq(kernel_of(j), kernel)))
            json_array_append(out, j);
    }
    return out;
}

/* Lines of a kind (any label) measured with a kernel. */
static json_t *kind_of(json_t *all, const char *kind, const char *kernel) {
    json_t *out = json_array();
    size_t i;
    json_t *j;
    json_array_foreach(all, i, j) {
        if (streq(json_string_value(json_object_get(j, "kind")), kind) &&
            streq(kernel_of(j), kernel))
            json_array_append(out, j);
    }
    return out;
}

/* The kernels the results cover, in the order they first appear. */
#define MAX_KERNELS 8
static size_t kernels_of(json_t *all, const char **out) {
    size_t n = 0, i, k;
    json_t *j;
    json_array_foreach(all, i, j) {
        const char *kind = json_string_value(json_object_get(j, "kind"));
        if (!streq(kind, "run") && !streq(kind, "first") && !streq(kind, "mem") &&
            !streq(kind, "kernel"))
            continue;
        const char *name = kernel_of(j);
        for (k = 0; k < n && !streq(out[k], name); k++)
            ;
        if (k == n && n < MAX_KERNELS)
            out[n++] = name;
    }
    return n;
}

/* " [kernel]" after a title, or nothing for results without kernels. */
static const char *ktag(const char *kernel, char *buf, size_t len) {
    snprintf(buf, len, kernel && *kernel ? " [%s]" : "%s", kernel ? kernel : "");
    return buf;
}

/* Median over runs of a numeric field given by a path "a" or "a.b". */
static double med_field(json_t *runs, const char *path) {
    double v[MAX_REPS];
    size_t n = 0, i;
    json_t *j;
    char a[64], *b;
    snprintf(a, sizeof a, "%s", path);
    b = strchr(a, '.');
    if (b)
        *b++ = '\0';
    json_array_foreach(runs, i, j) {
        json_t *x = json_object_get(j, a);
        if (b)
            x = json_object_get(x, b);
        if (json_is_number(x) && n < MAX_REPS)
            v[n++] = json_number_value(x);
    }
    return n ? bench_median(v, n) : NAN;
}

static json_t *run_rep(json_t *runs, json_int_t rep) {
    size_t i;
    json_t *j;
    json_array_foreach(runs, i, j) {
        if (json_integer_value(json_object_get(j, "rep")) == rep)
            return j;
    }
    return NULL;
}

static double num(const json_t *j, const char *a, const char *b) {
    json_t *x = json_object_get(j, a);
    if (b)
        x = json_object_get(x, b);
    return json_is_number(x) ? json_number_value(x) : NAN;
}

/* Median over repetitions of f(run of label A, run of label B) in the same repetition. */
static double med_pair(json_t *ra, json_t *rb, double (*f)(const json_t *, const json_t *),
                       int *ret_n) {
    double v[MAX_REPS];
    size_t n = 0, i;
    json_t *a;
    json_array_foreach(ra, i, a) {
        json_t *b = run_rep(rb, json_integer_value(json_object_get(a, "rep")));
        if (b && n < MAX_REPS) {
            double x = f(a, b);
            if (!isnan(x))
                v[n++] = x;
        }
    }
    *ret_n = (int)n;
    return n ? bench_median(v, n) : NAN;
}

static double f_rps_ratio(const json_t *a, const json_t *b) {
    double d = num(b, "rps", NULL);
    return d > 0 ? num(a, "rps", NULL) / d : NAN; /* a failed run is no ratio */
}
static double f_p50_delta(const json_t *a, const json_t *b) {
    return num(a, "lat_ms", "p50") - num(b, "lat_ms", "p50");
}
static double f_p95_ratio(const json_t *a, const json_t *b) {
    return num(a, "lat_ms", "p95") / num(b, "lat_ms", "p95");
}

/* The last line of a kind (with field == value, and of that kernel unless kernel is NULL). */
static json_t *last_of(json_t *all, const char *kind, const char *field, const char *value,
                       const char *kernel) {
    json_t *found = NULL, *j;
    size_t i;
    json_array_foreach(all, i, j) {
        if (streq(json_string_value(json_object_get(j, "kind")), kind) &&
            (!field || streq(json_string_value(json_object_get(j, field)), value)) &&
            (!kernel || streq(kernel_of(j), kernel)))
            found = j;
    }
    return found;
}

static const char *mark(bool met) {
    return met ? "MET   " : "MISSED";
}

int bench_cmd_report(int argc, char **argv) {
    static const char *const names[] = {"file", NULL};
    const char *v[1];
    if (bench_opts(argc, argv, names, v) < 0 || !v[0])
        return 2;
    FILE *f = fopen(v[0], "re");
    if (!f) {
        bench_note("cannot open %s", v[0]);
        return 1;
    }
    json_t *all = json_array();
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        if (json_is_object(j))
            json_array_append_new(all, j);
        else
            json_decref(j);
    }
    free(line);
    fclose(f);

    size_t i;
    json_t *j;
    printf("\n== kbox benchmark ==\n");
    json_array_foreach(all, i, j) {
        if (streq(json_string_value(json_object_get(j, "kind")), "meta"))
            printf("  %-12s %s\n", json_string_value(json_object_get(j, "key")),
                   json_string_value(json_object_get(j, "value")));
    }
    json_array_foreach(all, i, j) {
        if (streq(json_string_value(json_object_get(j, "kind")), "warning"))
            printf("  !!! %s\n", json_string_value(json_object_get(j, "text")));
    }

    /* Every workload ran once per kernel, 2-jupyter only with ipykernel: the reference, with
     * which the like-for-like ratios are taken. */
    const char *kernels[MAX_KERNELS];
    size_t nk = kernels_of(all, kernels);
    const char *ref = nk ? kernels[0] : "";
    for (size_t k = 0; k < nk; k++)
        if (streq(kernels[k], "ipykernel"))
            ref = kernels[k];
    char tag[64], tag2[64];

    printf("\n%-47s %5s %6s %7s %6s %6s | %7s %7s %7s %7s %8s | %5s %5s %5s\n",
           "workload (median of runs) [kernel]", "runs", "reqs", "wall s", "RPS", "ok %", "min",
           "P50", "P95", "P99", "max ms", "srv", "kern", "gen");
    for (size_t r = 0; r < ARRAY_SIZE(rows); r++) {
        for (size_t kk = 0; kk < nk; kk++) {
            json_t *runs = runs_of(all, rows[r].label, kernels[kk]);
            size_t n = json_array_size(runs);
            if (!n) {
                json_decref(runs);
                continue;
            }
            char title[128];
            snprintf(title, sizeof title, "%s%s", rows[r].title,
                     ktag(kernels[kk], tag, sizeof tag));
            printf("%-47s %5zu %6.0f %7.2f %6.1f %6.1f | %7.1f %7.1f %7.1f %7.1f %8.1f | %5.2f "
                   "%5.2f %5.2f\n",
                   title, n, med_field(runs, "requests"), med_field(runs, "wall_s"),
                   med_field(runs, "rps"), med_field(runs, "success_pct"),
                   med_field(runs, "lat_ms.min"), med_field(runs, "lat_ms.p50"),
                   med_field(runs, "lat_ms.p95"), med_field(runs, "lat_ms.p99"),
                   med_field(runs, "lat_ms.max"), med_field(runs, "cpu.server_ms_per_req"),
                   med_field(runs, "cpu.children_ms_per_req"),
                   med_field(runs, "cpu.loadgen_ms_per_req"));
            double ver = med_field(runs, "verified_pct");
            int noisy = 0;
            size_t k;
            json_t *x;
            json_array_foreach(all, k, x) {
                noisy += streq(json_string_value(json_object_get(x, "kind")), "noisy") &&
                         streq(json_string_value(json_object_get(x, "label")), rows[r].label) &&
                         streq(kernel_of(x), kernels[kk]);
            }
            const char *ff = NULL;
            json_array_foreach(runs, k, x) {
                if (!ff)
                    ff = json_string_value(json_object_get(x, "first_failure"));
            }
            /* The worst run, not the median: one lost session must not hide. */
            double worst = 100;
            json_array_foreach(runs, k, x) {
                double vv = num(x, "verified_pct", NULL);
                if (vv < worst)
                    worst = vv;
            }
            printf("%-47s verified %.1f%% (worst run %.1f%%), CPU busy %.0f%% (other processes "
                   "%.0f%%), open P50 %.0f ms%s%s\n",
                   "", ver, worst, med_field(runs, "cpu.machine_busy_pct"),
                   med_field(runs, "cpu.other_busy_pct"), med_field(runs, "open_ms_p50"),
                   noisy ? ", noisy runs repeated: " : "",
                   noisy ? (noisy == 1   ? "1"
                            : noisy == 2 ? "2"
                                         : "3+")
                         : "");
            if (ff)
                printf("%-47s first failure: %s\n", "", ff);
            json_decref(runs);
        }
    }
    printf("  (srv/kern/gen: CPU ms per request of the server process, of its kernels, of the "
           "load generator; for 3 the generator is the client)\n");

    json_t *r1b = runs_of(all, "1b", ref), *r3 = runs_of(all, "3", ref),
           *r2k = runs_of(all, "2-kbox", ref), *r2j = runs_of(all, "2-jupyter", NULL);
    int n1 = 0, n2 = 0, n3 = 0;
    double ovh = med_pair(r1b, r3, f_rps_ratio, &n1);
    double w2 = med_pair(r2k, r2j, f_rps_ratio, &n2);
    double w2p95 = med_pair(r2k, r2j, f_p95_ratio, &n3);
    printf("\nratios (median over repetitions of the ratio within each repetition)\n");
    /* The gateway's overhead per kernel: 1b against 3 with the same kernel, same seeds. */
    for (size_t kk = 0; kk < nk; kk++) {
        json_t *a = runs_of(all, "1b", kernels[kk]), *b = runs_of(all, "3", kernels[kk]);
        int na = 0, nd = 0;
        double o = med_pair(a, b, f_rps_ratio, &na);
        double dp50 = med_pair(a, b, f_p50_delta, &nd);
        ktag(kernels[kk], tag, sizeof tag);
        if (na)
            printf("  gateway overhead by throughput, 1b%s / 3: x%.3f (%.1f%% %s), P50 %+.1f ms "
                   "(%d runs; noisy on a shared machine, see the CPU figure below)\n",
                   tag, o, 100 * fabs(1 - o), o <= 1 ? "lower" : "higher", dp50, na);
        if (json_array_size(a) && json_array_size(b)) {
            double gw = med_field(a, "cpu.server_ms_per_req");
            double base =
                med_field(b, "cpu.children_ms_per_req") + med_field(b, "cpu.server_ms_per_req");
            if (base > 0)
                printf(
                    "  gateway CPU per request (1b%s): %.2f ms = %.1f%% of what the same request "
                    "costs without it (kernels + client in 3: %.2f ms)\n",
                    tag, gw, 100 * gw / base, base);
        }
        json_decref(a);
        json_decref(b);
    }
    ktag(ref, tag, sizeof tag);
    if (n2)
        printf("  workload 2, kbox / Jupyter Server%s: throughput x%.2f, P95 x%.2f (%d runs)\n",
               tag, w2, w2p95, n2);
    /* The other kernels against the reference: the same users, scenarios and code (run.sh
     * gives every kernel the same seed per repetition). */
    for (size_t kk = 0; kk < nk; kk++) {
        if (kernels[kk] == ref)
            continue;
        static const char *const cmp[] = {"1a", "1b", "2-kbox"};
        printf("  %s / %s, same users and code:", kernels[kk], *ref ? ref : "(no kernel)");
        for (size_t c = 0; c < ARRAY_SIZE(cmp); c++) {
            json_t *ra = runs_of(all, cmp[c], kernels[kk]), *rb = runs_of(all, cmp[c], ref);
            int na = 0, nb = 0;
            double t = med_pair(ra, rb, f_rps_ratio, &na), p = med_pair(ra, rb, f_p95_ratio, &nb);
            if (na)
                printf(" %s throughput x%.2f, P95 x%.2f (%d runs);", cmp[c], t, p, na);
            json_decref(ra);
            json_decref(rb);
        }
        printf("\n");
        json_t *rk = runs_of(all, "2-kbox", kernels[kk]);
        int nn = 0, np = 0;
        double t = med_pair(rk, r2j, f_rps_ratio, &nn), p = med_pair(rk, r2j, f_p95_ratio, &np);
        if (nn)
            printf("  workload 2, kbox%s / Jupyter Server [ipykernel] (not like for like: "
                   "different kernels): throughput x%.2f, P95 x%.2f (%d runs)\n",
                   ktag(kernels[kk], tag2, sizeof tag2), t, p, nn);
        json_decref(rk);
    }

    /* Each kernel alone (tests/kernel/kbench.py): issue 6's kernel figures. */
    static const struct {
        const char *field, *title;
    } kfig[] = {
        {"cpu_ms_per_execute", "kernel CPU per execute, ms"},
        {"wall_ms_per_execute", "wall time per execute, ms"},
        {"idle_rss_mb", "idle kernel RSS, MB"},
        {"start_to_kernel_info_s", "start to kernel_info_reply, s"},
        {"start_to_first_execute_s", "start to the first execute_reply, s"},
    };
    json_t *kruns[MAX_KERNELS] = {0};
    bool any_k = false;
    for (size_t kk = 0; kk < nk; kk++) {
        kruns[kk] = kind_of(all, "kernel", kernels[kk]);
        any_k |= json_array_size(kruns[kk]) > 0;
    }
    if (any_k) {
        printf("\nkernel only (each kernel alone over ZeroMQ ipc, no gateway, no sandbox; `x += 1; "
               "print(x)` with reply and idle awaited; medians of the starts)\n  %-38s",
               "");
        for (size_t kk = 0; kk < nk; kk++)
            if (json_array_size(kruns[kk]))
                printf(" %12s", kernels[kk]);
        printf("\n");
        for (size_t fi = 0; fi < ARRAY_SIZE(kfig); fi++) {
            printf("  %-38s", kfig[fi].title);
            for (size_t kk = 0; kk < nk; kk++)
                if (json_array_size(kruns[kk]))
                    printf(" %12.3f", med_field(kruns[kk], kfig[fi].field));
            printf("\n");
        }
        printf("  %-38s", "starts (executes each)");
        for (size_t kk = 0; kk < nk; kk++)
            if (json_array_size(kruns[kk]))
                printf(" %5zu (%4.0f)", json_array_size(kruns[kk]), med_field(kruns[kk], "n"));
        printf("\n");
        /* A ratio taken in one run holds when the machine's speed changes between runs. */
        for (size_t kk = 0; kk < nk; kk++) {
            size_t r;
            for (r = 0; r < nk && !streq(kernels[r], "ipykernel"); r++)
                ;
            if (r < nk && r != kk && json_array_size(kruns[kk]) && json_array_size(kruns[r]))
                printf("  CPU per execute, ipykernel / %s: x%.1f\n", kernels[kk],
                       med_field(kruns[r], "cpu_ms_per_execute") /
                           med_field(kruns[kk], "cpu_ms_per_execute"));
        }
    }

    json_t *ks = last_of(all, "kstart", NULL, NULL, NULL);
    printf("\nstart\n");
    for (size_t kk = 0; kk < nk; kk++) {
        json_t *fw = last_of(all, "first", "mode", "warm", kernels[kk]),
               *fc = last_of(all, "first", "mode", "cold", kernels[kk]);
        ktag(kernels[kk], tag, sizeof tag);
        if (fw)
            printf("  new user's first result, pool warm%s:  P50 %.1f ms, P95 %.1f ms; warm "
                   "request P50 %.1f, P95 %.1f; P95 above warm %+.1f ms (%d samples)\n",
                   tag, num(fw, "first_ms", "p50"), num(fw, "first_ms", "p95"),
                   num(fw, "warm_ms", "p50"), num(fw, "warm_ms", "p95"),
                   num(fw, "first_ms", "p95") - num(fw, "warm_ms", "p95"),
                   (int)num(fw, "samples", NULL));
        if (fc)
            printf("  new user's first result, pool empty%s: P50 %.0f ms, P95 %.0f ms (%d "
                   "samples)\n",
                   tag, num(fc, "first_ms", "p50"), num(fc, "first_ms", "p95"),
                   (int)num(fc, "samples", NULL));
    }
    if (ks) {
        json_t *s = json_object_get(ks, "steps_ms");
        printf("  kernel start, direct (median of %d): python start %.0f ms | import ipykernel "
               "%.0f ms (separate runs)\n"
               "    cumulative: conn file %.1f, fork+exec %.1f, sockets bound %.0f, "
               "kernel_info reply %.0f, iopub flowing %.0f ms; first execute %.1f ms, second %.1f "
               "ms\n",
               (int)num(ks, "samples", NULL), num(s, "python_startup", NULL),
               num(s, "import_ipykernel", NULL), num(s, "conn_file", NULL),
               num(s, "fork_exec", NULL), num(s, "sockets_bound", NULL),
               num(s, "kernel_info_reply", NULL), num(s, "iopub_flowing", NULL),
               num(s, "first_execute", NULL), num(s, "second_execute", NULL));
    }
    json_array_foreach(all, i, j) {
        if (!streq(json_string_value(json_object_get(j, "kind")), "gwlog"))
            continue;
        const char *k;
        json_t *st;
        json_object_foreach(json_object_get(j, "steps"), k, st) printf(
            "  gateway log (%s%s) %-40s P50 %7.0f ms  P95 %7.0f ms  (n=%d)\n",
            json_string_value(json_object_get(j, "label")), ktag(kernel_of(j), tag, sizeof tag), k,
            num(st, "p50", NULL), num(st, "p95", NULL), (int)num(st, "n", NULL));
    }

    printf("\nmemory\n");
    json_array_foreach(all, i, j) {
        if (!streq(json_string_value(json_object_get(j, "kind")), "mem"))
            continue;
        printf("  %4d sessions%s: gateway RSS %.1f MiB (PSS %.1f); per worker RSS %.1f MiB, PSS "
               "%.1f MiB (%d workers); MemAvailable drop %.1f MiB/session; a request then: P50 "
               "%.1f ms (%d/10 ok)",
               (int)num(j, "sessions", NULL), ktag(kernel_of(j), tag, sizeof tag),
               num(j, "gw_rss_kb", NULL) / 1024, num(j, "gw_pss_kb", NULL) / 1024,
               num(j, "worker_rss_kb", NULL) / 1024, num(j, "worker_pss_kb", NULL) / 1024,
               (int)num(j, "workers", NULL), num(j, "memavail_drop_per_session_kb", NULL) / 1024,
               num(j, "probe_p50_ms", NULL), (int)num(j, "probe_ok", NULL));
        double cg = num(j, "cgroup_kb_per_worker", NULL);
        if (!isnan(cg))
            printf("; cgroup charge %.1f MiB/worker", cg / 1024);
        printf("\n");
    }
    for (size_t kk = 0; kk < nk; kk++) {
        json_t *capj = last_of(all, "capacity", NULL, NULL, kernels[kk]);
        if (!capj)
            continue;
        const char *fail = json_string_value(json_object_get(capj, "failure"));
        printf("  capacity%s: %d sessions held (ramp cap %d), stopped by %s%s%s; memory alone "
               "would allow ~%.0f\n",
               ktag(kernels[kk], tag, sizeof tag), (int)num(capj, "held", NULL),
               (int)num(capj, "cap", NULL), json_string_value(json_object_get(capj, "stopped_by")),
               fail ? ": " : "", fail ? fail : "", num(capj, "memory_bound_sessions", NULL));
    }

    printf("\ntargets (figures, not assertions)\n");
    for (size_t kk = 0; kk < nk; kk++) {
        json_t *r1a = runs_of(all, "1a", kernels[kk]), *rb = runs_of(all, "1b", kernels[kk]);
        ktag(kernels[kk], tag, sizeof tag);
        if (json_array_size(r1a)) {
            double p95 = med_field(r1a, "lat_ms.p95"), ver = med_field(r1a, "verified_pct");
            printf("  %s 1a%s P95 <= 50 ms and 100%% verified: P95 %.1f ms, %.1f%% verified\n",
                   mark(p95 <= 50 && ver >= 100), tag, p95, ver);
        }
        if (json_array_size(rb) && streq(kernels[kk], "native")) {
            /* Issue 6: the native kernel's own targets. */
            double rps = med_field(rb, "rps"), p95 = med_field(rb, "lat_ms.p95");
            double ver = 100;
            size_t k;
            json_t *x;
            json_array_foreach(rb, k, x) {
                if (num(x, "verified_pct", NULL) < ver)
                    ver = num(x, "verified_pct", NULL);
            }
            printf("  %s 1b%s >= 2000 RPS, P95 <= 50 ms, 100%% verified: %.1f RPS, P95 %.1f ms, "
                   "%.1f%% verified (worst run)\n",
                   mark(rps >= 2000 && p95 <= 50 && ver >= 100), tag, rps, p95, ver);
        } else if (json_array_size(rb)) {
            double rps = med_field(rb, "rps"), p95 = med_field(rb, "lat_ms.p95");
            printf("  %s 1b%s >= 350 RPS and P95 <= 150 ms: %.1f RPS, P95 %.1f ms\n",
                   mark(rps >= 350 && p95 <= 150), tag, rps, p95);
        }
        if (streq(kernels[kk], "native") && json_array_size(kruns[kk])) {
            double cpu = med_field(kruns[kk], "cpu_ms_per_execute");
            double rss = med_field(kruns[kk], "idle_rss_mb");
            double st = med_field(kruns[kk], "start_to_kernel_info_s");
            printf("  %s kernel only%s CPU per trivial execute <= 0.4 ms: %.3f ms\n",
                   mark(cpu <= 0.4), tag, cpu);
            printf("  %s kernel only%s idle RSS <= 50 MB: %.1f MB\n", mark(rss <= 50), tag, rss);
            printf("  %s kernel only%s start to kernel_info_reply <= 0.6 s: %.3f s\n",
                   mark(st <= 0.6), tag, st);
        }
        json_decref(r1a);
        json_decref(rb);
    }
    if (n1) {
        double gw = med_field(r1b, "cpu.server_ms_per_req");
        double base =
            med_field(r3, "cpu.children_ms_per_req") + med_field(r3, "cpu.server_ms_per_req");
        printf("  %s gateway overhead vs 3 <= 10%%%s: throughput 1b/3 x%.3f; gateway CPU %.1f%% "
               "of a request's CPU\n",
               mark(1 - ovh <= 0.10), ktag(ref, tag, sizeof tag), ovh, 100 * gw / base);
    }
    if (n2) {
        printf("  %s workload 2 >= 1.5x Jupyter Server throughput at lower P95%s: x%.2f, P95 "
               "x%.2f\n",
               mark(w2 >= 1.5 && w2p95 < 1), ktag(ref, tag, sizeof tag), w2, w2p95);
    }
    for (size_t kk = 0; kk < nk; kk++) {
        json_t *fw = last_of(all, "first", "mode", "warm", kernels[kk]);
        if (!fw)
            continue;
        double d = num(fw, "first_ms", "p95") - num(fw, "warm_ms", "p95");
        printf("  %s new user's first result (warm pool)%s P95 <= 20 ms above a warm request: "
               "%+.1f ms\n",
               mark(d <= 20), ktag(kernels[kk], tag, sizeof tag), d);
    }
    printf("\n");
    for (size_t kk = 0; kk < nk; kk++)
        json_decref(kruns[kk]);
    json_decref(r1b);
    json_decref(r3);
    json_decref(r2k);
    json_decref(r2j);
    json_decref(all);
    return 0;
}
