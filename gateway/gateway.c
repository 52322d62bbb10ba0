/* The gateway object: state directory and token, the HTTP server, the pool warm-up, idle
 * culling, and an orderly shutdown that leaves no worker behind. */
#include "gw.h"
#include "log.h"
#include "util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sodium.h>
#include <sys/file.h>
#include <sys/stat.h>

#define SHUTDOWN_DEADLINE_MS 15000

static int load_token(gw_t *gw) {
    const char *env = getenv("AUTH_TOKEN");
    if (env && *env) {
        if (strlen(env) >= sizeof gw->token)
            return -ENAMETOOLONG;
        snprintf(gw->token, sizeof gw->token, "%s", env);
        return 0;
    }
    char path[PATH_MAX];
    int r = xsnprintf(path, sizeof path, "%s/token", gw->cfg.state_dir);
    if (r < 0)
        return r;
    _cleanup_free_ char *text = NULL;
    r = read_file_bounded(path, sizeof gw->token - 1, &text, NULL);
    if (r == 0) {
        text[strcspn(text, "\r\n")] = '\0';
        if (strlen(text) >= 16) {
            snprintf(gw->token, sizeof gw->token, "%s", text);
            return 0;
        }
    } else if (r != -ENOENT) {
        return r;
    }
    random_hex(gw->token, 32);
    char line[sizeof gw->token + 2];
    snprintf(line, sizeof line, "%s\n", gw->token);
    return write_file_atomic(path, line, strlen(line), 0600);
}

/* One gateway per state dir. A second one would reattach the first's workers from its journal
 * (two gateways handing out the same kernels) or sweep them as a dead run's leftovers, before
 * it even tries its port, and empty the run dirs on its way out. The lock belongs to the open file
 * (flock), so it goes with the process however that ends; children never hold it (O_CLOEXEC, and
 * every child execs). */
static int lock_state_dir(gw_t *gw) {
    char path[PATH_MAX];
    int r = xsnprintf(path, sizeof path, "%s/gateway.lock", gw->cfg.state_dir);
    if (r < 0)
        return r;
    _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK)
            return -errno;
        char holder[16] = "";
        ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        log_error("gateway", "another gateway runs on this state dir", "{s:s,s:s}", "state_dir",
                  gw->cfg.state_dir, "pid", holder);
        return -EBUSY;
    }
    char pid[16];
    int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        return -errno;
    gw->lock_fd = TAKE_FD(fd);
    return 0;
}

/* Run dirs but those of the workers in keep (NULL: all). */
static void remove_run_dirs(gw_t *gw, zlistx_t *keep) {
    DIR *d = opendir(gw->run_root);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        bool kept = false;
        for (const char *k = keep ? zlistx_first(keep) : NULL; k; k = zlistx_next(keep))
            kept = kept || streq(k, de->d_name);
        char path[PATH_MAX];
        if (!kept && xsnprintf(path, sizeof path, "%s/%s", gw->run_root, de->d_name) >= 0)
            gw_sandbox_run_dir_remove(path);
    }
    if (d)
        closedir(d);
}

/* After a crash: reattach the workers the journal lists that still run, then remove every
 * other leftover of a previous run (containers, namespaces, disks, run dirs). */
static int recover(gw_t *gw) {
    zlistx_t *keep_workers = zlistx_new(), *keep_disks = zlistx_new();
    if (!keep_workers || !keep_disks) {
        zlistx_destroy(&keep_workers);
        zlistx_destroy(&keep_disks);
        return -ENOMEM;
    }
    zlistx_set_duplicator(keep_workers, (zlistx_duplicator_fn *)strdup);
    zlistx_set_destructor(keep_workers, (zlistx_destructor_fn *)zstr_free);
    zlistx_set_duplicator(keep_disks, (zlistx_duplicator_fn *)strdup);
    zlistx_set_destructor(keep_disks, (zlistx_destructor_fn *)zstr_free);
    if (gw->disks) {
        int r = gw_journal_recover(gw, keep_workers, keep_disks);
        if (r < 0)
            log_warn("journal", "cannot read the journal; sweeping everything", "{s:s}", "error",
                     strerror(-r));
        gw_sandbox_sweep(gw, keep_workers, keep_disks);
        /* A session whose worker did not survive keeps its disk's image, not the mount its
         * dead worker had: its replacement attaches the disk afresh. */
        gw_session_t *s;
        TAILQ_FOREACH(s, &gw->sessions, link) {
            if (s->reset_pending)
                gw_sandbox_detach_disk(gw, s->disk_name);
        }
    }
    remove_run_dirs(gw, keep_workers); /* of workers that were not reattached */
    zlistx_destroy(&keep_workers);
    zlistx_destroy(&keep_disks);
    return 0;
}

