#!/usr/bin/env bash
# Set up vmsnapgui on Debian 12 (root, or a user with sudo) and run the app or the tests.
#
#   packaging/setup-debian.sh run  [vmsnapgui arguments…]   set up, then start the app
#   packaging/setup-debian.sh test [pytest arguments…]      set up, then run every test
#   packaging/setup-debian.sh setup                         only set up
#
# Installs the Debian packages it needs, starts the libvirt daemons where no init
# system does (containers, CI), creates .venv and installs the project into it.
# Running it again is harmless: it skips what is already done.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

action=${1:-run}
[ $# -gt 0 ] && shift

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

say() { printf 'setup: %s\n' "$*" >&2; }

packages=(
    # libvirt daemon, client tools and headers (libvirt-python builds against them)
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
    pkg-config gcc python3-dev python3-venv
    # QEMU for real guests, qemu-img / qemu-io for disk images
    qemu-system-x86 qemu-utils
    # what Qt needs to draw, on a screen or offscreen
    libegl1 libgl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libdbus-1-3
    libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libxcb-xinerama0
    libxcb-randr0 libxcb-render-util0 libxcb-image0 fonts-dejavu-core
    # pgrep, used to see whether the daemons already run
    procps
    # the tests' own sshd on loopback (remote access over qemu+ssh)
    openssh-server
)

install_packages() {
    local missing=()
    local p
    for p in "${packages[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return
    fi
    say "installing Debian packages: ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends -o Dpkg::Options::=--force-confold "${missing[@]}"
}

daemon_answers() {
    virsh -c qemu:///system uri >/dev/null 2>&1
}

start_daemons() {
    if daemon_answers; then
        return
    fi
    if [ -d /run/systemd/system ]; then
        say "starting libvirtd with systemd"
        "${SUDO[@]}" systemctl start libvirtd.service || "${SUDO[@]}" systemctl start virtqemud.socket
    else
        # No init system (a container, CI): start the daemons ourselves.
        say "starting virtlogd and libvirtd"
        "${SUDO[@]}" mkdir -p /var/log/libvirt /var/run/libvirt
        pgrep -x virtlogd >/dev/null || "${SUDO[@]}" virtlogd -d
        pgrep -x libvirtd >/dev/null || "${SUDO[@]}" libvirtd -d
    fi
    local i
    for i in $(seq 1 60); do
        if daemon_answers; then
            return
        fi
        sleep 0.5
    done
    say "the libvirt daemon did not come up; see /var/log/libvirt/ and 'libvirtd --verbose'"
    exit 1
}

fix_kvm_permissions() {
    # Without udev /dev/kvm stays root-only and QEMU (running as libvirt-qemu) cannot
    # use it; udev's own rule makes it group kvm, mode 0660.
    if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
        if [ "$(stat -c %G /dev/kvm)" != kvm ]; then
            "${SUDO[@]}" chgrp kvm /dev/kvm && "${SUDO[@]}" chmod 0660 /dev/kvm || true
        fi
    fi
}

make_venv() {
    local stamp=.venv/.vmsnap-installed
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
        say "creating .venv"
        rm -rf .venv
        python3 -m venv .venv
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing vmsnapgui and its dependencies into .venv"
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e ".[test]"
        echo "$want" >"$stamp"
    fi
    # An editable install leaves the package's bytecode to be written on first import,
    # which never happens where PYTHONDONTWRITEBYTECODE is set: compile it here, as a
    # regular install would (it makes the window appear about 70 ms sooner).
    .venv/bin/python -m compileall -q vmsnapgui >/dev/null
}

setup() {
    install_packages
    fix_kvm_permissions
    start_daemons
    make_venv
}

case "$action" in
    setup)
        setup
        ;;
    run)
        setup
        exec .venv/bin/vmsnapgui "$@"
        ;;
    test)
        setup
        export QT_QPA_PLATFORM=offscreen
        # The real-QEMU tier must run here: if it cannot, tests fail instead of skipping.
        export VMSNAP_REQUIRE_REAL=1
        exec .venv/bin/python -m pytest "$@"
        ;;
    *)
        echo "usage: $0 run [vmsnapgui args…] | test [pytest args…] | setup" >&2
        exit 2
        ;;
esac
