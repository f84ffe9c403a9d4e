#!/usr/bin/env bash
# bench/pi_rootfs.sh - the device install on a fresh arm64 Debian root file system, as a clinic
# technician runs it on a new Raspberry Pi OS Lite card, under qemu-user emulation.
#
#   sudo bench/pi_rootfs.sh [options] [SUITE...]     SUITE: trixie, bookworm (default: both)
#
# For each suite: builds the root file system with debootstrap (cached), copies it fresh,
# copies this working tree in, runs `./install.sh` (device mode, as on the Pi) in a chroot,
# runs it again (must change nothing), then `appliance selftest --simulated` and a short
# `appliance simulate` as the service user. Prints the time of every step, the size of the
# venv, the model and the Debian packages the install added. Too slow for CI: under
# emulation one suite takes 10-30 minutes on a two-core machine (the first run longer).
#
# Needs root, debootstrap and qemu-user-static (installed from Debian when missing) and a
# route to Debian's archive and PyPI. Caches (base systems, .deb and pip downloads) live in
# --cache DIR (default /var/cache/appliance-rootfs), never in the repository.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE=/var/cache/appliance-rootfs
ARCH=arm64
MIRROR=http://deb.debian.org/debian
COLD=0
INSTALL_ARGS=()
SUITES=()

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; cat <<'EOF'
Options:
  --cache DIR        caches and the root file systems (default /var/cache/appliance-rootfs)
  --mirror URL       Debian mirror for debootstrap (default http://deb.debian.org/debian)
  --cold             do not reuse downloaded .deb files and wheels (the base system stays cached)
  --rebuild          build the base system again
  --install-arg ARG  pass ARG to install.sh (repeatable), e.g. --install-arg --model
                     --install-arg /path/vosk-model-small-nl-0.22.zip (copied in)
  -h, --help         this text
EOF
}

REBUILD=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cache) CACHE="$2"; shift ;;
        --mirror) MIRROR="$2"; shift ;;
        --cold) COLD=1 ;;
        --rebuild) REBUILD=1 ;;
        --install-arg) INSTALL_ARGS+=("$2"); shift ;;
        -h|--help) usage; exit 0 ;;
        trixie|bookworm) SUITES+=("$1") ;;
        *) echo "pi_rootfs.sh: unknown option or suite '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ ${#SUITES[@]} -gt 0 ]] || SUITES=(trixie bookworm)
[[ $EUID -eq 0 ]] || { echo "pi_rootfs.sh: run as root (debootstrap, chroot, mounts)" >&2; exit 1; }

say() { echo "pi_rootfs: $*"; }
declare -a TIMES=()
# timed NAME CMD...: run CMD, record its wall time; a failure stops this suite.
timed() {
    local name="$1" start end rc=0
    shift
    start=$(date +%s.%N)
    "$@" || rc=$?
    end=$(date +%s.%N)
    TIMES+=("$(printf '%-28s %8.1f s%s' "$name" "$(echo "$end - $start" | bc)" \
        "$([[ $rc -eq 0 ]] || echo "  (exit $rc)")")")
    return "$rc"
}

