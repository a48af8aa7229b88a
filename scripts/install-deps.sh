#!/usr/bin/env bash
# Debian packages loxi-cni needs to install, test and demo: iproute2 (ip netns, tc), nftables
# (ipMasq), the reference CNI plugins (chaining and side-by-side tests), python3-venv, and gcc +
# libc6-dev (static libc) for the executable shim/loxi-cni.c.
set -euo pipefail
need=()
for pkg in iproute2 nftables iptables containernetworking-plugins python3-venv python3.11-venv iputils-ping \
           gcc libc6-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
