/* Minimal rtnetlink client for kbox_firewall (see rtnl.h). Requests are built in a fixed
 * stack buffer with bounds-checked attribute appends and always ask for an ACK, so every call
 * returns the kernel's own errno. Replies are read into one heap buffer large enough for a
 * whole dump batch. */
#include "rtnl.h"

#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "util.h"

#define REQ_MAX  1024
#define RECV_MAX 65536

typedef union {
    struct nlmsghdr h;
    char buf[REQ_MAX];
} req_t;

int fw_rtnl_open(fw_rtnl_t *ret) {
    if (!ret)
        return -EINVAL;
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return -errno;
    /* Errors need not echo the whole request back. */
    int one = 1;
    (void)setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
    ret->fd = fd;
    ret->seq = (uint32_t)now_mono_us();
    return 0;
}

void fw_rtnl_close(fw_rtnl_t *nl) {
    if (nl && nl->fd >= 0) {
        close(nl->fd);
        nl->fd = -1;
    }
}

static void req_init(req_t *r, uint16_t type, uint16_t flags, const void *hdr, size_t hdr_len) {
    memset(r, 0, sizeof *r);
    r->h.nlmsg_type = type;
    r->h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    r->h.nlmsg_len = NLMSG_LENGTH(hdr_len);
    memcpy(NLMSG_DATA(&r->h), hdr, hdr_len);
}

static struct rtattr *attr_put(req_t *r, uint16_t type, const void *data, size_t len) {
    size_t off = NLMSG_ALIGN(r->h.nlmsg_len);
    size_t alen = RTA_LENGTH(len);
    if (off + RTA_ALIGN(alen) > sizeof r->buf)
        return NULL;
    struct rtattr *a = (struct rtattr *)(r->buf + off);
    a->rta_type = type;
    a->rta_len = (unsigned short)alen;
    if (len)
        memcpy(RTA_DATA(a), data, len);
    r->h.nlmsg_len = (uint32_t)(off + RTA_ALIGN(alen));
    return a;
}

static int attr_put_str(req_t *r, uint16_t type, const char *s) {
    return attr_put(r, type, s, strlen(s) + 1) ? 0 : -ENOBUFS;
}

static void nest_end(req_t *r, struct rtattr *nest) {
    nest->rta_len = (unsigned short)(r->buf + r->h.nlmsg_len - (char *)nest);
}

typedef int (*reply_cb_t)(void *ctx, const struct nlmsghdr *h);

/* Send r and read until its ACK (or the end of a dump). Every other message with our sequence
 * number goes to cb. Returns 0, the kernel's -errno, -EAGAIN for an interrupted dump. */
static int talk(fw_rtnl_t *nl, req_t *r, reply_cb_t cb, void *ctx) {
    if (!nl || nl->fd < 0)
        return -EBADF;
    r->h.nlmsg_seq = ++nl->seq;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    for (;;) {
        if (sendto(nl->fd, r, r->h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) >= 0)
            break;
        if (errno != EINTR)
            return -errno;
    }
    _cleanup_free_ char *buf = malloc(RECV_MAX);
    if (!buf)
        return -ENOMEM;
    /* NLM_F_DUMP's bits mean NLM_F_EXCL|NLM_F_REPLACE on NEW requests: only a GET dumps. */
    bool dump =
        (r->h.nlmsg_type - RTM_BASE) % 4 == 2 && (r->h.nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;
    int cb_err = 0;
    bool interrupted = false;
    for (;;) {
        ssize_t n = recv(nl->fd, buf, RECV_MAX, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        size_t left = (size_t)n;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, left);
             h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_seq != r->h.nlmsg_seq)
                continue;
            if (h->nlmsg_flags & NLM_F_DUMP_INTR)
                interrupted = true;
            if (h->nlmsg_type == NLMSG_DONE) {
                /* A dump that failed part-way says so in DONE's payload: what came is not all. */
                int done_err = 0;
                if (h->nlmsg_len >= NLMSG_LENGTH(sizeof done_err))
                    memcpy(&done_err, NLMSG_DATA(h), sizeof done_err);
                if (done_err < 0)
                    return done_err;
                return cb_err < 0 ? cb_err : interrupted ? -EAGAIN : 0;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr)))
                    return -EBADMSG;
                const struct nlmsgerr *e = NLMSG_DATA(h);
                if (e->error < 0)
                    return e->error;
                if (!dump)
                    return cb_err;
                continue;
            }
            if (cb && cb_err == 0)
                cb_err = cb(ctx, h);
        }
    }
}

