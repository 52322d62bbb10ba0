/* The seam between the worker pool and the thing that actually starts a kernel. The pool
 * prepares a per-worker run directory and a connection file, then asks a launcher to start
 * the kernel. Launcher calls that block (start, cleanup) run on the loop's work pool, never
 * on the loop thread. The runc launcher (sandboxed) is the product; the plain process
 * launcher exists only for unit-level development and is never reachable from start.sh. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    const char *worker_id;  /* "w" + 16 hex, unique per gateway state dir */
    const char *run_dir;    /* host path of the per-worker directory (sockets, conn file) */
    const char *conn_file;  /* host path of the connection file, inside run_dir */
    const char *kernel;     /* "ipykernel" or "native" */
    const char *python;     /* interpreter for ipykernel, e.g. /usr/bin/python3 */
    const char *disk_mount; /* host path of the mounted worker disk, or NULL */
    const char *netns_path; /* prepared, firewalled network namespace (/run/netns/...), or NULL */
    double cpu;             /* CPU quota in cores */
    uint64_t ram_mb;
    uint64_t pids_max;
    uint32_t uid; /* the worker's own uid (and gid) */
} launcher_spec_t;

typedef struct {
    pid_t pid; /* host pid of the process to watch (the container's init) */
    int pidfd; /* pidfd for pid, owned by the caller after start, -1 if none */
    char container_id[80];
    char error[256]; /* after a failed start: what the runtime said, when it said more */
} launcher_proc_t;

typedef struct launcher launcher_t;

struct launcher {
    const char *name;
    /* Where the kernel sees spec->run_dir (the connection file's ipc prefix must be valid
     * there); NULL when it sees the host path itself. */
    const char *kernel_run_dir;
    /* Blocking. Starts the kernel; on success fills ret (pid, pidfd) and returns 0. */
    int (*start)(launcher_t *self, const launcher_spec_t *spec, launcher_proc_t *ret);
    /* Non-blocking. SIGINT to the kernel process (interrupt_mode "signal"). */
    int (*interrupt)(launcher_t *self, const launcher_proc_t *proc);
    /* Non-blocking. SIGKILL everything of the worker. */
    int (*kill)(launcher_t *self, const launcher_proc_t *proc);
    /* Blocking. After the process is gone, or after a start that failed: remove container
     * state; idempotent. */
    int (*cleanup)(launcher_t *self, const launcher_proc_t *proc, const launcher_spec_t *spec);
    void (*destroy)(launcher_t *self);
    void *impl;
};

/* Direct fork/exec of ipykernel, unsandboxed. For development and unit tests only. */
launcher_t *launcher_process_new(void);
void launcher_destroy(launcher_t **self_p);

/* ipykernel's history in memory, as the native kernel keeps it: an SQLite write per cell on
 * the user's disk costs about a fifth of ipykernel's CPU per request and keeps nothing that
 * outlives the kernel's memory state. */
#define IPYKERNEL_HISTORY_OPT "--HistoryManager.hist_file=:memory:"
