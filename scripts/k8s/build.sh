#!/usr/bin/env bash
# Build the real Kubernetes control plane the k8s tests run against (no Debian package of
# kube-apiserver exists; Debian's etcd 3.4 is older than Kubernetes' minimum external etcd,
# 3.5.24) from the Go module proxy into a cache outside the repo, reused by later runs.
# Builds only the binaries that are missing, then prints the directory that holds them.
#
#   scripts/k8s/build.sh              kube-apiserver, kube-controller-manager, kube-scheduler,
#                                     kubectl, kubelet, etcd
#   scripts/k8s/build.sh kube-proxy   also other k8s.io/kubernetes/cmd/* commands
#   scripts/k8s/build.sh --print-dir  only print the directory (exit 1 if a binary is missing)
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod requires its k8s.io/* staging modules
# at v0.0.0 and replaces them with local paths, which only apply when it is the main module.
# So each build is a throwaway module that requires k8s.io/kubernetes vX.Y.Z and replaces every
# staging module with the published v0.Y.Z. etcd gets its own throwaway module, because
# k8s.io/kubernetes requires a newer etcd server module, which would win version selection.
# v1.37.2: the newest release the proxy serves that builds with this machine's Go 1.26 (its
# go.mod says go 1.26.0), and the API that lightkube-models 1.37 describes. etcd v3.6.16: the
# newest 3.6 patch, above kubeadm's minimum external etcd for 1.37 (3.5.24).
# Cold, on 2 cores: ~9.5 min (empty build cache: 516 s for the four, 40 s for etcd; about a
# minute more when the module cache is empty too); ~5 GiB of build cache; 390 MB of binaries.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CACHE_ROOT=${LOXI_K8S_CACHE:-/var/cache/loxi-cni}
DIR=${LOXI_K8S_BIN_DIR:-$CACHE_ROOT/k8s-$K8S_VERSION-etcd-$ETCD_VERSION}

print_only=0
wanted=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet etcd)
for arg in "$@"; do
  case $arg in
    --print-dir) print_only=1 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) wanted+=("$arg") ;;
  esac
done

find_missing() {
  missing_k8s=()
  missing_etcd=0
  for b in "${wanted[@]}"; do
    [ -x "$DIR/$b" ] && continue
    if [ "$b" = etcd ]; then missing_etcd=1; else missing_k8s+=("$b"); fi
  done
  [ ${#missing_k8s[@]} -gt 0 ] || [ "$missing_etcd" = 1 ]
}
if ! find_missing; then
  echo "$DIR"
  exit 0
fi
[ "$print_only" = 1 ] && exit 1

command -v go >/dev/null || { echo "go is needed to build the Kubernetes binaries" >&2; exit 1; }
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock -w 3600 9 || { echo "another build holds $DIR/.lock" >&2; exit 1; }
# A build that held the lock meanwhile may have made some of them.
if ! find_missing; then
  echo "$DIR"
  exit 0
fi

# Memory scales with parallel compiles (the kube-apiserver link alone takes ~2 GiB): at most
# 4 at once, whatever the core count. Use the machine's Go (no toolchain download).
jobs=$(nproc)
[ "$jobs" -gt 4 ] && jobs=4
export GOMAXPROCS=$jobs GOFLAGS="-buildvcs=false -trimpath -p=$jobs -mod=mod"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0
WORK=$(mktemp -d "$DIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Install built binaries atomically, so an interrupted build leaves no half-written file.
install_bins() {
  local from=$1; shift
  for b in "$@"; do
    mv -f "$from/$b" "$DIR/$b"
  done
}

if [ ${#missing_k8s[@]} -gt 0 ]; then
  start=$(date +%s)
  m=$WORK/k8s
  mkdir -p "$m/bin"
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  staging=v0.${K8S_VERSION#v1.}
  (cd "$m" && go mod init loxi-cni.test/k8s-build >/dev/null 2>&1 && go mod edit -go=1.26.0)
  # The staging module list comes from k8s.io/kubernetes' own go.mod at that version.
  gomod=$(cd "$m" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
          | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || { echo "cannot fetch k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
  edits=(-require="k8s.io/kubernetes@$K8S_VERSION")
  while read -r mod; do
    edits+=(-replace="$mod=$mod@$staging")
  done < <(sed -n 's#^\t\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$gomod")
  pkgs=()
  for b in "${missing_k8s[@]}"; do
    edits+=(-tool="k8s.io/kubernetes/cmd/$b")
    pkgs+=("k8s.io/kubernetes/cmd/$b")
  done
  ldflags="-s -w"
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  (
    cd "$m"
    go mod edit "${edits[@]}"
    echo "resolving k8s.io/kubernetes $K8S_VERSION modules ..." >&2
    go mod tidy >&2
    echo "building ${missing_k8s[*]} ($K8S_VERSION, $jobs jobs) ..." >&2
    go build -ldflags "$ldflags" -o bin/ "${pkgs[@]}" >&2
  )
  install_bins "$m/bin" "${missing_k8s[@]}"
  echo "built ${missing_k8s[*]} in $(( $(date +%s) - start )) s" >&2
fi

if [ "$missing_etcd" = 1 ]; then
  start=$(date +%s)
  m=$WORK/etcd
  mkdir -p "$m/bin"
  (
    cd "$m"
    go mod init loxi-cni.test/etcd-build >/dev/null 2>&1
    go mod edit -go=1.26.0 -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
      -tool=go.etcd.io/etcd/server/v3
    echo "building etcd $ETCD_VERSION ..." >&2
    go mod tidy >&2
    go build -ldflags "-s -w" -o bin/etcd go.etcd.io/etcd/server/v3 >&2
  )
  install_bins "$m/bin" etcd
  echo "built etcd in $(( $(date +%s) - start )) s" >&2
fi

echo "$DIR"
