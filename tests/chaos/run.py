"""A seeded chaos run: concurrent runtimes drive the plugin while faults hit the node.

Runtimes act like kubelet + containerd: each owns a few pod slots and, step by step, starts a
pod (new netns, ADD; on an error DEL, maybe with an empty CNI_NETNS, and maybe retry), checks it
(CHECK with the prevResult it kept), repeats an ADD (a retry after a timeout), collects garbage
(GC with every attachment the runtimes know), forgets it (a runtime crash: only a GC can
release it), or stops it (DEL, perhaps twice, then the netns goes). A DEL that fails is
retried; code 11 means later. A pod whose netns died under it (a fault, a reboot) is DELeted,
as the kubelet does with a dead sandbox, and counted as expected. Calls go through the agent or
in-process (LOXI_CNI_NO_AGENT=1), and through the agent fall back in-process while it is down.

One fault at a time, chosen round-robin from a seeded shuffle so every kind occurs:
SIGKILL of the agent at a random moment, or at an armed step inside ADD/DEL/GC/reconcile
(loxicni.base.faults), the same for in-process calls, the agent frozen past its clients'
timeout, the state tmpfs full (ENOSPC) or read-only for a while, an agent restart over records
written by a newer version, a pod's netns deleted while its ADD or DEL runs, and a reboot (the
run dir emptied, every pod netns, the bridge and the masquerade elements gone, the state kept,
the agent restarted).

At checkpoints the runtimes pause, DEL their dead pods, and the node is verified against the
pods they believe are up: each has eth0 with its addresses and reaches its gateway; nothing is
held (address, index entry, record, lock, veth, bridge port, nft element, temp file) for
anything else; forgotten pods are verified again after a GC. At the end every pod is stopped
and the node must hold nothing.

The seed fixes every runtime's and the injector's choices; thread timing still varies, so two
runs of a seed take the same decisions in a different interleaving.

    python -m tests.chaos.run --seed 1 --calls 3000      (root; LOXI_CNI_BIN = the plugin)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loxicni.base import faults
from tests.chaos.node import (
    IFNAME,
    PLUGIN,
    Agent,
    Node,
    PodView,
    Verdict,
    attachment_key,
    sh,
    verify,
)

CLIENT_TIMEOUT = 5.0  # LOXI_CNI_TIMEOUT of every call (the slowest call takes ~2 s here)
HANG_AFTER = CLIENT_TIMEOUT + 15.0  # a call still running then is a hang
DEL_ATTEMPTS = 60
# A DEL may fail while the state fs is full or read-only (5) or its agent dies (11, or the
# in-process call is killed); anything else is a bug.
DEL_MAY_FAIL = (5, 11)
AGENT_STEPS = list(faults.STEPS)
PLUGIN_STEPS = [s for s in faults.STEPS if not s.startswith("reconcile")]
FAULT_KINDS = (
    "agent-kill",
    "agent-stall",
    "agent-step-kill",
    "plugin-step-kill",
    "enospc",
    "readonly",
    "newer-records",
    "netns-delete",
    "reboot",
)


@dataclass
class Settings:
    seed: int
    calls: int
    runtimes: int = 4
    pods: int = 5  # slots per runtime
    checkpoints: int = 3  # besides the final one
    plugin: str = PLUGIN
    in_process: float = 0.3  # share of calls forced in-process
    gc: float = 0.1  # share of a live pod's steps that are a GC (real runtimes GC rarely)


@dataclass
class Outcome:
    rc: int | None  # None: hung (killed after HANG_AFTER)
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def code(self) -> int | None:
        try:
            return int(json.loads(self.out)["code"])
        except (ValueError, KeyError, TypeError):
            return None

    def label(self) -> str:
        if self.rc is None:
            return "hang"
        if self.rc == 0:
            return "ok"
        if self.rc < 0:
            return "killed"
        return f"code {self.code}"


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    total: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)  # step kills that fired, by step
    pods: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    checkpoints: list[tuple[int, int, int, int]] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    story: str = ""  # the history of what failed (see ``histories``)
    agent_log: Counter[str] = field(default_factory=Counter)  # log lines by level
    agent_errors: list[str] = field(default_factory=list)  # its first ERROR entries, whole
    slowest: float = 0.0  # seconds, the longest call

    def count(self, command: str, mode: str, outcome: Outcome, seconds: float) -> None:
        with self.lock:
            self.total += 1
            self.slowest = max(self.slowest, seconds)
            self.calls[command] += 1
            self.modes[mode] += 1
            self.outcomes[(command, outcome.label())] += 1

    def problem(self, what: str) -> None:
        with self.lock:
            self.problems.append(what)

    @property
    def hangs(self) -> int:
        return sum(n for (_, label), n in self.outcomes.items() if label == "hang")


class Slot:
    """A pod slot of a runtime: at most one sandbox (netns) at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()  # sandbox life vs the injector deleting the netns
        self.serial = 0
        self.container_id = ""
        self.netns = ""  # name under /var/run/netns; "" without a sandbox
        self.up = False
        self.result: dict[str, Any] = {}
        self.gone = ""  # why the netns died under the runtime ("" while it lives)
        self.in_flight = ""  # the command running now

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    def view(self) -> PodView:
        return PodView(self.container_id, self.netns, self.result)


