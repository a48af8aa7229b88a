"""Our allocator (several processes) and the reference binary on one data dir at once."""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loxicni.ipam import hostlocal
from tests.ipam.helpers import leftovers, needs_reference, netconf, parse, run_reference

pytestmark = needs_reference

DRIVER = Path(__file__).with_name("_driver.py")
ROOT = Path(__file__).resolve().parents[2]


def drive(conf_path: Path, op: str, cids: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(conf_path), op, *cids],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )


def collect(proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    out = proc.stdout.read()
    assert proc.wait(timeout=300) == 0
    return [json.loads(line) for line in out.splitlines()]


def run_mixed(
    conf: dict[str, Any], tmp_path: Path, op: str, ours: list[list[str]], theirs: list[str]
) -> dict[str, dict[str, Any]]:
    """Start our driver processes and the reference calls together; outcome per container."""
    conf_path = tmp_path / "conf.json"
    conf_path.write_text(json.dumps(conf))
    procs = [drive(conf_path, op, cids) for cids in ours]
    for proc in procs:  # barrier: every driver has imported and parsed
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    with ThreadPoolExecutor(max_workers=8) as pool:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()
        ref = list(pool.map(lambda cid: (cid, run_reference(op.upper(), conf, cid)), theirs))
    outcome = {line["cid"]: line for proc in procs for line in collect(proc)}
    for cid, out in ref:
        if op == "add":
            outcome[cid] = (
                {"cid": cid, "error": out["code"]}
                if "code" in out
                else {"cid": cid, "ips": [ip["address"].split("/")[0] for ip in out["ips"]]}
            )
        else:
            assert "code" not in out, out
            outcome[cid] = {"cid": cid}
    return outcome


def test_mixed_allocations_never_collide_and_releases_clean_up(tmp_path: Path) -> None:
    # IPv4 .2-.62 (61 addresses) and IPv6 ::2-::3f (62): room for all 56 attachments
    conf = netconf(tmp_path / "data", [[{"subnet": "10.8.0.0/26"}], [{"subnet": "fd08::/122"}]])
    ours = [[f"ours{p}-{i}" for i in range(8)] for p in range(4)]
    theirs = [f"ref-{i}" for i in range(24)]
    added = run_mixed(conf, tmp_path, "add", ours, theirs)

    assert all("ips" in line for line in added.values()), added
    # round-robin from a fresh directory: address order is allocation order, so the sides
    # alternating along it shows they really ran at the same time
    order = sorted(added.values(), key=lambda line: ipaddress.ip_address(line["ips"][0]))
    sides = [line["cid"].startswith("ours") for line in order]
    assert sum(a != b for a, b in itertools.pairwise(sides)) >= 2, sides
    given = Counter(ip for line in added.values() for ip in line["ips"])
    assert max(given.values()) == 1, "an address was handed out twice"
    net = tmp_path / "data" / "net"
    assert leftovers(net) == set(given)  # every file accounted for, and nothing else
    for cid, line in added.items():
        for ip in line["ips"]:
            assert (net / ip).read_bytes() == f"{cid}\r\neth0".encode()

    # release crosswise and concurrently: half of ours by the reference, half of theirs by us
    flat_ours = [cid for group in ours for cid in group]
    by_us = [flat_ours[0::2], flat_ours[1::2][:8], theirs[0::2]]
    by_ref = flat_ours[1::2][8:] + theirs[1::2]
    run_mixed(conf, tmp_path, "del", by_us, by_ref)
    assert sorted(p.name for p in net.iterdir()) == [
        "last_reserved_ip.0",
        "last_reserved_ip.1",
        "lock",
    ]
    hostlocal.gc(parse(conf), [])  # prunes index entries of ours the reference released
    assert list((tmp_path / "data" / ".loxi-cni" / "net").iterdir()) == []


def test_mixed_exhaustion_hands_out_each_address_once(tmp_path: Path) -> None:
    conf = netconf(tmp_path / "data", [[{"subnet": "10.9.0.0/28"}]])  # .2-.14: 13 addresses
    ours = [[f"ours{p}-{i}" for i in range(6)] for p in range(3)]
    theirs = [f"ref-{i}" for i in range(10)]
    added = run_mixed(conf, tmp_path, "add", ours, theirs)
    winners = [line["ips"][0] for line in added.values() if "ips" in line]
    assert sorted(winners, key=lambda s: int(s.rsplit(".", 1)[1])) == [
        f"10.9.0.{h}" for h in range(2, 15)
    ]
    assert len(added) - len(winners) == 28 - 13
    assert leftovers(tmp_path / "data" / "net") == set(winners)
