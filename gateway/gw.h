/* Internal types of the gateway, shared by its source files (worker.c, pool.c, session.c,
 * api.c, metrics.c). Not a public API: the gateway is one component on one event loop, so
 * these structs are plain and their invariants are stated here.
 *
 * Model: a session is a Jupyter kernel as clients see it (kernel_id, optional user_uuid). A
 * worker is the process (in its sandbox) that currently runs that kernel. A session keeps its
 * identity and its disk across worker replacement; its memory state does not survive. */
#pragma once

#include "config.h"
#include "exec_out.h"
#include "http.h"
#include "jwire.h"
#include "firewall.h"
#include "launcher.h"
#include "loop.h"
#include "relay.h"

#include <czmq.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

typedef struct gw gw_t;
typedef struct gw_worker gw_worker_t;
typedef struct gw_session gw_session_t;
typedef struct gw_exec gw_exec_t;

/* ---- workers ------------------------------------------------------------------------------ */

typedef enum {
    WORKER_STARTING, /* launcher running on the work pool, or waiting for kernel_info */
    WORKER_READY,    /* answering; idle if session == NULL */
    WORKER_STOPPING, /* killed, cleanup pending on the work pool */
} gw_worker_state_t;

struct gw_worker {
    TAILQ_ENTRY(gw_worker) link;      /* gw->workers */
    TAILQ_ENTRY(gw_worker) idle_link; /* gw->idle, only while READY and unassigned */
    bool in_idle;
    gw_t *gw;
    char id[24];
    gw_worker_state_t state;
    gw_session_t *session; /* assigned session or NULL */
    bool launching;        /* the launcher job is on the work pool */
    bool launched;         /* the launcher's start succeeded */
    bool start_tried;      /* the launcher's start ran: its cleanup is needed, even if it failed */
    bool doomed;           /* destroy requested while the launcher was still running */
    int start_err;

    char run_dir[PATH_MAX];
    char conn_file[PATH_MAX];
    jwire_conn_t conn; /* host-side view (ipc prefix in run_dir) */
    jwire_signer_t *signer;
    jwire_replay_t *replay;
    char zsession[40]; /* our own Jupyter session id towards the kernel */

    zsock_t *sock[JWIRE_NCHANNELS];
    loop_watch_t *watch[JWIRE_NCHANNELS];
    loop_watch_t *pid_watch;
    loop_watch_t *start_timer;
    loop_watch_t *nudge_timer;
    loop_watch_t *hb_timer;
    int hb_misses;
    bool hb_outstanding;
    bool seen_since_tick;          /* any message from the kernel since the last heartbeat tick */
    zsock_t *mon[JWIRE_NCHANNELS]; /* disconnect monitors (not on heartbeat) */
    gw_relay_t *relay[JWIRE_NCHANNELS]; /* each socket reaches the kernel through one */
    loop_watch_t *mon_watch[JWIRE_NCHANNELS];
    loop_watch_t *lost_timer; /* a channel closed: declared lost unless the exit comes first */
    loop_watch_t *exit_timer; /* the process exited: what it sent last is still arriving */
    char lost_why[160];
    unsigned lost_channels;        /* bit per channel whose connection closed in this grace */
    unsigned mon_gen;              /* monitor endpoints are unique per (re)connection */
    int iopub_drops;               /* iopub reconnections in the current minute */
    uint64_t iopub_drop_window_ms; /* start of that minute */

    launcher_spec_t spec;
    launcher_proc_t proc;

    char info_msg_id[40];
    bool got_info_reply;
    bool got_iopub;
    json_t *kernel_info; /* content of the first kernel_info_reply */

    uint64_t created_us;
    uint64_t ready_us;