# --- the host: tools and qemu-user for arm64 binaries ------------------------------------------
ensure_host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [[ -x /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
    command -v bc >/dev/null || missing+=(bc)
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "installing ${missing[*]} from Debian"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    local binfmt=/proc/sys/fs/binfmt_misc
    if [[ ! -e $binfmt/register ]]; then
        mount -t binfmt_misc binfmt_misc "$binfmt"
    fi
    if [[ ! -e $binfmt/qemu-aarch64 ]]; then
        # Without a running systemd nothing has registered the interpreter: do it from the
        # package's binfmt.d line (its F flag lets chroots use it without a copy inside).
        local conf found=0
        for conf in /usr/lib/binfmt.d/qemu-aarch64*.conf; do
            [[ -f $conf ]] || continue
            cat "$conf" >"$binfmt/register"
            found=1
            break
        done
        [[ $found -eq 1 ]] || { echo "pi_rootfs.sh: no binfmt.d entry for qemu-aarch64" >&2; exit 1; }
    fi
    grep -q '^flags:.*F' "$binfmt/qemu-aarch64" \
        || { echo "pi_rootfs.sh: qemu-aarch64 is registered without the F flag; chroots cannot use it" >&2; exit 1; }
}

# --- the base system, cached ----------------------------------------------------------------------
# Debian minbase with what Raspberry Pi OS Lite has by default and the install relies on
# (python3, systemd as init, sudo). Raspberry Pi OS adds the Pi archive, raspi-config and
# the gpio/spi groups, which this cannot have.
build_base() {
    local suite="$1"
    local base="$CACHE/$suite-$ARCH.base"
    if [[ -d $base && $REBUILD -eq 0 ]]; then
        say "$suite: base system cached in $base"
        return 0
    fi
    rm -rf "$base" "$base.tmp"
    say "$suite: debootstrap $ARCH from $MIRROR (log: $CACHE/logs/debootstrap-$suite.log)"
    debootstrap --arch="$ARCH" --variant=minbase \
        --include=systemd-sysv,sudo,python3,ca-certificates,procps \
        "$suite" "$base.tmp" "$MIRROR" >"$CACHE/logs/debootstrap-$suite.log" 2>&1 \
        || { tail -n 20 "$CACHE/logs/debootstrap-$suite.log" >&2; return 1; }
    chroot "$base.tmp" apt-get clean
    mv "$base.tmp" "$base"
}

MOUNTS=()
umount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    MOUNTS=()
}
trap umount_all EXIT

bind() {  # bind SRC DEST
    mkdir -p "$2"
    mount --bind "$1" "$2"
    MOUNTS+=("$2")
}

# A fresh copy of the base with /proc, /sys, /dev, DNS and the download caches.
fresh_root() {
    local suite="$1" root="$2"
    rm -rf "$root"
    cp -a "$CACHE/$suite-$ARCH.base" "$root"
    mount -t proc proc "$root/proc" && MOUNTS+=("$root/proc")
    mount -t sysfs sys "$root/sys" && MOUNTS+=("$root/sys")
    bind /dev "$root/dev"
    bind /dev/pts "$root/dev/pts"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    # The chroot reaches the network as this machine does: the same name servers, and the
    # certificate authorities this machine trusts (a proxy in front of PyPI may need one the
    # fresh system lacks). Kept under /usr/local/share so a regenerated bundle keeps them.
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        mkdir -p "$root/usr/local/share/ca-certificates"
        cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/bench-host.crt"
        cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    fi
    # Daemons that packages start on install would run on the host's kernel: not in a chroot.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    if [[ $COLD -eq 0 ]]; then
        mkdir -p "$CACHE/apt-$suite-$ARCH" "$CACHE/pip-$suite-$ARCH"
        bind "$CACHE/apt-$suite-$ARCH" "$root/var/cache/apt/archives"
        bind "$CACHE/pip-$suite-$ARCH" "$root/root/.cache/pip"
    fi
}

copy_project() {
    local root="$1" dest="$1/root/appliance" arg
    rm -rf "$dest"
    mkdir -p "$dest"
    # What git would commit (tracked and new files), not .venv, caches or build output.
    (cd "$REPO_DIR" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) \
        | tar -C "$dest" -xf -
    for arg in "${INSTALL_ARGS[@]}"; do
        if [[ -f $arg ]]; then
            cp "$arg" "$root/root/"
        fi
    done
}

# in_root ROOT CMD...: run CMD in the chroot with a clean environment (no host pip settings).
in_root() {
    local root="$1"
    shift
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}

installed_kb() {  # the Debian packages' Installed-Size, summed
    # shellcheck disable=SC2016  # a dpkg-query format, not a shell expansion
    in_root "$1" dpkg-query -W -f '${Installed-Size}\n' | awk '{ s += $1 } END { print s }'
}

