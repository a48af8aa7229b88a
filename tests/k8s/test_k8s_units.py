"""Kubernetes mode without a cluster: the CNI config rendering, the resource and annotation
shapes, the watch loop's resume / relist / backoff, and the orphan release timing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2 as httpx
import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status

from loxicni.k8s import attachments, cniconf, group
from loxicni.k8s.backoff import Backoff
from loxicni.k8s.controller import Controller
from loxicni.k8s.options import KubeOptions
from loxicni.k8s.pods import PodInfo
from loxicni.k8s.watcher import Watcher
from loxicni.plugin import records
from loxicni.plugin.release import RELEASED, Outcome

TEMPLATE = {
    "cniVersion": "1.0.0",
    "name": "pods",
    "plugins": [
        {
            "type": "loxi-cni",
            "bridge": "br-k",
            "mtu": 1450,
            "ipam": {"type": "host-local", "subnet": "192.0.2.0/24", "dataDir": "/var/lib/cni/p"},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


# ------------------------------------------------------------------------------ cniconf
def test_render_puts_the_pod_cidrs_in_the_ipam_and_keeps_the_rest() -> None:
    out = cniconf.render(TEMPLATE, ["10.244.3.0/24", "fd00:244:3::/64"])
    plugin = out["plugins"][0]
    assert plugin["ipam"] == {
        "type": "host-local",
        "dataDir": "/var/lib/cni/p",
        "ranges": [[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:244:3::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
    }
    assert (plugin["bridge"], plugin["mtu"]) == ("br-k", 1450)
    assert out["plugins"][1] == TEMPLATE["plugins"][1]
    assert TEMPLATE["plugins"][0]["ipam"]["subnet"] == "192.0.2.0/24"  # template untouched


def test_render_wraps_a_single_config_and_keeps_given_routes() -> None:
    conf = {"cniVersion": "0.4.0", "name": "n", "type": "loxi-cni",
            "ipam": {"type": "host-local", "routes": [{"dst": "10.0.0.0/8"}],
                     "ranges": [[{"subnet": "192.0.2.0/24", "gateway": "192.0.2.9"}]]}}  # fmt: skip
    out = cniconf.render(conf, ["10.244.4.7/24", "10.244.9.0/24"])
    assert (out["cniVersion"], out["name"]) == ("0.4.0", "n")
    (plugin,) = out["plugins"]
    # One range set per family (the first of each), normalised to its network.
    assert plugin["ipam"]["ranges"] == [[{"subnet": "10.244.4.0/24"}]]
    assert plugin["ipam"]["routes"] == [{"dst": "10.0.0.0/8"}]


@pytest.mark.parametrize(
    ("template", "cidrs", "why"),
    [
        ({"plugins": [{"type": "bridge"}]}, ["10.0.0.0/24"], "no plugin of type"),
        ({"type": "loxi-cni", "ipam": {"type": "dhcp"}}, ["10.0.0.0/24"], "host-local"),
        ({"type": "loxi-cni"}, [], "no pod CIDR"),
        ({"type": "loxi-cni"}, ["10.0.0.300/24"], "not a network"),
        ({"plugins": "x"}, ["10.0.0.0/24"], "not a list"),
    ],
)
def test_render_refuses_what_cannot_carry_the_cidr(
    template: dict[str, Any], cidrs: list[str], why: str
) -> None:
    with pytest.raises(cniconf.TemplateError, match=why):
        cniconf.render(template, cidrs)


def _with(**fields: Any) -> dict[str, Any]:
    """TEMPLATE with its loxi-cni entry changed; ``ipam`` fields are merged into its ipam."""
    template = json.loads(json.dumps(TEMPLATE))
    plugin = template["plugins"][0]
    plugin["ipam"].update(fields.pop("ipam", {}))
    plugin.update(fields)
    return dict(template)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"mtu": 1400, "dnsServer": "x"}, "keys loxi-cni does not take: dnsServer"),
        ({"runtimeConfig": {"mac": "02:00:00:00:00:01"}}, "does not take: runtimeConfig"),
        ({"ipam": {"exec": "/bin/sh"}}, "does not take: ipam.exec"),
        ({"logFile": "/etc/cron.d/loxi"}, "logFile '/etc/cron.d/loxi' must be a path directly"),
        ({"logFile": "/var/log/loxi-cni/../../../etc/x"}, "logFile"),
        ({"logFile": "/var/log/loxi-cni/sub/x.log"}, "directly in /var/log/loxi-cni"),
        ({"logFile": "/var/log/loxi-cni"}, "logFile"),
        ({"logFile": 7}, "logFile 7"),
        ({"ipam": {"dataDir": "/etc"}}, "ipam.dataDir '/etc' must be a path in /var/lib/cni"),
        ({"ipam": {"dataDir": "/var/lib/cni/../../../etc"}}, "ipam.dataDir"),
        ({"ipam": {"dataDir": "/var/lib/cni//x"}}, "ipam.dataDir"),
        ({"ipam": {"dataDir": "var/lib/cni/x"}}, "ipam.dataDir"),
        ({"ipam": {"resolvConf": "/etc/shadow"}}, "ipam.resolvConf '/etc/shadow'"),
    ],
)
def test_render_refuses_what_loxi_cni_does_not_take(fields: dict[str, Any], why: str) -> None:
    """The root agent writes or reads these paths on the template's say."""
    with pytest.raises(cniconf.TemplateError, match=re.escape(why)):
        cniconf.render(_with(**fields), ["10.244.3.0/24"])


