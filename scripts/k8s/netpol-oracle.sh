#!/usr/bin/env bash
# Build the NetworkPolicy oracle of tests/netpol (tests/netpol/oracle-go: cyclonus's matcher
# with the API server's own defaulting, validation and label selectors) from the Go module
# proxy into a cache outside the repo, reused by later runs; print the binary's path.
#
#   scripts/k8s/netpol-oracle.sh              build if missing, print the path
#   scripts/k8s/netpol-oracle.sh --print-path only print the path (exit 1 if not built)
#
# The directory is named by a hash of the program and its go.mod/go.sum, so any change to
# them builds a new one. go.sum is committed: a fresh machine needs only the Go proxy.
# It shares k8s.io/kubernetes v1.37.2 and the build flags with scripts/k8s/build.sh, and so
# Go's build cache: ~25 s after that build; ~9 min with an empty one on 2 busy cores.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../../tests/netpol/oracle-go" && pwd)
CACHE_ROOT=${LOXI_K8S_CACHE:-/var/cache/loxi-cni}
hash=$(cd "$SRC" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-12)
DIR=$CACHE_ROOT/netpol-oracle-$hash
BIN=$DIR/netpol-oracle

case ${1:-} in
  "") ;;
  --print-path) [ -x "$BIN" ] && echo "$BIN" && exit 0; exit 1 ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "unknown argument $1" >&2; exit 2 ;;
esac

if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { echo "go is needed to build the NetworkPolicy oracle" >&2; exit 1; }
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock -w 1800 9 || { echo "another build holds $DIR/.lock" >&2; exit 1; }
if [ ! -x "$BIN" ]; then
  start=$(date +%s)
  jobs=$(nproc)
  [ "$jobs" -gt 4 ] && jobs=4
  # The flags of scripts/k8s/build.sh, so the k8s.io packages come from its build cache.
  export GOMAXPROCS=$jobs GOFLAGS="-buildvcs=false -trimpath -p=$jobs -mod=mod"
  export GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0
  echo "building the NetworkPolicy oracle ($DIR) ..." >&2
  (cd "$SRC" && go build -ldflags "-s -w" -o "$BIN.tmp" .) >&2
  mv -f "$BIN.tmp" "$BIN"
  echo "built the NetworkPolicy oracle in $(( $(date +%s) - start )) s" >&2
fi
echo "$BIN"
