"""What a request's bytes must be: pyroute2's encoding of the same message (the independent
oracle our rtnetlink encoder is compared with), and the flag sets requests carry."""

from __future__ import annotations

import ipaddress
from typing import Any

from loxicni.net import rtnl

ACK = rtnl.NLM_F_ACK
CREATE = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL | rtnl.NLM_F_ACK
DUMP = rtnl.NLM_F_DUMP


def pyroute2_bytes(
    cls: Any, msg_type: int, flags: int, fields: dict[str, int], attrs: list[Any], seq: int = 7
) -> bytes:
    """pyroute2's encoding of one message (header with NLM_F_REQUEST, fields, attributes)."""
    msg = cls()
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags | rtnl.NLM_F_REQUEST
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def packed(ip: str) -> bytes:
    """An address's bytes, as requests carry them."""
    return ipaddress.ip_address(ip).packed
