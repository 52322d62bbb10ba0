/* Internal to kbox_firewall: the handful of rtnetlink requests a worker namespace needs (link
 * up, veth pair, addresses, delete, list). Plain NETLINK_ROUTE sockets instead of exec'ing `ip`
 * (a few ms each) or adding libmnl for six messages. A socket talks to the network namespace
 * its creating thread was in, which is how one helper thread addresses both the host and the
 * worker's namespace. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "firewall.h"

typedef struct {
    int fd;
    uint32_t seq;
} fw_rtnl_t;

/* Open a socket in the calling thread's current network namespace. 0 or -errno. */
int fw_rtnl_open(fw_rtnl_t *ret);
void fw_rtnl_close(fw_rtnl_t *nl);

/* ifindex of name: > 0, or -ENODEV / -errno. */
int fw_rtnl_link_index(fw_rtnl_t *nl, const char *name);

/* Bring a link up or down by index. */
int fw_rtnl_link_set_up(fw_rtnl_t *nl, int ifindex, bool up);

/* No IPv6 link-local address on this link (addr_gen_mode none): nothing to talk NDP or
 * router solicitations with unless we add an address. -EAFNOSUPPORT without IPv6. */
int fw_rtnl_link_addrgen_none(fw_rtnl_t *nl, int ifindex);

/* Create veth name <-> peer, the peer created directly inside the namespace peer_nsfd. Both
 * down. -EEXIST if name exists here. */
int fw_rtnl_veth_add(fw_rtnl_t *nl, const char *name, const char *peer, int peer_nsfd);

/* Delete a link by name; -ENODEV if there is none. */
int fw_rtnl_link_del(fw_rtnl_t *nl, const char *name);

/* Add addr/prefixlen (AF_INET or AF_INET6, binary address) to ifindex, without duplicate
 * address detection so it is usable at once. */
int fw_rtnl_addr_add(fw_rtnl_t *nl, int ifindex, int family, const void *addr, uint8_t prefixlen);

/* Names of the veth links whose name starts with prefix, as one malloc'd block of
 * NUL-separated names ending in an empty name; *ret_count names. At most max_links. */
int fw_rtnl_veth_list(fw_rtnl_t *nl, const char *prefix, size_t max_links, char **ret_names,
                      size_t *ret_count);

/* The routes of family (AF_INET or AF_INET6) in every table that keep (NULL: all) keeps, at
 * most max: a malloc'd array in *ret (NULL when there are none) with its dev names empty,
 * *ret_n of them. -E2BIG past max, -EAGAIN for a dump the kernel interrupted. */
int fw_rtnl_route_list(fw_rtnl_t *nl, int family, fw_route_filter_t keep, void *keep_ctx,
                       size_t max, fw_route_t **ret, size_t *ret_n);

/* The addresses of family on every link, as the on-link routes they stand for (their network,
 * with the link's index; a point-to-point address also as a host route to itself), filtered
 * and returned as fw_rtnl_route_list() does. An address on a link that is down has no route
 * to its network, yet takes it once the link is up. */
int fw_rtnl_addr_routes(fw_rtnl_t *nl, int family, fw_route_filter_t keep, void *keep_ctx,
                        size_t max, fw_route_t **ret, size_t *ret_n);
