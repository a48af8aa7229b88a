"""A runtime that got "try again" (code 11) and retries gets the ADD the agent finished."""

from __future__ import annotations

import ipaddress

from tests.agent.harness import Agent
from tests.integration.conftest import Net, holding_store_lock, links_of_bridge, pod_addresses


def test_an_add_retried_after_try_again_gets_the_recorded_result(agent: Agent, net: Net) -> None:
    conf = net.conf()
    pod = net.pod()
    # The ADD is slow (the IPAM store is busy): the client gives up, the agent carries on.
    with holding_store_lock(net):
        lost = net.call("ADD", pod, conf, env={**agent.env, "LOXI_CNI_TIMEOUT": "1"})
        assert lost.rc != 0 and lost.json["code"] == 11, lost.stdout

    again = net.call("ADD", pod, conf, env=agent.env)  # the runtime's retry, identical
    assert again.rc == 0, again.stdout
    address = again.json["ips"][0]["address"]
    veth = again.json["interfaces"][1]["name"]
    assert net.reservations() == {
        str(ipaddress.ip_interface(address).ip): f"{pod.container_id}\r\neth0"
    }
    assert links_of_bridge(net.bridge) == [veth]
    assert address in pod_addresses(pod)
    assert net.call("ADD", pod, conf, env=agent.env).json == again.json
    assert agent.status()["attachments"] == 1

    assert net.call("DEL", pod, conf, env=agent.env).rc == 0
    assert net.reservations() == {} and links_of_bridge(net.bridge) == []
