#!/usr/bin/env bash
# Install, when missing, the Debian packages a real node of the local cluster needs: containerd
# and runc (the container runtime), the CNI plugins, iptables and conntrack (kube-proxy), buildah
# and mmdebstrap (the project's images and their base). Idempotent: a machine that has them all
# returns at once. Needs root (apt); prints what it installed.
set -euo pipefail

packages=(containerd runc containernetworking-plugins iptables conntrack buildah mmdebstrap
          uidmap fuse-overlayfs iproute2 openssl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "node-host: missing Debian packages (${missing[*]}); run this script as root" >&2
    exit 1
fi
echo "node-host: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
# The Debian package enables a system containerd; the cluster runs its own, under its own root.
if command -v systemctl >/dev/null && systemctl is-active -q containerd 2>/dev/null; then
    systemctl disable --now containerd >&2 || true
fi
echo "node-host: installed ${missing[*]}" >&2
