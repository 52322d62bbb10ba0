"""The TCP transport (--worker-transport tcp): every worker gets a veth pair to the gateway, an
address pair from --worker-net4/--worker-net6, and a firewall that lets only the gateway's end
reach the kernel's ports. Checked end to end through the real gateway: kernels answer and keep
state over TCP, nothing else gets in or out (IPv4 and IPv6, from inside the sandbox and from the
host), the rules read back in the namespace are the rendered ones, a kill -9 of the gateway
loses no session, and SIGTERM leaves no veth, namespace or anything else behind.

Traffic goes only to the veths and namespaces the gateway under test makes (blocks picked at
random inside 10.254.0.0/16 and fd6b:6278::/32, checked against the host's routes first)."""
import ipaddress
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile

import pytest

from conftest import LAUNCHER, uid
from test_crash import kill9_keeps_session
from test_security import run, run_json

pytestmark = pytest.mark.skipif(LAUNCHER != "runc", reason="needs the sandboxed launcher")

HERE = os.path.dirname(os.path.abspath(__file__))
FIREWALL_SH = os.path.join(HERE, "..", "..", "firewall", "kbox-firewall.sh")
KPORT = 50000  # the kernel's first port in every worker (firewall.h defaults: 50000-50004)
UIDS = 64      # a /24 and a /120 both hold 64 links


def host_networks(family):
    """The networks of one family ("-4" or "-6") the host's routes (every table) and
    addresses (on any link, up or down: the gateway avoids both) take."""
    out = []
    routes = subprocess.run(["ip", family, "route", "show", "table", "all"],
                            capture_output=True, text=True).stdout
    for line in routes.splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "anycast", "multicast", "unreachable",
                                  "blackhole", "prohibit"):
            words = words[1:]
        if words and words[0] != "default":
            out.append(words[0])
    inet = "inet" if family == "-4" else "inet6"
    addrs = subprocess.run(["ip", "-o", family, "addr", "show"], capture_output=True,
                           text=True).stdout
    for line in addrs.splitlines():
        words = line.split()
        if inet in words[:-1]:
            out.append(words[words.index(inet) + 1])
    nets = []
    for dst in out:
        try:
            nets.append(ipaddress.ip_network(dst, strict=False))
        except ValueError:
            pass
    return nets


def pick_blocks():
    """A /24 and a /120 that no route or address of the host's touches."""
    taken4, taken6 = host_networks("-4"), host_networks("-6")
    for _ in range(50):
        net4 = ipaddress.ip_network(f"10.254.{random.randrange(256)}.0/24")
        net6 = ipaddress.ip_network(f"fd6b:6278:{random.randrange(65536):x}::/120")
        if not any(n.overlaps(net4) for n in taken4) and \
                not any(n.overlaps(net6) for n in taken6):
            return str(net4), str(net6)
    raise AssertionError("no free 10.254.x.0/24 and fd6b:6278:x::/120 blocks on this host")


def tcp_args(net4, net6):
    return ["--worker-transport", "tcp", "--worker-net4", net4, "--worker-net6", net6,
            "--uid-count", str(UIDS)]


def try_connect(addr, port, family=socket.AF_INET, source=None, timeout=1.0):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if source:
            s.bind((source, 0))
        s.connect((addr, port))
        return "connected"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()


# What the kernel learns about its own link, from inside: interfaces, addresses, and what it
# can reach. `extra` runs first (e.g. to open listeners).
PROBE = """
import socket, fcntl, struct, ipaddress, json
def v4(ifname):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', ifname.encode()))[20:24])
def v6(ifname):
    for line in open('/proc/net/if_inet6'):
        f = line.split()
        if f[5] == ifname and f[3] == '00':
            return str(ipaddress.IPv6Address(bytes.fromhex(f[0])))
def tryconn(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(1.5)
    try:
        s.connect(addr); return 'connected'
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
out = {'ifaces': sorted(n for _, n in socket.if_nameindex()), 'w4': v4('eth0'), 'w6': v6('eth0')}
gw4 = str(ipaddress.IPv4Address(out['w4']) - 1)
gw6 = str(ipaddress.IPv6Address(out['w6']) - 1)
out['gw4_http'] = tryconn(socket.AF_INET, (gw4, @PORT@))
out['gw6_http'] = tryconn(socket.AF_INET6, (gw6, @PORT@))
out['gw4_ssh'] = tryconn(socket.AF_INET, (gw4, 22))
out['neighbour'] = tryconn(socket.AF_INET, (@NEIGHBOUR@, @KPORT@))
out['loopback_http'] = tryconn(socket.AF_INET, ('127.0.0.1', @PORT@))
out['meta'] = tryconn(socket.AF_INET, ('169.254.169.254', 80))
"""


