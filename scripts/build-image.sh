#!/usr/bin/env bash
# `make image`: the loxi-cni image, built on this machine from Debian's Python and nft,
# PyPI's wheels checked against requirements.lock's hashes, and the source. No base image, no
# registry and no container engine take part: the image is a root filesystem FROM scratch.
#
#   build/image/venv            requirements.lock installed with --require-hashes, then the
#                               package; remade only when the lock changes
#   build/image/rootfs          the image's files: deploy/bundle.sh's tree at /opt/loxi-cni
#   build/loxi-cni-image.tar    the image (docker-archive), named as deploy/daemonset.yaml says
#
# IMAGE=name:tag overrides the name; OUT=path the archive.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=${PYTHON:-/usr/bin/python3.11}
image=${IMAGE:-$(sed -n 's/^ *image: &image \([^ ]*\).*$/\1/p' deploy/daemonset.yaml)}
[ -n "$image" ] || { echo "build-image: no 'image: &image' in deploy/daemonset.yaml" >&2; exit 1; }
out=${OUT:-build/loxi-cni-image.tar}
venv=build/image/venv rootfs=build/image/rootfs

lock=$(sha256sum requirements.lock "$python" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.lock" 2>/dev/null)" != "$lock" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps \
    -r requirements.lock
  echo "$lock" > "$venv/.lock"
fi
# setuptools, the build backend, comes from the lock too: nothing unhashed is fetched.
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-index \
  --no-build-isolation --force-reinstall .

rm -rf "$rootfs"
bash deploy/bundle.sh "$venv" "$rootfs/opt/loxi-cni" /opt/loxi-cni >/dev/null
"$python" scripts/image-archive.py "$rootfs" "$image" "$out" \
  --entrypoint=/opt/loxi-cni/loxi-cni --cmd=agent --cmd=--in-cluster
echo "tree: $(du -sh "$rootfs" | cut -f1)"
