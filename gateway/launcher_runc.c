/* The runc launcher (see launcher_runc.h). Every runc invocation is a fixed argv spawned
 * without a shell, in its own session (a ^C meant for the gateway never reaches a worker),
 * with stdio on /dev/null (a detached container inherits runc's stdio, so a pipe would be
 * held open by the kernel forever), every other fd closed, a clean signal state and a minimal
 * environment; runc's own errors go to runc.log in the bundle dir, and the last of them is
 * handed back with a failed start (cleanup() then removes the bundle: a start that keeps
 * failing leaves nothing behind). Nothing here logs: the pool does. */
#include "launcher_runc.h"

#include "bundle.h"
#include "util.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define DEFAULT_RUNC        "/usr/sbin/runc"
#define DEFAULT_CGROUP_ROOT "/sys/fs/cgroup"
#define DEFAULT_CGPARENT    "kbox"
#define DEFAULT_TIMEOUT_MS  30000u
#define LIST_MAX_BYTES      (1024u * 1024u)

typedef struct {
    launcher_t base; /* first: a launcher_t * is a runc_t * */
    char *runc, *runc_root, *bundle_root, *rootfs, *init_path, *cgroup_parent, *cgroup_root;
    json_t *seccomp;
    launcher_runc_config_t cfg; /* sizes, limits, callbacks; its strings point at ours */
} runc_t;

static void runc_destroy(launcher_t *l);

static int pidfd_open_(pid_t pid) {
    int fd = (int)syscall(SYS_pidfd_open, pid, 0); /* pidfds are always close-on-exec */
    return fd < 0 ? -errno : fd;
}

static int pidfd_signal(const launcher_proc_t *p, int signo) {
    if (p->pidfd >= 0)
        return syscall(SYS_pidfd_send_signal, p->pidfd, signo, NULL, 0) < 0 ? -errno : 0;
    if (p->pid <= 0)
        return -ESRCH;
    return kill(p->pid, signo) < 0 ? -errno : 0;
}

