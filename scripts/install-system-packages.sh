#!/bin/sh
# System packages dockercomms needs: libfuse3 headers to build pyfuse3, fusermount3 for
# the mount, and (for the tests) Debian's docker-registry, skopeo, getfattr, systemd-analyze,
# a D-Bus daemon and the stock age tool (age, age-keygen: sealed-message interop).
set -eu
packages="fuse3 libfuse3-dev pkg-config gcc docker-registry skopeo attr systemd dbus-daemon age"
if [ "$(id -u)" -eq 0 ]; then as_root=""; else as_root="sudo"; fi
missing=""
for package in $packages; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
    $as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends $missing
fi
