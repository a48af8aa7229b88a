"""The bridge plugin's ``ipMasq``: source NAT, via nftables, for pod traffic leaving its subnet.

Traffic from a pod address to any destination outside that address's own subnet (and not
multicast, 224.0.0.0/4 or ff00::/8) is masqueraded to the outgoing interface's address.

Why the ``nft`` CLI: no maintained nftables binding is on PyPI. The libnftables wrapper
(``python3-nftables``) ships only with distributions (PyPI has just an unmaintained 2023 copy),
and pyroute2's nftables module describes itself as a very basic API. ``nft -f -`` runs a script
as one kernel transaction, so each change is atomic; ``nft -j list`` gives a machine-readable
read-back.

Representation: data, not rules. We own one table, ``table inet loxi-cni``, whose fixed
``postrouting`` chain (nat hook, srcnat priority) holds one rule per family::

    ip saddr @pods4 ip daddr != 224.0.0.0/4 ip daddr != @cluster4
        ip saddr . ip daddr != @local4 masquerade

``pods4`` is a hash set of pod addresses; ``local4`` is an interval set of
``pod-address . pod-subnet`` pairs, so each pod is exempt only for its *own* subnet, as in the
reference plugin's per-container chains (``pods6``/``local6`` likewise). An attachment is its
elements, each carrying the comment ``<network> <container-id> <ifname>``. ``cluster4`` /
``cluster6`` are interval sets of the pod CIDRs of every node of the cluster, kept by the
agent (``set_cluster_networks``) in step with the Nodes: traffic between pods of different
nodes keeps its source address, so a pod sees its peer's own address. Compared with a rule
(or chain plus jump rule) per attachment as the reference plugin does with iptables:

* the packet path is two hash/interval lookups however many pods exist, not a linear rule walk
  (only the first packet of a connection traverses nat chains, but that is every new connection);
* the static rules are declared once, in the same transaction as the first ADD's elements,
  and re-declared (``flush chain`` + ``add rule``) whenever a listing lacks them, so they are
  created on first use, self-healing, and never duplicated;
* elements are addressed by value, so there are no rule handles to track, and DEL/GC of one
  attachment cannot touch another's elements (only those whose comment is exactly its tag).

Concurrency: DEL only knows the attachment's identity, not its addresses, so it must list the
table and then delete what it found. ADD does the same, applying only the difference: it
replaces an earlier ADD's elements, takes over an address still claimed by a stale attachment
(whose ``local`` element may name another subnet, so a blind ``add element`` would leave it),
and writes nothing when all is in place. Read-modify-write across two ``nft`` runs is racy, so
it happens under an exclusive ``flock`` on :data:`LOCK_PATH`, held for one listing plus one
transaction (ms; the kernel releases it if the holder dies). The GC listing takes no lock: one
``nft list`` is a consistent snapshot.

Comments are capped at 128 characters by ``nft``; fields are percent-encoded (so a space can
separate them and nothing needs quoting), and a network name that does not fit is replaced by a
digest of it (``sha256:<16 hex>``); container ID and ifname stay readable because GC returns them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_network,
)
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, unquote

from loxicni.base import filelock, paths
from loxicni.base.digest import sha256_hex
from loxicni.net.nft import NO_SUCH, NftError, element_text, failed, run, run_checked

TABLE = "loxi-cni"

_COMMENT_MAX = 128  # nft refuses longer comments (NFTNL_UDATA_COMMENT_MAXLEN)
_PODS = {4: "pods4", 6: "pods6"}
_LOCAL = {4: "local4", 6: "local6"}
_CLUSTER = {4: "cluster4", 6: "cluster6"}
_OUR_SETS = frozenset(_PODS.values()) | frozenset(_LOCAL.values())
# Rule comments carry a version: a listing without exactly these rules (first use, an older
# layout, or someone's edits) makes the next change re-declare everything.
_RULE_COMMENTS = ("loxi-cni ipMasq v2 ipv4", "loxi-cni ipMasq v2 ipv6")

# Declarations are idempotent ("add" of an existing table/set/chain is a no-op); the chain is
# flushed and refilled so the rules exist exactly once whatever state we found.
_T = f"inet {TABLE}"
_BOOTSTRAP = f"""\
add table {_T}
add set {_T} pods4 {{ type ipv4_addr; }}
add set {_T} local4 {{ type ipv4_addr . ipv4_addr; flags interval; }}
add set {_T} pods6 {{ type ipv6_addr; }}
add set {_T} local6 {{ type ipv6_addr . ipv6_addr; flags interval; }}
add set {_T} cluster4 {{ type ipv4_addr; flags interval; }}
add set {_T} cluster6 {{ type ipv6_addr; flags interval; }}
add chain {_T} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain {_T} postrouting
add rule {_T} postrouting ip saddr @pods4 ip daddr != 224.0.0.0/4 ip daddr != @cluster4 \
ip saddr . ip daddr != @local4 masquerade comment "{_RULE_COMMENTS[0]}"
add rule {_T} postrouting ip6 saddr @pods6 ip6 daddr != ff00::/8 ip6 daddr != @cluster6 \
ip6 saddr . ip6 daddr != @local6 masquerade comment "{_RULE_COMMENTS[1]}"
"""


class LabelTooLong(ValueError):
    """The attachment's identity does not fit an element comment."""