static bool id_ok(const char *id) {
    if (!id || !*id || strlen(id) > 64)
        return false;
    for (const char *p = id; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            return false;
    return true;
}

static bool in_list(const char *const *list, const char *s) {
    for (; list && *list; list++)
        if (streq(*list, s))
            return true;
    return false;
}

/* Runs argv (argv[0] is a path) and returns its exit code (>= 0), or -errno if it could not
 * be run, -ETIMEDOUT (after SIGKILLing it) past the launcher's bound. With ret_out, stdout is
 * collected (at most LIST_MAX_BYTES, NUL-terminated); otherwise it goes to /dev/null. */
static int run(const runc_t *self, char *const *argv, char **ret_out) {
    static char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", NULL};
    _cleanup_close_ int rd = -1, wr = -1;
    if (ret_out) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
            return -errno;
        rd = p[0];
        wr = p[1];
    }

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int r = posix_spawn_file_actions_init(&fa);
    if (r)
        return -r;
    r = posix_spawnattr_init(&attr);
    if (r) {
        posix_spawn_file_actions_destroy(&fa);
        return -r;
    }
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    r = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDWR, 0);
    r = r ?: posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_RDWR, 0);
    r = r
            ?: (wr >= 0 ? posix_spawn_file_actions_adddup2(&fa, wr, 1)
                        : posix_spawn_file_actions_adddup2(&fa, 0, 1));
    r = r ?: posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    /* The gateway blocks signals for its signalfd and ignores SIGPIPE; runc and the
     * container must not inherit either. */
    r = r ?: posix_spawnattr_setsigmask(&attr, &none);
    r = r ?: posix_spawnattr_setsigdefault(&attr, &all);
    r = r
            ?: posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                                   POSIX_SPAWN_SETSID);
    pid_t pid = -1;
    r = r ?: posix_spawn(&pid, argv[0], &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (r)
        return -r;
    if (wr >= 0)
        close(TAKE_FD(wr));

    uint64_t deadline = now_mono_ms() + self->cfg.runc_timeout_ms;
    _cleanup_free_ char *out = NULL;
    size_t len = 0;
    bool timed_out = false;
    if (rd >= 0 && !(out = malloc(LIST_MAX_BYTES + 1)))
        rd = (close(rd), -1);
    /* Without a pidfd (never expected as root on Linux >= 5.3) the wait below is unbounded. */
    _cleanup_close_ int pfd = pidfd_open_(pid);
    while (pfd >= 0) {
        uint64_t now = now_mono_ms();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        struct pollfd fds[2] = {{.fd = pfd, .events = POLLIN}, {.fd = rd, .events = POLLIN}};
        int n = poll(fds, rd >= 0 ? 2 : 1, (int)(deadline - now));
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        if (rd >= 0 && fds[1].revents) {
            ssize_t k = len < LIST_MAX_BYTES ? read(rd, out + len, LIST_MAX_BYTES - len) : 0;
            if (k > 0)
                len += (size_t)k;
            else if (k == 0 || (errno != EINTR && errno != EAGAIN))
                rd = (close(rd), -1); /* EOF, or the bound reached: stop reading */
        }
        if (fds[0].revents && rd < 0)
            break; /* exited, and all its output is read */
    }
    if (timed_out)
        (void)kill(pid, SIGKILL);
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -errno;
    if (timed_out)
        return -ETIMEDOUT;
    if (ret_out) {
        if (!out)
            return -ENOMEM;
        out[len] = '\0';
        *ret_out = TAKE_PTR(out);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int bundle_dir_of(const runc_t *self, const char *id, char *buf, size_t len) {
    return xsnprintf(buf, len, "%s/%s", self->bundle_root, id);
}

static bool container_exists(const runc_t *self, const char *id) {
    char path[4096];
    struct stat st;
    return xsnprintf(path, sizeof path, "%s/%s", self->runc_root, id) >= 0 && lstat(path, &st) == 0;
}

/* runc delete --force: kills what runs and removes state and cgroups. Absent is success. */
static int container_delete(const runc_t *self, const char *id) {
    if (!container_exists(self, id))
        return 0;
    char *argv[] = {self->runc, "--root", self->runc_root, "delete", "--force", (char *)id, NULL};
    int r = run(self, argv, NULL);
    if (r < 0)
        return r;
    return container_exists(self, id) ? -EIO : 0;
}

/* Kills whatever is left in one cgroup directory and removes it; absent is success. */
static int cgroup_dir_remove(const char *dir) {
    for (int attempt = 0; attempt < 50; attempt++) {
        if (rmdir(dir) == 0 || errno == ENOENT)
            return 0;
        if (errno != EBUSY)
            return -errno;
        char procs[4096];
        _cleanup_free_ char *text = NULL;
        if (xsnprintf(procs, sizeof procs, "%s/cgroup.procs", dir) >= 0 &&
            read_file_bounded(procs, 1024 * 1024, &text, NULL) >= 0)
            for (char *p = text, *end; *p; p = end) {
                long pid = strtol(p, &end, 10);
                if (end == p)
                    break;
                if (pid > 1)
                    (void)kill((pid_t)pid, SIGKILL);
            }
        usleep(20 * 1000); /* killed tasks leave the cgroup asynchronously */
    }
    return -EBUSY;
}

/* Calls fn(dir of <hierarchy>/<parent>) for the unified root and every v1 hierarchy. */
static int cgroup_parents_foreach(const runc_t *self, int (*fn)(const char *dir, void *arg),
                                  void *arg) {
    char dir[4096];
    int ret = 0, r;
    if (xsnprintf(dir, sizeof dir, "%s/%s", self->cgroup_root, self->cgroup_parent) >= 0 &&
        (r = fn(dir, arg)) < 0)
        ret = r;
    DIR *d = opendir(self->cgroup_root);
    if (!d)
        return errno == ENOENT ? ret : -errno;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || (de->d_type != DT_DIR && de->d_type != DT_UNKNOWN))
            continue; /* v1 "cpu -> cpu,cpuacct" symlinks name a hierarchy already visited */
        if (xsnprintf(dir, sizeof dir, "%s/%s/%s", self->cgroup_root, de->d_name,
                      self->cgroup_parent) < 0)
            continue;
        if ((r = fn(dir, arg)) < 0 && ret == 0)
            ret = r;
    }
    closedir(d);
    return ret;
}

