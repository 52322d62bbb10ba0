/* The native Python kernel: a Jupyter kernel whose wire protocol is C (common/jwire.h, the
 * gateway's own codec) and whose code runs in an embedded CPython through IPython's
 * InteractiveShell. `kbox-kernel-host --kernel native --no-init -f FILE` runs it; the init
 * (`--kernel native -f FILE` without --no-init) starts it as its child. See kernel_int.h for
 * the threads and what they share. */
#pragma once

/* Serves the kernel described by the connection file until a shutdown_request (exit code
 * 0) or a fatal error (the process exits, so a client or the gateway sees the kernel die).
 * Returns -errno only if it could not start at all (bad connection file, bind failure,
 * Python missing). Must be called in a single-threaded process, as its main(). */
int khost_kernel_run(const char *conn_file);