static int link_index_cb(void *ctx, const struct nlmsghdr *h) {
    if (h->nlmsg_type != RTM_NEWLINK || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg)))
        return 0;
    const struct ifinfomsg *ifi = NLMSG_DATA(h);
    *(int *)ctx = ifi->ifi_index;
    return 0;
}

int fw_rtnl_link_index(fw_rtnl_t *nl, const char *name) {
    req_t r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    req_init(&r, RTM_GETLINK, 0, &ifi, sizeof ifi);
    int rr = attr_put_str(&r, IFLA_IFNAME, name);
    if (rr < 0)
        return rr;
    int index = 0;
    rr = talk(nl, &r, link_index_cb, &index);
    if (rr < 0)
        return rr;
    return index > 0 ? index : -ENODEV;
}

int fw_rtnl_link_set_up(fw_rtnl_t *nl, int ifindex, bool up) {
    req_t r;
    struct ifinfomsg ifi = {
        .ifi_family = AF_UNSPEC,
        .ifi_index = ifindex,
        .ifi_flags = up ? IFF_UP : 0,
        .ifi_change = IFF_UP,
    };
    req_init(&r, RTM_NEWLINK, 0, &ifi, sizeof ifi);
    return talk(nl, &r, NULL, NULL);
}

int fw_rtnl_link_addrgen_none(fw_rtnl_t *nl, int ifindex) {
    req_t r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = ifindex};
    req_init(&r, RTM_NEWLINK, 0, &ifi, sizeof ifi);
    struct rtattr *spec = attr_put(&r, IFLA_AF_SPEC, NULL, 0);
    struct rtattr *inet6 = spec ? attr_put(&r, AF_INET6, NULL, 0) : NULL;
    uint8_t mode = IN6_ADDR_GEN_MODE_NONE;
    if (!inet6 || !attr_put(&r, IFLA_INET6_ADDR_GEN_MODE, &mode, sizeof mode))
        return -ENOBUFS;
    nest_end(&r, inet6);
    nest_end(&r, spec);
    return talk(nl, &r, NULL, NULL);
}

int fw_rtnl_veth_add(fw_rtnl_t *nl, const char *name, const char *peer, int peer_nsfd) {
    req_t r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    req_init(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifi, sizeof ifi);
    if (attr_put_str(&r, IFLA_IFNAME, name) < 0)
        return -ENOBUFS;
    struct rtattr *linkinfo = attr_put(&r, IFLA_LINKINFO, NULL, 0);
    if (!linkinfo || attr_put_str(&r, IFLA_INFO_KIND, "veth") < 0)
        return -ENOBUFS;
    struct rtattr *data = attr_put(&r, IFLA_INFO_DATA, NULL, 0);
    struct rtattr *peer_nest = data ? attr_put(&r, VETH_INFO_PEER, NULL, 0) : NULL;
    if (!peer_nest)
        return -ENOBUFS;
    /* VETH_INFO_PEER carries a whole ifinfomsg before the peer's own attributes. */
    size_t off = NLMSG_ALIGN(r.h.nlmsg_len);
    if (off + NLMSG_ALIGN(sizeof ifi) > sizeof r.buf)
        return -ENOBUFS;
    memset(r.buf + off, 0, NLMSG_ALIGN(sizeof ifi));
    r.h.nlmsg_len = (uint32_t)(off + NLMSG_ALIGN(sizeof ifi));
    uint32_t nsfd = (uint32_t)peer_nsfd;
    if (attr_put_str(&r, IFLA_IFNAME, peer) < 0 ||
        !attr_put(&r, IFLA_NET_NS_FD, &nsfd, sizeof nsfd))
        return -ENOBUFS;
    nest_end(&r, peer_nest);
    nest_end(&r, data);
    nest_end(&r, linkinfo);
    return talk(nl, &r, NULL, NULL);
}