static int cgroup_remove_one(const char *parent_dir, void *arg) {
    char dir[4096];
    int r = xsnprintf(dir, sizeof dir, "%s/%s", parent_dir, (const char *)arg);
    return r < 0 ? r : cgroup_dir_remove(dir);
}

static int kernel_argv_make(const launcher_spec_t *spec, char *conn_inside, size_t len,
                            const char **argv) {
    const char *kernel = spec->kernel ? spec->kernel : "ipykernel";
    bool native = streq(kernel, "native");
    if (!native && !streq(kernel, "ipykernel"))
        return -EINVAL;
    const char *python = spec->python ? spec->python : "/usr/bin/python3";
    if (python[0] != '/')
        return -EINVAL;
    size_t n = strlen(spec->run_dir);
    const char *name = spec->conn_file + n + 1;
    /* The connection file must sit directly in run_dir: only run_dir is visible inside. */
    if (strncmp(spec->conn_file, spec->run_dir, n) != 0 || spec->conn_file[n] != '/' || !*name ||
        strchr(name, '/') || streq(name, "..") || streq(name, "."))
        return -EINVAL;
    int r = xsnprintf(conn_inside, len, "%s/%s", WIMG_RUN_DIR, name);
    if (r < 0)
        return r;
    if (native) {
        /* The native kernel is the init's own binary in its kernel role (kernel-host/). */
        const char *a[] = {WIMG_INIT_PATH, "--kernel",  "native", "--no-init",
                           "-f",           conn_inside, NULL};
        memcpy(argv, a, sizeof a);
        return 0;
    }
    argv[0] = python;
    argv[1] = "-m";
    argv[2] = "ipykernel_launcher";
    argv[3] = IPYKERNEL_HISTORY_OPT;
    argv[4] = "-f";
    argv[5] = conn_inside;
    argv[6] = NULL;
    return 0;
}

/* The kernel runs as spec->uid and must create its ipc sockets in run_dir and read the
 * connection file; neither is followed if it is a symlink. */