def test_render_keeps_paths_in_their_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOXI_CNI_LOG_DIR", str(tmp_path / "log"))
    fields = {
        "logFile": str(tmp_path / "log" / "pods.log"),
        "ipam": {"dataDir": "/var/lib/cni/networks", "resolvConf": "/etc/resolv.conf"},
    }
    plugin = cniconf.render(_with(**fields), ["10.244.3.0/24"])["plugins"][0]
    assert plugin["logFile"] == fields["logFile"]
    assert (plugin["ipam"]["dataDir"], plugin["ipam"]["resolvConf"]) == (
        "/var/lib/cni/networks",
        "/etc/resolv.conf",
    )


def test_render_refuses_paths_through_symlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "cni"
    root.mkdir()
    (root / "store").symlink_to(elsewhere)
    template = _with(ipam={"dataDir": str(root / "store" / "pods")})
    with pytest.raises(cniconf.TemplateError, match="passes a symlink"):
        cniconf.render(template, ["10.244.3.0/24"], data_root=str(root))
    assert cniconf.render(
        _with(ipam={"dataDir": str(root / "pods")}), ["10.0.0.0/24"], data_root=str(root)
    )

    log_dir = tmp_path / "log"
    log_dir.mkdir()
    monkeypatch.setenv("LOXI_CNI_LOG_DIR", str(log_dir))
    (log_dir / "pods.log").symlink_to("/etc/passwd")
    with pytest.raises(cniconf.TemplateError, match="passes a symlink"):
        cniconf.render(_with(logFile=str(log_dir / "pods.log")), ["10.244.3.0/24"])

    # The ConfigMap's own volume: its files are symlinks into its ..data directory.
    volume = tmp_path / "configmap"
    (volume / "..2026_12_01").mkdir(parents=True)
    (volume / "..2026_12_01" / "resolv.conf").write_text("nameserver 10.96.0.10\n")
    (volume / "..data").symlink_to("..2026_12_01")
    (volume / "resolv.conf").symlink_to("..data/resolv.conf")
    (volume / "passwd").symlink_to("/etc/passwd")
    monkeypatch.setattr(cniconf, "TEMPLATE_DIR", str(volume))
    inside = _with(ipam={"resolvConf": str(volume / "resolv.conf")})
    assert cniconf.render(inside, ["10.244.3.0/24"])["plugins"][0]["ipam"]["resolvConf"]
    with pytest.raises(cniconf.TemplateError, match="passes a symlink"):
        cniconf.render(_with(ipam={"resolvConf": str(volume / "passwd")}), ["10.244.3.0/24"])


