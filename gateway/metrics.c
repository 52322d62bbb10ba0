/* Prometheus text exposition (format 0.0.4) of the gateway's counters, histograms and
 * current pool state. Rendered on demand from plain counters the loop thread updates. */
#include "gw.h"
#include "util.h"

#include <stdarg.h>

static const double bounds[GW_HIST_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                               0.25,  0.5,    1,     2.5,  5,     10,   30};

void gw_hist_observe(gw_hist_t *h, double seconds) {
    size_t i = 0;
    while (i < GW_HIST_BUCKETS && seconds > bounds[i])
        i++;
    h->counts[i]++;
    h->sum += seconds;
    h->n++;
}

struct out {
    char *p;
    size_t len, cap;
    bool oom;
};

__attribute__((format(printf, 2, 3))) static void put(struct out *o, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->p ? o->p + o->len : NULL, o->p ? o->cap - o->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = true;
            return;
        }
        if (o->p && o->len + (size_t)n < o->cap) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap ? o->cap * 2 : 4096;
        while (cap < o->len + (size_t)n + 1)
            cap *= 2;
        char *np = realloc(o->p, cap);
        if (!np) {
            o->oom = true;
            return;
        }
        o->p = np;
        o->cap = cap;
    }
}

static void hist(struct out *o, const char *name, const char *help, const gw_hist_t *h) {
    put(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (size_t i = 0; i < GW_HIST_BUCKETS; i++) {
        cum += h->counts[i];
        put(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
    }
    cum += h->counts[GW_HIST_BUCKETS];
    put(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    put(o, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->n);
}

char *gw_metrics_render(const gw_t *gw) {
    static const char *const outcome_names[OUTCOME_COUNT] = {
        "ok", "error", "timeout", "reset", "died", "rejected", "cancelled"};
    struct out o = {0};
    gw_counts_t c;
    gw_counts(gw, &c);
    const gw_metrics_t *m = &gw->metrics;

    put(&o, "# HELP kbox_workers Workers by state.\n# TYPE kbox_workers gauge\n");
    put(&o, "kbox_workers{state=\"starting\"} %u\n", c.starting);
    put(&o, "kbox_workers{state=\"idle\"} %u\n", c.idle);
    put(&o, "kbox_workers{state=\"busy\"} %u\n", c.busy);
    put(&o, "kbox_workers{state=\"stopping\"} %u\n", c.stopping);
    put(&o, "# HELP kbox_sessions Open sessions.\n# TYPE kbox_sessions gauge\n");
    put(&o, "kbox_sessions %u\n", c.sessions);
    put(&o, "# HELP kbox_queue_depth Executions queued behind a running one, all sessions.\n"
            "# TYPE kbox_queue_depth gauge\n");
    put(&o, "kbox_queue_depth %u\n", c.queued);
    put(&o, "# HELP kbox_sessions_waiting Sessions waiting for a worker.\n"
            "# TYPE kbox_sessions_waiting gauge\n");
    put(&o, "kbox_sessions_waiting %u\n", c.waiting);
    put(&o, "# HELP kbox_executions_total Executions by outcome.\n"
            "# TYPE kbox_executions_total counter\n");
    for (int i = 0; i < OUTCOME_COUNT; i++)
        put(&o, "kbox_executions_total{outcome=\"%s\"} %llu\n", outcome_names[i],
            (unsigned long long)m->executions[i]);
    hist(&o, "kbox_execution_seconds", "Execution latency, from send to reply and idle.",
         &m->exec_seconds);
    hist(&o, "kbox_worker_start_seconds", "Worker start latency, to kernel_info and iopub.",
         &m->worker_start_seconds);
    put(&o, "# HELP kbox_workers_started_total Workers that became ready.\n"
            "# TYPE kbox_workers_started_total counter\n");
    put(&o, "kbox_workers_started_total %llu\n", (unsigned long long)m->workers_started);
    put(&o, "# HELP kbox_workers_failed_total Workers that failed to start.\n"
            "# TYPE kbox_workers_failed_total counter\n");
    put(&o, "kbox_workers_failed_total %llu\n", (unsigned long long)m->workers_failed);
    put(&o, "# HELP kbox_workers_died_total Ready workers that died (crash, OOM, heartbeat).\n"
            "# TYPE kbox_workers_died_total counter\n");
    put(&o, "kbox_workers_died_total %llu\n", (unsigned long long)m->workers_died);
    put(&o, "# HELP kbox_http_requests_total HTTP requests received.\n"
            "# TYPE kbox_http_requests_total counter\n");
    put(&o, "kbox_http_requests_total %llu\n", (unsigned long long)m->http_requests);
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    return o.p;
}