int fw_rtnl_link_del(fw_rtnl_t *nl, const char *name) {
    req_t r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    req_init(&r, RTM_DELLINK, 0, &ifi, sizeof ifi);
    int rr = attr_put_str(&r, IFLA_IFNAME, name);
    return rr < 0 ? rr : talk(nl, &r, NULL, NULL);
}

int fw_rtnl_addr_add(fw_rtnl_t *nl, int ifindex, int family, const void *addr, uint8_t prefixlen) {
    if (family != AF_INET && family != AF_INET6)
        return -EAFNOSUPPORT;
    size_t alen = family == AF_INET ? 4 : 16;
    req_t r;
    struct ifaddrmsg ifa = {
        .ifa_family = (uint8_t)family,
        .ifa_prefixlen = prefixlen,
        .ifa_flags = IFA_F_NODAD,
        .ifa_scope = RT_SCOPE_UNIVERSE,
        .ifa_index = (uint32_t)ifindex,
    };
    req_init(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &ifa, sizeof ifa);
    uint32_t flags = IFA_F_NODAD;
    if (!attr_put(&r, IFA_LOCAL, addr, alen) || !attr_put(&r, IFA_ADDRESS, addr, alen) ||
        !attr_put(&r, IFA_FLAGS, &flags, sizeof flags))
        return -ENOBUFS;
    return talk(nl, &r, NULL, NULL);
}

typedef struct {
    const char *prefix;
    size_t max;
    char *names;
    size_t len, cap, count;
} veth_list_t;

/* Find attribute type among the attributes in [a, a + len). */
static const struct rtattr *attr_find(const struct rtattr *a, size_t len, unsigned short type) {
    for (; RTA_OK(a, len); a = RTA_NEXT(a, len))
        if (a->rta_type == type)
            return a;
    return NULL;
}

static bool attr_is_str(const struct rtattr *a, const char *s) {
    size_t n = RTA_PAYLOAD(a);
    return n > 0 && strnlen(RTA_DATA(a), n) == strlen(s) && !strncmp(RTA_DATA(a), s, n);
}

static int veth_list_cb(void *ctx, const struct nlmsghdr *h) {
    veth_list_t *l = ctx;
    if (h->nlmsg_type != RTM_NEWLINK || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg)))
        return 0;
    const struct ifinfomsg *ifi = NLMSG_DATA(h);
    const struct rtattr *attrs = IFLA_RTA(ifi);
    size_t alen = IFLA_PAYLOAD(h);
    const struct rtattr *name = attr_find(attrs, alen, IFLA_IFNAME);
    const struct rtattr *info = attr_find(attrs, alen, IFLA_LINKINFO);
    if (!name || !info)
        return 0;
    const char *s = RTA_DATA(name);
    size_t n = strnlen(s, RTA_PAYLOAD(name));
    if (n == 0 || n >= IFNAMSIZ || !startswith(s, l->prefix))
        return 0;
    const struct rtattr *kind = attr_find(RTA_DATA(info), RTA_PAYLOAD(info), IFLA_INFO_KIND);
    if (!kind || !attr_is_str(kind, "veth"))
        return 0;
    if (l->count >= l->max)
        return -E2BIG;
    if (l->len + n + 2 > l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        char *nn = realloc(l->names, cap);
        if (!nn)
            return -ENOMEM;
        l->names = nn;
        l->cap = cap;
    }
    memcpy(l->names + l->len, s, n);
    l->len += n;
    l->names[l->len++] = '\0';
    l->count++;
    return 0;
}

