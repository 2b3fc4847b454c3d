"""Many agents' WatchAssignments streams on one gateway: connect, memory, push.

One real gateway process (``edgecloud gateway serve``) on a directory registry
holding the digits task (edge model and policy), with one bearer token per
agent. Client processes open the agents' watch streams, each process over
several connections (separate channels) of up to the gateway's
``max_streams_per_connection`` streams each; every stream is an agent of its
own id, with one of a few label sets. Prints, for the baseline fleet and the
large one side by side (same run, same machine, same client layout rules):

1. Time from the clients' start signal to the last stream's first assignment,
   and how many streams got one (the rest ended, or were still waiting when
   the bench gave up).
2. Gateway memory (RSS) idle and with every stream open, and per stream.
3. Time from a publication (``models publish --promote`` of a new edge
   version straight into the registry) to the last stream receiving it.
4. Time from a rollout (a new version to 50% of the agents) to the last of
   those agents' streams receiving it.
5. Gateway CPU seconds spent on steps 1, 3 and 4, and the clients' CPU on 1.

Goals for 10,000 streams: all assigned within 30 s, gateway at most 500 MB,
publication to the last stream within 2 s.

    python bench/watch_streams.py [--streams 10000] [--baseline 1000] [--clients N]
                                  [--reports] [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

LABEL_SETS = 8
"""Distinct label sets among the agents (site=s0..s7)."""
PROGRESS_S = 0.25
"""How often each client process sends its counts."""
TASK = "digits"


# -- client processes ------------------------------------------------------------------


def _agent(i: int) -> tuple[str, str, dict[str, str]]:
    """Agent number ``i``: its id, its token, its labels."""
    return f"agent-{i:05d}", f"bench-token-{i:05d}-0123456789abcdef", {"site": f"s{i % LABEL_SETS}"}


def client_main(index: int, address: str, first: int, count: int, per_connection: int,
                auth: bool, reports: bool, out: mp.Queue, go: mp.Event, stop: mp.Event) -> None:
    """One client process: ``count`` agents' streams from agent number ``first``."""
    asyncio.run(_client(index, address, first, count, per_connection, auth, reports, out, go,
                        stop))


