/* Table-driven option parsing: one row per option gives its name, type, bounds and storage,
 * so --help, env lookup and argv parsing can never disagree about an option. */
#include "config.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>

enum opt_type { OPT_STR, OPT_U16, OPT_U32, OPT_U64, OPT_DBL };

struct opt {
    const char *name;
    enum opt_type type;
    size_t off;
    size_t size; /* for strings */
    double min, max;
    const char *def;
    const char *help;
};

#define O(field) offsetof(gw_config_t, field)
#define S(field) sizeof(((gw_config_t *)0)->field)

static const struct opt opts[] = {
    {"host", OPT_STR, O(host), S(host), 0, 0, "127.0.0.1", "address to listen on"},
    {"port", OPT_U16, O(port), 0, 0, 65535, "3874", "TCP port (0 = any free port)"},
    {"state-dir", OPT_STR, O(state_dir), S(state_dir), 0, 0, "/var/lib/kbox",
     "state directory (token, journal, disks), mode 0700"},
    {"min-idle-workers", OPT_U32, O(min_idle_workers), 0, 0, 10000, "5",
     "workers kept started and unassigned"},
    {"max-total-workers", OPT_U32, O(max_total_workers), 0, 1, 100000, "50",
     "workers at most, idle and busy"},
    {"worker-cpu", OPT_DBL, O(worker_cpu), 0, 0.01, 1024, "1.0", "CPU quota per worker, in cores"},
    {"worker-ram-mb", OPT_U64, O(worker_ram_mb), 0, 64, 1048576, "1024",
     "memory per worker (no swap), MiB"},
    {"worker-disk-mb", OPT_U64, O(worker_disk_mb), 0, 16, 1048576, "500",
     "virtual disk per session, MiB"},
    {"worker-pids", OPT_U64, O(worker_pids), 0, 8, 1000000, "256", "processes per worker"},
    {"exec-timeout-ms", OPT_U64, O(exec_timeout_ms), 0, 100, 86400000, "120000",
     "longest execution; a request's timeout_ms is capped by it"},
    {"idle-timeout-s", OPT_U64, O(idle_timeout_s), 0, 1, 31536000, "3600",
     "release a session after this long with no execution and no open WebSocket"},
    {"max-output-bytes", OPT_U64, O(max_output_bytes), 0, 1024, 1073741824, "1048576",
     "output kept per execution"},
    {"max-queue", OPT_U32, O(max_queue), 0, 1, 100000, "32",
     "requests queued per session before 429"},
    {"acquire-timeout-ms", OPT_U64, O(acquire_timeout_ms), 0, 0, 600000, "30000",
     "how long a request waits for a free worker before 503"},
    {"interrupt-grace-ms", OPT_U64, O(interrupt_grace_ms), 0, 10, 600000, "2000",
     "after a timeout's interrupt, wait this long for the kernel before replacing it"},
    {"worker-start-timeout-ms", OPT_U64, O(worker_start_timeout_ms), 0, 100, 600000, "30000",
     "a worker not ready after this long is destroyed"},
    {"max-starting-workers", OPT_U32, O(max_starting_workers), 0, 1, 10000, "4",
     "workers starting at once (kernel starts are CPU-bound; a queue serves the first sooner)"},
    {"max-body-bytes", OPT_U64, O(max_body_bytes), 0, 1024, 1073741824, "4194304",
     "largest HTTP request body"},
    {"max-connections", OPT_U32, O(max_connections), 0, 1, 1000000, "1024",
     "HTTP connections open at once (beyond: 503 too_many_connections)"},
    {"max-connections-per-address", OPT_U32, O(max_connections_per_address), 0, 0, 1000000, "256",
     "HTTP connections open at once from one client address (IPv6: one /64), so one client "
     "cannot hold them all; 0 = no limit but max-connections (behind a reverse proxy every "
     "client has the proxy's address)"},
    {"client-timeout-s", OPT_U64, O(client_timeout_s), 0, 1, 86400, "60",
     "a request (head and body) must arrive within this, a keep-alive connection may idle "
     "this long, and a client that stops reading a response is dropped after it"},
    {"max-code-bytes", OPT_U64, O(max_code_bytes), 0, 1, 1073741824, "1048576",
     "largest code string"},
    {"kernel", OPT_STR, O(kernel), S(kernel), 0, 0, "native",
     "kernel: native (kernel-host, embedded CPython + IPython) | ipykernel (the reference)"},
    {"launcher", OPT_STR, O(launcher), S(launcher), 0, 0, "runc",
     "worker launcher: runc (sandboxed) | process (unsandboxed, development only)"},
    {"worker-transport", OPT_STR, O(worker_transport), S(worker_transport), 0, 0, "ipc",
     "how the gateway reaches kernels: ipc (socket files; the worker has no network but lo) | "
     "tcp (a firewalled veth pair per worker; runc only)"},
    {"worker-net4", OPT_STR, O(worker_net4), S(worker_net4), 0, 0, "10.255.0.0/16",
     "tcp transport: IPv4 block for the workers' links, one /30 each (gateway .1, worker .2)"},
    {"worker-net6", OPT_STR, O(worker_net6), S(worker_net6), 0, 0, "",
     "tcp transport: IPv6 block for the workers' links, one /126 each; empty = IPv4 only"},
    {"uid-base", OPT_U32, O(uid_base), 0, 0, 4000000000.0, "0",
     "first uid given to workers (each worker runs as its own uid); 0: the lowest range from "
     "100000 no other running gateway holds, chosen at the first start and kept in the state "
     "dir"},
    {"uid-count", OPT_U32, O(uid_count), 0, 1, 1000000, "4096", "how many worker uids"},
    {"disk-reserve-mb", OPT_U64, O(disk_reserve_mb), 0, 0, 1048576, "1024",
     "host disk space never given to worker disks (a new disk beyond it: 503)"},
    {"kernel-max-message-mb", OPT_U64, O(kernel_max_message_mb), 0, 1, 4096, "16",
     "largest message accepted from a kernel; a bigger one costs the kernel its session"},
    {"kernel-queue-msgs", OPT_U32, O(kernel_queue_msgs), 0, 2, 1000000, "16",
     "unread messages held per kernel channel (back-pressure beyond: the kernel waits)"},
    {"heartbeat-ms", OPT_U64, O(heartbeat_ms), 0, 100, 3600000, "5000", "heartbeat period"},
    {"heartbeat-misses", OPT_U32, O(heartbeat_misses), 0, 1, 1000, "6",
     "heartbeat periods with no sign of life before a kernel is declared hung"},
    {"python", OPT_STR, O(python), S(python), 0, 0, "/usr/bin/python3",
     "Python interpreter ipykernel runs (the native kernel embeds its own)"},
};