def test_write_atomically_writes_only_changes(tmp_path: Path) -> None:
    path = tmp_path / "net.d" / "10-loxi-cni.conflist"
    conf = cniconf.render(TEMPLATE, ["10.244.3.0/24"])
    assert cniconf.write_atomically(path, conf) is True
    assert json.loads(path.read_text()) == conf
    inode = path.stat().st_ino
    assert cniconf.write_atomically(path, conf) is False
    assert path.stat().st_ino == inode
    assert cniconf.write_atomically(path, cniconf.render(TEMPLATE, ["10.244.5.0/24"])) is True
    assert path.stat().st_ino != inode  # replaced by a rename, never rewritten in place
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_load_template_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text("[1]")
    with pytest.raises(cniconf.TemplateError, match=str(bad)):
        cniconf.load_template(bad)
    assert cniconf.load_template(None)["plugins"][0]["type"] == "loxi-cni"


# -------------------------------------------------------------------------- attachments
def _record(args: str, **kw: Any) -> records.Record:
    base: dict[str, Any] = {
        "network": "pods",
        "container_id": "c" * 64,
        "ifname": "eth0",
        "netns": "/var/run/netns/x",
        "config": {"cniVersion": "1.0.0", "name": "pods", "type": "loxi-cni", "bridge": "br9",
                   "vlan": 12, "ipam": {"type": "host-local"}},
        "cni_args": args,
        "cni_path": ["/opt/cni/bin"],
        "state": records.READY,
        "host_veth": "loxi0123456789a",
        "ips": ["10.244.3.5/24", "fd00::5/64"],
        "mac": "0a:58:0a:f4:03:05",
        "mtu": 1450,
        "gateways": ["10.244.3.1", "fd00::1"],
    }  # fmt: skip
    base.update(kw)
    return records.Record(**base)


K8S_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_UID=u-1"


def test_attachment_from_record() -> None:
    att = attachments.from_record(_record(K8S_ARGS))
    assert att is not None
    assert att.pod == attachments.PodRef("ns1", "web-0", "u-1")
    assert (att.bridge, att.vlan) == ("br9", 12)
    assert att.resource_name == f"web-0-eth0-{att.key[:6]}"
    assert attachments.from_record(_record("IgnoreUnknown=1")) is None  # not a Kubernetes pod
    assert attachments.from_record(_record(K8S_ARGS, state=records.ADDING)) is None
    assert attachments.from_record(_record("bad")) is None


def test_resource_names_are_valid_and_unique() -> None:
    att = attachments.from_record(_record(K8S_ARGS.replace("web-0", "x" * 253), ifname="Net_1"))
    assert att is not None
    name = att.resource_name
    assert len(name) <= 253 and name.endswith(f"-net-1-{att.key[:6]}")
    other = attachments.from_record(_record(K8S_ARGS, container_id="d" * 64))
    first = attachments.from_record(_record(K8S_ARGS))
    assert other is not None and first is not None
    assert other.resource_name != first.resource_name


def test_resource_body_and_network_status() -> None:
    att = attachments.from_record(_record(K8S_ARGS))
    assert att is not None
    body = attachments.resource_body(att, "node-1", "u-1")
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert body["metadata"]["labels"] == {group.NODE_LABEL: "node-1"}
    assert body["spec"]["hostInterface"] == "loxi0123456789a"
    assert (body["spec"]["mac"], body["spec"]["mtu"], body["spec"]["vlan"]) == (
        "0a:58:0a:f4:03:05", 1450, 12,
    )  # fmt: skip
    assert body["status"] == {"state": "Ready"}
    net1 = attachments.from_record(_record(K8S_ARGS, ifname="net1", network="side"))
    assert net1 is not None
    assert attachments.network_status([net1, att]) == [
        {"name": "pods", "interface": "eth0", "ips": ["10.244.3.5", "fd00::5"],
         "mac": "0a:58:0a:f4:03:05", "mtu": 1450, "default": True,
         "gateway": ["10.244.3.1", "fd00::1"], "dns": {}},
        {"name": "side", "interface": "net1", "ips": ["10.244.3.5", "fd00::5"],
         "mac": "0a:58:0a:f4:03:05", "mtu": 1450, "default": False,
         "gateway": ["10.244.3.1", "fd00::1"], "dns": {}},
    ]  # fmt: skip
    assert len(group.node_label("n" * 200)) <= 63


# ------------------------------------------------------------------------------ watcher
def _obj(name: str, version: str) -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(name=name, resourceVersion=version))


class Listing(list[Any]):
    def __init__(self, items: list[Any], version: str) -> None:
        super().__init__(items)
        self.resourceVersion = version