run_install() {
    local root="$1" log="$2" args=() arg
    for arg in "${INSTALL_ARGS[@]}"; do
        if [[ -f $arg ]]; then args+=("/root/$(basename "$arg")"); else args+=("$arg"); fi
    done
    in_root "$root" bash -c 'cd /root/appliance && ./install.sh "$@"' install.sh "${args[@]}" 2>&1 \
        | tee "$log"
    return "${PIPESTATUS[0]}"
}

as_appliance() {  # as the service user, as the unit runs it
    local root="$1"
    shift
    in_root "$root" runuser -u appliance -- env HOME=/var/lib/appliance \
        /opt/appliance/venv/bin/appliance "$@" --config /etc/appliance/appliance.toml
}

selftest_step() {  # ROOT LOG
    as_appliance "$1" selftest --simulated --quiet --state-dir /var/lib/appliance 2>&1 | tee "$2"
    return "${PIPESTATUS[0]}"
}

simulate_step() {  # ROOT LOG: one short session (the post-operative programme, with speech)
    as_appliance "$1" simulate --programme postop --seed 1 --quiet --state-dir /tmp/sim-state \
        --out /tmp/sim-out >"$2" 2>&1
    local rc=$?
    grep -v '^WARNING' "$2" | tail -n 3
    return "$rc"
}

run_suite() {
    local suite="$1" logs="$CACHE/logs" kb_before kb_after rc=0
    local root="$CACHE/$suite-$ARCH.run"
    TIMES=()
    echo
    say "===== $suite ($ARCH) ====="
    timed "base system (debootstrap)" build_base "$suite" || return 1
    timed "fresh copy + mounts" fresh_root "$suite" "$root" || return 1
    timed "copy the project" copy_project "$root" || return 1
    kb_before="$(installed_kb "$root")"
    say "$suite: ./install.sh ${INSTALL_ARGS[*]}"
    timed "install.sh (first run)" run_install "$root" "$logs/$suite-install.log" || rc=1
    if [[ $rc -eq 0 ]]; then
        say "$suite: ./install.sh again"
        timed "install.sh (second run)" run_install "$root" "$logs/$suite-install-again.log" || rc=1
        if ! grep -q "venv /opt/appliance/venv up to date" "$logs/$suite-install-again.log"; then
            say "$suite: the second install rebuilt the venv (not idempotent)"
            rc=1
        fi
        say "$suite: appliance selftest --simulated"
        timed "selftest --simulated" selftest_step "$root" "$logs/$suite-selftest.log" || rc=1
        say "$suite: appliance simulate --programme postop (one short session)"
        timed "simulate (postop session)" simulate_step "$root" "$logs/$suite-simulate.log" || rc=1
        find "$root/tmp/sim-out" -type f -printf '    %f %s bytes\n' 2>/dev/null || true
    fi
    kb_after="$(installed_kb "$root")"
    echo
    say "$suite: step times"
    printf '    %s\n' "${TIMES[@]}"
    say "$suite: sizes"
    printf '    %-28s %s\n' "Debian packages added" "$(( (kb_after - kb_before) / 1024 )) MB"
    printf '    %-28s %s\n' "venv /opt/appliance/venv" "$(du -sh "$root/opt/appliance/venv" 2>/dev/null | cut -f1)"
    printf '    %-28s %s\n' "models /var/lib/appliance/models" \
        "$(du -sh "$root/var/lib/appliance/models" 2>/dev/null | cut -f1) ($(find "$root/var/lib/appliance/models" -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null))"
    printf '    %-28s %s\n' "python" "$(in_root "$root" python3 --version)"
    say "$suite: logs in $logs/$suite-*.log; the root file system stays in $root"
    umount_all
    return "$rc"
}

mkdir -p "$CACHE/logs"
ensure_host_tools
failed=()
for suite in "${SUITES[@]}"; do
    run_suite "$suite" || failed+=("$suite")
done
if [[ ${#failed[@]} -gt 0 ]]; then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "passed: ${SUITES[*]}"
