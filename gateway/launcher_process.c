/* Unsandboxed launcher: fork/exec the kernel directly. For development and unit tests only;
 * the product uses launcher_runc. The kernel gets its own process group (so an interrupt or a
 * kill reaches its subprocesses too) and PDEATHSIG, so it never outlives the gateway. */
#include "launcher.h"
#include "util.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static int proc_start(launcher_t *self, const launcher_spec_t *spec, launcher_proc_t *ret) {
    char home[PATH_MAX], mpl[PATH_MAX], env_home[PATH_MAX + 8], env_mpl[PATH_MAX + 16];
    int r;
    if ((r = xsnprintf(home, sizeof home, "%s/home", spec->run_dir)) < 0 ||
        (r = xsnprintf(mpl, sizeof mpl, "%s/mpl", spec->run_dir)) < 0 ||
        (r = xsnprintf(env_home, sizeof env_home, "HOME=%s", home)) < 0 ||
        (r = xsnprintf(env_mpl, sizeof env_mpl, "MPLCONFIGDIR=%s", mpl)) < 0)
        return r;
    if (mkdir(home, 0700) < 0 || mkdir(mpl, 0700) < 0)
        return -errno;
    char *argv[] = {(char *)spec->python,
                    "-m",
                    "ipykernel_launcher",
                    IPYKERNEL_HISTORY_OPT,
                    "-f",
                    (char *)spec->conn_file,
                    NULL,
                    NULL};
    /* The native kernel: kbox-kernel-host next to this build's gateway, as its init. */
    char kh[PATH_MAX];
    if (streq(spec->kernel, "native")) {
        ssize_t len = readlink("/proc/self/exe", kh, sizeof kh - 1);
        if (len <= 0)
            return -errno;
        kh[len] = '\0';
        char *slash = strrchr(kh, '/');
        if (!slash || (r = xsnprintf(slash, sizeof kh - (size_t)(slash - kh),
                                     "/../kernel-host/kbox-kernel-host")) < 0)
            return slash ? r : -EINVAL;
        char *const nargv[] = {kh, "--kernel", "native", "-f", (char *)spec->conn_file, NULL};
        memcpy(argv, nargv, sizeof nargv);
    }
    char *envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin",
                    env_home,
                    env_mpl,
                    "LANG=C.UTF-8",
                    "MPLBACKEND=module://matplotlib_inline.backend_inline",
                    "PYTHONUNBUFFERED=1",
                    NULL};
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        /* Only async-signal-safe calls between fork and exec: we forked a threaded process. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        setsid();
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGINT, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
            dup2(nul, 2);
        }
        if (chdir(home) < 0)
            _exit(127);
        execve(argv[0], argv, envp); /* the interpreter, or the kernel host */
        _exit(127);
    }
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        r = -errno;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return r;
    }
    fcntl(pidfd, F_SETFD, FD_CLOEXEC);
    ret->pid = pid;
    ret->pidfd = pidfd;
    snprintf(ret->container_id, sizeof ret->container_id, "pid-%d", (int)pid);
    return 0;
}

static int proc_interrupt(launcher_t *self, const launcher_proc_t *p) {
    return p->pid > 0 && kill(p->pid, SIGINT) < 0 ? -errno : 0;
}

static int proc_kill(launcher_t *self, const launcher_proc_t *p) {
    if (p->pid <= 0)
        return -ESRCH;
    /* The whole process group: `!cmd` children die with the kernel. pidfd_send_signal would
     * avoid pid reuse for the leader; the group kill is what reaches the children. */
    if (p->pidfd >= 0)
        syscall(SYS_pidfd_send_signal, p->pidfd, SIGKILL, NULL, 0);
    kill(-p->pid, SIGKILL);
    return 0;
}

static int proc_cleanup(launcher_t *self, const launcher_proc_t *p, const launcher_spec_t *spec) {
    /* Group kill before reaping: the unreaped leader keeps its pid (and so the group id)
     * from being reused. */
    if (p->pid > 0)
        kill(-p->pid, SIGKILL);
    if (p->pidfd >= 0) {
        siginfo_t si;
        /* Blocking is fine: we are on the work pool and the process was SIGKILLed. */
        while (waitid((idtype_t)3 /* P_PIDFD */, (id_t)p->pidfd, &si, WEXITED) < 0 &&
               errno == EINTR)
            ;
    }
    return 0;
}

static void proc_destroy(launcher_t *self) {
    free(self);
}

launcher_t *launcher_process_new(void) {
    launcher_t *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->name = "process";
    l->start = proc_start;
    l->interrupt = proc_interrupt;
    l->kill = proc_kill;
    l->cleanup = proc_cleanup;
    l->destroy = proc_destroy;
    return l;
}

void launcher_destroy(launcher_t **self_p) {
    launcher_t *l = self_p ? *self_p : NULL;
    if (!l)
        return;
    *self_p = NULL;
    l->destroy(l);
}
