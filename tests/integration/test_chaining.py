"""loxi-cni first in a conflist, followed by the reference portmap, bandwidth, tuning, firewall.

The test plays libcni: ADD runs the plugins in order passing prevResult, CHECK runs them all
with the final result, DEL runs them in reverse.
"""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

from .conftest import REFERENCE_DIR, Call, Net, Pod, host_links, run_plugin

SERVER = (
    "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', {port})); s.listen(1); c, _ = s.accept(); c.sendall(b'pod'); c.close()"
)
HOST_PORT = 18089
POD_PORT = 8089


def _plugin_path(plugin_type: str) -> str:
    return (
        "/opt/cni/bin/loxi-cni" if plugin_type == "loxi-cni" else f"{REFERENCE_DIR}/{plugin_type}"
    )


def _conflist(net: Net) -> dict[str, Any]:
    return {
        "cniVersion": "1.1.0",
        "name": net.name,
        "plugins": [
            {k: v for k, v in net.conf().items() if k not in ("cniVersion", "name")},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_filter": "1"}},
            {"type": "firewall", "backend": "iptables"},
        ],
    }


RUNTIME_CONFIG = {
    "portMappings": [{"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}],
    "bandwidth": {
        "ingressRate": 1_000_000,
        "ingressBurst": 100_000,
        "egressRate": 1_000_000,
        "egressBurst": 100_000,
    },
}


def _member(conflist: dict[str, Any], plugin: dict[str, Any], prev: Any) -> dict[str, Any]:
    conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
    caps = plugin.get("capabilities", {})
    runtime = {k: v for k, v in RUNTIME_CONFIG.items() if caps.get(k)}
    if runtime:
        conf["runtimeConfig"] = runtime
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def _run_list(command: str, conflist: dict[str, Any], pod: Pod, prev: Any = None) -> Call:
    plugins = conflist["plugins"]
    order = list(reversed(plugins)) if command == "DEL" else plugins
    result = prev
    last = Call(0, "", "")
    for plugin in order:
        last = run_plugin(
            command,
            _member(conflist, plugin, result if command != "DEL" else prev),
            container_id=pod.container_id,
            netns=pod.path,
            plugin=_plugin_path(plugin["type"]),
        )
        assert last.rc == 0 or command == "CHECK", (plugin["type"], last.stdout, last.stderr)
        if last.rc:
            return last
        if command == "ADD":
            result = last.json
    return Call(0, last.stdout if command == "ADD" else "", "")


def test_chain_add_check_del(net: Net) -> None:
    conflist = _conflist(net)
    pod = net.pod()
    final = _run_list("ADD", conflist, pod).json
    pod_ip = final["ips"][0]["address"].split("/")[0]
    try:
        _exercise(net, conflist, pod, final)
    finally:
        deleted = _run_list("DEL", conflist, pod, prev=final)
    assert deleted.rc == 0
    assert final["interfaces"][1]["name"] not in host_links()
    assert net.reservations() == {}
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert pod_ip not in _filter_rules(), "firewall rules outlived DEL"
    assert pod.container_id not in nat and f"{HOST_PORT}" not in nat


def _filter_rules() -> str:
    return subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True).stdout


def _exercise(net: Net, conflist: dict[str, Any], pod: Pod, final: dict[str, Any]) -> None:
    pod_ip = final["ips"][0]["address"].split("/")[0]
    host_veth = final["interfaces"][1]["name"]

    # firewall let the pod's traffic through in its own chain
    assert f"-A CNI-FORWARD -d {final['ips'][0]['address'].split('/')[0]}/32" in _filter_rules()
    # tuning applied its sysctl inside the pod
    assert pod.sh("sysctl", "-n", "net.ipv4.conf.eth0.arp_filter").stdout.strip() == "1"
    # bandwidth installed its qdisc on the host veth (ingress shaping) and an ifb for egress
    qdisc = subprocess.run(
        ["tc", "qdisc", "show", "dev", host_veth], capture_output=True, text=True, check=True
    ).stdout
    assert "tbf" in qdisc
    # portmap: a connection to the host port reaches a server in the pod
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            pod.name,
            "/usr/bin/python3",
            "-c",
            SERVER.format(port=POD_PORT),
        ]
    )
    try:
        data = b""
        for _ in range(50):
            try:
                with socket.create_connection(("10.99.0.1", HOST_PORT), timeout=2) as conn:
                    data = conn.recv(16)
                break
            except OSError:
                time.sleep(0.1)
        assert data == b"pod", f"hostPort {HOST_PORT} did not reach {pod_ip}:{POD_PORT}"
    finally:
        server.kill()
        server.wait()

    check = _run_list("CHECK", conflist, pod, prev=final)
    assert check.rc == 0, check.stdout
    # tamper with what loxi-cni made: CHECK over the list now fails, naming it
    subprocess.run(["ip", "-n", pod.name, "addr", "flush", "dev", "eth0"], check=True)
    bad = _run_list("CHECK", conflist, pod, prev=final)
    assert bad.rc != 0 and "address" in bad.json["msg"]