class _Elem(NamedTuple):
    """One set element: enough to delete it (set + key) and to know whose it is."""

    set_name: str
    key: str  # nft syntax, e.g. "10.0.0.5" or "10.0.0.5 . 10.0.0.0/24"
    addr: IPv4Address | IPv6Address  # the pod address (first key component)
    tag: str  # the comment; "" for elements someone added by hand

    @property
    def ident(self) -> tuple[str, tuple[str, ...], str]:
        """Equal for the same element however nft spells it (10.0.0.5/32 vs 10.0.0.5)."""
        parts = tuple(
            p if "-" in p else str(ip_network(p, strict=False)) for p in self.key.split(" . ")
        )
        return (self.set_name, parts, self.tag)


class _State(NamedTuple):
    elems: list[_Elem]
    rules_ok: bool  # table, sets, chain and our rules are all in place
    # (set, network as ``ip_network`` spells it, or a range as listed) -> the key as listed
    cluster: dict[tuple[str, str], str]
    exists: bool = True  # the table is there at all


def add_masquerade(
    network: str,
    container_id: str,
    ifname: str,
    addresses: Sequence[IPv4Interface | IPv6Interface],
) -> None:
    """Masquerade traffic from ``addresses`` leaving their subnets, for this attachment.

    The attachment's masqueraded addresses become exactly ``addresses``: calling it again with
    the same arguments changes nothing (and writes nothing), and with others replaces the
    earlier set. An address still claimed by another attachment (e.g. a stale one whose DEL
    never came) is taken over, since the kernel can only route it to one pod anyway.
    """
    tag = _tag(network, container_id, ifname)
    want: dict[tuple[str, tuple[str, ...], str], _Elem] = {}
    for iface in addresses:
        addr = iface.ip
        for e in (
            _Elem(_PODS[addr.version], str(addr), addr, tag),
            _Elem(_LOCAL[addr.version], f"{addr} . {iface.network}", addr, tag),
        ):
            want[e.ident] = e
    addrs = {e.addr for e in want.values()}
    with _locked():
        state = _read()
        have = {e.ident: e for e in state.elems if e.tag == tag or e.addr in addrs}
        # A diff, not delete-all-then-add: element deletion waits for an RCU grace period in
        # the kernel (~12 ms), so an idempotent re-ADD should not delete anything.
        script = (
            ("" if state.rules_ok else _BOOTSTRAP)
            + _delete_lines([e for k, e in have.items() if k not in want])
            + _add_lines([e for k, e in want.items() if k not in have])
        )
        if script:
            run_checked(
                ["-f", "-"], script, f"cannot set up masquerading for {container_id}/{ifname}"
            )