int gw_new(const gw_config_t *cfg, gw_t **ret) {
    gw_t *gw = calloc(1, sizeof *gw);
    if (!gw)
        return -ENOMEM;
    gw->cfg = *cfg;
    gw->lock_fd = -1;
    gw->uid_lock_fd = -1;
    gw->link_lock_fds[0] = gw->link_lock_fds[1] = -1;
    TAILQ_INIT(&gw->workers);
    TAILQ_INIT(&gw->idle);
    TAILQ_INIT(&gw->sessions);
    TAILQ_INIT(&gw->waiting);
    TAILQ_INIT(&gw->closing);
    gw->by_user = zhashx_new();
    gw->by_kernel = zhashx_new();
    gw->expired = zhashx_new();
    gw->expired_order = zlistx_new();
    int r = -ENOMEM;
    if (!gw->by_user || !gw->by_kernel || !gw->expired || !gw->expired_order)
        goto fail;
    zlistx_set_destructor(gw->expired_order, (zlistx_destructor_fn *)zstr_free);
    if ((r = mkdir_p(cfg->state_dir, 0700)) < 0 || chmod(cfg->state_dir, 0700) < 0) {
        r = r < 0 ? r : -errno;
        goto fail;
    }
    if ((r = lock_state_dir(gw)) < 0)
        goto fail; /* before anything of the state dir is touched */
    if ((r = xsnprintf(gw->run_root, sizeof gw->run_root, "%s/run", cfg->state_dir)) < 0)
        goto fail;
    if ((r = mkdir_p(gw->run_root, 0700)) < 0)
        goto fail;
    /* A tag of the state dir names our workers (and so our namespaces and veths), so a
     * start-up sweep removes this gateway's leftovers and never another gateway's. */
    unsigned char tag[crypto_generichash_BYTES_MIN];
    crypto_generichash(tag, sizeof tag, (const unsigned char *)cfg->state_dir,
                       strlen(cfg->state_dir), NULL, 0);
    snprintf(gw->id_prefix, sizeof gw->id_prefix, "w%02x%02x", tag[0], tag[1]);
    if ((r = load_token(gw)) < 0)
        goto fail;
    gw->loop = loop_new(4);
    if (!gw->loop) {
        r = -errno ? -errno : -ENOMEM;
        goto fail;
    }
    if (streq(cfg->launcher, "process")) {
        log_warn("gateway", "UNSANDBOXED process launcher: for development only", NULL);
        gw->launcher = launcher_process_new();
        gw->owns_launcher = true;
        if (!gw->launcher) {
            r = -ENOMEM;
            goto fail;
        }
    } else if ((r = gw_sandbox_init(gw)) < 0) {
        log_error("gateway", "cannot set up the sandbox", "{s:s}", "error", strerror(-r));
        goto fail;
    }
    if ((r = recover(gw)) < 0)
        goto fail;
    http_server_config_t hc = {
        .max_body_bytes = cfg->max_body_bytes,
        .max_outbuf_bytes = 4 * cfg->max_output_bytes + (1u << 20),
        .max_connections = cfg->max_connections,
        .max_connections_per_peer =
            cfg->max_connections_per_address ? cfg->max_connections_per_address : SIZE_MAX,
        .idle_timeout_ms = cfg->client_timeout_s * 1000,
    };
    http_handlers_t hh = {.on_request = gw_api_on_request, .on_close = gw_api_on_close};
    gw->http = http_server_new(gw->loop, &hc, &hh, gw);
    if (!gw->http) {
        r = -errno ? -errno : -ENOMEM;
        goto fail;
    }
    gw->started_mono_ms = now_mono_ms();
    *ret = gw;
    return 0;
fail:
    gw_destroy(&gw);
    return r;
}

