#!/usr/bin/env bash
# What tests/runtimes needs on a fresh Debian 12 machine, installed only when missing (so a
# second run is silent and takes well under a second):
# - Debian packages: containerd + runc, podman (4.3, with conmon), busybox-static (the test
#   images' one binary), gcc + libc6-dev (the static pause binary), the reference plugins'
#   loopback (containerd's CRI sets up lo with it), iproute2, iputils-ping, util-linux (unshare).
# - From the Go module proxy, into a cache outside the repo: crictl (a CRI client; not packaged
#   in Debian 12) and libcni's cnitool, each under a versioned name.
# - The mount points the tests bind their temp dirs over in private mount namespaces, so the
#   host's own are never written: ctr reads only /etc/cni/net.d and /opt/cni/bin, ctr and
#   cnitool cache results in /var/lib/cni, podman load writes /var/lib/containers/cache.
# Nothing is started: the tests run their own containerd, with their own config and socket.
set -euo pipefail

TOOLS_DIR=${LOXI_RUNTIME_TOOLS_DIR:-/var/cache/loxi-cni/bin}
CRICTL_VERSION=v1.34.0  # speaks CRI v1 only, which containerd 1.6 serves
CNI_VERSION=v1.3.0      # libcni with GC and STATUS (CNI 1.1)

need=()
for pkg in containerd runc podman conmon busybox-static gcc libc6-dev \
           containernetworking-plugins iproute2 iputils-ping util-linux; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  if ! { apt-get update -qq && apt-get install -y -qq "${need[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
fi

# go install pkg@version into a scratch GOBIN, then a versioned name in the cache.
build() {
  local pkg=$1 version=$2 name=$3
  local target="$TOOLS_DIR/$name-$version"
  [ -x "$target" ] && return 0
  command -v go >/dev/null || { echo "go is needed to build $name" >&2; exit 1; }
  mkdir -p "$TOOLS_DIR"
  local scratch log
  scratch=$(mktemp -d) log=$(mktemp)
  if ! GOBIN=$scratch go install "$pkg@$version" >"$log" 2>&1; then
    cat "$log" >&2
    rm -rf "$scratch" "$log"
    exit 1
  fi
  mv -f "$scratch/$name" "$target"
  rm -rf "$scratch" "$log"
  echo "built $target"
}
build sigs.k8s.io/cri-tools/cmd/crictl "$CRICTL_VERSION" crictl
build github.com/containernetworking/cni/cnitool "$CNI_VERSION" cnitool

mkdir -p /etc/cni/net.d /opt/cni/bin /var/lib/cni /var/lib/containers/cache
