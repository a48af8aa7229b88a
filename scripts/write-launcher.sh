#!/usr/bin/env bash
# Write the executable a runtime execs: shim/loxi-cni.c compiled (static) with the command that
# starts our Python baked in, plus the Python entry point that command runs.
#
#   scripts/write-launcher.sh venv VENV TARGET    (make install)
#     Python: the venv's real interpreter binary (never a pyenv shim), isolated (-I), without
#     site (-S, ~20 ms saved), with only the venv's site-packages added by VENV/launcher.py.
#   scripts/write-launcher.sh bundle DEST PREFIX  (deploy/bundle.sh)
#     Python: the bundle's own loader runs its interpreter on the bundle's libraries only, -I -S
#     as above; DEST (to be installed at PREFIX) gets launcher.py and the executable loxi-cni.
#
# The command is compiled in rather than read from a file beside the tree: the shim then needs
# no path of its own at run time (it is copied to /opt/cni/bin, away from the tree) and no
# syscall to find Python. So is the VERSION reply, computed here by the Python itself.
# CC and SHIM_LDFLAGS (default -static) may be overridden.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=${1:?usage: write-launcher.sh venv VENV TARGET | bundle DEST PREFIX}

case $mode in
  venv)
    venv=$2 target=$3
    python=$(readlink -f "$venv/bin/python3")
    site=$("$venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    entry=$(cd "$venv" && pwd)/launcher.py
    entry_file=$entry build_site=$site
    run=("$python" -I -S)  # how the shim starts Python ...
    build=("${run[@]}")    # ... and how this script does now
    ;;
  bundle)
    dest=$2 prefix=$3
    loaders=("$dest"/lib/ld-linux*)
    pythons=("$dest"/python/bin/python3.*)
    [ ${#loaders[@]} -eq 1 ] && [ -e "${loaders[0]}" ] || { echo "no single loader in $dest/lib" >&2; exit 1; }
    [ ${#pythons[@]} -eq 1 ] && [ -e "${pythons[0]}" ] || { echo "no single python in $dest" >&2; exit 1; }
    loader=${loaders[0]##*/} py=${pythons[0]##*/}
    site=$prefix/python/lib/$py/site-packages build_site=$dest/python/lib/$py/site-packages
    entry=$prefix/launcher.py entry_file=$dest/launcher.py target=$dest/loxi-cni
    run=("$prefix/lib/$loader" --library-path "$prefix/lib" "$prefix/python/bin/$py" -I -S)
    build=("$dest/lib/$loader" --library-path "$dest/lib" "$dest/python/bin/$py" -I -S)
    ;;
  *) echo "write-launcher.sh: unknown mode $mode" >&2; exit 2 ;;
esac

cat > "$entry_file" <<ENTRY
import sys
sys.path.insert(0, "$site")
from loxicni.main import main
sys.exit(main())
ENTRY

# What the Python plugin answers to VERSION, as a C string literal (JSON escapes of ASCII are C's).
version_reply=$("${build[@]}" -c '
import json, sys
sys.path.insert(0, sys.argv[1])
from loxicni.main import run_in_process
code, out = run_in_process({"CNI_COMMAND": "VERSION"}, b"")
assert code == 0 and out.isascii(), out
print(json.dumps(out.decode()))
' "$build_site")

c_string() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
argv=
for arg in "${run[@]}" "$entry"; do argv+=${argv:+,}$(c_string "$arg"); done

command -v "${CC:-cc}" >/dev/null || { echo "write-launcher.sh: no C compiler (apt-get install gcc libc6-dev)" >&2; exit 1; }
mkdir -p "$(dirname "$target")"
tmp=$(mktemp "$target.XXXXXX")
trap 'rm -f "$tmp"' EXIT
"${CC:-cc}" -O2 -Wall -Wextra -s ${SHIM_LDFLAGS--static} \
  "-DLOXI_PYTHON_ARGV=$argv" "-DLOXI_VERSION_REPLY=$version_reply" \
  -o "$tmp" "$repo/shim/loxi-cni.c"
chmod 0755 "$tmp"
mv -f "$tmp" "$target"
trap - EXIT