def probe(g, user, neighbour="10.254.255.254"):
    code = (PROBE.replace("@PORT@", str(g.port)).replace("@NEIGHBOUR@", repr(neighbour))
            .replace("@KPORT@", str(KPORT)))
    return run_json(g, code, user)


def host_ifname_of(addr):
    """The host end of the veth whose address is addr (the gateway's end of one worker)."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        f = line.split()
        if f[3].split("/")[0] == addr:
            return f[1].split("@")[0]
    raise AssertionError(f"no host interface has {addr}:\n{out}")


def netns_of(host_if):
    # host end "kbox-h" + 9 id characters; namespace "kbox-w" + the whole id
    stem = "kbox-w" + host_if[len("kbox-h"):]
    names = [n for n in os.listdir("/run/netns") if n.startswith(stem)]
    assert len(names) == 1, names
    return names[0]


def normalized(rules):
    keep = []
    for line in rules.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep.append(re.sub(r" \[\d+:\d+\]$", "", line))
    return keep


@pytest.fixture(scope="module")
def blocks():
    return pick_blocks()


@pytest.fixture(scope="module")
def tg(blocks):
    from conftest import Gateway
    g = Gateway(["--min-idle-workers", "2"] + tcp_args(*blocks)).start()
    yield g
    g.stop()


def test_status_names_the_transport(tg):
    assert tg.status()["worker_transport"] == "tcp"


def test_kernel_answers_and_keeps_state_over_tcp(tg):
    u = uid()
    r = tg.execute(u, "x = 41")
    assert r.status_code == 200 and r.json()["error"] is None, r.text
    r = tg.execute(u, "x + 1")
    assert r.status_code == 200, r.text
    assert r.json()["result_text"].strip() == "42"
    # An interrupt reaches the kernel (a timeout interrupts it; the session keeps its state).
    r = tg.execute(u, "import time\nwhile True: time.sleep(0.05)", timeout_ms=1000)
    body = r.json()
    assert body["timed_out"] is True, r.text
    assert body["session_reset"] is False, r.text
    r = tg.execute(u, "x")
    assert r.json()["result_text"].strip() == "41", r.text
    tg.release(u)


def test_only_the_gateway_gets_in_and_nothing_gets_out(tg, blocks):
    net4, net6 = (ipaddress.ip_network(b) for b in blocks)
    a, b = uid(), uid()
    # b's worker is a neighbour on the same gateway: a must not reach it.
    other = probe(tg, b)
    # Listeners the user opens (IPv4 and dual-stack IPv6) on a port outside the kernel's.
    run(tg, """
        import socket
        srv4 = socket.socket(); srv4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv4.bind(('0.0.0.0', 8080)); srv4.listen(8)
        srv6 = socket.socket(socket.AF_INET6); srv6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        srv6.bind(('::', 8080)); srv6.listen(8)
    """, a)
    out = probe(tg, a, neighbour=other["w4"])

    assert out["ifaces"] == ["eth0", "lo"]
    w4, w6 = ipaddress.ip_address(out["w4"]), ipaddress.ip_address(out["w6"])
    assert w4 in net4 and w6 in net6, out
    # From inside: not the gateway's HTTP port (either family), nor any other port of the
    # host, nor a neighbour's kernel, nor anything off-link. Its own loopback is its own (the
    # gateway does not listen there).
    for k in ("gw4_http", "gw6_http", "gw4_ssh", "neighbour", "meta"):
        assert out[k] != "connected", (k, out)
    assert out["loopback_http"] == "ConnectionRefusedError", out

    # From the host: the gateway's end reaches the kernel's ports and nothing else.
    gw4, gw6 = str(w4 - 1), str(w6 - 1)
    assert try_connect(str(w4), KPORT) == "connected"
    assert try_connect(str(w4), KPORT + 4) == "connected"
    assert try_connect(str(w4), 8080) == "TimeoutError"
    assert try_connect(str(w6), 8080, socket.AF_INET6) == "TimeoutError"
    # ... and only from the gateway's own address on that link: the neighbour's host end is
    # an address of this host too, and the worker's firewall drops it.
    other_gw4 = str(ipaddress.ip_address(other["w4"]) - 1)
    assert try_connect(str(w4), KPORT, source=other_gw4) == "TimeoutError"
    assert try_connect(str(w4), KPORT, source=gw4) == "connected"

    # The rules read back inside the worker's namespace are the ones rendered for its link.
    ns = netns_of(host_ifname_of(gw4))
    for fam, save, extra in (("4", "iptables-save", ["--gw4", gw4, "--worker4", str(w4)]),
                             ("6", "ip6tables-save", ["--gw4", gw4, "--worker4", str(w4),
                                                      "--gw6", gw6, "--worker6", str(w6)])):
        want = subprocess.run(["sh", FIREWALL_SH, "render", "tcp", fam] + extra, check=True,
                              capture_output=True, text=True).stdout
        got = subprocess.run(["ip", "netns", "exec", ns, save], check=True,
                             capture_output=True, text=True).stdout
        assert normalized(got) == normalized(want), (fam, got, want)
        assert ":INPUT DROP" in got and ":OUTPUT DROP" in got and ":FORWARD DROP" in got
    tg.release(a)
    tg.release(b)


def test_kill9_reattach_and_sigterm_leave_nothing(make_gateway):
    # A block of its own: the module's gateway gives its links from the same slots.
    net4, net6 = pick_blocks()
    args = ["--min-idle-workers", "1"] + tcp_args(net4, net6)
    state = tempfile.mkdtemp(prefix="kbox-tcp-")
    try:
        # Reattached over its link; then SIGTERM leaves nothing (veths included) ...
        kill9_keeps_session(make_gateway, args, state)
        # ... not even an address of the block on the host.
        addrs = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
        block4, block6 = ipaddress.ip_network(net4), ipaddress.ip_network(net6)
        for line in addrs.splitlines():
            a = ipaddress.ip_address(line.split()[3].split("/")[0])
            assert a not in block4 and a not in block6, line
    finally:
        shutil.rmtree(state, ignore_errors=True)


LINK_PROBE = """
import socket, fcntl, struct, ipaddress
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
w4 = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, struct.pack('256s', b'eth0'))[20:24])
w6 = [str(ipaddress.IPv6Address(bytes.fromhex(l.split()[0]))) for l in open('/proc/net/if_inet6')
      if l.split()[5] == 'eth0' and l.split()[3] == '00'][0]