class FakeClient:
    """Scripted list and watch answers; records what was asked."""

    def __init__(self, script: list[Any], stop: threading.Event) -> None:
        self.script = script
        self.stop = stop
        self.calls: list[tuple[str, str | None]] = []

    def _next(self) -> Any:
        if not self.script:
            self.stop.set()
            return []
        return self.script.pop(0)

    def list(self, resource: Any, **kw: Any) -> Listing:
        self.calls.append(("list", None))
        step = self._next()
        assert isinstance(step, Listing), f"expected a list, the script says {step}"
        return step

    def watch(self, resource: Any, **kw: Any) -> Iterator[tuple[str, Any]]:
        self.calls.append(("watch", kw["resource_version"]))
        assert kw["fields"] == {"spec.nodeName": "n1"}
        step = self._next()
        if isinstance(step, Exception):
            raise step
        yield from step


def gone() -> ApiError:
    return ApiError(status=Status(code=410, message="too old resource version"))


def test_watch_resumes_and_relists_after_410() -> None:
    stop = threading.Event()
    client = FakeClient(
        [
            Listing([_obj("a", "5")], "10"),
            [("ADDED", _obj("b", "11")), ("MODIFIED", _obj("a", "12"))],  # server timeout
            httpx.ReadError("connection reset"),  # resume from 12 after a backoff
            gone(),  # 12 is compacted away: relist
            Listing([_obj("b", "19")], "20"),
            [("DELETED", _obj("b", "21"))],
        ],
        stop,
    )
    lists: list[list[str]] = []
    events: list[tuple[str, str]] = []
    watcher = Watcher(
        client,  # type: ignore[arg-type]
        object,
        fields={"spec.nodeName": "n1"},
        on_list=lambda objs: lists.append([o.metadata.name for o in objs]),
        on_event=lambda kind, obj: events.append((kind, obj.metadata.name)),
        stop=stop,
    )
    watcher.backoff = Backoff(first=0.01, cap=0.02)
    thread = watcher.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert lists == [["a"], ["b"]]
    assert events == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert client.calls == [
        ("list", None), ("watch", "10"), ("watch", "12"), ("watch", "12"),
        ("list", None), ("watch", "20"), ("watch", "21"),
    ]  # fmt: skip
    assert watcher.lists == 2


