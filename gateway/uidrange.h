/* Worker uids, host-wide. Each worker runs as a uid of its own, taken from its gateway's
 * range; two gateways on one host with the same range would give two strangers' kernels one
 * uid, and with it each other's per-uid limits (processes, inotify, keyrings) and any file a
 * uid owns outside the sandbox. So a running gateway claims its range in a registry every
 * gateway on the host reads (a directory under /run, one file per range, flock'd by its
 * owner for as long as it runs: a dead gateway's claim is stale and removed), and a range
 * that overlaps a running gateway's is refused.
 *
 * By default (base 0) the gateway takes the lowest free range from 100000 at its first start
 * and keeps it in its state dir: a session's disk holds files of its uid, so a restarted
 * gateway must find the same uids again. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define GW_UID_REGISTRY "/run/kbox/uid-ranges"
#define GW_UID_AUTO_LO  100000u

typedef struct {
    uint32_t base, count;
    pid_t pid; /* the running gateway that holds it (0: unknown) */
} gw_uid_range_t;

/* Pure. The lowest base >= lo such that [base, base + count) overlaps none of live[0..n) and
 * ends at or below INT32_MAX; 0 when there is none. */
uint32_t gw_uid_pick(const gw_uid_range_t *live, size_t n, uint32_t count, uint32_t lo);
/* Pure. The index of a range of live[0..n) that overlaps [base, base + count), or -1. */
int gw_uid_overlap(const gw_uid_range_t *live, size_t n, uint32_t base, uint32_t count);

/* Claims a range of `count` uids in the registry `dir` (made 0700 if missing). `base` 0: the
 * base kept in `keep_path`, or on a first start the lowest free one (then written there).
 * 0 with *ret_base and *ret_fd (the claim lasts while that fd is open); -EBUSY with
 * *conflict (and *ret_base, the range refused) when a running gateway holds an overlapping
 * range, or with conflict->count 0 when no free range is left; -errno otherwise. */
int gw_uid_claim(const char *dir, const char *keep_path, uint32_t base, uint32_t count,
                 uint32_t *ret_base, int *ret_fd, gw_uid_range_t *conflict);
