#!/bin/sh
# Builds the worker's root filesystem: the directory every runc container of one gateway uses
# as its (read-only) root. It is generated from the host, not downloaded: a tmpfs of its own
# holding a minimal generated /etc, the merged-usr symlinks and empty mount points, with the
# host's /usr bind-mounted read-only (Debian's python3, ipykernel, numpy, pandas, matplotlib,
# scipy and fonts all live there) and /usr/local hidden under an empty read-only tmpfs (it is
# where host-local tools, credentials files and .pth hooks end up).
#
# Why a tmpfs of its own: the root field of a bind mount in /proc/self/mountinfo is the path
# inside the source filesystem, so a rootfs that is a plain directory under the gateway state
# dir would show that path to the user's code. On its own tmpfs it shows "/".
#
# Why a script and not C: it runs once per gateway start (as part of the start command), never
# per worker; each step is one mount(8)/install(1) call that is easier to audit in shell.
#
# Idempotent and fast: when the rootfs is already mounted and its stamp matches what this
# invocation would build, it exits at once. Otherwise it (re)populates and remounts read-only.
#
# Usage: build-rootfs.sh [--init PATH] [--uid-base N] [--uid-count N] ROOTFS
#        build-rootfs.sh --remove ROOTFS
#   --init       the kbox-kernel-host binary, installed as /kbox/kernel-host (mode 0555) so it
#                is part of the image and no bind mount reveals its host path
#   --uid-base   first worker uid (default 100000); --uid-count how many (default 1024): each
#                gets a passwd/group entry "sandbox" with home /sandbox
set -eu
umask 022
export LC_ALL=C
PATH=/usr/sbin:/usr/bin:/sbin:/bin

VERSION=2
init=
uid_base=100000
uid_count=1024
remove=0

die() {
    echo "build-rootfs: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
    --init) init=$2; shift 2 ;;
    --uid-base) uid_base=$2; shift 2 ;;
    --uid-count) uid_count=$2; shift 2 ;;
    --remove) remove=1; shift ;;
    --) shift; break ;;
    -*) die "unknown option $1" ;;
    *) break ;;
    esac
done
[ $# -eq 1 ] || die "usage: build-rootfs.sh [--init PATH] [--uid-base N] [--uid-count N] [--remove] ROOTFS"
[ "$(id -u)" -eq 0 ] || die "must run as root"
case "$1" in
/*) ;;
*) die "ROOTFS must be an absolute path" ;;
esac
root=${1%/}
[ -n "$root" ] && [ "$root" != / ] || die "refusing to use / as ROOTFS"
case "$uid_base$uid_count" in
*[!0-9]*) die "uid base and count must be numbers" ;;
esac
[ "$uid_base" -ge 1000 ] && [ "$uid_count" -ge 1 ] && [ "$uid_count" -le 65536 ] ||
    die "uid base must be >= 1000 and count in 1..65536"

if [ "$remove" -eq 1 ]; then
    if mountpoint -q "$root"; then
        umount -R "$root"
    fi
    [ -d "$root" ] && rmdir "$root"
    exit 0
fi

init_sum=none
if [ -n "$init" ]; then
    [ -f "$init" ] && [ -x "$init" ] || die "--init $init is not an executable file"
    init_sum=$(sha256sum "$init" | cut -d' ' -f1)
fi
stamp="kbox-rootfs v$VERSION uid_base=$uid_base uid_count=$uid_count init=$init_sum"

if mountpoint -q "$root" && mountpoint -q "$root/usr" && [ -f "$root/.kbox-stamp" ] &&
    [ "$(cat "$root/.kbox-stamp")" = "$stamp" ]; then
    exit 0
fi

# Start from a clean slate: whatever was mounted there before (an older build, a crashed
# gateway's half-built tree) goes away with its submounts.
mkdir -p "$root"
if mountpoint -q "$root"; then
    umount -R "$root"
fi
chmod 0755 "$root"
mount -t tmpfs -o mode=0755,size=16m,nr_inodes=4096,nosuid,nodev kbox-rootfs "$root"
# Our mounts are ours: nothing propagates into or out of the rootfs tree.
mount --make-private "$root"

# Merged /usr: recreate the host's top-level symlinks into usr (bin, lib, lib64, sbin, ...).
for l in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$l" ]; then
        ln -s "$(readlink "/$l")" "$root/$l"
    fi
done
for d in etc proc dev sys tmp sandbox run run/kbox usr kbox var; do
    mkdir -p "$root/$d"
done
chmod 1777 "$root/tmp"
ln -s ../tmp "$root/var/tmp"

# /etc: generated, never copied wholesale (the host's /etc holds shadow, ssh keys, tokens).
e=$root/etc
{
    echo "root:x:0:0:root:/nonexistent:/usr/sbin/nologin"
    echo "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"
    awk -v b="$uid_base" -v n="$uid_count" \
        'BEGIN { for (i = 0; i < n; i++) printf "sandbox:x:%d:%d:sandbox:/sandbox:/bin/sh\n", b + i, b + i }'
} >"$e/passwd"
{
    echo "root:x:0:"
    echo "nogroup:x:65534:"
    awk -v b="$uid_base" -v n="$uid_count" \
        'BEGIN { for (i = 0; i < n; i++) printf "sandbox:x:%d:\n", b + i }'
} >"$e/group"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$e/hosts"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\nprotocols: files\nservices: files\n' >"$e/nsswitch.conf"
: >"$e/resolv.conf"
echo kbox >"$e/hostname"
ln -s /usr/share/zoneinfo/Etc/UTC "$e/localtime"
echo Etc/UTC >"$e/timezone"
if [ -e /usr/lib/os-release ]; then
    ln -s ../usr/lib/os-release "$e/os-release"
fi
# Package configuration that Python, matplotlib and the dynamic linker read; none of it is
# secret. ld.so.cache lets the loader find multiarch libraries without scanning; the
# alternatives symlinks are how Debian picks libblas/liblapack (numpy needs them).
for f in ld.so.cache matplotlibrc mime.types protocols services; do
    if [ -f "/etc/$f" ]; then
        cp "/etc/$f" "$e/$f"
    fi
done
for d in alternatives fonts python3 python3.11; do
    if [ -d "/etc/$d" ]; then
        cp -a "/etc/$d" "$e/$d"
    fi
done
for d in /etc/python3.*; do
    if [ -d "$d" ] && [ ! -e "$e/${d#/etc/}" ]; then
        cp -a "$d" "$e/${d#/etc/}"
    fi
done

if [ -n "$init" ]; then
    install -m 0555 -o 0 -g 0 "$init" "$root/kbox/kernel-host"
fi

# The host's /usr, read-only and without setuid/device semantics; /usr/local hidden.
mount --bind /usr "$root/usr"
mount -o remount,bind,ro,nosuid,nodev "$root/usr"
mount -t tmpfs -o ro,mode=0755,size=4k,nr_inodes=16,nosuid,nodev,noexec kbox-empty "$root/usr/local"

echo "$stamp" >"$root/.kbox-stamp"
chmod 0444 "$root/.kbox-stamp"
mount -o remount,ro "$root"
