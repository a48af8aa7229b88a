"""ADD / DEL through the installed executable, with the kernel state read back over netlink."""

from __future__ import annotations

import ipaddress
import subprocess
import time

from .conftest import Net, host_links, links_of_bridge


def test_add_configures_pod_bridge_and_veth(net: Net) -> None:
    pod = net.pod()
    conf = net.conf(mtu=1400, ipam={"routes": [{"dst": "10.0.0.0/8"}]})
    res = net.call("ADD", pod, conf)
    assert res.rc == 0, res.stdout + res.stderr
    out = res.json
    assert out["cniVersion"] == "1.1.0"
    bridge_if, host_if, pod_if = out["interfaces"]
    assert bridge_if["name"] == net.bridge
    assert host_if["name"].startswith("loxi") and len(host_if["name"]) == 15
    assert pod_if == {"name": "eth0", "mac": pod_if["mac"], "mtu": 1400, "sandbox": pod.path}
    assert out["ips"] == [{"address": "10.99.0.2/24", "gateway": "10.99.0.1", "interface": 2}]
    assert out["routes"] == [{"dst": "10.0.0.0/8"}]

    with pod.ipr() as ns:
        (eth0,) = ns.get_links(ifname="eth0")
        assert eth0.get("IFLA_MTU") == 1400
        assert eth0.get("IFLA_ADDRESS") == pod_if["mac"]
        assert eth0["flags"] & 1  # IFF_UP
        addrs = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ns.get_addr(index=eth0["index"])}
        assert ("10.99.0.2", 24) in addrs
        routes = {
            (r.get("RTA_DST"), r["dst_len"], r.get("RTA_GATEWAY"))
            for r in ns.get_routes(family=2, oif=eth0["index"])
        }
        assert ("10.0.0.0", 8, "10.99.0.1") in routes

    links = host_links()
    host = links[host_if["name"]]
    bridge = links[net.bridge]
    assert host.get("IFLA_MASTER") == bridge["index"]
    assert host.get("IFLA_MTU") == 1400
    assert host.get("IFLA_ADDRESS") == host_if["mac"]
    assert bridge.get("IFLA_ADDRESS") == bridge_if["mac"]
    out_ip = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", net.bridge],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "10.99.0.1/24" in out_ip
    assert net.reservations() == {"10.99.0.2": f"{pod.container_id}\r\neth0"}

    res = net.call("DEL", pod, conf)
    assert res.rc == 0 and res.stdout == "", res.stdout + res.stderr
    with pod.ipr() as ns:
        assert ns.get_links(ifname="eth0") == () or not ns.link_lookup(ifname="eth0")
    assert host_if["name"] not in host_links()
    assert net.reservations() == {}
    # DEL is idempotent, also without a netns
    assert net.call("DEL", pod, conf).rc == 0
    assert net.call("DEL", pod, conf, netns="").rc == 0


def test_pods_reach_each_other_and_the_gateway(net: Net) -> None:
    conf = net.conf()
    a, b = net.pod(), net.pod()
    ra, rb = net.call("ADD", a, conf), net.call("ADD", b, conf)
    assert ra.rc == 0 and rb.rc == 0, ra.stdout + rb.stdout
    ip_b = ipaddress.ip_interface(rb.json["ips"][0]["address"]).ip
    assert a.sh("ping", "-c", "3", "-i", "0.2", "-W", "2", str(ip_b)).returncode == 0
    assert a.sh("ping", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.1").returncode == 0
    assert b.sh("ping", "-c", "3", "-i", "0.2", "-W", "2", "10.99.0.1").returncode == 0
    for pod in (a, b):
        assert net.call("DEL", pod, conf).rc == 0
    assert links_of_bridge(net.bridge) == []
    assert net.reservations() == {}


def test_del_after_netns_is_gone_releases_everything(net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    res = net.call("ADD", pod, conf)
    assert res.rc == 0
    host_name = res.json["interfaces"][1]["name"]
    subprocess.run(["ip", "netns", "del", pod.name], check=True)
    assert net.call("DEL", pod, conf).rc == 0
    assert net.call("DEL", pod, conf, netns="").rc == 0
    assert host_name not in host_links()
    assert net.reservations() == {}


def test_del_when_the_netns_path_is_left_as_a_plain_file_releases_everything(net: Net) -> None:
    """`ip netns del` and runtimes unmount a netns before they unlink its file; one killed in
    between leaves a plain file at CNI_NETNS. DEL must still succeed (found by the chaos run,
    tests/chaos, racing a DEL with a netns deletion)."""
    conf = net.conf()
    pod = net.pod()
    res = net.call("ADD", pod, conf)
    assert res.rc == 0
    host_name = res.json["interfaces"][1]["name"]
    subprocess.run(["umount", pod.path], check=True)  # the file stays; the netns dies
    deadline = time.monotonic() + 10
    while host_name in host_links() and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel destroys the netns, and the pair, asynchronously
    assert net.call("DEL", pod, conf).rc == 0
    assert net.reservations() == {}
    assert net.call("ADD", pod, conf).json["code"] == 4  # ADD still says what is wrong


def test_del_with_empty_netns_while_pod_lives_removes_host_veth(net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    res = net.call("ADD", pod, conf)
    host_name = res.json["interfaces"][1]["name"]
    assert net.call("DEL", pod, conf, netns="").rc == 0
    assert host_name not in host_links()
    with pod.ipr() as ns:
        assert not ns.link_lookup(ifname="eth0")
    assert net.reservations() == {}


def test_second_add_of_same_ifname_fails_without_leaking(net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    first = net.call("ADD", pod, conf)
    assert first.rc == 0
    # The same ADD again (a runtime retrying after a timeout): the first call's result, and
    # nothing new made.
    again = net.call("ADD", pod, conf)
    assert again.rc == 0 and again.json == first.json, again.stdout
    # Another attachment wanting that ifname in that netns, or the same one with another
    # config: the interface exists.
    other = net.call("ADD", pod, conf, container_id="someoneelse")
    assert other.rc != 0 and other.json["code"] == 101
    changed = net.call("ADD", pod, {**conf, "mtu": 1400})
    assert changed.rc != 0 and changed.json["code"] == 101
    assert len(net.reservations()) == 1
    assert links_of_bridge(net.bridge) == [first.json["interfaces"][1]["name"]]
    assert net.call("DEL", pod, conf).rc == 0


def test_two_interfaces_in_one_pod(net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    r0, r1 = net.call("ADD", pod, conf), net.call("ADD", pod, conf, ifname="net1")
    assert r0.rc == 0 and r1.rc == 0
    assert r0.json["interfaces"][1]["name"] != r1.json["interfaces"][1]["name"]
    assert len(net.reservations()) == 2
    assert net.call("DEL", pod, conf, ifname="net1").rc == 0
    with pod.ipr() as ns:
        assert ns.link_lookup(ifname="eth0") and not ns.link_lookup(ifname="net1")
    assert list(net.reservations().values()) == [f"{pod.container_id}\r\neth0"]
    assert net.call("DEL", pod, conf).rc == 0
