#!/usr/bin/env bash
# Make a self-contained loxi-cni tree: the interpreter, its standard library, the shared
# libraries it loads (glibc and its loader included) and a venv's site-packages, plus the
# executable a runtime execs (shim/loxi-cni.c, static). The DaemonSet's init container copies
# the tree to the host's /opt/loxi-cni, so the plugin runs on any x86-64/arm64 Linux host,
# whatever Python or libc the host has (or lacks); nothing of the host is loaded.
#
#   deploy/bundle.sh VENV DEST [PREFIX]
#     VENV    a venv holding loxi-cni and its dependencies (made from /usr/bin/python3.11)
#     DEST    the directory to fill
#     PREFIX  where DEST will live on the host (default /opt/loxi-cni): the paths compiled into
#             the executable (scripts/write-launcher.sh, which needs a C compiler)
set -euo pipefail
venv=$1 dest=$2 prefix=${3:-/opt/loxi-cni}
python=$(readlink -f "$venv/bin/python3")
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
stdlib=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
site=$("$venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dynload=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("DESTSHARED"))')

mkdir -p "$dest/python/bin" "$dest/python/lib" "$dest/lib"
cp -L "$python" "$dest/python/bin/python$version"
lib=$dest/python/lib/python$version
# The standard library without what a plugin never runs (tests, IDLE, tkinter, ensurepip).
tar -C "$stdlib" -cf - --exclude=test --exclude=idlelib --exclude=tkinter --exclude=turtledemo \
  --exclude=ensurepip --exclude=__pycache__ --exclude=site-packages --exclude=dist-packages . |
  tar -C "$(mkdir -p "$lib" && echo "$lib")" -xf -
mkdir -p "$lib/lib-dynload"
cp -L "$dynload"/*.so "$lib/lib-dynload/"
mkdir -p "$lib/site-packages"
cp -a "$site"/. "$lib/site-packages/"
find "$lib/site-packages" -name __pycache__ -prune -exec rm -rf {} +

"$python" -m compileall -q -j 0 "$lib" >/dev/null || true  # first calls need no compile

# Every shared library the interpreter and its extension modules need, and the loader.
loader=
for obj in "$dest/python/bin/python$version" "$lib"/lib-dynload/*.so \
           $(find "$lib/site-packages" -name '*.so'); do
  while read -r line; do
    case $line in
      *"=> not found"*) echo "bundle: $obj needs a missing library: $line" >&2; exit 1 ;;
      *"=> /"*) path=${line#*=> }; path=${path%% (*}; cp -Ln "$path" "$dest/lib/" ;;
      /*ld-linux*) path=${line%% (*}; loader=$(basename "$path"); cp -Ln "$path" "$dest/lib/" ;;
    esac
  done < <(ldd "$obj" 2>/dev/null || true)
done
[ -n "$loader" ] || { echo "bundle: no dynamic loader found" >&2; exit 1; }

# launcher.py and the executable loxi-cni: the bundle's own loader runs the interpreter on the
# bundle's libraries only, -I -S as in `make install`.
bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/write-launcher.sh" bundle "$dest" "$prefix"
echo "$dest"
