#!/usr/bin/env bash
# Make a self-contained loxi-cni tree: the interpreter, its standard library, the shared
# libraries it loads (glibc and its loader included), a venv's site-packages and `nft` (for
# ipMasq, with its libraries), plus the executable a runtime execs (shim/loxi-cni.c, static).
# The image carries one (make image); the DaemonSet's init container (`loxi-cni install-host`)
# copies it to the host, so the plugin runs on any x86-64/arm64 Linux host, whatever Python,
# libc or nft the host has (or lacks); nothing of the host is loaded.
#
#   deploy/bundle.sh VENV DEST [PREFIX]
#     VENV    a venv holding loxi-cni and its dependencies (made from /usr/bin/python3.11)
#     DEST    the directory to fill
#     PREFIX  where DEST will live (default /opt/loxi-cni): compiled into the executable
#             (scripts/write-launcher.sh, which needs a C compiler); install-host rewrites it
#             in the copies it installs elsewhere
#
# What a plugin and an agent never run is left out: the installers (pip, setuptools), the
# standard library's tests, IDEs, GUI, databases, build configuration and their extension
# modules. DEST/bundle.json says what the tree is: its version, an id that changes with any
# byte of it, and where its loader, Python and nft are.
set -euo pipefail
venv=$1 dest=$2 prefix=${3:-/opt/loxi-cni}
python=$(readlink -f "$venv/bin/python3")
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
stdlib=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
site=$("$venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dynload=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("DESTSHARED"))')
nft=$(PATH=$PATH:/usr/sbin:/sbin command -v nft) || { echo "bundle: no nft (apt-get install nftables)" >&2; exit 1; }

[ ! -e "$dest" ] || [ -z "$(ls -A "$dest")" ] || { echo "bundle: $dest is not empty" >&2; exit 1; }
mkdir -p "$dest/python/bin" "$dest/lib" "$dest/sbin"
cp -L "$python" "$dest/python/bin/python$version"
lib=$dest/python/lib/python$version
mkdir -p "$lib/lib-dynload" "$lib/site-packages"
tar -C "$stdlib" -cf - --exclude=__pycache__ --exclude=site-packages --exclude=dist-packages \
  --exclude=./test --exclude=./idlelib --exclude=./tkinter --exclude=./turtledemo \
  --exclude=./ensurepip --exclude=./lib2to3 --exclude=./pydoc_data --exclude=./distutils \
  --exclude=./sqlite3 --exclude=./curses --exclude=./dbm --exclude=./venv --exclude=./lib-dynload \
  --exclude='./config-*' --exclude=./turtle.py . | tar -C "$lib" -xf -
for so in "$dynload"/*.so; do
  case ${so##*/} in
    _test* | _xx* | xxlimited* | _ctypes_test* | _curses* | readline* | _dbm* | _gdbm* | \
      nis* | _sqlite3* | ossaudiodev* | audioop* | _tkinter* | _lsprof* | _crypt* | \
      _codecs_cn* | _codecs_hk* | _codecs_iso2022* | _codecs_jp* | _codecs_kr* | _codecs_tw*) ;;
    *) cp -L "$so" "$lib/lib-dynload/" ;;
  esac
done
tar -C "$site" -cf - --exclude=__pycache__ --exclude=pip --exclude='pip-*' \
  --exclude=setuptools --exclude='setuptools-*' --exclude=pkg_resources \
  --exclude=_distutils_hack --exclude=distutils-precedence.pth --exclude=wheel \
  --exclude='wheel-*' . | tar -C "$lib/site-packages" -xf -
cp -L "$nft" "$dest/sbin/nft"
# Wheels may ship extension modules with their debug info (PyYAML's: 2.7 of its 3 MB).
find "$lib/site-packages" -name '*.so' -exec strip --strip-debug {} +

# Compiled once here, checked against nothing at run time (the tree is never edited in place,
# and an image layer may be read-only): no call compiles, whatever mtimes a copy gives files.
"$python" -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$dest" -p "$prefix" \
  "$lib" >/dev/null

# Every shared library the interpreter, its extension modules and nft need, and the loader.
loader=
for obj in "$dest/python/bin/python$version" "$lib"/lib-dynload/*.so "$dest/sbin/nft" \
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

run=("$dest/lib/$loader" --library-path "$dest/lib" "$dest/python/bin/python$version" -I -S)
pkg_version=$("${run[@]}" -c '
import sys
sys.path.insert(0, sys.argv[1])
from importlib.metadata import version
print(version("loxi-cni"))' "$lib/site-packages")
digest=$(cd "$dest" && find . -type f -o -type l | LC_ALL=C sort | tar -cf - --owner=0 --group=0 \
  --numeric-owner --mtime=@0 --no-recursion -T - | sha256sum | cut -c1-12)
cat > "$dest/bundle.json" <<JSON
{"version": "$pkg_version", "id": "$pkg_version-$digest", "loader": "lib/$loader",
 "python": "python/bin/python$version", "nft": "sbin/nft"}
JSON
echo "$dest"
