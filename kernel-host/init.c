/* The worker's init (see init.h). Design, after tini and dumb-init: every signal of interest
 * is blocked and collected synchronously with sigwaitinfo(), so there are no handlers, no
 * async-signal-safety questions and no lost SIGCHLDs; the kernel gets a clean signal state
 * and its own process group, so a forwarded SIGINT reaches it and the commands it runs
 * (`!sleep 10` in IPython), exactly as jupyter_client's killpg() would on a bare host. */
#include "init.h"

#include "util.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

/* What the gateway (or runc kill) may send the init and the kernel should get instead. */
static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

int khost_args_parse(int argc, char *const *argv, khost_args_t *ret) {
    if (argc < 1 || !argv || !ret)
        return -EINVAL;
    khost_kernel_t kernel = KHOST_KERNEL_EXEC;
    const char *conn_file = NULL;
    bool no_init = false;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *kind = NULL;
        if (streq(a, "--")) {
            i++;
            break;
        }
        if (streq(a, "-f")) {
            if (i + 1 >= argc || !argv[i + 1][0])
                return -EINVAL;
            conn_file = argv[++i];
            continue;
        }
        if (streq(a, "--no-init")) {
            no_init = true;
            continue;
        }
        if (streq(a, "--kernel")) {
            if (i + 1 >= argc)
                return -EINVAL;
            kind = argv[++i];
        } else if (startswith(a, "--kernel=")) {
            kind = a + strlen("--kernel=");
        } else if (a[0] == '-') {
            return -EINVAL;
        } else {
            break; /* the command itself */
        }
        if (streq(kind, "exec") || streq(kind, "ipykernel"))
            kernel = KHOST_KERNEL_EXEC;
        else if (streq(kind, "native"))
            kernel = KHOST_KERNEL_NATIVE;
        else
            return -EINVAL;
    }
    bool has_cmd = i < argc && argv[i] && argv[i][0] != '\0';
    if (kernel == KHOST_KERNEL_EXEC && (!has_cmd || conn_file || no_init))
        return -EINVAL;
    if (kernel == KHOST_KERNEL_NATIVE && (i < argc || !conn_file))
        return -EINVAL;
    ret->kernel = kernel;
    ret->argv = i < argc ? argv + i : NULL;
    ret->conn_file = conn_file;
    ret->no_init = no_init;
    return 0;
}

int khost_exit_code(int wstatus) {
    if (WIFEXITED(wstatus))
        return WEXITSTATUS(wstatus);
    if (WIFSIGNALED(wstatus))
        return 128 + WTERMSIG(wstatus);
    return 255;
}

static void signals_set(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGCHLD);
    for (size_t i = 0; i < ARRAY_SIZE(forwarded); i++)
        sigaddset(set, forwarded[i]);
}

/* In the child, before exec: default dispositions (runc or the gateway may have left
 * SIGPIPE ignored, and an ignored disposition survives exec), nothing blocked, own group. */
static _Noreturn void child_exec(const char *path, char *const *argv, pid_t parent) {
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            (void)sigaction(s, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    (void)setpgid(0, 0);
    if (path) {
        /* The native kernel is our own binary: it dies with us even outside a pid namespace
         * (a standalone kernel whose init a client killed). Checked after setting it, so an
         * init that died in between is noticed too. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0 || getppid() != parent)
            _exit(125);
        execv(path, argv);
    } else
        execvp(argv[0], argv);
    _exit(errno == ENOENT ? 127 : 126);
}

static void forward(pid_t kernel, int signo) {
    /* The group first (the kernel and what it runs); the kernel alone if it left it. */
    if (kill(-kernel, signo) < 0 && errno == ESRCH)
        (void)kill(kernel, signo);
}

int khost_init_run(const khost_args_t *args) {
    if (!args || args->no_init)
        return -EINVAL;
    /* The native kernel is this binary again, as its own process: exec'd, not just forked,
     * so it starts dumpable with a clean address space and nothing of the init's. */
    char *native_argv[] = {"kbox-kernel-host",      "--kernel", "native", "--no-init", "-f",
                           (char *)args->conn_file, NULL};
    const char *path = NULL;
    char *const *argv = args->argv;
    if (args->kernel == KHOST_KERNEL_NATIVE) {
        if (!args->conn_file)
            return -EINVAL;
        path = "/proc/self/exe";
        argv = native_argv;
    }
    if (!argv || !argv[0])
        return -EINVAL;

    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        return -errno;
    /* As PID 1 of a pid namespace orphans come to us anyway; elsewhere (tests) ask for them. */
    if (getpid() != 1 && prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
        return -errno;

    sigset_t set, old;
    signals_set(&set);
    if (sigprocmask(SIG_BLOCK, &set, &old) < 0)
        return -errno;

    pid_t self = getpid();
    pid_t kernel = fork();
    if (kernel < 0) {
        int r = -errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
        return r;
    }
    if (kernel == 0)
        child_exec(path, argv, self);
    /* Also from this side, so a signal forwarded right away already finds the group. */
    (void)setpgid(kernel, kernel);

    for (;;) {
        siginfo_t info;
        int signo = sigwaitinfo(&set, &info);
        if (signo < 0)
            continue; /* EINTR: nothing else can fail with a valid set */
        if (signo != SIGCHLD) {
            forward(kernel, signo);
            continue;
        }
        /* SIGCHLD coalesces: reap everything that is ready, orphans included. */
        for (;;) {
            int status;
            pid_t pid = waitpid(-1, &status, WNOHANG);
            if (pid <= 0)
                break;
            if (pid == kernel)
                return khost_exit_code(status);
        }
    }
}
