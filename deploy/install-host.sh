#!/bin/sh
# The DaemonSet's init container: install the plugin on the host (/host/opt is the host's
# /opt). The tree is copied in full beside the old one, then swapped in by two renames, and
# the executable the runtime execs is replaced by a rename: a plugin call during an upgrade
# never sees a half-copied tree (at worst, in the instant between the renames, no tree: the
# runtime retries the failed call).
set -eu
src=${BUNDLE:-/opt/loxi-cni}  # the image's tree
host=${HOST_ROOT:-/host}
dest=$host/opt/loxi-cni
bin=$host/opt/cni/bin
mkdir -p "$host/opt" "$bin"
rm -rf "$dest.new"
cp -a "$src" "$dest.new"
if [ -d "$dest" ]; then
  rm -rf "$dest.old"
  mv "$dest" "$dest.old"
fi
mv "$dest.new" "$dest"
rm -rf "$dest.old"
cp "$dest/loxi-cni" "$bin/.loxi-cni.new"
chmod 0755 "$bin/.loxi-cni.new"
mv -f "$bin/.loxi-cni.new" "$bin/loxi-cni"
echo "installed $bin/loxi-cni ($("$bin/loxi-cni" version))"
