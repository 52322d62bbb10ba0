/* A thin test driver over launcher_runc (gateway/launcher_runc.h) for test_sandbox.py: it
 * holds one launcher and the launcher_proc_t of every container it started (so interrupt and
 * kill go through the real pidfds), reads one JSON command per line on stdin and answers one
 * JSON line on stdout:
 *
 *   {"cmd":"start","worker_id":..,"run_dir":..,"conn_file":..,"uid":..,"cpu":..,"ram_mb":..,
 *    "pids_max":..,"disk_mount":null|path,"netns_path":null|path}
 *       -> {"ok":true,"pid":..,"container_id":..,"bundle_us":..,"create_us":..,"start_us":..,
 *           "total_us":..}
 *   {"cmd":"wait","id":..,"timeout_ms":..}   -> {"ok":true,"exited":bool}   (pidfd readable)
 *   {"cmd":"interrupt"|"kill"|"cleanup","id":..} -> {"ok":true}
 *   {"cmd":"sweep","keep":[..]}              -> {"ok":true,"removed":n}
 *   failures                                  -> {"ok":false,"errno":n,"error":".."}
 *
 * On EOF it kills and cleans up whatever it still holds. Usage:
 *   sandbox_driver RUNC_ROOT BUNDLE_ROOT ROOTFS SECCOMP CGROUP_PARENT UID_BASE UID_COUNT */
#include "launcher_runc.h"
#include "util.h"

#include <jansson.h>
#include <poll.h>

#define MAX_PROCS 16

typedef struct {
    bool used;
    launcher_proc_t proc;
    launcher_spec_t spec;
    char *strings[4]; /* owned copies of the spec's paths */
} slot_t;

static slot_t slots[MAX_PROCS];
static launcher_runc_timing_t last_timing;

static void on_timing(const char *id, const launcher_runc_timing_t *t, void *arg) {
    last_timing = *t;
}

static void reply(json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    printf("%s\n", s ? s : "{\"ok\":false,\"errno\":12,\"error\":\"ENOMEM\"}");
    fflush(stdout);
    free(s);
    json_decref(j);
}

static void reply_err(int r) {
    reply(json_pack("{s:b, s:i, s:s}", "ok", 0, "errno", -r, "error", strerror(-r)));
}

static slot_t *slot_find(const char *id) {
    for (size_t i = 0; i < MAX_PROCS; i++)
        if (slots[i].used && streq(slots[i].proc.container_id, id))
            return &slots[i];
    return NULL;
}

static void slot_free(slot_t *s) {
    if (s->proc.pidfd >= 0)
        close(s->proc.pidfd);
    for (size_t i = 0; i < ARRAY_SIZE(s->strings); i++)
        free(s->strings[i]);
    *s = (slot_t){0};
}

static char *dup_opt(json_t *cmd, const char *key) {
    const char *v = json_string_value(json_object_get(cmd, key));
    return v ? strdup(v) : NULL;
}

static void cmd_start(launcher_t *l, json_t *cmd) {
    slot_t *s = NULL;
    for (size_t i = 0; i < MAX_PROCS && !s; i++)
        if (!slots[i].used)
            s = &slots[i];
    if (!s) {
        reply_err(-ENOSPC);
        return;
    }
    *s = (slot_t){.used = true, .proc.pidfd = -1};
    s->strings[0] = dup_opt(cmd, "worker_id");
    s->strings[1] = dup_opt(cmd, "run_dir");
    s->strings[2] = dup_opt(cmd, "conn_file");
    s->strings[3] = dup_opt(cmd, "disk_mount");
    s->spec = (launcher_spec_t){
        .worker_id = s->strings[0],
        .run_dir = s->strings[1],
        .conn_file = s->strings[2],
        .disk_mount = s->strings[3],
        .netns_path = json_string_value(json_object_get(cmd, "netns_path")), /* used now only */
        .kernel = "ipykernel",
        .python = "/usr/bin/python3",
        .cpu = json_number_value(json_object_get(cmd, "cpu")),
        .ram_mb = (uint64_t)json_integer_value(json_object_get(cmd, "ram_mb")),
        .pids_max = (uint64_t)json_integer_value(json_object_get(cmd, "pids_max")),
        .uid = (uint32_t)json_integer_value(json_object_get(cmd, "uid")),
    };
    uint64_t t0 = now_mono_us();
    int r = l->start(l, &s->spec, &s->proc);
    uint64_t total = now_mono_us() - t0;
    s->spec.netns_path = NULL;
    if (r < 0) {
        /* Like the pool: what runc said is kept, then the failed start is cleaned up
         * (runc.log goes with its bundle). */
        char detail[sizeof s->proc.error];
        snprintf(detail, sizeof detail, "%s", s->proc.error);
        l->cleanup(l, &s->proc, &s->spec);
        slot_free(s);
        reply(json_pack("{s:b, s:i, s:s, s:s}", "ok", 0, "errno", -r, "error", strerror(-r),
                        "detail", detail));
        return;
    }
    reply(json_pack("{s:b, s:i, s:s, s:I, s:I, s:I, s:I}", "ok", 1, "pid", (int)s->proc.pid,
                    "container_id", s->proc.container_id, "bundle_us",
                    (json_int_t)last_timing.bundle_us, "create_us",
                    (json_int_t)last_timing.create_us, "start_us", (json_int_t)last_timing.start_us,
                    "total_us", (json_int_t)total));
}