int fw_rtnl_veth_list(fw_rtnl_t *nl, const char *prefix, size_t max_links, char **ret_names,
                      size_t *ret_count) {
    if (!prefix || !ret_names || !ret_count)
        return -EINVAL;
    req_t r;
    struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
    req_init(&r, RTM_GETLINK, NLM_F_DUMP, &ifi, sizeof ifi);
    veth_list_t l = {.prefix = prefix, .max = max_links};
    int rr = talk(nl, &r, veth_list_cb, &l);
    _cleanup_free_ char *names = l.names;
    if (rr < 0)
        return rr;
    if (!names) {
        names = malloc(1); /* no match: still a valid, empty list */
        if (!names)
            return -ENOMEM;
    }
    names[l.len] = '\0';
    *ret_names = TAKE_PTR(names);
    *ret_count = l.count;
    return 0;
}

typedef struct {
    int family;
    fw_route_filter_t keep;
    void *keep_ctx;
    size_t max, n, cap;
    fw_route_t *v;
} route_list_t;

static int route_list_add(route_list_t *l, const fw_route_t *e) {
    if (l->keep && !l->keep(e, l->keep_ctx))
        return 0;
    if (l->n >= l->max)
        return -E2BIG;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        fw_route_t *grown = realloc(l->v, cap * sizeof *grown);
        if (!grown)
            return -ENOMEM;
        l->v = grown;
        l->cap = cap;
    }
    l->v[l->n++] = *e;
    return 0;
}

static int route_list_cb(void *ctx, const struct nlmsghdr *h) {
    route_list_t *l = ctx;
    if (h->nlmsg_type != RTM_NEWROUTE || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct rtmsg)))
        return 0;
    const struct rtmsg *rt = NLMSG_DATA(h);
    size_t alen = RTM_PAYLOAD(h);
    if (rt->rtm_family != l->family)
        return 0; /* a kernel without the family answers with all of them */
    fw_route_t e = {.family = rt->rtm_family, .dst_len = rt->rtm_dst_len};
    size_t addr_len = rt->rtm_family == AF_INET ? 4 : rt->rtm_family == AF_INET6 ? 16 : 0;
    if (!addr_len || rt->rtm_dst_len > addr_len * 8)
        return 0;
    const struct rtattr *dst = attr_find(RTM_RTA(rt), alen, RTA_DST);
    if (dst && RTA_PAYLOAD(dst) == addr_len)
        memcpy(e.dst, RTA_DATA(dst), addr_len);
    else if (rt->rtm_dst_len != 0)
        return 0;
    /* A route through a nexthop object (RTA_NH_ID) names no gateway of its own: counted as
     * routed, so such a route never makes a block look taken. */
    e.via_gateway = attr_find(RTM_RTA(rt), alen, RTA_GATEWAY) ||
                    attr_find(RTM_RTA(rt), alen, RTA_VIA) ||
                    attr_find(RTM_RTA(rt), alen, RTA_NH_ID);
    const struct rtattr *oif = attr_find(RTM_RTA(rt), alen, RTA_OIF);
    if (oif && RTA_PAYLOAD(oif) == sizeof(int))
        memcpy(&e.oif, RTA_DATA(oif), sizeof(int));
    /* A multipath route: its next hops, each with its own attributes. */
    const struct rtattr *mp = attr_find(RTM_RTA(rt), alen, RTA_MULTIPATH);
    size_t left = mp ? RTA_PAYLOAD(mp) : 0;
    const struct rtnexthop *nh = mp ? RTA_DATA(mp) : NULL;
    while (nh && left >= sizeof *nh && nh->rtnh_len >= sizeof *nh && nh->rtnh_len <= left) {
        size_t nlen = nh->rtnh_len - sizeof *nh;
        if (attr_find(RTNH_DATA(nh), nlen, RTA_GATEWAY) || attr_find(RTNH_DATA(nh), nlen, RTA_VIA))
            e.via_gateway = true;
        if (!e.oif)
            e.oif = nh->rtnh_ifindex;
        size_t step = RTNH_ALIGN(nh->rtnh_len);
        if (step >= left)
            break;
        left -= step;
        nh = RTNH_NEXT(nh);
    }
    return route_list_add(l, &e);
}

