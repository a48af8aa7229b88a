"""Many ADD/DEL at once, as the kubelet does: no address twice, nothing left behind."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .conftest import Call, Net, links_of_bridge


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
