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

    ip saddr @pods4 ip daddr != 224.0.0.0/4 ip saddr . ip daddr != @local4 masquerade

``pods4`` is a hash set of pod addresses; ``local4`` is an interval set of
``pod-address . pod-subnet`` pairs, so each pod is exempt only for its *own* subnet, as in the
reference plugin's per-container chains (``pods6``/``local6`` likewise). An attachment is its
elements, each carrying the comment ``<network> <container-id> <ifname>``. Compared with a rule
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

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_address, ip_network
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, unquote

from loxicni.base import paths
from loxicni.net.nft import NO_SUCH, NftError, failed, run, run_checked

TABLE = "loxi-cni"

_COMMENT_MAX = 128  # nft refuses longer comments (NFTNL_UDATA_COMMENT_MAXLEN)
_PODS = {4: "pods4", 6: "pods6"}
_LOCAL = {4: "local4", 6: "local6"}
_OUR_SETS = frozenset(_PODS.values()) | frozenset(_LOCAL.values())
# Rule comments carry a version: a listing without exactly these rules (first use, an older
# layout, or someone's edits) makes the next ADD re-declare everything.
_RULE_COMMENTS = ("loxi-cni ipMasq v1 ipv4", "loxi-cni ipMasq v1 ipv6")

# Declarations are idempotent ("add" of an existing table/set/chain is a no-op); the chain is
# flushed and refilled so the rules exist exactly once whatever state we found.
_T = f"inet {TABLE}"
_BOOTSTRAP = f"""\
add table {_T}
add set {_T} pods4 {{ type ipv4_addr; }}
add set {_T} local4 {{ type ipv4_addr . ipv4_addr; flags interval; }}
add set {_T} pods6 {{ type ipv6_addr; }}
add set {_T} local6 {{ type ipv6_addr . ipv6_addr; flags interval; }}
add chain {_T} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain {_T} postrouting
add rule {_T} postrouting ip saddr @pods4 ip daddr != 224.0.0.0/4 \
ip saddr . ip daddr != @local4 masquerade comment "{_RULE_COMMENTS[0]}"
add rule {_T} postrouting ip6 saddr @pods6 ip6 daddr != ff00::/8 \
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


# --- attachment tags ------------------------------------------------------------------------


def _net_digest(network: str) -> str:
    # ":" never survives quote(safe=""), so a digest cannot collide with an encoded name.
    return "sha256:" + hashlib.sha256(network.encode()).hexdigest()[:16]


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


def _render(value: object) -> str:
    """A key from ``nft -j`` output back in nft syntax (address, prefix, range, concat)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{_render(low)}-{_render(high)}"
        if "concat" in value:
            return " . ".join(_render(v) for v in value["concat"])
    raise ValueError(f"unexpected element value {value!r}")


def _read() -> _State:
    """Our sets' elements and whether our rules are in place; empty if there is no table yet."""
    proc = run(["-j", "list", "table", "inet", TABLE], None, "cannot list masquerade table")
    if proc.returncode != 0:
        if NO_SUCH in proc.stderr:
            return _State([], rules_ok=False)
        raise failed("cannot list masquerade table", proc)
    try:
        elems: list[_Elem] = []
        chain_ok = False
        rule_comments: list[str] = []
        for obj in json.loads(proc.stdout)["nftables"]:
            if (s := obj.get("set")) is not None and s.get("name") in _OUR_SETS:
                for item in s.get("elem", ()):
                    # Commented elements are {"elem": {"val": ..., "comment": ...}}, others bare.
                    elem = item["elem"] if isinstance(item, dict) and "elem" in item else None
                    val = item if elem is None else elem["val"]
                    key = _render(val)
                    addr = ip_address(key.split(" . ")[0].split("/")[0].split("-")[0])
                    tag = "" if elem is None else str(elem.get("comment", ""))
                    elems.append(_Elem(s["name"], key, addr, tag))
            elif (c := obj.get("chain")) is not None and c.get("name") == "postrouting":
                chain_ok = (c.get("type"), c.get("hook"), c.get("prio")) == (
                    "nat",
                    "postrouting",
                    100,  # srcnat
                )
            elif (r := obj.get("rule")) is not None and r.get("chain") == "postrouting":
                rule_comments.append(str(r.get("comment", "")))
        return _State(elems, rules_ok=chain_ok and tuple(rule_comments) == _RULE_COMMENTS)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise NftError("cannot parse nft's listing of the masquerade table", repr(e)) from e


def _add_lines(elems: Sequence[_Elem]) -> str:
    return "".join(
        f'add element {_T} {e.set_name} {{ {e.key} comment "{e.tag}" }}\n' for e in elems
    )


def _delete_lines(elems: Sequence[_Elem]) -> str:
    return "".join(f"delete element {_T} {e.set_name} {{ {e.key} }}\n" for e in elems)


@contextmanager
def _locked() -> Iterator[None]:
    """Serialise read-modify-write of our table across plugin processes."""
    lock = Path(paths.nft_lock())
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
