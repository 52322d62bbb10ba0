#!/bin/sh
# kbox-firewall: the operator's view of kbox worker network namespaces. A thin wrapper over the
# same rule files the gateway embeds (rules/), `ip netns` and iptables-restore/-save; the
# gateway itself never runs this (it uses kbox_firewall directly). Rendering here must give
# byte-for-byte the text the library gives: the unit tests compare the two.
#
#   kbox-firewall.sh render ipc|tcp 4|6 [OPTIONS]    print the rules for one family
#   kbox-firewall.sh apply NETNS ipc|tcp [OPTIONS]   render and load both families into NETNS
#   kbox-firewall.sh show [NETNS]                    list ours, or one namespace's links and rules
#   kbox-firewall.sh sweep [--prefix wHEX] [--dry-run]
#                                                    remove pinned kbox namespaces and host veths
# OPTIONS (tcp): --ifname IF (default eth0) --ports MIN[:MAX] (default 50000:50004)
#                --gw4 A --worker4 A [--gw6 A --worker6 A]  (no IPv6 pair: IPv6 is lo only)
# Environment: KBOX_FW_BACKEND=nft|legacy (default nft), KBOX_FW_RULES_DIR (rule files).
# Sweeping removes every matching namespace, in use or not: only with the gateway stopped.
set -eu

NETNS_DIR=/run/netns
backend=${KBOX_FW_BACKEND:-nft}
case $backend in nft | legacy) ;; *) echo "KBOX_FW_BACKEND must be nft or legacy" >&2; exit 2 ;; esac

die() {
    echo "kbox-firewall: $*" >&2
    exit 2
}

rules_dir() {
    here=$(dirname "$0")
    for d in ${KBOX_FW_RULES_DIR:-} "$here/rules" "$here/../share/kbox/firewall/rules" \
        /usr/local/share/kbox/firewall/rules /usr/share/kbox/firewall/rules; do
        [ -f "$d/ipc.v4.rules" ] && { echo "$d"; return; }
    done
    die "rule files not found (set KBOX_FW_RULES_DIR)"
}

# Values end up in rules loaded as root: accept only what the library accepts.
check() { # what value extended-regex
    printf '%s\n' "$2" | grep -Eqx "$3" || die "bad $1: '$2'"
}

ifname=eth0 ports=50000:50004 gw4='' worker4='' gw6='' worker6=''
parse_opts() {
    while [ $# -gt 0 ]; do
        [ $# -ge 2 ] || die "option $1 needs a value"
        case $1 in
        --ifname) ifname=$2 ;;
        --ports) ports=$2 ;;
        --gw4) gw4=$2 ;;
        --worker4) worker4=$2 ;;
        --gw6) gw6=$2 ;;
        --worker6) worker6=$2 ;;
        *) die "unknown option $1" ;;
        esac
        shift 2
    done
    check ifname "$ifname" '[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}'
    check ports "$ports" '[0-9]{1,5}(:[0-9]{1,5})?'
    min=${ports%%:*} max=${ports#*:}
    if [ "$min" -lt 1 ] || [ "$min" -gt "$max" ] || [ "$max" -gt 65535 ]; then
        die "bad ports: $ports"
    fi
    [ "$min" = "$max" ] && ports=$min || ports=$min:$max
}

render() { # mode family
    dir=$(rules_dir)
    case $1.$2 in
    ipc.4 | ipc.6) cat "$dir/ipc.v$2.rules" ;;
    tcp.4 | tcp.6)
        if [ "$2" = 4 ]; then gw=$gw4 worker=$worker4 re='[0-9]{1,3}(\.[0-9]{1,3}){3}'
        else gw=$gw6 worker=$worker6 re='[0-9a-f:]*:[0-9a-f:]*'; fi
        if [ "$2" = 6 ] && [ -z "$gw6$worker6" ]; then
            cat "$dir/ipc.v6.rules"
            return
        fi
        check "gateway address" "$gw" "$re"
        check "worker address" "$worker" "$re"
        [ "$gw" != "$worker" ] || die "gateway and worker address are the same"
        sed -e "s/@IFNAME@/$ifname/g" -e "s/@GW@/$gw/g" -e "s/@WORKER@/$worker/g" \
            -e "s/@PORTS@/$ports/g" "$dir/tcp.v$2.rules.in"
        ;;
    *) die "render ipc|tcp 4|6" ;;
    esac
}

netns_check() {
    check "namespace" "$1" '[A-Za-z0-9_][A-Za-z0-9_.-]*'
    [ -e "$NETNS_DIR/$1" ] || die "no namespace $1 in $NETNS_DIR"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
render)
    [ $# -ge 2 ] || die "render ipc|tcp 4|6 [options]"
    mode=$1 family=$2
    shift 2
    parse_opts "$@"
    render "$mode" "$family"
    ;;
apply)
    [ $# -ge 2 ] || die "apply NETNS ipc|tcp [options]"
    ns=$1 mode=$2
    shift 2
    netns_check "$ns"
    parse_opts "$@"
    render "$mode" 4 | ip netns exec "$ns" "/usr/sbin/iptables-$backend-restore" -w 5
    render "$mode" 6 | ip netns exec "$ns" "/usr/sbin/ip6tables-$backend-restore" -w 5
    ;;
show)
    if [ $# -eq 0 ]; then
        echo "# namespaces ($NETNS_DIR/kbox-*)"
        for path in "$NETNS_DIR"/kbox-*; do
            [ -e "$path" ] && echo "${path##*/}"
        done
        echo "# host veths (kbox-h*)"
        ip -o link show type veth | sed -n 's/^[0-9]*: \(kbox-h[^@:]*\).*/\1/p'
    else
        netns_check "$1"
        echo "# links and addresses"
        ip -n "$1" -br addr
        echo "# IPv4"
        ip netns exec "$1" "/usr/sbin/iptables-$backend-save"
        echo "# IPv6"
        ip netns exec "$1" "/usr/sbin/ip6tables-$backend-save"
    fi
    ;;
sweep)
    prefix=w dry=
    while [ $# -gt 0 ]; do
        case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; prefix=$2; shift 2 ;;
        --dry-run) dry=1; shift ;;
        *) die "unknown option $1" ;;
        esac
    done
    check prefix "$prefix" 'w[0-9a-f]{0,32}'
    run() { echo "$*"; [ -n "$dry" ] || "$@"; }
    # Links first: a namespace takes its veth with it only asynchronously.
    short=$(printf '%s' "${prefix#w}" | cut -c1-9)
    for link in $(ip -o link show type veth | sed -n 's/^[0-9]*: \(kbox-h[0-9a-f]\{9\}\)[@:].*/\1/p'); do
        case $link in "kbox-h$short"*) run ip link delete "$link" ;; esac
    done
    for path in "$NETNS_DIR"/kbox-"$prefix"*; do
        [ -e "$path" ] || continue
        name=${path##*/}
        printf '%s\n' "$name" | grep -Eqx 'kbox-w[0-9a-f]{9,32}' || continue
        run umount -l "$path" 2>/dev/null || true
        run rm -f "$path"
    done
    ;;
*)
    sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