static void cmd_wait(slot_t *s, json_t *cmd) {
    int ms = (int)json_integer_value(json_object_get(cmd, "timeout_ms"));
    struct pollfd p = {.fd = s->proc.pidfd, .events = POLLIN};
    int n = poll(&p, 1, ms);
    if (n < 0) {
        reply_err(-errno);
        return;
    }
    reply(json_pack("{s:b, s:b}", "ok", 1, "exited", n > 0));
}

static void cmd_sweep(launcher_t *l, json_t *cmd) {
    const char *keep[MAX_PROCS + 1] = {0};
    size_t i, n = 0;
    json_t *v;
    json_array_foreach(json_object_get(cmd, "keep"), i, v) if (n < MAX_PROCS) keep[n++] =
        json_string_value(v);
    unsigned removed = 0;
    int r = launcher_runc_sweep(l, keep, &removed);
    if (r < 0) {
        reply_err(r);
        return;
    }
    /* What was swept is gone: forget it (its pidfd stays valid but useless). */
    for (i = 0; i < MAX_PROCS; i++)
        if (slots[i].used) {
            bool kept = false;
            for (size_t k = 0; k < n; k++)
                kept |= streq(keep[k], slots[i].proc.container_id);
            if (!kept)
                slot_free(&slots[i]);
        }
    reply(json_pack("{s:b, s:i}", "ok", 1, "removed", (int)removed));
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: sandbox_driver RUNC_ROOT BUNDLE_ROOT ROOTFS SECCOMP "
                        "CGROUP_PARENT UID_BASE UID_COUNT\n");
        return 2;
    }
    launcher_runc_config_t cfg = {
        .runc_root = argv[1],
        .bundle_root = argv[2],
        .rootfs = argv[3],
        .seccomp_profile = argv[4],
        .cgroup_parent = argv[5],
        .uid_base = (uint32_t)strtoul(argv[6], NULL, 10),
        .uid_count = (uint32_t)strtoul(argv[7], NULL, 10),
        .tmp_mb = 128,
        .timing_fn = on_timing,
    };
    launcher_t *l = launcher_runc_new(&cfg);
    if (!l) {
        fprintf(stderr, "sandbox_driver: launcher_runc_new: %s\n", strerror(errno));
        return 1;
    }
    reply(json_pack("{s:b, s:s}", "ok", 1, "kernel_run_dir", l->kernel_run_dir));

    char line[65536];
    while (fgets(line, sizeof line, stdin)) {
        json_error_t err;
        json_t *cmd = json_loads(line, 0, &err);
        const char *c = json_string_value(json_object_get(cmd, "cmd"));
        const char *id = json_string_value(json_object_get(cmd, "id"));
        slot_t *s = id ? slot_find(id) : NULL;
        /* streq is NULL-safe: a line without a cmd is just an unknown command. */
        bool per_slot =
            streq(c, "wait") || streq(c, "interrupt") || streq(c, "kill") || streq(c, "cleanup");
        if (streq(c, "start")) {
            cmd_start(l, cmd);
        } else if (streq(c, "sweep")) {
            cmd_sweep(l, cmd);
        } else if (!per_slot) {
            reply_err(-EINVAL); /* checked before the id, so a bad command is never ESRCH */
        } else if (!s) {
            reply_err(-ESRCH);
        } else if (streq(c, "wait")) {
            cmd_wait(s, cmd);
        } else if (streq(c, "cleanup")) {
            int r = l->cleanup(l, &s->proc, &s->spec);
            slot_free(s);
            r < 0 ? reply_err(r) : reply(json_pack("{s:b}", "ok", 1));
        } else { /* interrupt or kill */
            int r = streq(c, "kill") ? l->kill(l, &s->proc) : l->interrupt(l, &s->proc);
            r < 0 ? reply_err(r) : reply(json_pack("{s:b}", "ok", 1));
        }
        json_decref(cmd);
    }
    for (size_t i = 0; i < MAX_PROCS; i++)
        if (slots[i].used) {
            l->kill(l, &slots[i].proc);
            l->cleanup(l, &slots[i].proc, &slots[i].spec);
            slot_free(&slots[i]);
        }
    l->destroy(l);
    return 0;
}