def test_backoff_grows_to_its_cap_and_resets() -> None:
    b = Backoff(first=1.0, cap=8.0)
    delays = [b.next_delay() for _ in range(8)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert delays[-1] >= 4.0 and delays[0] <= 1.0
    b.reset()
    assert b.next_delay() <= 1.0


# ------------------------------------------------------------------- controller: orphans
class FakeApi:
    def __init__(self) -> None:
        self.client = None
        self.node = "n1"
        self.applied: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], str] = {}
        self.annotations: dict[str, list[dict[str, Any]]] = {}

    def interfaces(self) -> dict[tuple[str, str], dict[str, Any]]:
        return dict(self.applied)

    def apply_interface(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.applied[(meta["namespace"], meta["name"])] = body

    def delete_interface(self, namespace: str, name: str) -> None:
        self.applied.pop((namespace, name), None)

    def mark_interface(self, namespace: str, name: str, state: str) -> bool:
        if (namespace, name) not in self.applied:
            return False
        self.applied[(namespace, name)]["status"] = {"state": state}
        return True

    def pod_uids(self, namespace: str, name: str) -> set[str]:
        uid = self.pods.get((namespace, name))
        return {uid} if uid else set()

    def annotate_network_status(
        self, namespace: str, name: str, uid: str, status: list[dict[str, Any]]
    ) -> bool:
        self.annotations[uid] = status
        return True


def test_orphans_are_released_only_after_the_grace_period_and_a_confirming_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOXI_CNI_STATE_DIR", str(tmp_path))
    uid = str(uuid.uuid4())
    records.save(_record(K8S_ARGS.replace("u-1", uid)))
    api = FakeApi()
    released: list[str] = []

    def release(record: records.Record, still: Callable[[records.Record], bool]) -> Outcome:
        assert still(record)
        released.append(record.container_id)
        records.remove(record.network, record.container_id, record.ifname)
        return Outcome(RELEASED)

    options = KubeOptions(node_name="n1", conf_dir=None, grace_period=60.0, resync=1000.0)
    clock = [1000.0]
    monkeypatch.setattr("loxicni.k8s.controller.time.monotonic", lambda: clock[0])
    ctl = Controller(options, api, release_fn=release)  # type: ignore[arg-type]
    pod = PodInfo("ns1", "web-0", uid, None, False)

    # Before the Pod list arrived, absence means nothing: published, annotated, kept.
    assert ctl.sync().applied == 1
    ctl.pods.replace([pod])
    report = ctl.sync()
    assert (report.applied, report.annotated) == (0, 1)
    assert api.annotations[uid][0]["interface"] == "eth0"
    ((where, body),) = api.applied.items()
    assert body["status"]["state"] == "Ready"

    # The Pod goes; no DEL comes. Marked Orphaned, kept through the grace period.
    ctl.pods.replace([])
    ctl.sync()
    assert api.applied[where]["status"]["state"] == "Orphaned" and released == []
    clock[0] += 59
    ctl.sync()
    assert released == []
    # Due, but the API still has that Pod (the watch lagged): nothing is released.
    clock[0] += 2
    api.pods[("ns1", "web-0")] = uid
    ctl.sync()
    assert released == [] and ctl.orphan_since == {}
    # Really gone (a new Pod of the same name has another UID): released, resource deleted.
    api.pods[("ns1", "web-0")] = str(uuid.uuid4())
    ctl.sync()
    clock[0] += 61
    report = ctl.sync()
    assert released == ["c" * 64] and len(report.released) == 1
    assert api.applied == {} and list(records.all_records()) == []
    assert ctl.status()["released"] == 1


def test_the_agent_without_kubernetes_mode_never_loads_the_client() -> None:
    code = (
        "import sys\n"
        "import loxicni.cli, loxicni.agent.run, loxicni.main\n"
        "loxicni.cli.build_parser().parse_args(['agent'])\n"
        "print(sorted(m for m in ('lightkube', 'httpx2', 'yaml') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


class SchemaApi(FakeApi):
    """Refuses what the CRD's schema refuses (an interface without addresses), as the API
    server does: 422 Invalid."""

    def apply_interface(self, body: dict[str, Any]) -> None:
        if not body["spec"]["ips"]:
            raise ApiError(status=Status(code=422, message="spec.ips: should have at least 1"))
        super().apply_interface(body)


def test_sync_skips_what_it_cannot_read_or_the_api_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOXI_CNI_STATE_DIR", str(tmp_path))
    uids = {name: str(uuid.uuid4()) for name in ("fine", "damaged", "emptied")}
    saved = {}
    for i, (name, uid) in enumerate(uids.items()):
        args = K8S_ARGS.replace("web-0", name).replace("u-1", uid)
        saved[name] = _record(args, container_id=str(i) * 64)
        records.save(saved[name])
    api = SchemaApi()
    options = KubeOptions(node_name="n1", conf_dir=None, grace_period=60.0, resync=1000.0)
    ctl = Controller(options, api)  # type: ignore[arg-type]
    ctl.pods.replace([PodInfo("ns1", name, uid, None, False) for name, uid in uids.items()])
    assert ctl.sync().applied == 3
    published = dict(api.applied)

    # One record is damaged, one lost its addresses, odd entries appear beside them.
    directory = tmp_path / "attachments"
    for name, change in (("damaged", {"mtu": "1500"}), ("emptied", {"ips": None})):
        path = directory / f"{saved[name].key}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    (directory / "x.json").mkdir()
    (directory / "garbage.json").write_bytes(b"\xff")
    fine = saved["fine"]
    fine.ips = ["10.244.3.9/24"]  # and the fine one changes: it must still get through
    records.save(fine)

    report = ctl.sync()
    assert report.applied == 1 and report.deleted == 0
    # The damaged record's resource stays as it was; the refused one keeps its last version.
    assert api.applied.keys() == published.keys()
    fine_name = next(w for w in published if w[1].startswith("fine-"))
    assert api.applied[fine_name]["spec"]["ips"] == ["10.244.3.9/24"]
    damaged = next(w for w in published if w[1].startswith("damaged-"))
    assert api.applied[damaged] == published[damaged]
    assert api.annotations[uids["fine"]][0]["ips"] == ["10.244.3.9"]
    assert ctl.sync().applied == 0  # a refused resource is not sent again until it changes