static int run_dir_hand_over(const launcher_spec_t *spec) {
    _cleanup_close_ int dfd = open(spec->run_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    if (fchown(dfd, spec->uid, spec->uid) < 0 || fchmod(dfd, 0700) < 0)
        return -errno;
    _cleanup_close_ int ffd = open(spec->conn_file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (ffd < 0)
        return -errno;
    if (fchown(ffd, spec->uid, spec->uid) < 0 || fchmod(ffd, 0400) < 0)
        return -errno;
    return 0;
}

static int read_pid_file(const char *path, pid_t *ret) {
    _cleanup_free_ char *text = NULL;
    int r = read_file_bounded(path, 64, &text, NULL);
    if (r < 0)
        return r;
    char *end;
    errno = 0;
    long pid = strtol(text, &end, 10);
    if (errno || end == text || pid <= 1 || pid > INT32_MAX)
        return -EINVAL;
    *ret = (pid_t)pid;
    return 0;
}

/* The message of the last error runc logged (JSON lines: {"level":"error","msg":...}).
 * Starts run on the work pool's threads at once: strtok_r, not strtok. */
static void last_runc_error(const char *log_file, char *buf, size_t len) {
    _cleanup_free_ char *text = NULL;
    size_t n = 0;
    if (read_file_bounded(log_file, 256 * 1024, &text, &n) < 0)
        return;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(line, 0, NULL);
        const char *msg = json_string_value(json_object_get(j, "msg"));
        if (msg && streq(json_string_value(json_object_get(j, "level")), "error"))
            snprintf(buf, len, "%s", msg);
        json_decref(j);
    }
}

static int runc_start(launcher_t *l, const launcher_spec_t *spec, launcher_proc_t *ret) {
    runc_t *self = (runc_t *)l;
    uint64_t t0 = now_mono_us();
    if (!spec || !ret || !id_ok(spec->worker_id) || !spec->run_dir || spec->run_dir[0] != '/' ||
        !spec->conn_file)
        return -EINVAL;
    if (spec->uid < self->cfg.uid_base || spec->uid - self->cfg.uid_base >= self->cfg.uid_count)
        return -EINVAL;
    const char *id = spec->worker_id;

    char conn_inside[4096];
    const char *kargv[7];
    int r = kernel_argv_make(spec, conn_inside, sizeof conn_inside, kargv);
    if (r < 0)
        return r;

    char bundle[4096], pid_file[4096], log_file[4096];
    if ((r = bundle_dir_of(self, id, bundle, sizeof bundle)) < 0 ||
        (r = xsnprintf(pid_file, sizeof pid_file, "%s/init.pid", bundle)) < 0 ||
        (r = xsnprintf(log_file, sizeof log_file, "%s/runc.log", bundle)) < 0)
        return r;
    /* Leftovers of a crashed gateway under the same id (ids are unique per state dir, so
     * this is rare): they go first. */
    if ((r = container_delete(self, id)) < 0)
        return r;
    if ((r = rm_rf(bundle)) < 0)
        return r;
    if (mkdir(bundle, 0700) < 0)
        return -errno;
    if ((r = run_dir_hand_over(spec)) < 0)
        return r;

    wimg_bundle_spec_t ws = {
        .worker_id = id,
        .rootfs = self->rootfs,
        .init_path = self->init_path,
        .kernel_argv = kargv,
        .run_dir = spec->run_dir,
        .disk_mount = spec->disk_mount,
        .netns_path = spec->netns_path,
        .cgroup_parent = self->cgroup_parent,
        .seccomp = self->seccomp,
        .uid = spec->uid,
        .cpu = spec->cpu,
        .ram_mb = spec->ram_mb,
        .pids_max = spec->pids_max,
        .nofile = self->cfg.nofile,
        .tmp_mb = self->cfg.tmp_mb,
        .shm_mb = self->cfg.shm_mb,
    };
    json_t *config = NULL;
    if ((r = wimg_bundle_build(&ws, &config)) < 0)
        return r;
    r = wimg_bundle_write(bundle, config);
    json_decref(config);
    if (r < 0)
        return r;
    uint64_t t1 = now_mono_us();

    char *create[] = {self->runc,     "--root", self->runc_root, "--log",    log_file,
                      "--log-format", "json",   "create",        "--bundle", bundle,
                      "--pid-file",   pid_file, (char *)id,      NULL};
    r = run(self, create, NULL);
    if (r != 0) {
        last_runc_error(log_file, ret->error, sizeof ret->error);
        (void)container_delete(self, id);
        return r < 0 ? r : -EIO;
    }
    uint64_t t2 = now_mono_us();

    /* The init is parked in runc's exec fifo until `runc start`: it cannot have exited and
     * had its pid reused, so this pidfd is the container's init. */
    pid_t pid;
    _cleanup_close_ int pidfd = -1;
    if ((r = read_pid_file(pid_file, &pid)) < 0 || (r = pidfd = pidfd_open_(pid)) < 0) {
        (void)container_delete(self, id);
        return r;
    }
    char *start[] = {self->runc,     "--root", self->runc_root, "--log",    log_file,
                     "--log-format", "json",   "start",         (char *)id, NULL};
    r = run(self, start, NULL);
    if (r != 0) {
        last_runc_error(log_file, ret->error, sizeof ret->error);
        (void)container_delete(self, id);
        return r < 0 ? r : -EIO;
    }
    uint64_t t3 = now_mono_us();

    ret->pid = pid;
    ret->pidfd = TAKE_FD(pidfd);
    snprintf(ret->container_id, sizeof ret->container_id, "%s", id);
    if (self->cfg.timing_fn) {
        launcher_runc_timing_t t = {
            .bundle_us = t1 - t0, .create_us = t2 - t1, .start_us = t3 - t2};
        self->cfg.timing_fn(id, &t, self->cfg.timing_arg);
    }
    return 0;
}

static int runc_interrupt(launcher_t *l, const launcher_proc_t *p) {
    /* To the init, which forwards it to the kernel's process group. */
    return p ? pidfd_signal(p, SIGINT) : -EINVAL;
}

static int runc_kill(launcher_t *l, const launcher_proc_t *p) {
    /* The init is the pid namespace's PID 1: when it dies, the kernel kills the rest. */
    return p ? pidfd_signal(p, SIGKILL) : -EINVAL;
}

static int runc_cleanup(launcher_t *l, const launcher_proc_t *p, const launcher_spec_t *spec) {
    runc_t *self = (runc_t *)l;
    const char *id = p && p->container_id[0] ? p->container_id : spec ? spec->worker_id : NULL;
    if (!id_ok(id))
        return -EINVAL;
    int ret = container_delete(self, id);
    char bundle[4096];
    int r = bundle_dir_of(self, id, bundle, sizeof bundle);
    if (r >= 0)
        r = rm_rf(bundle);
    if (r < 0 && ret == 0)
        ret = r;
    /* runc delete removes the cgroups; this makes sure, also after a runc that failed. */
    r = cgroup_parents_foreach(self, cgroup_remove_one, (void *)id);
    if (r < 0 && ret == 0)
        ret = r;
    return ret;
}

static char *dup_or(const char *s, const char *dflt) {
    return strdup(s ? s : dflt);
}

static bool abs_path(const char *p) {
    return p && p[0] == '/';
}

launcher_t *launcher_runc_new(const launcher_runc_config_t *cfg) {
    if (!cfg || !abs_path(cfg->runc_root) || !abs_path(cfg->bundle_root) ||
        !abs_path(cfg->rootfs) || !cfg->seccomp_profile || cfg->uid_count == 0 ||
        cfg->uid_base < 1000 || (uint64_t)cfg->uid_base + cfg->uid_count > INT32_MAX ||
        (cfg->init_path && !abs_path(cfg->init_path)) || (cfg->runc && !abs_path(cfg->runc))) {
        errno = EINVAL;
        return NULL;
    }
    runc_t *self = calloc(1, sizeof *self);
    if (!self) {
        errno = ENOMEM;
        return NULL;
    }
    self->base.name = "runc";
    self->base.kernel_run_dir = WIMG_RUN_DIR;
    self->base.start = runc_start;
    self->base.interrupt = runc_interrupt;
    self->base.kill = runc_kill;
    self->base.cleanup = runc_cleanup;
    self->base.destroy = runc_destroy;
    self->base.impl = self;
    self->cfg = *cfg;
    if (!self->cfg.runc_timeout_ms)
        self->cfg.runc_timeout_ms = DEFAULT_TIMEOUT_MS;

    int r = 0;
    self->runc = dup_or(cfg->runc, DEFAULT_RUNC);
    self->runc_root = dup_or(cfg->runc_root, "");
    self->bundle_root = dup_or(cfg->bundle_root, "");
    self->rootfs = dup_or(cfg->rootfs, "");
    self->init_path = dup_or(cfg->init_path, WIMG_INIT_PATH);
    self->cgroup_parent = dup_or(cfg->cgroup_parent, DEFAULT_CGPARENT);
    self->cgroup_root = dup_or(cfg->cgroup_root, DEFAULT_CGROUP_ROOT);
    if (!self->runc || !self->runc_root || !self->bundle_root || !self->rootfs ||
        !self->init_path || !self->cgroup_parent || !self->cgroup_root)
        r = -ENOMEM;
    /* The strings in cfg are the caller's; keep only ours. */
    self->cfg.runc = self->runc;
    self->cfg.runc_root = self->runc_root;
    self->cfg.bundle_root = self->bundle_root;
    self->cfg.rootfs = self->rootfs;
    self->cfg.init_path = self->init_path;
    self->cfg.cgroup_parent = self->cgroup_parent;
    self->cfg.cgroup_root = self->cgroup_root;
    self->cfg.seccomp_profile = NULL;

    char init[4096];
    if (r == 0 && !id_ok(self->cgroup_parent))
        r = -EINVAL;
    if (r == 0 && (r = xsnprintf(init, sizeof init, "%s%s", self->rootfs, self->init_path)) >= 0)
        r = access(init, X_OK) < 0 ? -errno : 0;
    if (r == 0)
        r = access(self->runc, X_OK) < 0 ? -errno : 0;
    if (r == 0)
        r = wimg_seccomp_load(cfg->seccomp_profile, &self->seccomp);
    if (r == 0)
        r = mkdir_p(self->runc_root, 0700);
    if (r == 0)
        r = mkdir_p(self->bundle_root, 0700);
    if (r < 0) {
        runc_destroy(&self->base);
        errno = -r;
        return NULL;
    }
    return &self->base;
}

static void runc_destroy(launcher_t *l) {
    runc_t *self = (runc_t *)l;
    if (!self)
        return;
    free(self->runc);
    free(self->runc_root);
    free(self->bundle_root);
    free(self->rootfs);
    free(self->init_path);
    free(self->cgroup_parent);
    free(self->cgroup_root);
    json_decref(self->seccomp);
    free(self);
}

typedef struct {
    const char *const *keep;
    int ret;
} sweep_t;

/* Removes every <parent_dir>/<id> not kept, then <parent_dir> itself if it is empty. */
static int cgroup_sweep_parent(const char *parent_dir, void *arg) {
    sweep_t *sw = arg;
    DIR *d = opendir(parent_dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    int ret = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_type != DT_DIR || !id_ok(de->d_name) || in_list(sw->keep, de->d_name))
            continue;
        char dir[4096];
        int r = xsnprintf(dir, sizeof dir, "%s/%s", parent_dir, de->d_name);
        if (r >= 0)
            r = cgroup_dir_remove(dir);
        if (r < 0 && ret == 0)
            ret = r;
    }
    closedir(d);
    if (rmdir(parent_dir) < 0 && errno != EBUSY && errno != ENOTEMPTY && errno != ENOENT &&
        ret == 0)
        ret = -errno;
    return ret;
}