    /* Sandbox resources (sandbox.c). The disk and uid slot belong to the worker until a
     * session adopts them; then to the session (disk_keep: detach, not remove, at cleanup). */
    uint32_t uid_slot;
    bool has_uid_slot;
    char disk_name[64];
    bool disk_attach; /* attach the session's existing disk instead of creating one */
    bool disk_ready;  /* mounted: teardown must detach or remove it */
    bool disk_keep;   /* the disk outlives this worker (a live session owns it) */
    char disk_mount[PATH_MAX];
    char netns_path[PATH_MAX];
    struct fw_netns *netns;
    bool netns_adopted;       /* reattached: no handle, removed by name */
    char reserved_for[40];    /* kernel_id of the session this worker was started for, or "" */
    char owner_kernel_id[40]; /* session owning the disk at cleanup (to tell it when done) */
    uint64_t t_disk_us, t_netns_us, t_launch_us; /* start steps, for the ready log */
};

int gw_worker_spawn(gw_t *gw, gw_session_t *for_session, gw_worker_t **ret);
/* Kill and clean up; the worker leaves every list now and is freed when cleanup is done.
 * NULL-safe. Does not notify the session: callers detach it first. */
void gw_worker_destroy(gw_worker_t *w, const char *reason);
/* Send a message on a channel, signed; stamps our session id. 0 or -errno. */
int gw_worker_send(gw_worker_t *w, jwire_channel_t ch, jwire_msg_t *msg);
/* A new request message with our session in the header (content stolen). */
jwire_msg_t *gw_worker_msg(gw_worker_t *w, const char *msg_type, json_t *content);
int gw_worker_interrupt(gw_worker_t *w);

/* ---- what an HTTP connection's user pointer is -------------------------------------------- */

typedef enum { GW_CONN_EXEC = 1, GW_CONN_PENDING = 2 } gw_conn_kind_t;

/* An HTTP request waiting for its session's worker (kernel create or restart). */
typedef struct gw_pending {
    gw_conn_kind_t kind; /* GW_CONN_PENDING; first member, as in gw_exec_t */
    TAILQ_ENTRY(gw_pending) link;
    gw_session_t *session;
    http_conn_t *conn;
    int status; /* 201 for create, 200 for restart */
} gw_pending_t;

/* ---- executions --------------------------------------------------------------------------- */

struct gw_exec {
    gw_conn_kind_t kind; /* GW_CONN_EXEC; first member */
    TAILQ_ENTRY(gw_exec) link;
    gw_session_t *session;
    http_conn_t *conn; /* NULL once the client is gone */
    bool stream;       /* NDJSON */
    bool stream_broken;
    char *code;
    uint64_t timeout_ms;
    char msg_id[40];
    exec_out_t *out;
    bool started;
    bool got_reply;
    bool got_idle;
    bool got_busy;          /* the kernel started our request: the timeout runs from here */
    bool waited_for_start;  /* timed out once before busy: now waiting acquire_timeout_ms */
    bool interrupt_on_busy; /* the client left before the kernel started our request */
    bool kernel_exits;      /* the code called exit(): the kernel ends after its reply */
    bool aborted;           /* the kernel aborted the request unrun */
    bool resent;            /* ... and it was sent again (once) */
    char probe_id[40];      /* a kernel_info sent after ours: its idle stands for our lost one */
    bool timed_out;
    bool session_reset;
    loop_watch_t *timeout_timer; /* the run's timeout, or the wait for a busy kernel */
    loop_watch_t *grace_timer;
    loop_watch_t *idle_timer; /* reply came, idle not yet: probe if it stays away */
    uint64_t queued_us;
    uint64_t started_us;
};

/* ---- sessions ----------------------------------------------------------------------------- */

