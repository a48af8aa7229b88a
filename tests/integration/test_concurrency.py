"""Many ADD/DEL at once, as the kubelet does: no address twice, nothing left behind."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.support.plugin import PLUGIN

from .conftest import REFERENCE_DIR, Call, Net, Pod, links_of_bridge


def test_forty_concurrent_adds_get_unique_addresses_and_leave_nothing(net: Net) -> None:
    conf = net.conf()
    pods = [net.pod() for _ in range(40)]
    with ThreadPoolExecutor(max_workers=40) as pool:
        adds: list[Call] = list(pool.map(lambda p: net.call("ADD", p, conf), pods))
    assert all(r.rc == 0 for r in adds), [r.stdout for r in adds if r.rc]
    addresses = [r.json["ips"][0]["address"] for r in adds]
    assert len(set(addresses)) == 40
    host_names = {r.json["interfaces"][1]["name"] for r in adds}
    assert len(host_names) == 40 and set(links_of_bridge(net.bridge)) == host_names
    assert len(net.reservations()) == 40
    for pod, res in zip(pods, adds, strict=True):
        with pod.ipr() as ns:
            (eth0,) = ns.get_links(ifname="eth0")
            got = {
                f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ns.get_addr(index=eth0["index"])
            }
            assert res.json["ips"][0]["address"] in got

    with ThreadPoolExecutor(max_workers=40) as pool:
        dels = list(pool.map(lambda p: net.call("DEL", p, conf), pods))
    assert all(r.rc == 0 for r in dels), [r.stdout for r in dels if r.rc]
    assert links_of_bridge(net.bridge) == []
    assert net.reservations() == {}


def test_concurrent_add_and_del_of_one_attachment_are_serialised(net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda c: net.call(c, pod, conf), ["ADD", "DEL"] * 4))
    assert all(r.rc == 0 or r.json["code"] in (101, 102) for r in results), [
        r.stdout for r in results
    ]
    assert net.call("DEL", pod, conf).rc == 0
    assert net.reservations() == {}
    assert links_of_bridge(net.bridge) == []


def test_mixed_with_the_reference_bridge_and_host_local(net: Net) -> None:
    """Our plugin and the reference bridge + host-local share one network's store at once."""
    conf = net.conf("1.0.0")
    reference = {**conf, "type": "bridge"}
    ours_pods = [net.pod() for _ in range(12)]
    ref_pods = [net.pod() for _ in range(12)]
    jobs = [(p, conf, PLUGIN) for p in ours_pods] + [
        (p, reference, f"{REFERENCE_DIR}/bridge") for p in ref_pods
    ]

    def run(command: str, job: tuple[Pod, dict[str, Any], str]) -> Call:
        pod, c, plugin = job
        return net.call(command, pod, c, plugin=plugin, path=REFERENCE_DIR)

    with ThreadPoolExecutor(max_workers=24) as pool:
        adds = list(pool.map(lambda j: run("ADD", j), jobs[::2] + jobs[1::2]))
    assert all(r.rc == 0 for r in adds), [r.stdout for r in adds if r.rc]
    addresses = [r.json["ips"][0]["address"] for r in adds]
    assert len(set(addresses)) == 24
    owners = net.reservations()
    assert len(owners) == 24
    assert {v.split("\r\n")[0] for v in owners.values()} == {p.container_id for p, _, _ in jobs}
    with ThreadPoolExecutor(max_workers=24) as pool:
        dels = list(pool.map(lambda j: run("DEL", j), jobs))
    assert all(r.rc == 0 for r in dels), [r.stdout for r in dels if r.rc]
    assert net.reservations() == {}
    assert links_of_bridge(net.bridge) == []