async def _client(index: int, address: str, first: int, count: int, per_connection: int,
                  auth: bool, reports: bool, out: mp.Queue, go: mp.Event,
                  stop: mp.Event) -> None:
    import grpc

    from edgecloud.protos.fleet.v1 import fleet_pb2 as pb
    from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as pb_grpc

    first_at: list[float | None] = [None] * count
    got: dict[str, list[float | None]] = {}
    reported: dict[str, list[float | None]] = {}
    ended: dict[str, int] = {}
    report_errors: dict[str, int] = {}
    background: set[asyncio.Task] = set()

    async def report(stub, n: int, agent_id: str, labels: dict[str, str], metadata,
                     message) -> None:
        """What an agent sends once it applied an assignment: after a delay drawn from
        [0, the assignment's report_spread_ms), as an agent does."""
        if message.report_spread_ms:
            await asyncio.sleep(random.uniform(0.0, message.report_spread_ms / 1000.0))
        versions = [ref.version for ref in message.models]
        status = pb.AgentStatus(
            agent_id=agent_id, labels=labels, sent_at=time.time(), status_interval_s=60.0,
            applied_generation=message.generation,
            tasks=[pb.TaskCounters(name=ref.name, model_version=ref.version)
                   for ref in message.models])
        try:
            await stub.ReportStatus(status, metadata=metadata, timeout=120)
        except grpc.aio.AioRpcError as exc:
            report_errors[exc.code().name] = report_errors.get(exc.code().name, 0) + 1
            if len(report_errors) == 1 and sum(report_errors.values()) == 1:
                print(f"client {index}: ReportStatus: {exc.code().name}: {exc.details()}",
                      file=sys.stderr)
            return
        now = time.monotonic()
        for version in versions:
            reported.setdefault(version, [None] * count)[n] = now

    async def watch(stub, n: int) -> None:
        agent_id, token, labels = _agent(first + n)
        metadata = (("authorization", f"Bearer {token}"),) if auth else ()
        call = stub.WatchAssignments(pb.AgentHello(agent_id=agent_id, labels=labels),
                                     metadata=metadata)
        try:
            async for message in call:
                now = time.monotonic()
                if first_at[n] is None:
                    first_at[n] = now
                for ref in message.models:
                    seen = got.setdefault(ref.version, [None] * count)
                    if seen[n] is None:
                        seen[n] = now
                if reports:
                    task = asyncio.create_task(report(stub, n, agent_id, labels, metadata,
                                                      message))
                    background.add(task)
                    task.add_done_callback(background.discard)
            code = "EOF"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        except asyncio.CancelledError:
            call.cancel()
            raise
        ended[code] = ended.get(code, 0) + 1

    def summary() -> dict:
        def stats(times: list[float | None]) -> tuple[int, float]:
            seen = [t for t in times if t is not None]
            return len(seen), max(seen, default=0.0)

        return {"first": stats(first_at), "versions": {v: stats(t) for v, t in got.items()},
                "reported": {v: stats(t) for v, t in reported.items()},
                "ended": dict(ended), "report_errors": dict(report_errors)}

    out.put((index, "ready", None))
    while not go.is_set():  # noqa: ASYNC110 (a process-wide event, not an asyncio one)
        await asyncio.sleep(0.01)
    channels, tasks = [], []
    for start in range(0, count, per_connection):
        # A channel argument of its own: channels with equal arguments share one
        # connection (gRPC's global subchannel pool), this one gets its own.
        channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.use_local_subchannel_pool", 1), ("bench.connection", start)])
        channels.append(channel)
        stub = pb_grpc.FleetServiceStub(channel)
        tasks += [asyncio.create_task(watch(stub, n))
                  for n in range(start, min(start + per_connection, count))]
    while not stop.is_set():
        out.put((index, "progress", summary()))
        await asyncio.sleep(PROGRESS_S)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    out.put((index, "done", summary()))


# -- the run -----------------------------------------------------------------------------


