/* Internal to kbox_firewall: run a fixed-argv helper (iptables-restore, iptables-save), no
 * shell, optionally inside a network namespace, with stdin from an fd and stdout captured.
 * Spawning and waiting are split so the IPv4 and IPv6 helpers run at the same time: with the
 * nft backend most of a helper's time is the kernel's commit wait, not CPU. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;
    int out_fd; /* read end of the child's stdout */
    int err_fd; /* read end of the exec-error pipe: an errno if setns/exec failed */
} fw_child_t;

#define FW_CHILD_INIT                                                                              \
    { .pid = -1, .out_fd = -1, .err_fd = -1 }

/* Fork and exec argv[0] (an absolute path) with a fixed minimal environment. In the child:
 * setns(nsfd, CLONE_NEWNET) unless nsfd < 0 (then it stays in the calling thread's network
 * namespace), stdin from stdin_fd (< 0: /dev/null), stderr to diag_fd (< 0: /dev/null), every
 * other fd closed at exec, signal mask cleared. Returns 0 and fills ret, or -errno. */
int fw_child_spawn(const char *const argv[], int nsfd, int stdin_fd, int diag_fd, fw_child_t *ret);

/* Collect the child's stdout (at most max_out bytes, else -EFBIG) and its exit, killing it
 * with SIGKILL at deadline_us (CLOCK_MONOTONIC, µs). Always reaps the child and closes the
 * fds, even on error. Returns 0 on exit status 0 (ret_out, if not NULL, gets the malloc'd
 * NUL-terminated output), -errno of a failed setns/exec, -EPROTO on a nonzero exit,
 * -ETIMEDOUT if killed at the deadline, -ECHILD if it died of a signal or was reaped
 * elsewhere. */
int fw_child_wait(fw_child_t *c, uint64_t deadline_us, size_t max_out, char **ret_out);

/* Kill (SIGKILL) and reap a spawned child without collecting anything; NULL-safe. */
void fw_child_abort(fw_child_t *c);
