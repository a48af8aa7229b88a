#!/usr/bin/env bash
# Build the reference CNI plugins (a release that speaks CNI 1.1) from the Go module proxy into
# a cache outside the repo, reused by later runs. Prints the directory holding the binaries.
set -euo pipefail
VERSION=${CNI_PLUGINS_VERSION:-v1.10.0}
DIR=${LOXI_REFERENCE_CNI_DIR:-/var/cache/loxi-cni/cni-plugins-$VERSION}
PLUGINS="main/bridge ipam/host-local ipam/static meta/portmap meta/bandwidth meta/tuning meta/firewall"
missing=0
for p in $PLUGINS; do [ -x "$DIR/$(basename "$p")" ] || missing=1; done
if [ "$missing" = 1 ]; then
  command -v go >/dev/null || { echo "go is needed to build the reference plugins" >&2; exit 1; }
  mkdir -p "$DIR"
  for p in $PLUGINS; do
    GOBIN=$DIR GOFLAGS=-mod=mod go install "github.com/containernetworking/plugins/plugins/$p@$VERSION" >&2
  done
fi
echo "$DIR"