static int set_opt(gw_config_t *cfg, const struct opt *o, const char *val, const char *origin,
                   char *err, size_t errlen) {
    char *p = (char *)cfg + o->off;
    if (o->type == OPT_STR) {
        if (strlen(val) >= o->size) {
            snprintf(err, errlen, "%s: value for %s is too long", origin, o->name);
            return -EINVAL;
        }
        memcpy(p, val, strlen(val) + 1);
        return 0;
    }
    char *end = NULL;
    errno = 0;
    double d = strtod(val, &end);
    if (errno || end == val || *end || !isfinite(d) || d < o->min || d > o->max ||
        (o->type != OPT_DBL && d != floor(d))) {
        snprintf(err, errlen, "%s: %s must be a %s between %g and %g, got '%s'", origin, o->name,
                 o->type == OPT_DBL ? "number" : "whole number", o->min, o->max, val);
        return -EINVAL;
    }
    switch (o->type) {
    case OPT_U16:
        *(uint16_t *)(void *)p = (uint16_t)d;
        break;
    case OPT_U32:
        *(uint32_t *)(void *)p = (uint32_t)d;
        break;
    case OPT_U64:
        *(uint64_t *)(void *)p = (uint64_t)d;
        break;
    case OPT_DBL:
        *(double *)(void *)p = d;
        break;
    case OPT_STR:
        break;
    }
    return 0;
}

static void env_name(const char *opt, char *buf, size_t len) {
    size_t i = 0;
    for (; opt[i] && i + 1 < len; i++)
        buf[i] = opt[i] == '-' ? '_' : (char)toupper((unsigned char)opt[i]);
    buf[i] = '\0';
}

int gw_config_worker_pool(const gw_config_t *cfg, fw_pool_t *ret) {
    return fw_pool_parse(cfg->worker_net4, cfg->worker_net6[0] ? cfg->worker_net6 : NULL, ret);
}

