/* Latency samples and the seed's summary: P95 = sorted[int(n * 0.95)]. */
#include "bench.h"

int bench_stats_add(bench_stats_t *st, double ms, bool ok, bool verified) {
    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 256;
        double *p = realloc(st->lat_ms, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        st->lat_ms = p;
        st->cap = cap;
    }
    st->lat_ms[st->n++] = ms;
    st->ok += ok;
    st->verified += verified;
    return 0;
}

int bench_stats_merge(bench_stats_t *dst, const bench_stats_t *src) {
    for (size_t i = 0; i < src->n; i++) {
        int r = bench_stats_add(dst, src->lat_ms[i], false, false);
        if (r < 0)
            return r;
    }
    dst->ok += src->ok;
    dst->verified += src->verified;
    return 0;
}

void bench_stats_free(bench_stats_t *st) {
    free(st->lat_ms);
    memset(st, 0, sizeof *st);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_pct(const double *sorted, size_t n, double q) {
    if (n == 0)
        return 0;
    size_t i = (size_t)((double)n * q);
    return sorted[i < n ? i : n - 1];
}

double bench_median(double *v, size_t n) {
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

json_t *bench_stats_summary(bench_stats_t *st, double wall_s) {
    qsort(st->lat_ms, st->n, sizeof *st->lat_ms, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < st->n; i++)
        sum += st->lat_ms[i];
    double n = (double)st->n;
    return json_pack("{s:I,s:f,s:f,s:f,s:f,s:{s:f,s:f,s:f,s:f,s:f,s:f}}", "requests",
                     (json_int_t)st->n, "wall_s", wall_s, "rps", wall_s > 0 ? n / wall_s : 0.0,
                     "success_pct", st->n ? 100.0 * (double)st->ok / n : 0.0, "verified_pct",
                     st->n ? 100.0 * (double)st->verified / n : 0.0, "lat_ms", "min",
                     st->n ? st->lat_ms[0] : 0.0, "p50", bench_pct(st->lat_ms, st->n, 0.50), "p95",
                     bench_pct(st->lat_ms, st->n, 0.95), "p99", bench_pct(st->lat_ms, st->n, 0.99),
                     "max", st->n ? st->lat_ms[st->n - 1] : 0.0, "mean", st->n ? sum / n : 0.0);
}