/* An address as the on-link route it stands for: its network (the peer's, on a point-to-point
 * link) and, when it differs from that, its own address as a host route. */
static int addr_list_cb(void *ctx, const struct nlmsghdr *h) {
    route_list_t *l = ctx;
    if (h->nlmsg_type != RTM_NEWADDR || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifaddrmsg)))
        return 0;
    const struct ifaddrmsg *ifa = NLMSG_DATA(h);
    size_t alen = IFA_PAYLOAD(h);
    if (ifa->ifa_family != l->family)
        return 0;
    size_t addr_len = ifa->ifa_family == AF_INET ? 4 : ifa->ifa_family == AF_INET6 ? 16 : 0;
    if (!addr_len || ifa->ifa_prefixlen > addr_len * 8)
        return 0;
    const struct rtattr *peer = attr_find(IFA_RTA(ifa), alen, IFA_ADDRESS);
    const struct rtattr *local = attr_find(IFA_RTA(ifa), alen, IFA_LOCAL);
    if (peer && RTA_PAYLOAD(peer) != addr_len)
        peer = NULL;
    if (local && RTA_PAYLOAD(local) != addr_len)
        local = NULL;
    if (peer && local && memcmp(RTA_DATA(peer), RTA_DATA(local), addr_len) == 0)
        local = NULL; /* not point-to-point: one address */
    int r = 0;
    if (peer) {
        fw_route_t e = {
            .family = ifa->ifa_family, .dst_len = ifa->ifa_prefixlen, .oif = (int)ifa->ifa_index};
        memcpy(e.dst, RTA_DATA(peer), addr_len);
        for (size_t bit = ifa->ifa_prefixlen; bit < addr_len * 8; bit++)
            e.dst[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
        r = route_list_add(l, &e);
    }
    if (r >= 0 && local) {
        fw_route_t e = {.family = ifa->ifa_family,
                        .dst_len = (uint8_t)(addr_len * 8),
                        .oif = (int)ifa->ifa_index};
        memcpy(e.dst, RTA_DATA(local), addr_len);
        r = route_list_add(l, &e);
    }
    return r;
}

static int dump_routes(fw_rtnl_t *nl, uint16_t type, int family, fw_route_filter_t keep,
                       void *keep_ctx, size_t max, fw_route_t **ret, size_t *ret_n) {
    if (!ret || !ret_n || (family != AF_INET && family != AF_INET6))
        return -EINVAL;
    req_t r;
    struct rtmsg rt = {.rtm_family = (unsigned char)family};
    struct ifaddrmsg ifa = {.ifa_family = (unsigned char)family};
    if (type == RTM_GETROUTE)
        req_init(&r, type, NLM_F_DUMP, &rt, sizeof rt);
    else
        req_init(&r, type, NLM_F_DUMP, &ifa, sizeof ifa);
    route_list_t l = {.family = family, .keep = keep, .keep_ctx = keep_ctx, .max = max};
    int rr = talk(nl, &r, type == RTM_GETROUTE ? route_list_cb : addr_list_cb, &l);
    if (rr < 0) {
        free(l.v);
        return rr;
    }
    *ret = l.v;
    *ret_n = l.n;
    return 0;
}

int fw_rtnl_route_list(fw_rtnl_t *nl, int family, fw_route_filter_t keep, void *keep_ctx,
                       size_t max, fw_route_t **ret, size_t *ret_n) {
    return dump_routes(nl, RTM_GETROUTE, family, keep, keep_ctx, max, ret, ret_n);
}

int fw_rtnl_addr_routes(fw_rtnl_t *nl, int family, fw_route_filter_t keep, void *keep_ctx,
                        size_t max, fw_route_t **ret, size_t *ret_n) {
    return dump_routes(nl, RTM_GETADDR, family, keep, keep_ctx, max, ret, ret_n);
}