struct gw_session {
    TAILQ_ENTRY(gw_session) link;      /* gw->sessions */
    TAILQ_ENTRY(gw_session) wait_link; /* gw->waiting, while waiting for a worker */
    bool waiting;
    gw_t *gw;
    char kernel_id[40];
    char *user_uuid; /* NULL for kernels created through the Jupyter API */
    char kernel_name[64];
    gw_worker_t *worker;
    TAILQ_HEAD(, gw_exec) queue;
    uint32_t nqueued;
    gw_exec_t *running;
    bool reset_pending;        /* the next execution reports session_reset */
    char wait_probe_id[40];    /* probe sent while an /execute waits for the kernel to be free */
    char abandoned_msg_id[40]; /* answered 503 before it started: interrupt it if it starts */
    bool had_worker;
    uint64_t last_activity_us; /* wall clock, for the Jupyter model */
    uint64_t last_activity_mono_ms;
    loop_watch_t *acquire_timer;
    bool released;
    char execution_state[16]; /* Jupyter model: starting, idle, busy, restarting, dead */
    TAILQ_HEAD(, gw_pending) pending;
    TAILQ_HEAD(, gw_wsclient) clients; /* WebSocket channel connections (channels.c) */
    uint32_t nclients;
    zhashx_t *routes;   /* msg_id of a client request -> its gw_wsclient_t */
    zlistx_t *held;     /* client messages waiting for a worker (channels.c) */
    char disk_name[64]; /* the session's disk ("" until it adopts a worker's) */
    uint32_t uid_slot;  /* valid when has_uid_slot */
    bool has_uid_slot;
    bool disk_busy;     /* its last worker is still detaching the disk */
    bool spawn_pending; /* a dedicated worker is starting for it */
};

typedef struct gw_wsclient gw_wsclient_t;

/* Jupyter kernel model {id, name, last_activity, execution_state, connections}. */
json_t *gw_session_model(const gw_session_t *s);
/* Replace the worker with a fresh kernel (Jupyter restart); respond on conn when ready. */
int gw_session_restart(gw_session_t *s, http_conn_t *conn);
/* Add an HTTP request waiting for the session's worker. */
int gw_session_add_pending(gw_session_t *s, http_conn_t *conn, int status);
void gw_pending_client_gone(gw_pending_t *p);

/* channels.c: the WebSocket bridge. */
void gw_channels_open(gw_t *gw, gw_session_t *s, http_conn_t *conn, const http_request_t *req);
/* A kernel message for the session's clients (iopub to all, replies to the asker). Borrowed. */
void gw_channels_dispatch(gw_session_t *s, jwire_channel_t ch, const jwire_msg_t *msg);
/* Send the client messages held while the kernel was (re)starting. */
void gw_channels_flush(gw_session_t *s);
/* Gateway-made iopub status (restarting, dead) to every client. */
void gw_channels_status(gw_session_t *s, const char *state);
/* Close every client of a session being released. */
void gw_channels_close_all(gw_session_t *s);
/* Gateway teardown: drops the connections of clients still closing (no handshake wait). */
void gw_channels_fini(gw_t *gw);

/* kernels_api.c: the Jupyter Server kernels REST API under /api. */
void gw_kernels_api(gw_t *gw, http_conn_t *conn, const http_request_t *req);

gw_session_t *gw_session_find_user(gw_t *gw, const char *user_uuid);
gw_session_t *gw_session_find_kernel(gw_t *gw, const char *kernel_id);
int gw_session_new(gw_t *gw, const char *user_uuid, const char *kernel_name, gw_session_t **ret);
/* Fails pending work with status/error, destroys the worker, frees the session. */
void gw_session_release(gw_session_t *s, int status, const char *error, const char *detail);
/* Release for idleness: remembered (bounded) so the user's next call reports session_reset. */
void gw_session_expire(gw_session_t *s);
/* Checks that the session's queue has room for exec and prepares it; nothing is queued yet,
 * so the caller can still answer an error (a streamed response cannot change its status once
 * begun). -EAGAIN when the queue is full, -ENOMEM. */