class Registry:
    """Every attachment the runtimes know (like containerd's sandbox store): the valid list
    of a GC. A sandbox registers before its ADD, and no new one registers while a GC runs,
    so an ADD is either in GC's list or starts after it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.members: set[str] = set()

    def register(self, cid: str) -> None:
        with self.lock:
            self.members.add(cid)

    def unregister(self, cid: str) -> None:
        with self.lock:
            self.members.discard(cid)


class Gate:
    """Lets the injector pause the runtimes between steps (checkpoints, reboots)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.paused = False
        self.busy = 0

    def enter(self) -> None:
        with self.cond:
            while self.paused:
                self.cond.wait()
            self.busy += 1

    def leave(self) -> None:
        with self.cond:
            self.busy -= 1
            self.cond.notify_all()

    def pause(self) -> None:
        with self.cond:
            self.paused = True
            while self.busy:
                self.cond.wait()

    def resume(self) -> None:
        with self.cond:
            self.paused = False
            self.cond.notify_all()


class Chaos:
    def __init__(self, settings: Settings, node: Node) -> None:
        self.settings = settings
        self.node = node
        self.agent = Agent(node)
        self.stats = Stats()
        self.registry = Registry()
        self.gate = Gate()
        self.done = threading.Event()
        master = random.Random(settings.seed)
        self.runtimes = [
            Runtime(self, i, random.Random(master.getrandbits(64)))
            for i in range(settings.runtimes)
        ]
        self.injector_rng = random.Random(master.getrandbits(64))
        self.forgotten: list[PodView] = []  # pods a runtime lost track of: GC's to release
        self.started = time.monotonic()

    # -- calls ------------------------------------------------------------------------------

    def call(
        self,
        command: str,
        conf: dict[str, Any],
        *,
        slot: Slot | None = None,
        netns: str = "",
        in_process: bool = False,
    ) -> Outcome:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_PATH": str(Path(self.settings.plugin).parent),
            "LOXI_CNI_TIMEOUT": str(CLIENT_TIMEOUT),
            "LOXI_CNI_FAULTS": str(self.node.plugin_faults),
            **self.node.env(),
        }
        if slot is not None:
            env["CNI_CONTAINERID"] = slot.container_id
            env["CNI_IFNAME"] = IFNAME
            env["CNI_NETNS"] = netns
            env["CNI_ARGS"] = (
                f"IgnoreUnknown=1;K8S_POD_NAMESPACE=chaos;K8S_POD_NAME={slot.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={slot.container_id}"
            )
        if in_process:
            env["LOXI_CNI_NO_AGENT"] = "1"
        start = time.monotonic()
        try:
            proc = subprocess.run(
                [self.settings.plugin],
                input=json.dumps(conf).encode(),
                env=env,
                capture_output=True,
                timeout=HANG_AFTER,
            )
            outcome = Outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        except subprocess.TimeoutExpired as exc:
            outcome = Outcome(None, "", f"no answer within {HANG_AFTER} s: {exc}")
        mode = "in-process" if in_process else "agent"
        self.stats.count(command, mode, outcome, time.monotonic() - start)
        if slot is not None:
            self.note(
                slot.container_id,
                f"{command}{' in-process' if in_process else ''} netns={bool(netns)}: "
                f"{outcome.label()} {outcome.out.strip()[:160] if outcome.rc else ''}",
            )
        return outcome

    def note(self, cid: str, what: str) -> None:
        line = f"{time.monotonic() - self.started:8.3f} {what}"
        self.node.history.setdefault(cid, []).append(line)

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> None:
        self.agent.start()
        threads = [
            threading.Thread(target=r.loop, name=f"runtime-{r.index}") for r in self.runtimes
        ]
        injector = Injector(self)
        inj = threading.Thread(target=injector.run, name="injector")
        for t in threads:
            t.start()
        inj.start()
        for t in threads:
            t.join()
        self.done.set()
        inj.join()
        self.checkpoint("final")  # also GCs what the runtimes forgot
        for r in self.runtimes:  # stop every pod; then the node must hold nothing
            for slot in r.slots:
                if slot.netns:
                    r.stop_pod(slot, "end")
        self.node.settle()
        self.record(verify(self.node, []), "after every pod stopped")
        self.agent.stop()

    def checkpoint(self, name: str) -> None:
        self.gate.pause()
        try:
            for r in self.runtimes:
                r.settle()
            if not self.agent.wait_up():
                self.stats.problem(f"checkpoint {name}: the agent did not come up")
            self.node.settle()  # a record still "deleting" after that counts as a leak
            up = [s.view() for r in self.runtimes for s in r.slots if s.up and not s.gone]
            self.record(verify(self.node, up, self.forgotten), f"checkpoint {name}", len(up))
            if self.forgotten:  # what only a GC can release: the runtime's GC must
                self.gc_until_ok()
                for pod in self.forgotten:
                    sh("ip", "netns", "del", pod.netns, check=False)
                self.forgotten.clear()
                self.record(verify(self.node, up), f"checkpoint {name} after GC", len(up))
        finally:
            self.gate.resume()

    def gc_until_ok(self) -> None:
        valid = [{"containerID": c, "ifname": IFNAME} for c in sorted(self.registry.members)]
        conf = {**self.node.conf(), "cni.dev/valid-attachments": valid}
        for _ in range(DEL_ATTEMPTS):
            if self.call("GC", conf).ok:
                return
            time.sleep(0.1)
        self.stats.problem(f"GC failed {DEL_ATTEMPTS} times")

    def record(self, verdict: Verdict, where: str, up: int = 0) -> None:
        with self.stats.lock:
            self.stats.checkpoints.append(
                (self.stats.total, up, len(verdict.leaks), len(verdict.broken))
            )
            self.stats.leaks += [f"{where}: {x}" for x in verdict.leaks]
            self.stats.broken += [f"{where}: {x}" for x in verdict.broken]


