"""Bridge options, IPAM options and delegation, as the kernel and the store show them."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from .conftest import REFERENCE_DIR, Net, host_links, links_of_bridge, run_plugin


def test_mac_precedence_runtime_config_over_args_over_config(net: Net) -> None:
    pod = net.pod()
    conf = net.conf(mac="02:00:00:00:00:01", runtimeConfig={"mac": "02:00:00:00:00:03"})
    res = net.call("ADD", pod, conf, args="MAC=02:00:00:00:00:02")
    assert res.rc == 0, res.stdout
    assert res.json["interfaces"][2]["mac"] == "02:00:00:00:00:03"
    with pod.ipr() as ns:
        assert ns.get_links(ifname="eth0")[0].get("IFLA_ADDRESS") == "02:00:00:00:00:03"
    assert net.call("DEL", pod, conf).rc == 0

    pod2 = net.pod()
    conf2 = net.conf(mac="02:00:00:00:00:01")
    res = net.call("ADD", pod2, conf2, args="MAC=02:00:00:00:00:02")
    assert res.json["interfaces"][2]["mac"] == "02:00:00:00:00:02"
    assert net.call("DEL", pod2, conf2).rc == 0


def test_requested_ips_from_runtime_config_and_args(net: Net) -> None:
    pod = net.pod()
    conf = net.conf(runtimeConfig={"ips": ["10.99.0.50/24"]})
    res = net.call("ADD", pod, conf)
    assert res.rc == 0, res.stdout
    assert res.json["ips"][0]["address"] == "10.99.0.50/24"
    taken = net.call("ADD", net.pod(), conf)
    assert taken.rc != 0 and taken.json["code"] == 102
    pod3 = net.pod()
    res3 = net.call("ADD", pod3, net.conf(), args="IP=10.99.0.60")
    assert res3.json["ips"][0]["address"] == "10.99.0.60/24"
    assert sorted(net.reservations()) == ["10.99.0.50", "10.99.0.60"]
    for p, c in ((pod, conf), (pod3, net.conf())):
        assert net.call("DEL", p, c).rc == 0
    assert net.reservations() == {}


def test_hairpin_and_promisc(net: Net) -> None:
    pod = net.pod()
    conf = net.conf(hairpinMode=True)
    res = net.call("ADD", pod, conf)
    assert res.rc == 0
    host = res.json["interfaces"][1]["name"]
    detail = subprocess.run(
        ["ip", "-d", "link", "show", host], capture_output=True, text=True
    ).stdout
    assert "hairpin on" in detail
    assert net.call("DEL", pod, conf).rc == 0

    conf2 = net.conf(promiscMode=True)
    pod2 = net.pod()
    assert net.call("ADD", pod2, conf2).rc == 0
    assert host_links()[net.bridge]["flags"] & 0x100  # IFF_PROMISC
    assert net.call("DEL", pod2, conf2).rc == 0


def test_veth_prefix_and_default_gateway(net: Net) -> None:
    pod = net.pod()
    conf = net.conf(vethPrefix="pod", isDefaultGateway=True)
    res = net.call("ADD", pod, conf)
    assert res.rc == 0, res.stdout
    host = res.json["interfaces"][1]["name"]
    assert host.startswith("pod") and len(host) == 15
    assert {"dst": "0.0.0.0/0", "gw": "10.99.0.1"} in res.json["routes"]
    routes = pod.sh("ip", "route", "show", "default").stdout
    assert "default via 10.99.0.1 dev eth0" in routes
    assert net.call("DEL", pod, conf).rc == 0
    assert host not in host_links()


def test_dual_stack_without_dad(net: Net) -> None:
    pod, other = net.pod(), net.pod()
    conf = net.conf(
        ipam={"subnet": None, "ranges": [[{"subnet": "10.99.0.0/24"}], [{"subnet": "fd99:1::/64"}]]}
    )
    conf["ipam"].pop("subnet")
    ra, rb = net.call("ADD", pod, conf), net.call("ADD", other, conf)
    assert ra.rc == 0 and rb.rc == 0, ra.stdout
    addresses = [ip["address"] for ip in ra.json["ips"]]
    assert addresses == ["10.99.0.2/24", "fd99:1::2/64"]
    out = pod.sh("ip", "-6", "addr", "show", "dev", "eth0").stdout
    (line,) = [x for x in out.splitlines() if "fd99:1::2/64" in x]
    assert "tentative" not in line and "nodad" in line
    peer = rb.json["ips"][1]["address"].split("/")[0]
    assert pod.sh("ping", "-6", "-c", "1", "-W", "2", peer).returncode == 0
    for p in (pod, other):
        assert net.call("DEL", p, conf).rc == 0
    assert net.reservations() == {}


def test_ip_masq_rules_follow_the_attachment(net: Net) -> None:
    pod = net.pod()
    conf = net.conf(ipMasq=True)
    assert net.call("ADD", pod, conf).rc == 0
    table = subprocess.run(
        ["nft", "-j", "list", "table", "inet", "loxi-cni"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert pod.container_id in table and "masquerade" in table
    assert net.call("DEL", pod, conf).rc == 0
    table = subprocess.run(
        ["nft", "-j", "list", "table", "inet", "loxi-cni"], capture_output=True, text=True
    ).stdout
    assert pod.container_id not in table


def _recording_ipam(tmp: Path, log: Path) -> Path:
    """A real IPAM plugin (the reference host-local) behind a wrapper that logs each command."""
    directory = tmp / "cni-bin"
    directory.mkdir()
    wrapper = directory / "rec-ipam"
    wrapper.write_text(
        f'#!/bin/sh\necho "$CNI_COMMAND" >> {log}\nexec {REFERENCE_DIR}/host-local\n'
    )
    wrapper.chmod(0o755)
    return directory


def test_delegated_ipam_add_del_and_undo_on_failure(net: Net, tmp_path: Path) -> None:
    log = tmp_path / "ipam.log"
    cni_path = str(_recording_ipam(tmp_path, log))
    conf = net.conf("1.0.0", ipam={"type": "rec-ipam"})
    pod = net.pod()
    res = net.call("ADD", pod, conf, path=cni_path)
    assert res.rc == 0, res.stdout + res.stderr
    assert res.json["ips"][0]["address"] == "10.99.0.2/24"
    assert net.call("DEL", pod, conf, path=cni_path).rc == 0
    assert log.read_text().split() == ["ADD", "DEL"]
    assert net.reservations() == {}

    # a failure after IPAM (the bridge holds another address in the subnet) must undo the
    # allocation through the IPAM plugin's DEL
    clashing = f"{net.bridge}x"
    subprocess.run(["ip", "link", "add", clashing, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.99.0.200/24", "dev", clashing], check=True)
        bad = net.call("ADD", net.pod(), {**conf, "bridge": clashing}, path=cni_path)
        assert bad.rc != 0 and "already has" in bad.json["msg"], bad.stdout
        assert log.read_text().split() == ["ADD", "DEL", "ADD", "DEL"]
        assert net.reservations() == {}
        assert links_of_bridge(clashing) == []
    finally:
        subprocess.run(["ip", "link", "del", clashing], check=False)


def test_path_like_ipam_type_is_never_executed(net: Net, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\n")
    evil.chmod(0o755)
    for ipam_type in (str(evil), "../evil", f"..{os.sep}evil", "sub/evil"):
        pod = net.pod()
        res = net.call("ADD", pod, net.conf(ipam={"type": ipam_type}), path=str(tmp_path / "x"))
        assert res.rc != 0 and res.json["code"] == 7, res.stdout
    assert not marker.exists()
    assert links_of_bridge(net.bridge) == []


def test_gc_releases_exactly_the_stale_attachments(net: Net) -> None:
    conf = net.conf(ipMasq=True)
    pods = [net.pod() for _ in range(3)]
    results = [net.call("ADD", p, conf) for p in pods]
    assert all(r.rc == 0 for r in results)
    keep = pods[0]
    gc_conf = {
        **conf,
        "cni.dev/valid-attachments": [{"containerID": keep.container_id, "ifname": "eth0"}],
    }
    res = run_plugin("GC", gc_conf)
    assert res.rc == 0, res.stdout
    assert list(net.reservations().values()) == [f"{keep.container_id}\r\neth0"]
    names = host_links()
    assert results[0].json["interfaces"][1]["name"] in names
    for r in results[1:]:
        assert r.json["interfaces"][1]["name"] not in names
    table = subprocess.run(
        ["nft", "-j", "list", "table", "inet", "loxi-cni"], capture_output=True, text=True
    ).stdout
    assert keep.container_id in table
    assert pods[1].container_id not in table and pods[2].container_id not in table
    for pod in pods[1:]:  # nothing of a collected attachment is left, not even its lock file
        key = hashlib.sha256(f"{net.name}\0{pod.container_id}\0eth0".encode()).hexdigest()[:32]
        assert not Path(f"/run/loxi-cni/locks/{key}").exists()
    assert net.call("DEL", keep, conf).rc == 0


def test_gc_reads_the_older_attachments_key(net: Net) -> None:
    conf = net.conf()
    pods = [net.pod() for _ in range(2)]
    for p in pods:
        assert net.call("ADD", p, conf).rc == 0
    gc_conf = {
        **conf,
        "cni.dev/attachments": [{"containerID": pods[1].container_id, "ifname": "eth0"}],
    }
    assert run_plugin("GC", gc_conf).rc == 0
    assert list(net.reservations().values()) == [f"{pods[1].container_id}\r\neth0"]
    assert net.call("DEL", pods[1], conf).rc == 0


def test_status(net: Net, tmp_path: Path) -> None:
    res = run_plugin("STATUS", net.conf())
    assert res.rc == 0 and res.stdout == "", res.stdout
    log = tmp_path / "ipam.log"
    cni_path = str(_recording_ipam(tmp_path, log))
    res = run_plugin("STATUS", net.conf(ipam={"type": "rec-ipam"}), path=cni_path)
    assert res.rc == 0 and log.read_text().split() == ["STATUS"]
    down = Path(cni_path) / "down-ipam"
    down.write_text(
        '#!/bin/sh\necho \'{"cniVersion":"1.1.0","code":50,"msg":"pool offline"}\'\nexit 1\n'
    )
    down.chmod(0o755)
    res = run_plugin("STATUS", net.conf(ipam={"type": "down-ipam"}), path=cni_path)
    assert res.rc != 0 and res.json["code"] == 50 and res.json["msg"] == "pool offline"


def test_prev_result_of_an_earlier_plugin_is_merged(net: Net) -> None:
    pod = net.pod()
    earlier = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "lo", "sandbox": pod.path}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["10.96.0.10"]},
    }
    conf = net.conf(prevResult=earlier)
    res = net.call("ADD", pod, conf)
    assert res.rc == 0, res.stdout
    out = res.json
    assert out["interfaces"][0]["name"] == "lo"
    assert out["interfaces"][3]["name"] == "eth0"
    assert out["ips"][0] == {"address": "127.0.0.1/8", "interface": 0}
    assert out["ips"][1]["interface"] == 3
    assert out["dns"] == {"nameservers": ["10.96.0.10"]}
    assert net.call("DEL", pod, conf).rc == 0


def test_log_file_bridge_mac_pinned_and_forwarding(
    net: Net, tmp_path: Path, mode: str, agent_log_dir: Path
) -> None:
    # The agent writes a logFile only in its log directory; the plugin alone, anywhere.
    log = (agent_log_dir if mode == "agent" else tmp_path) / f"{net.name}.log"
    conf = net.conf(logFile=str(log))
    a, b = net.pod(), net.pod()
    ra = net.call("ADD", a, conf)
    assert ra.rc == 0
    bridge_mac = ra.json["interfaces"][0]["mac"]
    assert net.call("ADD", b, conf).rc == 0
    assert net.call("DEL", a, conf).rc == 0
    # the bridge keeps the MAC it was created with while ports come and go
    assert host_links()[net.bridge].get("IFLA_ADDRESS") == bridge_mac
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert net.call("DEL", b, conf).rc == 0
    text = log.read_text()
    assert f"ADD {net.name} {a.container_id}/eth0: 10.99.0.2/24" in text
    assert f"DEL {net.name} {b.container_id}/eth0" in text
