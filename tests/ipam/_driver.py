"""Run our allocator from a separate process (concurrency tests).

Usage: _driver.py CONFIG.json add|del CONTAINER_ID...; prints "ready", waits for a line on
stdin (so every process starts at once), then prints one JSON line per attachment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from loxicni.cni.errors import CniError
from loxicni.ipam import hostlocal
from loxicni.ipam.config import parse_host_local


def main() -> None:
    conf = json.loads(Path(sys.argv[1]).read_text())
    cfg = parse_host_local(conf, {})
    print("ready", flush=True)
    sys.stdin.readline()
    for cid in sys.argv[3:]:
        line: dict[str, object] = {"cid": cid}
        try:
            if sys.argv[2] == "add":
                result = hostlocal.allocate(cfg, cid, "eth0")
                line["ips"] = [str(c.address.ip) for c in result.ips]
            else:
                hostlocal.release(cfg, cid, "eth0")
        except CniError as e:
            line["error"] = e.code
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
