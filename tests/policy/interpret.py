"""What a filter program (``loxicni.net.policy_table.Program``) decides for one packet, read
the way the nftables encoding reads it: the egress chain of the source, then the ingress chain
of the destination, for a new connection crossing the node's forward hook. A model of the
kernel's evaluation for fast checks in Python; the kernel tests show the encoding agrees."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from loxicni.net import policy_table as pt


def _peer_ok(program: pt.Program, peer: pt.Peer, other: pt.Address) -> bool:
    if peer.address_set:
        return other in program.address_sets[peer.address_set].members
    if peer.cidr:
        net = ip_network(peer.cidr)
        if net.version != other.version or other not in net:
            return False
        return not any(other in ip_network(e) for e in peer.excepts)
    return True


def _port_ok(program: pt.Program, ports: tuple[pt.Port, ...], dst: pt.Address, proto: str,
             port: int) -> bool:  # fmt: skip
    if not ports:
        return True
    for p in ports:
        if p.protocol != proto:
            continue
        if isinstance(p, pt.NamedPorts):
            if (dst, port) in program.port_sets[p.port_set].members:
                return True
        elif p.first == 0 or p.first <= port <= p.last:
            return True
    return False


def _side_ok(program: pt.Program, me: pt.Address, other: pt.Address, direction: str,
             dst: pt.Address, proto: str, port: int) -> bool:  # fmt: skip
    pod = program.pods.get(me)
    if pod is None or not (pod.ingress if direction == pt.INGRESS else pod.egress):
        return True
    if me == other:
        return True
    for chain in program.policies.values():
        if chain.group != pod.group or chain.direction != direction:
            continue
        if chain.family != me.version or me not in program.address_sets[chain.targets].members:
            continue
        for allow in chain.allows:
            if _peer_ok(program, allow.peer, other) and _port_ok(
                program, allow.ports, dst, proto, port
            ):
                return True
    return False


def allowed(program: pt.Program, src: str, dst: str, proto: str, port: int) -> bool:
    s, d = ip_address(src), ip_address(dst)
    return _side_ok(program, s, d, pt.EGRESS, d, proto, port) and _side_ok(
        program, d, s, pt.INGRESS, d, proto, port
    )
