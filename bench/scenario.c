/* The seed's three stateful scenarios, step by step, with the value each step must print.
 * Mirrors brief/performance.md exactly: arithmetic keeps a running sum, list appends and sums,
 * numpy cycles create / multiply-and-sum / mean by step mod 3. */
#include "bench.h"

#include <math.h>

void bench_rng_seed(bench_rng_t *r, uint64_t seed) {
    r->s = seed;
}

uint64_t bench_rng_next(bench_rng_t *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int bench_rng_int(bench_rng_t *r, int lo, int hi) {
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int)(bench_rng_next(r) % span);
}

double bench_rng_real(bench_rng_t *r, double lo, double hi) {
    return lo + (hi - lo) * ((double)(bench_rng_next(r) >> 11) / 9007199254740992.0);
}

const char *bench_scen_name(bench_scen_kind_t k) {
    switch (k) {
    case SCEN_ARITH:
        return "arithmetic";
    case SCEN_LIST:
        return "list";
    case SCEN_NUMPY:
        return "numpy";
    default:
        return "?";
    }
}

void bench_scen_init(bench_scen_t *s, bench_rng_t *rng) {
    memset(s, 0, sizeof *s);
    s->kind = (bench_scen_kind_t)bench_rng_int(rng, 0, SCEN_N - 1);
}

int bench_scen_step(bench_scen_t *s, bench_rng_t *rng, int i, char *buf, size_t len,
                    bool *ret_has_expected, double *ret_expected) {
    bool has = false;
    double expected = 0;
    int r = 0;
    switch (s->kind) {
    case SCEN_ARITH:
        if (i == 0) {
            s->x = bench_rng_int(rng, 1000, 9999);
            r = xsnprintf(buf, len, "x = %lld", s->x);
        } else {
            int d = bench_rng_int(rng, 100, 999);
            s->x += d;
            r = xsnprintf(buf, len, "x += %d; print(x)", d);
            has = true;
            expected = (double)s->x;
        }
        break;
    case SCEN_LIST:
        if (i == 0) {
            /* random.sample(range(10, 100), k) with k in 2..4: distinct values */
            int k = bench_rng_int(rng, 2, 4), v[4];
            char items[64] = "";
            s->list_sum = 0;
            for (int a = 0; a < k; a++) {
                bool dup;
                do {
                    v[a] = bench_rng_int(rng, 10, 99);
                    dup = false;
                    for (int b = 0; b < a; b++)
                        dup |= v[b] == v[a];
                } while (dup);
                s->list_sum += v[a];
                size_t n = strlen(items);
                snprintf(items + n, sizeof items - n, "%s%d", a ? ", " : "", v[a]);
            }
            r = xsnprintf(buf, len, "my_list = [%s]", items);
        } else {
            int v = bench_rng_int(rng, 100, 199);
            s->list_sum += v;
            r = xsnprintf(buf, len, "my_list.append(%d); print(sum(my_list))", v);
            has = true;
            expected = (double)s->list_sum;
        }
        break;
    case SCEN_NUMPY:
        switch (i % 3) {
        case 0:
            for (int a = 0; a < 3; a++)
                s->arr[a] = bench_rng_int(rng, 10, 50);
            r = xsnprintf(buf, len, "import numpy as np; arr = np.array([%lld, %lld, %lld])",
                          s->arr[0], s->arr[1], s->arr[2]);
            break;
        case 1: {
            int m = bench_rng_int(rng, 2, 5);
            for (int a = 0; a < 3; a++)
                s->arr[a] *= m;
            r = xsnprintf(buf, len, "arr = arr * %d; print(np.sum(arr))", m);
            has = true;
            expected = (double)(s->arr[0] + s->arr[1] + s->arr[2]);
            break;
        }
        default:
            r = xsnprintf(buf, len, "print(np.mean(arr))");
            has = true;
            expected = (double)(s->arr[0] + s->arr[1] + s->arr[2]) / 3.0;
            break;
        }
        break;
    default:
        return -EINVAL;
    }
    if (r < 0)
        return r;
    *ret_has_expected = has;
    *ret_expected = expected;
    return 0;
}

bool bench_value_matches(const char *text, double expected) {
    if (!text)
        return false;
    while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r')
        text++;
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || errno == ERANGE)
        return false;
    while (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')
        end++;
    if (*end)
        return false; /* float() of the stripped text would have raised */
    if (v == expected)
        return true;
    return fabs(v - expected) <= 1e-9 * fmax(fabs(v), fabs(expected));
}
