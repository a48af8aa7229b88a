"""Helpers every test package shares (and tests/k8s's control plane, which needs no pytest):
how to wait, run a command, stop a process, read the host's links and routes, read host-local's
store, reach the installed plugin and run its agent, build networks of namespaces and send
traffic through them, count netlink traffic. One home, so the suites agree."""