int launcher_runc_sweep(launcher_t *l, const char *const *keep, unsigned *ret_removed) {
    if (!l || l->destroy != runc_destroy)
        return -EINVAL;
    runc_t *self = (runc_t *)l;
    int ret = 0, r;
    unsigned removed = 0;

    /* Containers runc knows about. */
    _cleanup_free_ char *out = NULL;
    char *list[] = {self->runc, "--root", self->runc_root, "list", "--quiet", NULL};
    r = run(self, list, &out);
    if (r != 0) {
        ret = r < 0 ? r : -EIO;
    } else {
        for (char *save = NULL, *id = strtok_r(out, "\n", &save); id;
             id = strtok_r(NULL, "\n", &save)) {
            if (!id_ok(id) || in_list(keep, id))
                continue;
            if ((r = container_delete(self, id)) < 0 && ret == 0)
                ret = r;
            else if (r == 0)
                removed++;
        }
    }

    /* Bundle dirs without a container (a crash between mkdir and runc create). */
    DIR *d = opendir(self->bundle_root);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!id_ok(de->d_name) || in_list(keep, de->d_name))
                continue;
            char dir[4096];
            if ((r = bundle_dir_of(self, de->d_name, dir, sizeof dir)) >= 0)
                r = rm_rf(dir);
            if (r < 0 && ret == 0)
                ret = r;
        }
        closedir(d);
    } else if (errno != ENOENT && ret == 0) {
        ret = -errno;
    }

    /* Cgroups whose runc state is gone (a crash inside runc, a wiped state dir). */
    sweep_t sw = {.keep = keep};
    if ((r = cgroup_parents_foreach(self, cgroup_sweep_parent, &sw)) < 0 && ret == 0)
        ret = r;

    if (ret == 0 && ret_removed)
        *ret_removed = removed;
    return ret;
}
