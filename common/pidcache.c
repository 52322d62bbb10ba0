/* getpid() answered from memory, for the processes that link this file (gateway, kernel host).
 *
 * Why: libzmq guards every signal between its threads against use after fork by comparing a
 * saved pid with getpid(), and glibc (since 2.25) no longer caches the pid, so each check is a
 * system call: ~54 per /execute across the gateway, the kernel and their ZeroMQ I/O threads,
 * a third of all their system calls. A system call costs 0.2-1.1 us on the VMs we measured
 * (docs/BENCHMARKS.md): up to ~60 us of a 1b request's ~1.4 ms of CPU on the slowest.
 *
 * How: an executable's definition of getpid takes precedence over libc's for every caller
 * outside libc (the executable and the shared libraries it loads, libzmq and Python's
 * extension modules included; libc's own internal calls are bound inside libc). The pid is
 * read once at start-up and again in the child of every fork(): libc runs pthread_atfork
 * child handlers in the order they were registered, and ours is registered by a constructor
 * before main, so it runs first. The cache is never empty after start-up, so a vfork()-style
 * child (posix_spawn, Python's subprocess), which shares our memory and runs no handlers,
 * never writes it; such children only exec. A process made by a raw clone system call without
 * fork() would see its parent's pid: nothing in these programs does that. */
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static pid_t cached_pid;

static void pidcache_refresh(void) {
    __atomic_store_n(&cached_pid, (pid_t)syscall(SYS_getpid), __ATOMIC_RELAXED);
}

__attribute__((constructor(101))) static void pidcache_init(void) {
    pidcache_refresh();
    (void)pthread_atfork(NULL, NULL, pidcache_refresh);
}

pid_t getpid(void) {
    pid_t p = __atomic_load_n(&cached_pid, __ATOMIC_RELAXED);
    /* Only before our constructor ran (another library's constructor calling getpid). */
    return p > 0 ? p : (pid_t)syscall(SYS_getpid);
}
