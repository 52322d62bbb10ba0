/* Crash safety: the gateway journals its ready workers and its sessions in the state
 * directory, so that after a crash or kill -9 the next start reattaches every healthy worker
 * (the user's variables are still in its kernel) and sweeps everything else.
 *
 * The journal is rewritten whole (write + rename) at most once per loop iteration, after any
 * change that matters (a worker ready or gone, a session created, adopted or released); no
 * fsync, since it protects against the gateway dying, not the machine. It holds no secret:
 * a kernel's key stays in its run dir (tmpfs, 0700), where the reattach reads it back. */
#include "gw.h"
#include "log.h"
#include "util.h"

#include "firewall.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#define JOURNAL_MAX_BYTES (64u << 20)

static int journal_path(const gw_t *gw, char *buf, size_t len) {
    return xsnprintf(buf, len, "%s/journal.json", gw->cfg.state_dir);
}

static void journal_write(loop_t *loop, void *arg) {
    gw_t *gw = arg;
    gw->journal_pending = false;
    json_t *workers = json_array(), *sessions = json_array();
    gw_worker_t *w;
    TAILQ_FOREACH(w, &gw->workers, link) {
        if (w->state != WORKER_READY || !w->launched)
            continue;
        json_array_append_new(
            workers, json_pack("{s:s,s:s,s:i,s:s,s:i,s:b,s:s?}", "id", w->id, "container",
                               w->proc.container_id, "pid", (int)w->proc.pid, "disk", w->disk_name,
                               "uid_slot", (int)w->uid_slot, "has_uid_slot", w->has_uid_slot,
                               "session", w->session ? w->session->kernel_id : NULL));
    }
    gw_session_t *s;
    TAILQ_FOREACH(s, &gw->sessions, link) {
        if (s->released)
            continue;
        json_array_append_new(sessions,
                              json_pack("{s:s,s:s?,s:s,s:s,s:i,s:b}", "kernel_id", s->kernel_id,
                                        "user_uuid", s->user_uuid, "kernel_name", s->kernel_name,
                                        "disk", s->disk_name, "uid_slot", (int)s->uid_slot,
                                        "has_uid_slot", s->has_uid_slot));
    }
    json_t *j = json_pack("{s:i,s:s,s:o,s:o}", "version", 1, "launcher", gw->launcher->name,
                          "workers", workers, "sessions", sessions);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    char path[PATH_MAX];
    int r = -ENOMEM;
    if (text && (r = journal_path(gw, path, sizeof path)) >= 0)
        r = write_file_atomic(path, text, strlen(text), 0600);
    if (r < 0)
        log_error("journal", "cannot write the journal", "{s:s}", "error", strerror(-r));
    free(text);
}

void gw_journal_touch(gw_t *gw) {
    if (gw->journal_pending || gw->shutting_down || !gw->loop)
        return;
    if (loop_defer(gw->loop, journal_write, gw) == 0)
        gw->journal_pending = true;
}

void gw_journal_remove(gw_t *gw) {
    char path[PATH_MAX];
    if (journal_path(gw, path, sizeof path) >= 0)
        unlink(path);
}

/* The worker's init must still be the process of that container: its cgroup path names the
 * worker id, which no other process on the host has. */
static bool container_alive(pid_t pid, const char *worker_id) {
    char path[64], *text = NULL;
    snprintf(path, sizeof path, "/proc/%d/cgroup", (int)pid);
    if (read_file_bounded(path, 1 << 16, &text, NULL) < 0)
        return false;
    bool ok = strstr(text, worker_id) != NULL;
    free(text);
    return ok;
}

static gw_worker_t *reattach_worker(gw_t *gw, json_t *jw) {
    const char *id = json_string_value(json_object_get(jw, "id"));
    const char *container = json_string_value(json_object_get(jw, "container"));
    const char *disk = json_string_value(json_object_get(jw, "disk"));
    json_int_t pid = json_integer_value(json_object_get(jw, "pid"));
    if (!id || !container || !disk || pid <= 0 || strlen(id) >= sizeof(((gw_worker_t *)0)->id) ||
        !startswith(id, gw->id_prefix) || strlen(disk) >= 64)
        return NULL;
    if (!container_alive((pid_t)pid, id))
        return NULL;
    int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (pidfd < 0)
        return NULL;
    /* Checked again after the pidfd exists: now the pid cannot be reused under us. */
    if (!container_alive((pid_t)pid, id)) {
        close(pidfd);
        return NULL;
    }
    gw_worker_t *w = NULL;
    int r = gw_worker_adopt(gw, id, container, (pid_t)pid, pidfd, disk,
                            (uint32_t)json_integer_value(json_object_get(jw, "uid_slot")),
                            json_is_true(json_object_get(jw, "has_uid_slot")), &w);
    if (r < 0) {
        log_warn("journal", "cannot reattach worker", "{s:s,s:s}", "worker", id, "error",
                 strerror(-r));
        close(pidfd);
        return NULL;
    }
    return w;
}

