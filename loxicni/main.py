"""The ``loxi-cni`` executable: a CNI plugin when CNI_COMMAND is set, an admin CLI otherwise.

Plugin mode forwards the call to the node agent (stdlib only, see ``loxicni.client``); with no
agent listening it runs the call in-process, with the same locks and store.
"""

from __future__ import annotations

import os
import sys


def run_in_process(env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    from loxicni.base.logs import setup_logging
    from loxicni.cni import skel
    from loxicni.plugin.config import KNOWN_ARGS
    from loxicni.plugin.handlers import LazyBridgePlugin

    setup_logging()
    return skel.run(LazyBridgePlugin(), env, stdin, KNOWN_ARGS)


def plugin_main() -> int:
    """Run one CNI call: env + stdin in, result or error JSON on stdout."""
    stdin = sys.stdin.buffer.read()
    env = dict(os.environ)
    if env.get("CNI_COMMAND") == "VERSION" or env.get("LOXI_CNI_NO_AGENT") == "1":
        code, out = run_in_process(env, stdin)  # VERSION is cheaper here than a round trip
    else:
        from loxicni import client

        try:
            code, out = client.forward(env, stdin)
        except client.AgentUnavailable:
            code, out = run_in_process(env, stdin)
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
