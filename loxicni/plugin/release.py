"""Releasing an attachment nobody will DEL (its ADD died half-way, its netns is gone, its Pod
was deleted without a DEL): a DEL with the attachment's own recorded config.

The decision to release is taken on an earlier look; the release itself re-reads the record
under the attachment's lock and goes ahead only if it is still the same attachment (same
generation) and still meets the caller's condition, so an ADD that got in between is never
torn down.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from loxicni.cni.errors import CniError
from loxicni.cni.request import parse_request
from loxicni.net.reaper import LinkReaper
from loxicni.net.rtnl import Rtnl
from loxicni.plugin import records
from loxicni.plugin.bridge import BridgePlugin, load_config
from loxicni.plugin.config import KNOWN_ARGS
from loxicni.plugin.errors import cni_errors
from loxicni.plugin.locks import attachment_lock

RELEASED = "released"
CHANGED = "changed"  # gone, replaced by another ADD, or no longer meets the condition
FAILED = "failed"


@dataclass(frozen=True)
class Outcome:
    status: str
    error: str = ""


def release(
    record: records.Record,
    reaper: LinkReaper | None = None,
    still: Callable[[records.Record], bool] | None = None,
) -> Outcome:
    """DEL the attachment of ``record`` if it is still that one (and ``still(current)``).

    The recorded netns is passed when it still exists: an ADD killed between creating the
    veth pair and labelling its host end can only be found from the pod's side.
    """
    netns = record.netns if record.netns and os.path.exists(record.netns) else ""
    env = {
        "CNI_COMMAND": "DEL",
        "CNI_CONTAINERID": record.container_id,
        "CNI_IFNAME": record.ifname,
        "CNI_NETNS": netns,
        "CNI_ARGS": record.cni_args,
        "CNI_PATH": ":".join(record.cni_path),
    }
    try:
        req = parse_request(env, json.dumps(record.config).encode(), KNOWN_ARGS)
        cfg = load_config(req)
        with attachment_lock(record.network, record.container_id, record.ifname) as lock:
            try:
                current = records.load(record.key)
            except records.Unreadable as exc:
                return Outcome(CHANGED, str(exc))
            if current is None:
                # Gone already (its DEL won the race): nothing is left but the lock file, which
                # this call made anew; remove it, or it stays in the run dir until a reboot.
                lock.remove_on_release = True
                return Outcome(CHANGED)
            if current.generation != record.generation:
                return Outcome(CHANGED)
            if still is not None and not still(current):
                return Outcome(CHANGED)
            with cni_errors("releasing the attachment"), Rtnl() as host:
                BridgePlugin(reaper=reaper).teardown_locked(req, cfg, host, pod_link=True)
            lock.remove_on_release = True
    except CniError as exc:
        return Outcome(FAILED, f"{exc.msg} {exc.details}".strip())
    return Outcome(RELEASED)