int gw_journal_recover(gw_t *gw, zlistx_t *keep_workers, zlistx_t *keep_disks) {
    char path[PATH_MAX];
    int r = journal_path(gw, path, sizeof path);
    if (r < 0)
        return r;
    _cleanup_free_ char *text = NULL;
    r = read_file_bounded(path, JOURNAL_MAX_BYTES, &text, NULL);
    if (r == -ENOENT)
        return 0;
    if (r < 0)
        return r;
    json_t *j = json_loads(text, 0, NULL);
    if (!json_is_object(j) || json_integer_value(json_object_get(j, "version")) != 1 ||
        !streq(json_string_value(json_object_get(j, "launcher")), gw->launcher->name)) {
        json_decref(j);
        log_warn("journal", "journal unusable; sweeping everything", NULL);
        return 0;
    }
    /* Sessions first, so workers can be matched to them. */
    size_t i;
    json_t *js;
    json_array_foreach(json_object_get(j, "sessions"), i, js) {
        const char *kid = json_string_value(json_object_get(js, "kernel_id"));
        const char *user = json_string_value(json_object_get(js, "user_uuid"));
        const char *disk = json_string_value(json_object_get(js, "disk"));
        if (!kid || strlen(kid) != 36 || gw_session_find_kernel(gw, kid) ||
            (user && gw_session_find_user(gw, user)) || (disk && strlen(disk) >= 64))
            continue;
        gw_session_t *s = NULL;
        if (gw_session_new(gw, user, json_string_value(json_object_get(js, "kernel_name")), &s) < 0)
            continue;
        /* Keep the kernel id clients know. */
        zhashx_delete(gw->by_kernel, s->kernel_id);
        snprintf(s->kernel_id, sizeof s->kernel_id, "%s", kid);
        zhashx_insert(gw->by_kernel, s->kernel_id, s);
        snprintf(s->disk_name, sizeof s->disk_name, "%s", disk ? disk : "");
        s->uid_slot = (uint32_t)json_integer_value(json_object_get(js, "uid_slot"));
        s->has_uid_slot = json_is_true(json_object_get(js, "has_uid_slot"));
        if (s->has_uid_slot && gw_uid_slot_take(gw, s->uid_slot) < 0)
            s->has_uid_slot = false;
        s->had_worker = true;
        if (s->disk_name[0])
            zlistx_add_end(keep_disks, s->disk_name);
    }
    json_t *jw;
    unsigned reattached = 0;
    json_array_foreach(json_object_get(j, "workers"), i, jw) {
        gw_worker_t *w = reattach_worker(gw, jw);
        if (!w)
            continue;
        reattached++;
        zlistx_add_end(keep_workers, w->id);
        zlistx_add_end(keep_disks, w->disk_name);
        const char *kid = json_string_value(json_object_get(jw, "session"));
        gw_session_t *s = gw_session_find_kernel(gw, kid);
        if (s && !s->worker) {
            snprintf(w->reserved_for, sizeof w->reserved_for, "%s", s->kernel_id);
            /* Its disk and uid are the session's: kept, and handed on, when it goes. */
            snprintf(w->owner_kernel_id, sizeof w->owner_kernel_id, "%s", s->kernel_id);
        }
    }
    json_decref(j);
    /* A session whose worker did not survive comes back reset, with its files. */
    gw_session_t *s;
    TAILQ_FOREACH(s, &gw->sessions, link) {
        bool has = false;
        gw_worker_t *w;
        TAILQ_FOREACH(w, &gw->workers, link)
        if (streq(w->reserved_for, s->kernel_id))
            has = true;
        if (!has)
            s->reset_pending = true;
    }
    log_info("journal", "recovered from the journal", "{s:i,s:i}", "workers", (int)reattached,
             "sessions", (int)zhashx_size(gw->by_kernel));
    return 0;
}
