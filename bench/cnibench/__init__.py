"""The side-by-side benchmark behind bench/bench.py, one concern a module.

settings (names, paths, subnets), errors, host (commands, links, netns, machine), probes (a
process's CPU and RSS from /proc), agent (our own node agent), modes (one plugin set-up),
calls (one exec as a runtime makes it), batches (a verb for many pods, checked), leaks (what a
DEL must not leave), session (everything one run makes, torn down), stats, report and targets
(the table), and one module a subcommand: compare, cycles, rss; cli parses the flags.
"""