@dataclass
class Progress:
    """What the clients reported last, summed."""

    clients: dict[int, dict] = field(default_factory=dict)

    def first(self) -> tuple[int, float]:
        return self._sum(lambda s: s["first"])

    def version(self, v: str) -> tuple[int, float]:
        return self._sum(lambda s: s["versions"].get(v, (0, 0.0)))

    def reported(self, v: str) -> tuple[int, float]:
        return self._sum(lambda s: s["reported"].get(v, (0, 0.0)))

    def report_errors(self) -> int:
        return sum(sum(s["report_errors"].values()) for s in self.clients.values())

    def ended(self) -> int:
        return sum(sum(s["ended"].values()) for s in self.clients.values())

    def ended_codes(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        for s in self.clients.values():
            for code, n in s["ended"].items():
                codes[code] = codes.get(code, 0) + n
        return codes

    def _sum(self, pick) -> tuple[int, float]:
        counts = [pick(s) for s in self.clients.values()]
        return sum(c for c, _ in counts), max((t for _, t in counts), default=0.0)


def _drain(out: mp.Queue, progress: Progress, wait_s: float) -> None:
    """Take the clients' counts sent so far, waiting up to ``wait_s`` for the first."""
    timeout: float | None = wait_s
    while True:
        try:
            index, _, summary = out.get(timeout=timeout) if timeout else out.get_nowait()
        except queue.Empty:
            return
        timeout = None
        if summary is not None:
            progress.clients[index] = summary


def _wait(out: mp.Queue, progress: Progress, done, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _drain(out, progress, PROGRESS_S)
        if done():
            # Counts come every PROGRESS_S: the newest ones carry the final times.
            _drain(out, progress, PROGRESS_S * 2)
            return True
    return False


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


@dataclass
class Figures:
    streams: int
    clients: int
    connections: int
    assigned: int = 0
    assign_s: float | None = None
    ended: dict[str, int] = field(default_factory=dict)
    rss_idle: float = 0.0
    rss_open: float = 0.0
    publish_reached: int = 0
    publish_s: float | None = None
    rollout_expected: int = 0
    rollout_reached: int = 0
    rollout_s: float | None = None
    cpu_connect: float = 0.0
    cpu_connect_clients: float = 0.0
    cpu_publish: float = 0.0
    cpu_publish_clients: float = 0.0
    publish_call_s: float = 0.0
    reports_s: float | None = None
    reports_done: int = 0
    report_errors: int = 0
    cpu_rollout: float = 0.0


def _publish(registry: Path, files: Path, version: str, promote: bool) -> None:
    from edgecloud.core.artifacts import build_model_manifest
    from edgecloud.operations import RegistryOperator

    manifest = build_model_manifest(files / "edge.onnx", name=TASK, version=version,
                                    target="edge")
    RegistryOperator(registry).publish_model(manifest.canonical(), b"", files / "edge.onnx",
                                             promote)


def _seed(registry: Path, files: Path) -> None:
    from edgecloud.core.artifacts import build_policy_manifest
    from edgecloud.operations import RegistryOperator

    _publish(registry, files, "1", False)
    doc = (files / "policy.yaml").read_bytes()
    policy = build_policy_manifest(doc, name=TASK, version="1")
    RegistryOperator(registry).publish_policy(policy.canonical(), b"", doc)


def _tokens_file(path: Path, streams: int) -> Path:
    lines = ["agents:"] + [f"  {token}: {agent_id}"
                           for agent_id, token, _ in map(_agent, range(streams))]
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_gateway(work: Path, registry: Path, streams: int, args) -> tuple[subprocess.Popen,
                                                                             str]:
    port_file = work / "gateway.port"
    command = [sys.executable, "-m", "edgecloud", "gateway", "serve",
               "--listen", "127.0.0.1:0", "--registry", str(registry),
               "--data-dir", str(work / "gateway"), "--port-file", str(port_file),
               "--log-format", "json", "--log-level", args.gateway_log_level]
    if not args.no_auth:
        command += ["--tokens-file", str(_tokens_file(work / "tokens.yaml", streams))]
    with open(work / "gateway.log", "wb") as log:
        env = {**os.environ, "EDGECLOUD_GATEWAY_REPORT_SPREAD_PER_AGENT_MS":
               str(args.report_spread_per_agent_ms)}
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not start; see {work / 'gateway.log'}")
        time.sleep(0.05)
    time.sleep(0.5)
    return proc, port_file.read_text().splitlines()[0].strip()


class Profile:
    """py-spy recording the gateway during one step (``--py-spy DIR``), else nothing."""

    def __init__(self, folder: Path | None, pid: int, name: str) -> None:
        self._proc = None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self._proc = subprocess.Popen(
                [shutil.which("py-spy", path=Path(sys.executable).parent) or "py-spy",
                 "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                 "--nonblocking", "-o", str(folder / f"{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches

    def __enter__(self) -> Profile:
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(30)


def run_fleet(work: Path, files: Path, streams: int, args) -> Figures:
    from edgecloud.cloud_gateway.rollouts import bucket
    from edgecloud.operations import RegistryOperator

    work.mkdir(parents=True)
    registry = work / "registry"
    _seed(registry, files)
    gateway, address = _start_gateway(work, registry, streams, args)
    gw = psutil.Process(gateway.pid)
    clients_n = max(1, min(args.clients, -(-streams // args.per_connection)))
    share = -(-streams // clients_n)
    connections = sum(-(-min(share, streams - i * share) // args.per_connection)
                      for i in range(clients_n))
    figures = Figures(streams, clients_n, connections)
    ctx = mp.get_context("spawn")
    out, go, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    procs = []
    try:
        figures.rss_idle = gw.memory_info().rss
        for i in range(clients_n):
            first, count = i * share, min(share, streams - i * share)
            p = ctx.Process(target=client_main, args=(i, address, first, count,
                                                      args.per_connection, not args.no_auth,
                                                      args.reports, out, go, stop))
            p.start()
            procs.append(p)
        ready = 0
        while ready < clients_n:
            _, kind, _ = out.get(timeout=120)
            ready += kind == "ready"
        progress = Progress()
        client_ps = [psutil.Process(p.pid) for p in procs]
        profiles = args.py_spy / str(streams) if args.py_spy else None
        with Profile(profiles, gateway.pid, "connect"):
            cpu0, ccpu0 = _cpu(gw), sum(map(_cpu, client_ps))
            t0 = time.monotonic()
            go.set()
            _wait(out, progress, lambda: progress.first()[0] + progress.ended() >= streams,
                  args.connect_timeout)
        figures.cpu_connect = _cpu(gw) - cpu0
        figures.cpu_connect_clients = sum(map(_cpu, client_ps)) - ccpu0
        figures.assigned, last = progress.first()
        figures.ended = progress.ended_codes()
        if figures.assigned == streams:
            figures.assign_s = last - t0
        if figures.assigned == 0:
            return figures
        time.sleep(args.settle)
        figures.rss_open = gw.memory_info().rss

        reachable = figures.assigned
        with Profile(profiles, gateway.pid, "publish"):
            cpu0, ccpu0 = _cpu(gw), sum(map(_cpu, client_ps))
            started = time.monotonic()
            _publish(registry, files, "2", True)
            t0 = time.monotonic()  # the new version is in the registry
            figures.publish_call_s = t0 - started
            if _wait(out, progress, lambda: progress.version("2")[0] >= reachable,
                     args.push_timeout):
                figures.publish_s = progress.version("2")[1] - t0
            figures.cpu_publish_clients = sum(map(_cpu, client_ps)) - ccpu0
            if args.reports and _wait(
                    out, progress,
                    lambda: progress.reported("2")[0] + progress.report_errors() >= reachable,
                    args.push_timeout):
                figures.reports_s = progress.reported("2")[1] - t0
            figures.reports_done = progress.reported("2")[0]
            figures.report_errors = progress.report_errors()
        figures.publish_reached = progress.version("2")[0]
        figures.cpu_publish = _cpu(gw) - cpu0
        time.sleep(args.settle)

        _publish(registry, files, "3", False)
        time.sleep(args.settle)  # the gateway sees the unpromoted version (no change pushed)
        figures.rollout_expected = sum(bucket(TASK, _agent(i)[0]) < 50.0
                                       for i in range(streams))
        with Profile(profiles, gateway.pid, "rollout"):
            cpu0 = _cpu(gw)
            t0 = time.monotonic()
            RegistryOperator(registry).rollout("start", TASK, version="3", percent=50.0)
            if _wait(out, progress,
                     lambda: progress.version("3")[0] >= figures.rollout_expected,
                     args.push_timeout):
                figures.rollout_s = progress.version("3")[1] - t0
        figures.rollout_reached = progress.version("3")[0]
        figures.cpu_rollout = _cpu(gw) - cpu0
        return figures
    finally:
        stop.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
                p.join(5)
        gateway.terminate()
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()


def _seconds(value: float | None, reached: int, wanted: int) -> str:
    if value is None:
        return f"({reached}/{wanted})"
    return f"{value:.2f} s"


def report(base: Figures, big: Figures) -> None:
    mb = 1e6

    def row(name: str, a: str, b: str, goal: str = "") -> None:
        print(f"| {name} | {a} | {b} | {goal} |")

    print(f"\n| measure | {base.streams:,} streams | {big.streams:,} streams | goal |")
    print("| --- | --- | --- | --- |")
    row("client processes / connections", f"{base.clients} / {base.connections}",
        f"{big.clients} / {big.connections}")
    row("streams assigned", f"{base.assigned:,}", f"{big.assigned:,}",
        f"all {big.streams:,}")
    row("start → last first assignment",
        _seconds(base.assign_s, base.assigned, base.streams),
        _seconds(big.assign_s, big.assigned, big.streams), "≤ 30 s")
    row("streams ended early", str(base.ended or 0), str(big.ended or 0), "none")
    row("gateway RSS idle", f"{base.rss_idle / mb:.0f} MB", f"{big.rss_idle / mb:.0f} MB")
    row("gateway RSS, all streams open", f"{base.rss_open / mb:.0f} MB",
        f"{big.rss_open / mb:.0f} MB", "≤ 500 MB")
    per = [(f.rss_open - f.rss_idle) / max(f.assigned, 1) / 1e3 for f in (base, big)]
    row("gateway RSS per stream", f"{per[0]:.1f} kB", f"{per[1]:.1f} kB")
    row("publication → last stream",
        _seconds(base.publish_s, base.publish_reached, base.assigned),
        _seconds(big.publish_s, big.publish_reached, big.assigned), "≤ 2 s")
    row("(the publication itself: manifest, upload, generation)",
        f"{base.publish_call_s:.2f} s", f"{big.publish_call_s:.2f} s")
    if base.reports_done or big.reports_done:
        row("publication → last status report stored",
            _seconds(base.reports_s, base.reports_done, base.assigned),
            _seconds(big.reports_s, big.reports_done, big.assigned))
        row("status reports refused or failed", f"{base.report_errors:,}",
            f"{big.report_errors:,}", "none")
    row(f"rollout to 50% → last of its streams ({base.rollout_expected:,} / "
        f"{big.rollout_expected:,})",
        _seconds(base.rollout_s, base.rollout_reached, base.rollout_expected),
        _seconds(big.rollout_s, big.rollout_reached, big.rollout_expected))
    row("gateway CPU: connect / publish / rollout",
        f"{base.cpu_connect:.1f} / {base.cpu_publish:.2f} / {base.cpu_rollout:.2f} s",
        f"{big.cpu_connect:.1f} / {big.cpu_publish:.2f} / {big.cpu_rollout:.2f} s")
    row("clients' CPU: connect / publish",
        f"{base.cpu_connect_clients:.1f} / {base.cpu_publish_clients:.2f} s",
        f"{big.cpu_connect_clients:.1f} / {big.cpu_publish_clients:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=1_000,
                        help="streams of the baseline fleet measured first")
    parser.add_argument("--clients", type=int, default=os.cpu_count() or 2,
                        help="client processes, at most (default: one per core; on a machine "
                        "that also runs the gateway, more only add client CPU on the cores "
                        "the gateway needs)")
    parser.add_argument("--per-connection", type=int, default=None,
                        help="streams per connection (default: the gateway's "
                        "max_streams_per_connection, 256; half that with --reports, leaving "
                        "room for the reports on the same connections)")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--push-timeout", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds of quiet before memory is read and between steps")
    parser.add_argument("--no-auth", action="store_true", help="a gateway without tokens")
    parser.add_argument("--reports", action="store_true",
                        help="each agent reports its status (ReportStatus) on every "
                        "assignment it gets, as an agent does once it applied it")
    parser.add_argument("--report-spread-per-agent-ms", type=float, default=1.0,
                        help="the gateway's report_spread_per_agent_ms: agents spread the "
                        "report after an assignment over this many ms per agent (0: all at "
                        "once; default 1)")
    parser.add_argument("--gateway-log-level", default="info")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                        help="record the gateway with py-spy during each step (raw "
                        "stacks in DIR/STREAMS/STEP.txt)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the gateway's files and log in this folder")
    args = parser.parse_args()
    if args.per_connection is None:
        args.per_connection = 128 if args.reports else 256
    from edgecloud.examples.digits import write_example

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        files = work / "digits"
        write_example(files)
        runs = []
        for streams in (args.baseline, args.streams):
            figures = run_fleet(work / f"fleet-{streams}", files, streams, args)
            print(f"{streams:,} streams: assigned {figures.assigned:,}, "
                  f"first-assignment {figures.assign_s}, publish {figures.publish_s}, "
                  f"rollout {figures.rollout_s}, ended {figures.ended}", flush=True)
            runs.append(figures)
        report(*runs)


if __name__ == "__main__":
    main()