def remove_masquerade(network: str, container_id: str, ifname: str) -> None:
    """Stop masquerading for this attachment. Nothing to remove (or no table) is success."""
    tag = _tag(network, container_id, ifname)
    with _locked():
        mine = [e for e in _read().elems if e.tag == tag]
        if mine:
            run_checked(
                ["-f", "-"],
                _delete_lines(mine),
                f"cannot remove masquerading for {container_id}/{ifname}",
            )


def masqueraded_attachments(network: str) -> set[tuple[str, str]]:
    """The ``(container_id, ifname)`` pairs of ``network`` that hold elements, for GC."""
    names = {quote(network, safe=""), _net_digest(network)}
    out: set[tuple[str, str]] = set()
    for e in _read().elems:
        fields = e.tag.split(" ")
        if len(fields) == 3 and fields[0] in names:
            out.add((unquote(fields[1]), unquote(fields[2])))
    return out


# --- the cluster's pod networks -------------------------------------------------------------


def _outermost(networks: Iterable[IPv4Network | IPv6Network]) -> set[str]:
    """``networks`` (of one family) less those inside another (an interval set refuses
    overlaps), as ``ip_network`` spells them. Two CIDRs either nest or are disjoint, so one
    sweep in address order does it: a network starting inside the last one kept is in it."""
    kept: list[str] = []
    end = -1
    for net in sorted(set(networks), key=lambda n: (int(n.network_address), n.prefixlen)):
        if int(net.network_address) <= end:
            continue
        kept.append(str(net))
        end = int(net.broadcast_address)
    return set(kept)


def set_cluster_networks(networks: Iterable[IPv4Network | IPv6Network]) -> bool:
    """Never masquerade pod traffic to ``networks`` (the pod CIDRs of every node): the
    cluster sets become exactly these, in one transaction, writing only the difference;
    True if anything was written. An empty list on a host without our table creates none."""
    nets = list(networks)
    want = {
        (_CLUSTER[v], key) for v in (4, 6) for key in _outermost(n for n in nets if n.version == v)
    }
    with _locked():
        state = _read()
        gone = [(name, listed) for (name, key), listed in state.cluster.items()
                if (name, key) not in want]  # fmt: skip
        new = sorted(want - state.cluster.keys())
        script = "".join(f"delete element {_T} {name} {{ {key} }}\n" for name, key in gone)
        script += "".join(f"add element {_T} {name} {{ {key} }}\n" for name, key in new)
        if new and not state.rules_ok:
            script = _BOOTSTRAP + script
        if not script:
            return False
        what = "cannot update the cluster's pod networks not to masquerade"
        run_checked(["-f", "-"], script, what)
        return True


def cluster_networks() -> set[str]:
    """The networks exempt from masquerading, as ``ip_network`` spells them (a range put
    there by hand as listed)."""
    return {key for _, key in _read().cluster}


def delete_table_if_unused() -> bool:
    """Delete our table if no set holds an element (no attachment masquerades, no cluster
    network is kept): what is left after every pod's DEL and the agent's teardown. Under
    the lock, so no ADD comes in between (a later one makes the table again)."""
    with _locked():
        state = _read()
        if not state.exists or state.elems or state.cluster:
            return False
        run_checked(["delete", "table", "inet", TABLE], None, "cannot delete the masquerade table")
        return True


# --- attachment tags ------------------------------------------------------------------------


def _net_digest(network: str) -> str:
    # ":" never survives quote(safe=""), so a digest cannot collide with an encoded name.
    return "sha256:" + sha256_hex(network.encode())[:16]


