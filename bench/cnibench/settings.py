"""Names, paths and limits every part of the benchmark agrees on."""

from __future__ import annotations

PLUGIN = "/opt/cni/bin/loxi-cni"
REFERENCE_DIR = "/usr/lib/cni"
CNI_VERSION = "1.0.0"  # the newest the Debian reference (1.1.1) speaks; ours speaks it too
IFNAME = "eth0"
CALL_TIMEOUT = 60.0
AGENT_START_TIMEOUT = 20.0
# Subnets far from anything the tests use (10.99.0.0/24); /20 holds --rss up to ~4000 pods.
SUBNETS = {"ref": "10.252.0.0/20", "agent": "10.252.16.0/20", "standalone": "10.252.32.0/20"}
TITLES = {"ref": "reference", "agent": "agent", "standalone": "standalone"}
# A Python agent cannot serve a request (recv, parse, netlink, reply) in under this much CPU; an
# agent that used less than this per request since warm-up was bypassed (the client fell back).
AGENT_MIN_CPU_PER_CALL = 0.0001
# The host's own loxi-cni dirs (default LOXI_CNI_RUN_DIR, LOXI_CNI_STATE_DIR): we use private
# ones, and check at the end that nothing of ours landed here.
HOST_DIRS = ("/run/loxi-cni", "/var/lib/loxi-cni")