static void on_idle_check(loop_t *loop, loop_watch_t *t, void *arg) {
    gw_t *gw = arg;
    uint64_t now = now_mono_ms();
    uint64_t limit = gw->cfg.idle_timeout_s * 1000;
    gw_session_t *s, *next;
    for (s = TAILQ_FIRST(&gw->sessions); s; s = next) {
        next = TAILQ_NEXT(s, link);
        if (s->running || s->nqueued || s->waiting || s->nclients || !TAILQ_EMPTY(&s->pending))
            continue;
        if (now - s->last_activity_mono_ms >= limit) {
            log_info("session", "releasing idle session", "{s:s}", "kernel_id", s->kernel_id);
            gw_session_expire(s);
        }
    }
}

int gw_start(gw_t *gw) {
    int r = http_server_listen(gw->http, gw->cfg.host, gw->cfg.port);
    if (r < 0)
        return r;
    gw->initializing = gw->cfg.min_idle_workers > 0;
    gw_pool_top_up(gw);
    uint64_t period = gw->cfg.idle_timeout_s * 1000 / 4;
    if (period > 30000)
        period = 30000;
    if (period < 250)
        period = 250;
    gw->idle_timer = loop_timer_add(gw->loop, period, period, on_idle_check, gw);
    log_info("gateway", "listening", "{s:s,s:i,s:s,s:s}", "host", gw->cfg.host, "port",
             (int)http_server_port(gw->http), "launcher", gw->launcher->name, "kernel",
             gw->cfg.kernel);
    return 0;
}

static void on_deadline(loop_t *loop, loop_watch_t *t, void *arg) {
    log_error("gateway", "shutdown deadline reached; stopping with work pending", NULL);
    loop_stop(loop);
}

void gw_maybe_finish_shutdown(gw_t *gw) {
    if (gw->shutting_down && TAILQ_EMPTY(&gw->workers)) {
        gw->clean_exit = true;
        loop_stop(gw->loop);
    }
}

void gw_shutdown(gw_t *gw) {
    if (gw->shutting_down)
        return;
    gw->shutting_down = true;
    log_info("gateway", "shutting down", NULL);
    loop_watch_del(gw->loop, &gw->idle_timer);
    loop_watch_del(gw->loop, &gw->backoff_timer);
    gw_session_t *s;
    while ((s = TAILQ_FIRST(&gw->sessions)))
        gw_session_release(s, 503, "shutting down", "the gateway is stopping");
    gw_worker_t *w, *next;
    for (w = TAILQ_FIRST(&gw->workers); w; w = next) {
        next = TAILQ_NEXT(w, link);
        gw_worker_destroy(w, "shutdown");
    }
    gw->deadline_timer = loop_timer_add(gw->loop, SHUTDOWN_DEADLINE_MS, 0, on_deadline, gw);
    gw_maybe_finish_shutdown(gw);
}

void gw_destroy(gw_t **gw_p) {
    gw_t *gw = gw_p ? *gw_p : NULL;
    if (!gw)
        return;
    *gw_p = NULL;
    http_server_destroy(&gw->http);
    gw_channels_fini(gw);
    loop_watch_del(gw->loop, &gw->deadline_timer);
    /* Runs pending cleanups (their done callbacks free the workers). */
    loop_destroy(&gw->loop);
    zhashx_destroy(&gw->by_user);
    zhashx_destroy(&gw->by_kernel);
    zhashx_destroy(&gw->expired);
    zlistx_destroy(&gw->expired_order);
    if (gw->run_root[0])
        remove_run_dirs(gw, NULL);
    if (gw->clean_exit)
        gw_journal_remove(gw);
    gw_sandbox_fini(gw);
    if (gw->owns_launcher)
        launcher_destroy(&gw->launcher);
    if (gw->run_root[0])
        rmdir(gw->run_root);
    closep(&gw->uid_lock_fd);
    closep(&gw->link_lock_fds[0]);
    closep(&gw->link_lock_fds[1]);
    closep(&gw->lock_fd); /* last: everything above was still ours to clean */
    free(gw);
}
