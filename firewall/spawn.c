/* Fixed-argv helpers for kbox_firewall (see spawn.h). The caller may be a thread of a large,
 * multithreaded gateway, so the child does nothing between fork and exec but async-signal-safe
 * system calls, and every fd it is given is first duplicated above stdio with O_CLOEXEC so the
 * dup2()s onto 0..2 cannot clobber one another and nothing else leaks into iptables. A failed
 * setns or exec comes back as an errno through a close-on-exec pipe, which tells "binary
 * missing" apart from "iptables rejected the rules". */
#include "spawn.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

static const char *const child_env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};

/* A close-on-exec duplicate of fd numbered 3 or above (or of /dev/null if fd < 0). */
static int dup_high(int fd) {
    _cleanup_close_ int null_fd = -1;
    if (fd < 0) {
        null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null_fd < 0)
            return -errno;
        fd = null_fd;
    }
    int r = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    return r < 0 ? -errno : r;
}

int fw_child_spawn(const char *const argv[], int nsfd, int stdin_fd, int diag_fd, fw_child_t *ret) {
    if (!argv || !argv[0] || argv[0][0] != '/' || !ret)
        return -EINVAL;
    _cleanup_close_ int in = dup_high(stdin_fd);
    if (in < 0)
        return in;
    _cleanup_close_ int diag = dup_high(diag_fd);
    if (diag < 0)
        return diag;
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0)
        return -errno;
    _cleanup_close_ int out_r = out[0], out_w0 = out[1];
    if (pipe2(err, O_CLOEXEC) < 0)
        return -errno;
    _cleanup_close_ int err_r = err[0], err_w = err[1];
    _cleanup_close_ int out_w = dup_high(out_w0);
    if (out_w < 0)
        return out_w;

    sigset_t none;
    sigemptyset(&none);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        /* Child: async-signal-safe calls only. */
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        sigaction(SIGPIPE, &dfl, NULL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if ((nsfd < 0 || setns(nsfd, CLONE_NEWNET) == 0) && dup2(in, 0) == 0 &&
            dup2(out_w, 1) == 1 && dup2(diag, 2) == 2) {
            /* Belt and braces for fds other components forgot to mark close-on-exec. */
            close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
            execve(argv[0], (char *const *)argv, (char *const *)child_env);
        }
        int e = errno;
        ssize_t unused = write(err_w, &e, sizeof e);
        (void)unused;
        _exit(127);
    }
    ret->pid = pid;
    ret->out_fd = TAKE_FD(out_r);
    ret->err_fd = TAKE_FD(err_r);
    return 0;
}

static int child_reap(pid_t pid, int *ret_status) {
    for (;;) {
        if (waitpid(pid, ret_status, 0) == pid)
            return 0;
        if (errno != EINTR)
            return -ECHILD;
    }
}

int fw_child_wait(fw_child_t *c, uint64_t deadline_us, size_t max_out, char **ret_out) {
    if (!c || c->pid <= 0)
        return -EINVAL;
    _cleanup_close_ int out_fd = TAKE_FD(c->out_fd);
    _cleanup_close_ int err_fd = TAKE_FD(c->err_fd);
    pid_t pid = c->pid;
    c->pid = -1;

    _cleanup_free_ char *buf = malloc(max_out + 1);
    size_t len = 0;
    int r = buf ? 0 : -ENOMEM;
    while (out_fd >= 0) {
        uint64_t now = now_mono_us();
        if (now >= deadline_us) {
            r = -ETIMEDOUT;
            break;
        }
        struct pollfd p = {.fd = out_fd, .events = POLLIN};
        int n = poll(&p, 1, (int)((deadline_us - now + 999) / 1000));
        if (n < 0 && errno != EINTR) {
            r = -errno;
            break;
        }
        if (n <= 0)
            continue;
        char tmp[4096];
        ssize_t got = read(out_fd, tmp, sizeof tmp);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            r = -errno;
            break;
        }
        if (got == 0)
            break;
        if (!buf || len + (size_t)got > max_out) {
            if (r == 0)
                r = -EFBIG; /* keep draining so the child is not stuck on a full pipe */
            continue;
        }
        memcpy(buf + len, tmp, (size_t)got);
        len += (size_t)got;
    }
    if (r == -ETIMEDOUT || (r < 0 && r != -EFBIG && r != -ENOMEM))
        kill(pid, SIGKILL);
    int status = 0;
    int rr = child_reap(pid, &status);
    if (r == -ETIMEDOUT)
        return r;
    int e = 0;
    if (err_fd >= 0 && read(err_fd, &e, sizeof e) == (ssize_t)sizeof e && e > 0)
        return -e;
    if (rr < 0)
        return rr;
    if (WIFSIGNALED(status))
        return -ECHILD;
    if (WEXITSTATUS(status) != 0)
        return -EPROTO;
    if (r < 0 || !buf)
        return r < 0 ? r : -ENOMEM;
    buf[len] = '\0';
    if (ret_out)
        *ret_out = TAKE_PTR(buf);
    return 0;
}

void fw_child_abort(fw_child_t *c) {
    if (!c || c->pid <= 0)
        return;
    kill(c->pid, SIGKILL);
    int status;
    (void)child_reap(c->pid, &status);
    c->pid = -1;
    closep(&c->out_fd);
    closep(&c->err_fd);
    c->out_fd = c->err_fd = -1;
}
