"""loxi-cni against the reference Go bridge plugin: ADD/DEL latency and throughput, leaks, RSS.

One run alternates rounds of three modes on the same machine and the same kind of config
(isGateway, host-local subnet), each with its own bridge, network name, subnet and dataDir:

* ``reference``: Debian's containernetworking-plugins bridge + host-local (cniVersion 1.0.0);
* ``agent``: loxi-cni with a node agent (``loxi-cni agent --socket``) we start ourselves;
* ``standalone``: loxi-cni with LOXI_CNI_SOCKET naming a path where nothing listens.

Every call is a fresh exec of the plugin with the CNI env and the config on stdin, as a runtime
does it (a thread pool, one subprocess per call, wall time measured around the exec). Pods are
network namespaces made before any timing. Modes rotate round by round so that drift (other load,
page cache, thermal) hits all of them alike; ratios from one run are what to compare, never
absolute times across runs.

Usage (as root; ``make bench`` runs the default)::

    bench.py [--quick] [--rounds N] [--levels 1,8,32] [--pods 16,32,64]
             [--modes ref,agent,standalone]
    bench.py --cycles 1000 [--parallel 4] [--via agent|standalone]
    bench.py --rss 500 [--parallel 4]
"""

from __future__ import annotations

import sys

# bench/ is this script's directory, so it is on sys.path when run as `bench/bench.py`.
from cnibench.cli import main

if __name__ == "__main__":
    sys.exit(main())
