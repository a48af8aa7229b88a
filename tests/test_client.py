"""The Python thin client's own answer when the agent takes a call and gives none: CNI error 11
as valid JSON, whatever the config and the reason hold."""

from __future__ import annotations

import json

import pytest

from loxicni import client

CONFIGS = [
    (b'{"cniVersion":"0.4.0","name":"n"}', "0.4.0"),
    (b'{"cniVersion":"1\\" , \\"x","name":"n"}', "1.1.0"),  # a quote spliced in: not a version
    (b'{"cniVersion":"1.0.0\\n","name":"n"}', "1.1.0"),
    (b'{"cniVersion":"' + b"9" * 40 + b'"}', "1.1.0"),
    (b'\xff\xfe{"cniVersion', "1.1.0"),
    (b"", "1.1.0"),
]


@pytest.mark.parametrize(("stdin", "version"), CONFIGS)
def test_try_again_is_json_whatever_the_config_holds(stdin: bytes, version: str) -> None:
    why = 'connect: "refused" \\ \x00\x1f \udcff'
    raw = client.try_again_error(stdin, why)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    reply = json.loads(raw)
    assert reply["code"] == 11 and reply["cniVersion"] == version
    assert reply["details"].startswith('connect: "refused" \\ \x00\x1f')
