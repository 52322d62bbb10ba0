/* kbox-kernel-host: the thin main over init.c (the worker's init, see init.h) and kernel.c
 * (the native kernel, see kernel.h). Errors go to stderr as plain lines: this runs inside the
 * container, where stderr is the worker's log or /dev/null. */
#include "init.h"
#include "kernel.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

int main(int argc, char **argv) {
    /* First thing, before anything can be read from /proc/1: user code runs as our uid. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
        fprintf(stderr, "kbox-kernel-host: PR_SET_DUMPABLE: %s\n", strerror(errno));
        return 125;
    }
    khost_args_t args;
    int r = khost_args_parse(argc, argv, &args);
    if (r < 0) {
        fprintf(stderr, "usage: kbox-kernel-host [--kernel exec|ipykernel] [--] COMMAND [ARG...]\n"
                        "       kbox-kernel-host --kernel native [--no-init] -f CONNECTION_FILE\n");
        return 125;
    }
    if (args.kernel == KHOST_KERNEL_NATIVE && args.no_init) {
        /* The kernel process itself: as ordinary as ipykernel's (an exec'd process is
         * dumpable again; we are no init, and nothing here is hidden from its own code). */
        (void)prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
        r = khost_kernel_run(args.conn_file);
        fprintf(stderr, "kbox-kernel-host: kernel: %s\n", strerror(-r));
        return 125;
    }
    r = khost_init_run(&args);
    if (r < 0) {
        fprintf(stderr, "kbox-kernel-host: %s\n", strerror(-r));
        return 125;
    }
    return r;
}