static int validate(const gw_config_t *cfg, char *err, size_t errlen) {
    if (!streq(cfg->kernel, "ipykernel") && !streq(cfg->kernel, "native")) {
        snprintf(err, errlen, "kernel must be ipykernel or native, got '%s'", cfg->kernel);
        return -EINVAL;
    }
    if (!streq(cfg->launcher, "runc") && !streq(cfg->launcher, "process")) {
        snprintf(err, errlen, "launcher must be runc or process, got '%s'", cfg->launcher);
        return -EINVAL;
    }
    if (!streq(cfg->worker_transport, "ipc") && !streq(cfg->worker_transport, "tcp")) {
        snprintf(err, errlen, "worker-transport must be ipc or tcp, got '%s'",
                 cfg->worker_transport);
        return -EINVAL;
    }
    if (streq(cfg->worker_transport, "tcp")) {
        /* The veth and its firewall live in the worker's own network namespace, which only
         * the sandboxed launcher makes. */
        if (!streq(cfg->launcher, "runc")) {
            snprintf(err, errlen, "worker-transport tcp needs launcher runc");
            return -EINVAL;
        }
        fw_pool_t pool;
        if (gw_config_worker_pool(cfg, &pool) < 0) {
            snprintf(err, errlen,
                     "worker-net4/worker-net6 must be CIDR blocks without host bits (IPv4 at "
                     "most /30, IPv6 at most /126 and outside ::ffff:0:0/96), got '%s' and '%s'",
                     cfg->worker_net4, cfg->worker_net6);
            return -EINVAL;
        }
        /* Each worker's link is indexed by its uid slot. */
        if (fw_pool_size(&pool) < cfg->uid_count) {
            snprintf(err, errlen,
                     "worker-net4/worker-net6 give %u worker links, fewer than uid-count (%u)",
                     fw_pool_size(&pool), cfg->uid_count);
            return -EINVAL;
        }
    }
    if ((cfg->uid_base != 0 && cfg->uid_base < 1000) ||
        (uint64_t)cfg->uid_base + cfg->uid_count > INT32_MAX) {
        snprintf(err, errlen,
                 "uid-base must be 0 (automatic) or at least 1000, and uid-base + "
                 "uid-count at most %d",
                 INT32_MAX);
        return -EINVAL;
    }
    if (cfg->min_idle_workers > cfg->max_total_workers) {
        snprintf(err, errlen, "min-idle-workers (%u) exceeds max-total-workers (%u)",
                 cfg->min_idle_workers, cfg->max_total_workers);
        return -EINVAL;
    }
    if (cfg->state_dir[0] != '/') {
        snprintf(err, errlen, "state-dir must be an absolute path");
        return -EINVAL;
    }
    return 0;
}

int gw_config_load(gw_config_t *cfg, int argc, char **argv,
                   const char *(*getenv_fn)(const char *name), char *err, size_t errlen) {
    memset(cfg, 0, sizeof *cfg);
    int r;
    for (size_t i = 0; i < ARRAY_SIZE(opts); i++)
        if ((r = set_opt(cfg, &opts[i], opts[i].def, "default", err, errlen)) < 0)
            return r;
    for (size_t i = 0; i < ARRAY_SIZE(opts); i++) {
        char name[64];
        env_name(opts[i].name, name, sizeof name);
        const char *v = getenv_fn ? getenv_fn(name) : getenv(name);
        if (v && *v && (r = set_opt(cfg, &opts[i], v, name, err, errlen)) < 0)
            return r;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (streq(arg, "--help") || streq(arg, "-h"))
            return 1;
        if (!startswith(arg, "--")) {
            snprintf(err, errlen, "unexpected argument '%s'", arg);
            return -EINVAL;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt *o = NULL;
        for (size_t i = 0; i < ARRAY_SIZE(opts); i++)
            if (strlen(opts[i].name) == nlen && strncmp(opts[i].name, name, nlen) == 0)
                o = &opts[i];
        if (!o) {
            snprintf(err, errlen, "unknown option '%s' (see --help)", arg);
            return -EINVAL;
        }
        const char *val = eq ? eq + 1 : (a + 1 < argc ? argv[++a] : NULL);
        if (!val) {
            snprintf(err, errlen, "option --%s needs a value", o->name);
            return -EINVAL;
        }
        if ((r = set_opt(cfg, o, val, "argument", err, errlen)) < 0)
            return r;
    }
    return validate(cfg, err, errlen);
}

const char *gw_config_usage(void) {
    static char buf[8192];
    if (buf[0])
        return buf;
    size_t n = (size_t)snprintf(buf, sizeof buf,
                                "usage: kbox-gateway [options]\n"
                                "Every option can also be set by an environment variable of the "
                                "same name in capitals (MIN_IDLE_WORKERS=...).\n\n");
    for (size_t i = 0; i < ARRAY_SIZE(opts) && n < sizeof buf; i++) {
        char env[64];
        env_name(opts[i].name, env, sizeof env);
        n += (size_t)snprintf(buf + n, sizeof buf - n, "  --%-26s %s (default %s, env %s)\n",
                              opts[i].name, opts[i].help, opts[i].def, env);
    }
    return buf;
}