class Runtime:
    def __init__(self, chaos: Chaos, index: int, rng: random.Random) -> None:
        self.chaos = chaos
        self.index = index
        self.rng = rng
        self.slots = [Slot(f"r{index}p{j}") for j in range(chaos.settings.pods)]

    def loop(self) -> None:
        try:
            while self.chaos.stats.total < self.chaos.settings.calls:
                self.chaos.gate.enter()
                try:
                    self.step()
                finally:
                    self.chaos.gate.leave()
        except Exception as exc:  # a harness bug must fail the run
            self.chaos.stats.problem(f"runtime {self.index} crashed: {exc!r}")
            raise

    def step(self) -> None:
        slot = self.rng.choice(self.slots)
        if slot.gone:
            self.stop_pod(slot, f"lost ({slot.gone})")
        elif not slot.up:
            self.start_pod(slot)
        else:
            r = self.rng.random()
            gc = self.chaos.settings.gc
            if r < 0.35:
                self.check(slot)
            elif r < 0.35 + gc:
                self.gc()
            elif r < 0.42 + gc:
                self.repeat_add(slot)
            elif r < 0.45 + gc:
                self.forget(slot)
            else:
                self.stop_pod(slot, "stopped")

    def settle(self) -> None:
        """DEL every pod whose netns died (the kubelet's clean-up of dead sandboxes)."""
        for slot in self.slots:
            if slot.gone:
                self.stop_pod(slot, f"lost ({slot.gone})")

    def call(
        self, command: str, slot: Slot, netns: str, conf: dict[str, Any] | None = None
    ) -> Outcome:
        in_process = self.rng.random() < self.chaos.settings.in_process
        slot.in_flight = command
        try:
            return self.chaos.call(
                command,
                conf or self.chaos.node.conf(),
                slot=slot,
                netns=netns,
                in_process=in_process,
            )
        finally:
            slot.in_flight = ""

    def start_pod(self, slot: Slot) -> None:
        with slot.lock:
            slot.serial += 1
            slot.container_id = f"c{self.chaos.node.tag}{slot.name}g{slot.serial}"
            slot.netns = f"{self.chaos.node.netns_prefix}{slot.name}-{slot.serial}"
            slot.gone = ""
            sh("ip", "netns", "add", slot.netns)
            self.chaos.node.keys[attachment_key(self.chaos.node.network, slot.container_id)] = (
                slot.container_id
            )
        self.chaos.registry.register(slot.container_id)
        self.chaos.stats.pods["started"] += 1
        for attempt in range(3):
            out = self.call("ADD", slot, slot.path)
            if out.ok:
                slot.result = json.loads(out.out)
                slot.up = True
                return
            # A failed sandbox set-up is torn down; the runtime may have lost the netns path.
            self.del_until_ok(slot, self.rng.choice([slot.path, ""]))
            if slot.gone or attempt == 2 or self.rng.random() < 0.3:
                break
            time.sleep(0.01 * (attempt + 1))
        self.chaos.stats.pods["failed to start"] += 1
        self.destroy_sandbox(slot)

    def repeat_add(self, slot: Slot) -> None:
        """The runtime repeats an ADD that succeeded (it timed out on its side)."""
        out = self.call("ADD", slot, slot.path)
        if out.ok:
            again = json.loads(out.out)
            if again["ips"] != slot.result["ips"] and not slot.gone:
                self.chaos.stats.problem(
                    f"{slot.container_id}: repeated ADD answered {again['ips']}, "
                    f"first {slot.result['ips']}"
                )
            return
        self.chaos.stats.pods["repeated ADD failed"] += 1
        self.stop_pod(slot, "repeated ADD failed")

    def forget(self, slot: Slot) -> None:
        """Lose track of a pod, as a runtime that crashed between ADD and saving its own state:
        no DEL will come; only a GC (whose valid list lacks it) can release it. Its netns
        lives on, as the runtime's would."""
        with slot.lock:
            self.chaos.forgotten.append(slot.view())
            self.chaos.registry.unregister(slot.container_id)
            slot.up = False
            slot.netns = ""
            slot.result = {}
        self.chaos.stats.pods["forgotten (left to GC)"] += 1

    def check(self, slot: Slot) -> None:
        conf = {**self.chaos.node.conf(), "prevResult": slot.result}
        out = self.call("CHECK", slot, slot.path, conf)
        if out.ok or out.rc is None or out.rc < 0 or out.code == 11 or slot.gone:
            return  # fine, or killed (retried at the next check), or a hang (counted)
        self.chaos.stats.problem(f"{slot.container_id}: CHECK {out.label()}: {out.out.strip()}")

    def gc(self) -> None:
        registry = self.chaos.registry
        with registry.lock:  # no sandbox registers until GC has run
            valid = [{"containerID": c, "ifname": IFNAME} for c in sorted(registry.members)]
            conf = {**self.chaos.node.conf(), "cni.dev/valid-attachments": valid}
            self.chaos.call("GC", conf, in_process=self.rng.random() < 0.3)

    def stop_pod(self, slot: Slot, why: str) -> None:
        """DEL (with the netns, then maybe again without, as the CRI does), drop the netns."""
        self.del_until_ok(slot, slot.path)
        if self.rng.random() < 0.3:
            self.del_until_ok(slot, "")
        self.chaos.stats.pods[why] += 1
        self.destroy_sandbox(slot)

    def del_until_ok(self, slot: Slot, netns: str) -> None:
        for attempt in range(DEL_ATTEMPTS):
            out = self.call("DEL", slot, netns)
            if out.ok:
                return
            if out.rc is not None and out.rc > 0 and out.code not in DEL_MAY_FAIL:
                # DEL must succeed whatever is already gone; only these are worth a retry.
                self.chaos.stats.problem(f"{slot.container_id}: DEL {out.label()}: {out.out}")
            time.sleep(min(0.01 * 2**attempt, 0.5))
        self.chaos.stats.problem(
            f"{slot.container_id}: DEL failed {DEL_ATTEMPTS} times: {out.label()} {out.out.strip()}"
        )

    def destroy_sandbox(self, slot: Slot) -> None:
        with slot.lock:
            sh("ip", "netns", "del", slot.netns, check=False)
            self.chaos.registry.unregister(slot.container_id)
            slot.up = False
            slot.gone = ""
            slot.netns = ""
            slot.result = {}


