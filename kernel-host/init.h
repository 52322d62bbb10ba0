/* The worker's init: PID 1 inside the container. It starts the kernel as its only direct
 * child, forwards the signals the gateway sends it (SIGINT is how an interrupt reaches the
 * kernel, SIGTERM a polite stop), reaps every orphan that the pid namespace hands it, and
 * exits with the kernel's status as soon as the kernel is gone, which tears the whole pid
 * namespace down and makes the init's pidfd readable on the host.
 *
 * It stays small and single-threaded on purpose: it runs with the worker's uid under the
 * same seccomp filter as user code, and it is non-dumpable so that user code (same uid) can
 * neither ptrace it nor read its /proc files.
 *
 * Two kernels: KHOST_KERNEL_EXEC execs a command (ipykernel); KHOST_KERNEL_NATIVE starts the
 * native kernel (kernel.h), which is this same binary run again with --no-init: the init
 * forks and execs /proc/self/exe, so the kernel gets a fresh address space and user code
 * never runs in, or next to, the init. `--no-init` alone runs the kernel in the calling
 * process (what the init's child does; the runc launcher gives it as the command). */
#pragma once

#include <stdbool.h>

typedef enum {
    KHOST_KERNEL_EXEC,   /* exec the argv after "--" (ipykernel today) */
    KHOST_KERNEL_NATIVE, /* the native kernel (kernel.h), from the connection file */
} khost_kernel_t;

typedef struct {
    khost_kernel_t kernel;
    char *const *argv;     /* exec: the command, borrowed from argv; NULL-terminated */
    const char *conn_file; /* native: -f FILE, borrowed */
    bool no_init;          /* native: be the kernel itself, not its init */
} khost_args_t;

/* Parses
 *   kbox-kernel-host [--kernel exec|ipykernel] [--] COMMAND [ARG...]
 *   kbox-kernel-host --kernel native [--no-init] -f CONNECTION_FILE
 * Pure. Returns 0 and fills *ret; -EINVAL for unknown options, a missing command (exec), a
 * missing connection file (native), or a command given to the native kernel. */
int khost_args_parse(int argc, char *const *argv, khost_args_t *ret);

/* The init's exit code for the kernel's wait status: its exit code, or 128 + the signal that
 * killed it (the shell convention; an init cannot re-raise a fatal signal on itself). */
int khost_exit_code(int wstatus);

/* Makes the process non-dumpable and, when it is not PID 1, a child subreaper (so the same
 * code can be tested without a pid namespace); then runs the kernel as its child (for the
 * native kernel: this binary with --no-init) and returns the exit code to exit with
 * (0..255). -errno if the kernel could not be started at all; -EINVAL for args with no_init
 * (the caller runs khost_kernel_run() itself). Blocks signals for the calling
 * (single-threaded) process. */
int khost_init_run(const khost_args_t *args);
