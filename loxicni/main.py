"""The ``loxi-cni`` executable: a CNI plugin when CNI_COMMAND is set, an admin CLI otherwise."""

from __future__ import annotations

import os
import sys


def plugin_main() -> int:
    """Run one CNI call: env + stdin in, result or error JSON on stdout."""
    from loxicni.cni import skel
    from loxicni.logs import setup_logging
    from loxicni.plugin.config import KNOWN_ARGS
    from loxicni.plugin.handlers import LazyBridgePlugin

    setup_logging()
    stdin = sys.stdin.buffer.read()
    code, out = skel.run(LazyBridgePlugin(), os.environ, stdin, KNOWN_ARGS)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("CNI_COMMAND"):
        return plugin_main()
    from loxicni.cli import cli_main

    return cli_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
