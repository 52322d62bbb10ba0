/* What a gateway takes from the host that another gateway on the same host must not take too:
 * its workers' uids and, in TCP mode, its workers' link addresses.
 *
 * Two gateways with one uid range would give two strangers' kernels one uid, and with it each
 * other's per-uid limits (processes, inotify, keyrings) and any file a uid owns outside the
 * sandbox; two with one address block would route one's connections into the other's veths
 * and leave half their workers unreachable. So a running gateway claims what it uses in a
 * registry every gateway on the host reads: a directory under /run per kind, one file per
 * claimed span, flock'd by its owner for as long as it runs (a dead gateway's claim is stale and
 * removed), and a span that overlaps a running gateway's is refused or, where the choice is
 * ours, avoided.
 *
 * A span is an inclusive range of a 128-bit space: uids as they are, IPv6 addresses as they
 * are, IPv4 addresses as IPv4-mapped IPv6 (::ffff:a.b.c.d), so both families share one
 * registry without meeting. What a gateway chose is kept in its state dir and chosen again at
 * the next start: a session's disk holds files of its uid, and a worker reattached after a
 * crash keeps its veth's addresses. */
#pragma once

#include "firewall.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define GW_UID_REGISTRY  "/run/kbox/uid-ranges"
#define GW_LINK_REGISTRY "/run/kbox/worker-links"
#define GW_UID_AUTO_LO   100000u

typedef unsigned __int128 gw_u128;

typedef struct {
    gw_u128 first, last;     /* inclusive */
    pid_t pid;               /* the running gateway that holds it (0: none, or unknown) */
    char dev[FW_IFNAME_MAX]; /* a host route's: its link ("" for a gateway's claim) */
} gw_claim_t;

/* ---- pure ---- */

/* The index of a span of live[0..n) that overlaps [first, last], or -1. */
int gw_claim_overlap(const gw_claim_t *live, size_t n, gw_u128 first, gw_u128 last);
/* The lowest start s in [lo, hi], s - lo a multiple of align, such that [s, s + len - 1] lies
 * within [lo, hi] and overlaps none of live[0..n); false when there is none (or len or align
 * is 0). */
bool gw_claim_pick(const gw_claim_t *live, size_t n, gw_u128 lo, gw_u128 hi, gw_u128 len,
                   gw_u128 align, gw_u128 *ret);
/* The addresses `slots` worker links take at the start of pool's blocks (a /30 and a /126 per
 * slot): *v4 in the mapped form, *v6 when pool->has_v6. -ERANGE when a block is too small. */
int gw_link_spans(const fw_pool_t *pool, uint32_t slots, gw_claim_t *v4, gw_claim_t *v6);

/* The spans of pool's blocks that the host's routes already take, into ret (room for n): every
 * route that overlaps a block except a default route, one on our own veths (dev starting with
 * own_dev_prefix) and one through a router that is not narrower than the block (a VPN's
 * 10.0.0.0/8: our /30s, more specific, only shadow part of what lies behind it). A local or
 * on-link network is addresses in use on this host. Returns how many. */
size_t gw_routes_taken(const fw_route_t *routes, size_t n, const fw_pool_t *pool,
                       const char *own_dev_prefix, gw_claim_t *ret);

/* ---- the registries ---- */

/* Claims a range of `count` uids in the registry `dir` (made 0700 if missing). `base` 0: the
 * base kept in `keep_path`, or on a first start the lowest free one from GW_UID_AUTO_LO (then
 * written there). 0 with *ret_base and *ret_fd (the claim lasts while that fd is open); -EBUSY
 * with *conflict (and *ret_base, the range refused) when a running gateway holds an
 * overlapping range, or with conflict->last 0 when no free range is left; -errno otherwise. */
int gw_uid_claim(const char *dir, const char *keep_path, uint32_t base, uint32_t count,
                 uint32_t *ret_base, int *ret_fd, gw_claim_t *conflict);

/* Claims the addresses of `slots` worker links in pool's blocks in the registry `dir`: in each
 * block the span kept in `keep_path` if it is inside the block and free, otherwise the lowest
 * free one (aligned to its size); what was claimed is kept. pool->base4/base6 move to the
 * starts of the spans claimed, so slot i's link is where fw_pool_addrs() puts it. Spans in
 * taken[0..n_taken) (the host's routes) are avoided like claims. 0 with
 * ret_fds[0] (IPv4) and ret_fds[1] (IPv6, or -1); -EBUSY with *conflict (the lowest running
 * gateway's span or route in the way of the block's first) when a block has no free span
 * left; -errno otherwise. */
int gw_link_claim(const char *dir, const char *keep_path, fw_pool_t *pool, uint32_t slots,
                  const gw_claim_t *taken, size_t n_taken, int ret_fds[2], gw_claim_t *conflict);

/* "a.b.c.d" for a mapped IPv4 address, IPv6 text otherwise; buf of INET6_ADDRSTRLEN. */
const char *gw_claim_addr_str(gw_u128 a, char *buf, size_t len);
