"""Removing loxi-cni from a node once its DaemonSet is gone (``loxi-cni uninstall``, on the
host, with the agent stopped).

The CNI config goes first, so the runtime reports its network not ready and the node takes no
new pod. Then every attachment whose pod is gone (its host veth with it) is released: address,
masquerade entries, host veth, record. A pod still attached means the node is in use: the
config is put back, nothing else is touched, and the pods are named (delete or drain them,
then run it again). A runtime can only stop such a pod's sandbox while a CNI config exists, so
removing it under live pods would leave them stuck terminating. With ``force`` they are
released too: their network goes at once, and their sandboxes can be stopped only once some
CNI config (another plugin's) is back.

Once no attachment is left: what the agent made for the node (``teardown``: the cross-node
overlay, the masquerade table's cluster networks, then the table if no one's element is left in
it, the bridges the config and records name if no port is left on them), each network's
host-local directory if empty, the records and the state dir, the run dir (locks, socket), the
executable in the CNI bin dir and the trees ``install-host`` put in the tree dir. Logs
(``/var/log/loxi-cni``) stay.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loxicni.agent import install, state, teardown
from loxicni.base import bundle, paths
from loxicni.ipam.config import DEFAULT_DATA_DIR
from loxicni.ipam.store import Store
from loxicni.k8s.attachments import pod_of
from loxicni.net import masq
from loxicni.net.overlay import OverlayConfig
from loxicni.plugin import locks, records
from loxicni.plugin.config import DEFAULT_BRIDGE
from loxicni.plugin.release import RELEASED, release


@dataclass
class Uninstalled(teardown.TeardownReport):
    in_use: list[str] = field(default_factory=list)  # pods attached: refused, nothing removed
    conf: str = ""  # the CNI config removed
    released: list[str] = field(default_factory=list)  # attachments, "network/container/if"
    stores: list[str] = field(default_factory=list)  # host-local network directories
    executable: str = ""
    trees: list[str] = field(default_factory=list)


@dataclass
class _Network:
    """What a loxi-cni network makes on the node besides its pods' own links."""

    bridges: set[str] = field(default_factory=set)
    stores: set[tuple[Path, str]] = field(default_factory=set)  # (dataDir, network name)

    def add(self, conf: Any, name: str) -> None:
        """One loxi-cni plugin config (a conflist's entry, or a record's whole config)."""
        if not isinstance(conf, dict) or conf.get("type") != install.PLUGIN_NAME:
            return
        self.bridges.add(str(conf.get("bridge") or DEFAULT_BRIDGE))
        ipam = conf.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local" and name:
            data_dir = ipam.get("dataDir")
            self.stores.add((Path(data_dir) if data_dir else DEFAULT_DATA_DIR, name))

    def add_conf(self, conf: Any) -> None:
        """A .conflist or a single plugin's .conf, as a runtime reads it."""
        if not isinstance(conf, dict):
            return
        plugins = conf.get("plugins", [conf])
        for plugin in plugins if isinstance(plugins, list) else []:
            self.add(plugin, str(conf.get("name") or ""))


def _attached(record: records.Record) -> str:
    pod = pod_of(record.cni_args)
    who = f"pod {pod.namespace}/{pod.name}" if pod else f"container {record.container_id}"
    return f"{who} ({record.network}, {record.ifname}, {record.host_veth or 'no veth'})"


def uninstall(
    conf_path: Path | None,
    tree_dir: Path,
    cni_bin_dir: Path,
    force: bool,
    overlay: OverlayConfig | None = None,
) -> Uninstalled:
    """Remove loxi-cni from this node (module docstring); paths as the host sees them.
    ``overlay``: the overlay's settings, should the agent have left no record of them."""
    done = Uninstalled()
    network = _Network()
    conf_bytes = None
    if conf_path is not None and conf_path.exists():
        conf_bytes = conf_path.read_bytes()
        try:
            network.add_conf(json.loads(conf_bytes))
        except ValueError as exc:
            done.kept.append(f"{conf_path}: not JSON ({exc}), its bridges unknown")
        conf_path.unlink()
        done.conf = str(conf_path)

    # Attachments whose pod is gone are released; an ADD under way finishes first (the
    # release waits on its lock) and is then alive.
    reconciled = state.reconcile()
    done.released += reconciled.released
    scan = records.scan()
    for record in scan.records:
        network.add(record.config, record.network)
    if (scan.records or scan.unreadable) and not force:
        done.in_use = [_attached(r) for r in scan.records]
        done.in_use += [f"unreadable record {bad.key} ({bad.why})" for bad in scan.unreadable]
        if conf_bytes is not None and conf_path is not None:
            conf_path.write_bytes(conf_bytes)
            done.conf = ""
        return done
    for record in scan.records:
        outcome = release(record)
        name = f"{record.network}/{record.container_id}/{record.ifname}"
        if outcome.status == RELEASED:
            done.released.append(name)
        else:
            done.kept.append(f"attachment {name}: {outcome.status} {outcome.error}".rstrip())
    for bad in scan.unreadable:
        done.kept.append(f"record {bad.key}: unreadable ({bad.why}), left as it is")

    _remove_network(network, overlay, done)
    _remove_state(done)
    _remove_install(tree_dir, cni_bin_dir, done)
    return done


def _remove_network(network: _Network, overlay: OverlayConfig | None, done: Uninstalled) -> None:
    teardown.teardown(sorted(network.bridges), overlay, done)
    for data_dir, name in sorted(network.stores):
        store = Store(data_dir, name)
        if store.remove_if_empty():
            done.stores.append(str(store.dir))
        else:
            done.kept.append(f"{store.dir}: addresses still reserved")


def _remove_state(done: Uninstalled) -> None:
    """The records' and state dirs if empty; the run dir's socket and free locks, then it."""
    socket = Path(paths.socket_path())
    if socket.is_socket():
        socket.unlink()  # no agent answers on it (the caller asked)
    locks.remove_unused(records.exists)  # every attachment is released: all but the unreadable
    if done.masquerade_table:  # gone: no one masquerades through it any more
        masq.remove_lock()
    for directory in (
        Path(paths.records_dir()),
        Path(paths.state_dir()),
        Path(paths.locks_dir()),
        Path(paths.run_dir()),
    ):
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            done.kept.append(f"{directory}: {exc.strerror}")


def _remove_install(tree_dir: Path, cni_bin_dir: Path, done: Uninstalled) -> None:
    """The executable (if install-host put it there) and the trees; the running one last."""
    plugin = cni_bin_dir / install.PLUGIN_NAME
    try:
        named = install.tree_of(plugin.read_bytes())
    except FileNotFoundError:
        named = None
    else:
        if named is not None and Path(named).parent == tree_dir:
            plugin.unlink()
            done.executable = str(plugin)
        else:
            done.kept.append(f"{plugin}: not installed by install-host")
    if not tree_dir.is_dir():
        return
    running = bundle.running()
    entries = sorted(tree_dir.iterdir(), key=lambda e: running is not None and e == running.root)
    for entry in entries:
        if install.installed_here(entry):
            shutil.rmtree(entry, ignore_errors=True)
            done.trees.append(str(entry))
    try:
        os.rmdir(tree_dir)
    except OSError as exc:
        done.kept.append(f"{tree_dir}: {exc.strerror}")