int gw_session_admit(gw_session_t *s, gw_exec_t *exec);
/* Queues an admitted execution (takes ownership of exec) and starts it if the kernel is free. */
void gw_session_submit(gw_session_t *s, gw_exec_t *exec);
/* The HTTP client went away. */
void gw_exec_client_gone(gw_exec_t *exec);
void gw_exec_free(gw_exec_t **exec_p);

/* Worker -> session notifications (worker.c calls these). */
void gw_session_on_worker_ready(gw_session_t *s, gw_worker_t *w);
/* The kernel's iopub connection was dropped and reopened: output was lost. */
void gw_session_on_output_lost(gw_session_t *s, const char *why);
void gw_session_on_worker_lost(gw_session_t *s, gw_worker_t *w, const char *why);
void gw_session_on_message(gw_session_t *s, jwire_channel_t ch, jwire_msg_t *msg);

/* ---- pool --------------------------------------------------------------------------------- */

/* Give the session a worker: an idle one now, or a new one when under max, or wait. */
void gw_pool_request(gw_t *gw, gw_session_t *s);
void gw_pool_cancel_wait(gw_t *gw, gw_session_t *s);
/* A worker became ready (or failed): assign, idle, or replace. */
void gw_pool_on_worker_ready(gw_t *gw, gw_worker_t *w);
void gw_pool_on_worker_failed(gw_t *gw, gw_worker_t *w);
/* Keep min_idle workers warm. */
void gw_pool_top_up(gw_t *gw);

typedef struct {
    uint32_t starting, idle, busy, stopping, executing;
    uint32_t sessions, waiting, queued;
} gw_counts_t;
void gw_counts(const gw_t *gw, gw_counts_t *ret);

/* ---- metrics ------------------------------------------------------------------------------ */

enum gw_outcome {
    OUTCOME_OK,
    OUTCOME_ERROR,
    OUTCOME_TIMEOUT,
    OUTCOME_RESET,
    OUTCOME_DIED,
    OUTCOME_REJECTED,
    OUTCOME_CANCELLED,
    OUTCOME_COUNT
};

#define GW_HIST_BUCKETS 14
typedef struct {
    uint64_t counts[GW_HIST_BUCKETS + 1]; /* last = +Inf */
    double sum;
    uint64_t n;
} gw_hist_t;

typedef struct {
    uint64_t executions[OUTCOME_COUNT];
    gw_hist_t exec_seconds;
    gw_hist_t worker_start_seconds;
    uint64_t workers_started, workers_failed, workers_died;
    uint64_t http_requests;
} gw_metrics_t;

void gw_hist_observe(gw_hist_t *h, double seconds);
/* Prometheus text exposition of metrics + current counts; caller frees. */
char *gw_metrics_render(const gw_t *gw);

/* ---- the gateway -------------------------------------------------------------------------- */

struct gw {
    gw_config_t cfg;
    loop_t *loop;
    http_server_t *http;
    launcher_t *launcher;
    char token[128];
    char run_root[PATH_MAX];
    int lock_fd;     /* <state_dir>/gateway.lock, flock'd while we run: one gateway per state dir */
    int uid_lock_fd; /* our claim in the host's uid-range registry (hostclaims.h), or -1 */
    int link_lock_fds[2]; /* TCP mode: our claims of IPv4 and IPv6 link addresses, or -1 */
    TAILQ_HEAD(, gw_worker) workers;
    TAILQ_HEAD(, gw_worker) idle;
    TAILQ_HEAD(, gw_session) sessions;
    TAILQ_HEAD(, gw_session) waiting;
    TAILQ_HEAD(, gw_wsclient) closing; /* WebSocket clients of gone sessions, closing */
    zhashx_t *by_user;                 /* user_uuid -> session */
    zhashx_t *by_kernel;               /* kernel_id -> session */
    zhashx_t *expired; /* user_uuids released for idleness (bounded): session_reset */
    zlistx_t *expired_order;
    uint32_t nworkers_live; /* starting + ready + stopping */
    bool initializing;
    bool shutting_down;
    gw_metrics_t metrics;
    loop_watch_t *idle_timer;
    /* Sandbox (sandbox.c): NULL/0 with the unsandboxed launcher. */
    struct disk_mgr *disks;
    fw_config_t fw;
    char rootfs[PATH_MAX];
    char cgroup_parent[32];
    uint64_t *uid_used;
    uint32_t uid_count, uid_next;
    bool owns_launcher;
    bool journal_pending;
    bool clean_exit;         /* every worker was stopped: the journal can go */
    char id_prefix[8];       /* "w" + 4 hex from the state dir: our netns/veth names, ours alone */
    uint32_t spawn_failures; /* consecutive; reset when a worker becomes ready */
    loop_watch_t *backoff_timer;  /* while set, no new workers are started */
    loop_watch_t *deadline_timer; /* shutdown: stop with work pending after this */
    uint64_t started_mono_ms;
};