class Injector:
    """One fault at a time, every few calls, until the runtimes are done."""

    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos
        self.rng = chaos.injector_rng
        self.node = chaos.node
        self.stats = chaos.stats
        self.plan: list[str] = []
        n = chaos.settings.checkpoints
        self.checkpoints_at = [chaos.settings.calls * (i + 1) // (n + 1) for i in range(n)]

    def run(self) -> None:
        try:
            self.loop()
        except Exception as exc:  # a harness bug must fail the run, not end the chaos quietly
            self.stats.problem(f"the injector crashed: {exc!r}")
            raise

    def loop(self) -> None:
        actions: dict[str, Callable[[], None]] = {
            "agent-kill": self.agent_kill,
            "agent-stall": self.agent_stall,
            "agent-step-kill": self.agent_step_kill,
            "plugin-step-kill": self.plugin_step_kill,
            "enospc": self.enospc,
            "readonly": self.readonly,
            "newer-records": self.newer_records,
            "netns-delete": self.netns_delete,
            "reboot": self.reboot,
        }
        while not self._wait_calls(self.rng.randint(3, 10)):
            if self.checkpoints_at and self.stats.total >= self.checkpoints_at[0]:
                self.checkpoints_at.pop(0)
                self.chaos.checkpoint(str(len(self.stats.checkpoints) + 1))
                continue
            if not self.plan:
                self.plan = list(FAULT_KINDS)
                self.rng.shuffle(self.plan)
            actions[self.plan.pop()]()

    def _wait_calls(self, n: int, limit: float = 30.0) -> bool:
        """Until ``n`` more calls are made (or ``limit`` s); True once the run is over."""
        target = self.stats.total + n
        deadline = time.monotonic() + limit
        while self.stats.total < target and time.monotonic() < deadline:
            if self.chaos.done.is_set() or self.stats.total >= self.chaos.settings.calls:
                return True
            time.sleep(0.005)
        return self.chaos.done.is_set()

    def fault(self, kind: str, detail: str = "") -> None:
        with self.stats.lock:
            self.stats.faults[kind] += 1
        self.chaos.note("faults", f"{kind} {detail}".strip())

    def agent_stall(self) -> None:
        """Freeze the agent past its clients' timeout, then let it go on (a wedged or starved
        agent): its clients answer 11 and their runtimes go on without it (DEL, retry,
        in-process); whatever the agent then does must not undo what they did since."""
        if self.chaos.agent.stall(CLIENT_TIMEOUT + self.rng.uniform(0.5, 2.0)):
            self.fault("agent-stall")

    def agent_kill(self) -> None:
        time.sleep(self.rng.uniform(0, 0.2))  # a random moment, mid-call or not
        if self.chaos.agent.kill9():
            self.fault("agent-kill")

    def _step_kill(self, directory: Path, steps: list[str], kind: str) -> None:
        step = self.rng.choice(steps)
        armed = directory / step
        armed.touch()
        if step == "reconcile-release":
            self.chaos.agent.kill9()  # reached only while a starting agent reconciles
        fired = False
        target = self.stats.total + 40
        deadline = time.monotonic() + 20
        while self.stats.total < target and time.monotonic() < deadline:
            if not armed.exists():
                fired = True
                break
            if self.chaos.done.is_set():
                break
            time.sleep(0.005)
        if not fired:
            try:
                armed.unlink()
            except FileNotFoundError:
                fired = True  # claimed at the last moment
        if fired:
            self.fault(kind, step)
            with self.stats.lock:
                self.stats.steps[f"{kind.split('-')[0]} {step}"] += 1

    def agent_step_kill(self) -> None:
        self._step_kill(self.node.agent_faults, AGENT_STEPS, "agent-step-kill")

    def plugin_step_kill(self) -> None:
        self._step_kill(self.node.plugin_faults, PLUGIN_STEPS, "plugin-step-kill")

    def _hold(self) -> None:
        self._wait_calls(self.rng.randint(8, 25), limit=self.rng.uniform(0.5, 3.0))

    def enospc(self) -> None:
        filler = self.node.fill()
        try:
            self.fault("enospc")
            self._hold()
        finally:
            filler.unlink()

    def readonly(self) -> None:
        if not self.node.set_readonly(True):
            with self.stats.lock:
                self.stats.faults["readonly refused (busy)"] += 1
            return
        try:
            self.fault("readonly")
            self._hold()
        finally:
            if not self.node.set_readonly(False, patience=30):
                self.stats.problem("the state tmpfs could not be made writable again")

    def newer_records(self) -> None:
        """Restart the agent over records a newer version wrote: a higher schema and a key
        this version does not know (an upgrade rolled back)."""
        from loxicni.base import files, paths
        from loxicni.plugin import records
        from loxicni.plugin.locks import attachment_lock

        with self.chaos.agent.down():
            rewritten = 0
            for key in list(records.keys()):
                path = Path(paths.records_dir()) / f"{key}.json"
                try:
                    doc = json.loads(path.read_bytes())
                except (OSError, ValueError):
                    continue
                with attachment_lock(doc["network"], doc["container_id"], doc["ifname"]) as lk:
                    try:
                        doc = json.loads(path.read_bytes())
                    except FileNotFoundError:
                        lk.remove_on_release = True  # its DEL won: leave no lock file
                        continue
                    if doc.get("state") != records.READY:
                        continue
                    doc["schema"] = records.SCHEMA + 1
                    doc["placement"] = {"zone": "from a newer loxi-cni", "weight": 3}
                    files.write_atomic(path, json.dumps(doc).encode())
                    rewritten += 1
            self.fault("newer-records")
            with self.stats.lock:
                self.stats.pods["records rewritten by a newer version"] += rewritten

    def netns_delete(self) -> None:
        """Delete a pod's netns while its ADD or DEL runs (any live pod's if none runs)."""
        slots = [s for r in self.chaos.runtimes for s in r.slots]
        deadline = time.monotonic() + 2
        busy: list[Slot] = []
        while not busy and time.monotonic() < deadline:
            busy = [s for s in slots if s.in_flight in ("ADD", "DEL") and s.netns and not s.gone]
            time.sleep(0.002)
        candidates = busy or [s for s in slots if s.up and not s.gone]
        if not candidates:
            return
        slot = self.rng.choice(candidates)
        with slot.lock:
            if not slot.netns or slot.gone:
                return
            slot.gone = "netns deleted"
            during = slot.in_flight if slot.in_flight in ("ADD", "DEL") else "no call"
            sh("ip", "netns", "del", slot.netns, check=False)
        self.fault("netns-delete", f"{slot.container_id} during {during}")
        with self.stats.lock:
            self.stats.steps[f"netns deleted during {during}"] += 1

    def reboot(self) -> None:
        """Power off between calls; the node comes back with /var but not /run or the kernel
        state; the runtimes then DEL the pods they had (their netns are gone)."""
        self.chaos.gate.pause()
        try:
            with self.chaos.agent.down():
                lost = 0
                for r in self.chaos.runtimes:
                    for slot in r.slots:
                        with slot.lock:
                            if slot.netns and not slot.gone:
                                slot.gone = "reboot"
                                sh("ip", "netns", "del", slot.netns, check=False)
                                lost += 1
                for pod in self.chaos.forgotten:
                    sh("ip", "netns", "del", pod.netns, check=False)
                self.node.delete_masquerade()
                sh("ip", "link", "del", self.node.bridge, check=False)
                for name in self.node.host_veth_names():  # the pod netns took them; be sure
                    sh("ip", "link", "del", name, check=False)
                for entry in self.node.run_dir.iterdir():
                    if entry.is_dir():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
            self.fault("reboot")
            with self.stats.lock:
                self.stats.pods["sandboxes lost to reboots"] += lost
        finally:
            self.chaos.gate.resume()


def run(settings: Settings, keep: bool = False) -> Stats:
    """One whole run on a fresh node; the node is removed afterwards (unless ``keep``)."""
    node = Node(settings.plugin)
    saved = {k: os.environ.get(k) for k in node.env()}
    os.environ.update(node.env())  # the injector works on the node's records and locks
    started = time.monotonic()
    try:
        node.setup()
        chaos = Chaos(settings, node)
        try:
            chaos.run()
        finally:
            chaos.done.set()
            chaos.agent.stop()
        chaos.stats.pods["seconds"] = round(time.monotonic() - started)
        chaos.stats.agent_log, chaos.stats.agent_errors = agent_log_summary(node)
        chaos.stats.story = histories(node, chaos.stats)
        if chaos.stats.story and node.agent_log.exists():
            kept = Path(f"/tmp/loxi-chaos-{node.tag}.agent.log")
            shutil.copy(node.agent_log, kept)
            chaos.stats.story += f"\nthe agent's log: {kept}"
        return chaos.stats
    finally:
        if not keep:
            node.cleanup()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def report(settings: Settings, stats: Stats) -> str:
    lines = [
        f"loxi-cni chaos run: seed {settings.seed}, {stats.total} calls, {settings.runtimes} "
        f"runtimes x {settings.pods} pods, {stats.pods['seconds']} s",
        "calls by command:",
    ]
    for command in ("ADD", "DEL", "CHECK", "GC"):
        parts = sorted(
            ((label, n) for (c, label), n in stats.outcomes.items() if c == command),
            key=lambda x: (-x[1], x[0]),
        )
        detail = ", ".join(f"{label} {n}" for label, n in parts)
        lines.append(f"  {command:<5} {stats.calls[command]:>6}  ({detail})")
    lines.append(
        f"  through the agent (falling back in-process while it is down) "
        f"{stats.modes['agent']}, forced in-process {stats.modes['in-process']}"
    )
    lines.append("faults injected by kind:")
    for kind in FAULT_KINDS:
        lines.append(f"  {kind:<17} {stats.faults[kind]:>4}")
    for kind in sorted(set(stats.faults) - set(FAULT_KINDS)):
        lines.append(f"  {kind:<17} {stats.faults[kind]:>4}")
    if stats.steps:
        lines.append(
            "  killed at / deleted during: "
            + ", ".join(f"{s} {n}" for s, n in sorted(stats.steps.items()))
        )
    lines.append(
        "pods: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.pods.items()) if k != "seconds")
    )
    lines.append(
        "checkpoints (calls, pods up, leaks, broken): "
        + ", ".join(f"({c}, {u}, {lk}, {b})" for c, u, lk, b in stats.checkpoints)
    )
    lines.append(
        f"slowest call {stats.slowest:.1f} s (client timeout {CLIENT_TIMEOUT:.0f} s, a hang after "
        f"{HANG_AFTER:.0f} s); agent log: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.agent_log.items()))
    )
    for entry in stats.agent_errors:  # its message and the exception it ends with
        first, last = entry.splitlines()[0], entry.splitlines()[-1]
        lines.append(f"agent error: {first}" + (f" ({last})" if last != first else ""))
    lines.append(
        f"leaks = {len(stats.leaks)}, broken live pods = {len(stats.broken)}, "
        f"hangs = {stats.hangs}, other problems = {len(stats.problems)}"
    )
    for what, items in (
        ("LEAK", stats.leaks),
        ("BROKEN", stats.broken),
        ("PROBLEM", stats.problems),
    ):
        lines += [f"{what}: {x}" for x in items[:50]]
    if stats.story:
        lines.append(stats.story)
    return "\n".join(lines)


def agent_log_summary(node: Node, keep: int = 3) -> tuple[Counter[str], list[str]]:
    """The agent's log lines by level and tracebacks, and its first ``keep`` ERROR entries
    with their tracebacks (a bug in the agent shows up as one)."""
    counts: Counter[str] = Counter()
    errors: list[str] = []
    try:
        text = node.agent_log.read_text(errors="replace")
    except FileNotFoundError:
        return counts, errors
    entry: list[str] | None = None
    for line in text.splitlines():
        parts = line.split(" ", 3)
        level = parts[2] if len(parts) > 2 and parts[0][:2] == "20" else ""
        if level:
            if entry is not None:
                errors.append("\n".join(entry))
            entry = [line] if level in ("ERROR", "CRITICAL") and len(errors) < keep else None
            counts[level] += 1
        else:
            counts["tracebacks"] += line.startswith("Traceback")
            if entry is not None:
                entry.append(line)
    if entry is not None:
        errors.append("\n".join(entry))
    return counts, errors


def histories(node: Node, stats: Stats) -> str:
    """What happened to each attachment named in a failure, and the faults, in time order."""
    text = "\n".join(stats.leaks + stats.broken + stats.problems)
    named = [cid for cid in node.history if cid != "faults" and cid in text]
    lines = []
    for cid in named[:10]:
        lines.append(f"history of {cid}:")
        lines += [f"  {x}" for x in node.history[cid]]
    if named:
        lines.append("faults:")
        lines += [f"  {x}" for x in node.history.get("faults", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--runtimes", type=int, default=4)
    p.add_argument("--pods", type=int, default=5, help="pod slots per runtime")
    p.add_argument("--checkpoints", type=int, default=5)
    p.add_argument("--gc", type=float, default=0.1, help="share of a live pod's steps: GC")
    p.add_argument("--plugin", default=PLUGIN)
    p.add_argument("--keep", action="store_true", help="leave the node for inspection")
    args = p.parse_args(argv)
    settings = Settings(
        seed=args.seed,
        calls=args.calls,
        runtimes=args.runtimes,
        pods=args.pods,
        checkpoints=args.checkpoints,
        plugin=args.plugin,
        gc=args.gc,
    )
    stats = run(settings, keep=args.keep)
    print(report(settings, stats), flush=True)
    failed = stats.leaks or stats.broken or stats.hangs or stats.problems
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
