/* Gateway configuration: defaults, then environment variables (the option name in capitals
 * with '_' for '-', e.g. MIN_IDLE_WORKERS), then command-line options. Pure and unit-tested;
 * main() only calls gw_config_load() and prints the error it returns. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "firewall.h"

typedef struct {
    char host[256];
    uint16_t port;
    char state_dir[1024];
    uint32_t min_idle_workers;
    uint32_t max_total_workers;
    double worker_cpu;
    uint64_t worker_ram_mb;
    uint64_t worker_disk_mb;
    uint64_t worker_pids;
    uint64_t exec_timeout_ms;
    uint64_t idle_timeout_s;
    uint64_t max_output_bytes;
    uint32_t max_queue;
    uint64_t acquire_timeout_ms; /* how long a request waits for a worker before 503 */
    uint64_t interrupt_grace_ms; /* after a timeout's interrupt, before the worker is replaced */
    uint64_t worker_start_timeout_ms;
    uint32_t max_starting_workers; /* concurrent starts; more would only slow each other */
    uint64_t max_body_bytes;
    uint64_t max_code_bytes;
    uint32_t max_connections;
    uint32_t max_connections_per_address; /* 0 = no limit but max_connections */
    uint64_t client_timeout_s;
    char kernel[16];   /* "ipykernel" | "native" */
    char launcher[16]; /* "runc" | "process" */
    /* How the gateway reaches a worker's kernel: "ipc" (socket files in the worker's run dir;
     * the worker has only lo) or "tcp" (a veth pair per worker, addresses from worker_net4/6,
     * firewalled to the gateway's end; for kernels across a network boundary). */
    char worker_transport[8];
    char worker_net4[64]; /* IPv4 block cut into one /30 per worker (tcp) */
    char worker_net6[64]; /* IPv6 block cut into one /126 per worker (tcp); "" = no IPv6 */
    char python[256];
    uint32_t uid_base;  /* first worker uid */
    uint32_t uid_count; /* worker uids available (sessions and workers each hold one) */
    uint64_t disk_reserve_mb;
    /* What one kernel may make the gateway hold: no message above kernel_max_message_mb, and
     * at most kernel_queue_msgs unread per channel (ZeroMQ counts messages, not bytes), so a
     * kernel printing faster than the gateway reads costs at most their product. */
    uint64_t kernel_max_message_mb;
    uint32_t kernel_queue_msgs;
    uint64_t heartbeat_ms;     /* heartbeat period */
    uint32_t heartbeat_misses; /* silent periods in a row before a kernel is declared hung */
} gw_config_t;

/* Fill defaults, then apply env (getenv_fn may be NULL for the real environment), then argv.
 * On error returns -EINVAL and writes a one-line message into err. argv[0] is skipped.
 * Returns 1 (not an error) if --help was given; the caller prints gw_config_usage(). */
int gw_config_load(gw_config_t *cfg, int argc, char **argv,
                   const char *(*getenv_fn)(const char *name), char *err, size_t errlen);

/* The TCP transport's address pool from worker_net4 and worker_net6 ("" = IPv4 only):
 * 0 or -EINVAL. */
int gw_config_worker_pool(const gw_config_t *cfg, fw_pool_t *ret);

/* The --help text with defaults; static storage. */
const char *gw_config_usage(void);