def _tag(network: str, container_id: str, ifname: str) -> str:
    """The element comment naming one attachment; see the module docstring."""
    rest = f"{quote(container_id, safe='')} {quote(ifname, safe='')}"
    tag = f"{quote(network, safe='')} {rest}"
    if len(tag) > _COMMENT_MAX:
        tag = f"{_net_digest(network)} {rest}"
    if len(tag) > _COMMENT_MAX:
        raise LabelTooLong(
            "container ID and interface name too long to label masquerade state "
            f"({container_id!r} {ifname!r}: at most {_COMMENT_MAX} characters in all)"
        )
    return tag


# --- reading and writing the table -----------------------------------------------------------


def _read() -> _State:
    """Our sets' elements and whether our rules are in place; empty if there is no table yet."""
    proc = run(["-j", "list", "table", "inet", TABLE], None, "cannot list masquerade table")
    if proc.returncode != 0:
        if NO_SUCH in proc.stderr:
            return _State([], rules_ok=False, cluster={}, exists=False)
        raise failed("cannot list masquerade table", proc)
    try:
        elems: list[_Elem] = []
        cluster: dict[tuple[str, str], str] = {}
        chain_ok = False
        rule_comments: list[str] = []
        for obj in json.loads(proc.stdout)["nftables"]:
            if (s := obj.get("set")) is not None and s.get("name") in _OUR_SETS:
                for item in s.get("elem", ()):
                    # Commented elements are {"elem": {"val": ..., "comment": ...}}, others bare.
                    elem = item["elem"] if isinstance(item, dict) and "elem" in item else None
                    val = item if elem is None else elem["val"]
                    key = element_text(val)
                    addr = ip_address(key.split(" . ")[0].split("/")[0].split("-")[0])
                    tag = "" if elem is None else str(elem.get("comment", ""))
                    elems.append(_Elem(s["name"], key, addr, tag))
            elif s is not None and s.get("name") in _CLUSTER.values():
                for item in s.get("elem", ()):
                    elem = item["elem"] if isinstance(item, dict) and "elem" in item else None
                    key = element_text(item if elem is None else elem["val"])
                    cluster[(s["name"], _spelled(key))] = key
            elif (c := obj.get("chain")) is not None and c.get("name") == "postrouting":
                chain_ok = (c.get("type"), c.get("hook"), c.get("prio")) == (
                    "nat",
                    "postrouting",
                    100,  # srcnat
                )
            elif (r := obj.get("rule")) is not None and r.get("chain") == "postrouting":
                rule_comments.append(str(r.get("comment", "")))
        rules_ok = chain_ok and tuple(rule_comments) == _RULE_COMMENTS
        return _State(elems, rules_ok=rules_ok, cluster=cluster)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise NftError("cannot parse nft's listing of the masquerade table", repr(e)) from e


def _spelled(key: str) -> str:
    """A cluster set's element as ``ip_network`` spells it: nft prints a prefix as Python
    does (RFC 5952 for IPv6), but a single address without its length. Thousands are read at
    every resync: no parsing."""
    if "/" in key or "-" in key:
        return key
    return f"{key}/128" if ":" in key else f"{key}/32"


def _add_lines(elems: Sequence[_Elem]) -> str:
    return "".join(
        f'add element {_T} {e.set_name} {{ {e.key} comment "{e.tag}" }}\n' for e in elems
    )


def _delete_lines(elems: Sequence[_Elem]) -> str:
    return "".join(f"delete element {_T} {e.set_name} {{ {e.key} }}\n" for e in elems)


@contextmanager
def _locked(remove: bool = False) -> Iterator[None]:
    """Serialise read-modify-write of our table across plugin processes. With ``remove`` (an
    uninstall) the lock file goes while held; a waiter that then wins the flock on the unlinked
    file notices and retries on a fresh one."""
    lock = Path(paths.nft_lock())
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = filelock.acquire(lock)
    try:
        yield
    finally:
        if remove:
            lock.unlink(missing_ok=True)
        os.close(fd)  # closing the last descriptor releases the lock


def remove_lock() -> None:
    """Remove the lock file of our table (an uninstall: nothing of ours may stay behind)."""
    with _locked(remove=True):
        pass
