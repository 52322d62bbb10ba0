/* kbox-kernel-host: the thin main over init.c (see init.h). Errors go to stderr as plain
 * lines: this runs inside the container, where stderr is the worker's log or /dev/null. */
#include "init.h"

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
        fprintf(stderr, "usage: kbox-kernel-host [--kernel exec|native] [--] COMMAND [ARG...]\n");
        return 125;
    }
    r = khost_init_run(&args);
    if (r < 0) {
        fprintf(stderr, "kbox-kernel-host: %s\n", strerror(-r));
        return 125;
    }
    return r;
}