/* sandbox.c */
int gw_sandbox_init(gw_t *gw);
/* Start-up sweep of everything of ours not in the keep lists (worker ids, disk names). */
int gw_sandbox_sweep(gw_t *gw, zlistx_t *keep_workers, zlistx_t *keep_disks);
void gw_sandbox_fini(gw_t *gw);
/* A sandboxed worker's run dir is a small tmpfs of its own, made on the loop thread before
 * the connection file is written into it; removing one unmounts it first (any run dir, also
 * a leftover of an earlier gateway). */
int gw_sandbox_run_dir_make(gw_t *gw, const char *path);
void gw_sandbox_run_dir_remove(const char *path);
int gw_sandbox_prepare(gw_worker_t *w);  /* work pool */
void gw_sandbox_release(gw_worker_t *w); /* work pool */
void gw_sandbox_remove_disk(gw_t *gw, const char *name);
/* Unmounts a disk and frees its loop device, keeping the image (blocking: start-up only). */
void gw_sandbox_detach_disk(gw_t *gw, const char *name);
int gw_uid_slot_alloc(gw_t *gw, uint32_t *ret);
int gw_uid_slot_take(gw_t *gw, uint32_t slot); /* -EEXIST if in use */

/* journal.c */
void gw_journal_touch(gw_t *gw); /* rewrite the journal at the end of this loop iteration */
void gw_journal_remove(gw_t *gw);
/* Reattach what the journal lists and still runs; fills the keep lists for the sweep. */
int gw_journal_recover(gw_t *gw, zlistx_t *keep_workers, zlistx_t *keep_disks);
/* A worker object for a container that outlived a previous gateway (journal.c). */
int gw_worker_adopt(gw_t *gw, const char *id, const char *container, pid_t pid, int pidfd,
                    const char *disk, uint32_t uid_slot, bool has_uid_slot, gw_worker_t **ret);
void gw_uid_slot_free(gw_t *gw, uint32_t slot);

/* Lifecycle (gateway.c). */
/* Sets up the state dir, token, sandbox (or the dev process launcher) and sweeps leftovers. */
int gw_new(const gw_config_t *cfg, gw_t **ret);
int gw_start(gw_t *gw); /* listen, warm the pool */
/* Begin an orderly shutdown: stop accepting, fail pending work, destroy all workers; the loop
 * stops once every cleanup has finished. */
void gw_shutdown(gw_t *gw);
void gw_destroy(gw_t **gw_p);
/* Called when a worker is freed (to finish a shutdown). */
void gw_maybe_finish_shutdown(gw_t *gw);

/* HTTP entry (api.c). */
void gw_api_on_request(http_conn_t *conn, const http_request_t *req, void *arg);
void gw_api_on_close(http_conn_t *conn, void *conn_user, void *arg);
/* Finish an execution towards its HTTP client (session.c calls this). */
void gw_api_exec_done(gw_exec_t *exec, int status, const char *error, const char *detail);
void gw_api_exec_event(gw_exec_t *exec, json_t *event);