out = {'w4': w4, 'w6': w6}
"""


def test_gateways_given_one_block_share_no_address(make_gateway):
    """Two gateways on one host given the same blocks: the second takes the next free span of
    each (links are claimed host-wide), so both reach their kernels and no address is on two
    links; a third that needs the whole block finds part of it held and refuses to start,
    naming the gateway in its way."""
    net4, net6 = pick_blocks()
    blk4, blk6 = ipaddress.ip_network(net4), ipaddress.ip_network(net6)

    def args(links):
        return ["--min-idle-workers", "1", "--worker-transport", "tcp", "--worker-net4", net4,
                "--worker-net6", net6, "--uid-count", str(links)]

    a = make_gateway(args(32)).start()
    b = make_gateway(args(32)).start()
    halves4 = list(blk4.subnets(new_prefix=25))  # 32 links: 128 addresses of the /24
    halves6 = list(blk6.subnets(new_prefix=121))
    for g, i in ((a, 0), (b, 1)):
        u = uid()
        out = run_json(g, LINK_PROBE, u)
        w4, w6 = ipaddress.ip_address(out["w4"]), ipaddress.ip_address(out["w6"])
        assert w4 in halves4[i] and w6 in halves6[i], (i, out)
        r = g.execute(u, "x = 6 * 7\nx")
        assert r.status_code == 200 and r.json()["result_text"].strip() == "42", r.text
        assert try_connect(str(w4), KPORT) == "connected"
        g.release(u)

    log = make_gateway(args(64)).run_refused()
    assert "no free worker link addresses: another running gateway holds them" in log, log
    assert f'"other_pid":{a.proc.pid}' in log, log
    assert f'"other_first":"{blk4[0]}"' in log, log
    assert a.stop() == 0 and b.stop() == 0


def test_links_avoid_addresses_on_links_that_are_down(make_gateway):
    """An address on a link that is down has no route to its network yet (only the local
    route to itself); the network is the host's all the same once the link comes up, so the
    gateway leaves all of it alone, not only the span around the address."""
    net4, net6 = pick_blocks()
    blk4 = ipaddress.ip_network(net4)
    lower, upper = blk4.subnets(new_prefix=25)
    blk6 = ipaddress.ip_network(net6)
    dev = f"kbt{random.randrange(16**6):06x}"
    subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", dev + "p"],
                   check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{lower[1]}/{lower.prefixlen}", "dev", dev], check=True)
        routes = subprocess.run(["ip", "-4", "route", "show", "table", "all", "dev", dev],
                                capture_output=True, text=True, check=True).stdout
        assert str(lower) not in routes, routes  # down: no route to the network
        # Two uids: the links' span (a few addresses) is far smaller than the link's network.
        g = make_gateway(["--min-idle-workers", "1", "--worker-transport", "tcp",
                          "--worker-net4", net4, "--worker-net6", net6, "--uid-count", "2"]).start()
        u = uid()
        out = run_json(g, LINK_PROBE, u)
        assert ipaddress.ip_address(out["w4"]) in upper, out
        assert ipaddress.ip_address(out["w6"]) in blk6, out
        r = g.execute(u, "x = 6 * 7\nx")
        assert r.status_code == 200 and r.json()["result_text"].strip() == "42", r.text
        assert g.stop() == 0
    finally:
        subprocess.run(["ip", "link", "del", dev], check=False)


def test_links_avoid_the_hosts_own_networks(make_gateway):
    """Addresses the host already uses inside the blocks (here a link's network on the
    first half of the /24) are left alone: the gateway takes the free half. A network over the
    whole block leaves no room, and the gateway refuses to start, naming the link."""
    net4, net6 = pick_blocks()
    blk4, blk6 = ipaddress.ip_network(net4), ipaddress.ip_network(net6)
    lower, upper = blk4.subnets(new_prefix=25)
    # A veth pair with one end up stands for the host's network (no dummy module here); its
    # peer stays down, so nothing can flow.
    dev = f"kbt{random.randrange(16**6):06x}"
    subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", dev + "p"],
                   check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{lower[1]}/{lower.prefixlen}", "dev", dev], check=True)
        subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        args = ["--min-idle-workers", "1", "--worker-transport", "tcp", "--worker-net4", net4,
                "--worker-net6", net6, "--uid-count", "32"]
        g = make_gateway(args).start()
        u = uid()
        out = run_json(g, LINK_PROBE, u)
        assert ipaddress.ip_address(out["w4"]) in upper, out
        r = g.execute(u, "x = 6 * 7\nx")
        assert r.status_code == 200 and r.json()["result_text"].strip() == "42", r.text
        assert g.stop() == 0

        subprocess.run(["ip", "addr", "add", f"{blk4[1]}/{blk4.prefixlen - 1}", "dev", dev],
                       check=True)
        log = make_gateway(args).run_refused()
        assert "no free worker link addresses: the host's own routes take them" in log, log
        assert f'"other_dev":"{dev}"' in log, log
    finally:
        subprocess.run(["ip", "link", "del", dev], check=False)
