"""An edge that never loses work: a chaos run, and what safety costs per request.

Prints, in one run:

1. Chaos: a gateway and three agents, each its own process, on loopback; an
   app sends one-row requests at a steady rate spread over the agents, each
   with a 500 ms deadline, while the gateway is SIGKILLed and restarted every
   ``--kill-every`` seconds. Failed app requests (goal 0), p50/p99 against
   the deadline, the routes, and the hard examples the agents' ledgers kept
   against those the gateway stored (goal: equal, no duplicates).
2. Cost at one request in flight, side by side in the same run (p50 of
   sequential calls alternating between the setups):
   - mutual TLS between agent and gateway against plaintext, on requests
     that are all escalated (``route=cloud``);
   - the durable hard-example ledger against none, on requests whose rows
     are all hard (``confidence_threshold=1``) and answered in the cloud.
   Goal: at most 10% each.

    .venv/bin/python bench/chaos.py [--seconds 120] [--kill-every 20] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgecloud.core import codec
from edgecloud.core.tensors import InferRequest
from edgecloud.examples.digits import write_example
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc

DEADLINE_S = 0.5


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class Server:
    """One ``edgecloud`` command as its own process."""

    def __init__(self, args: list[str], folder: Path, name: str) -> None:
        self.port_file = folder / f"{name}.port"
        self.port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgecloud", *args, "--port-file", str(self.port_file),
             "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    def address(self) -> str:
        deadline = time.monotonic() + 60
        while not (self.port_file.exists() and self.port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit {self.proc.poll()})")
            time.sleep(0.05)
        return self.port_file.read_text().strip()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(60)


def agent_args(files: Path, name: str, gateway: str, **settings) -> list[str]:
    config = files / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"reconnect_max_s": 1.0, **settings}))
    return ["agent", "run", "--gateway", gateway, "--listen", "127.0.0.1:0",
            "--data-dir", str(files / name), "--agent-id", name,
            "--model", f"digits={files / 'edge.onnx'}", "--policy", str(files / "policy.yaml"),
            "--config", str(config)]


def gateway_args(files: Path, listen: str, *extra: str) -> list[str]:
    return ["gateway", "serve", "--listen", listen, "--data-dir", str(files / "gateway"),
            "--registry", str(files / "registry"),
            "--model", f"digits={files / 'cloud.onnx'}", *extra]


def request(row: np.ndarray, **parameters) -> object:
    return codec.encode_infer_request(InferRequest(
        model_name="digits", inputs={"pixels": row[np.newaxis]}, parameters=parameters))


# ------------------------------------------------------------------------- chaos


async def drive(addresses: list[str], rows: np.ndarray, seconds: float,
                rate: float) -> tuple[list[float], list[str], dict[str, int]]:
    latencies: list[float] = []
    failures: list[str] = []
    routes: dict[str, int] = {}
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [v2_grpc.GRPCInferenceServiceStub(c) for c in channels]

    async def one(i: int) -> None:
        sent = time.monotonic()
        try:
            reply = await stubs[i % len(stubs)].ModelInfer(request(rows[i % len(rows)]),
                                                           timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            failures.append(exc.code().name)
            return
        latencies.append(time.monotonic() - sent)
        route = codec.decode_infer_response(reply).parameters["route"]
        routes[route] = routes.get(route, 0) + 1

    start = time.monotonic()
    calls = []
    for i in range(int(seconds * rate)):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        calls.append(asyncio.create_task(one(i)))
    await asyncio.gather(*calls)
    for c in channels:
        await c.close()
    return latencies, failures, routes


def ledger(folder: Path) -> dict[str, int]:
    with sqlite3.connect(folder / "hard" / "ledger.sqlite3") as db:
        return dict(db.execute("SELECT name, value FROM counters").fetchall())


def chaos(files: Path, seconds: float, kill_every: float, rate: float, rows: np.ndarray) -> None:
    listen = free_address()
    gateway = Server(gateway_args(files, listen), files, "gateway-0")
    gateway.address()
    names = [f"chaos-{i}" for i in range(3)]
    agents = [Server(agent_args(files, n, listen, hard_examples={"upload_interval_s": 0.5}),
                     files, n) for n in names]
    addresses = [a.address() for a in agents]
    kills = 0

    async def outages() -> None:
        nonlocal gateway, kills
        start = time.monotonic()
        while time.monotonic() - start + kill_every < seconds:
            await asyncio.sleep(kill_every)
            gateway.stop(signal.SIGKILL)
            kills += 1
            await asyncio.sleep(0.5)
            gateway = Server(gateway_args(files, listen), files, f"gateway-{kills}")
            await asyncio.to_thread(gateway.address)

    async def run() -> tuple:
        result, _ = await asyncio.gather(drive(addresses, rows, seconds, rate), outages())
        return result

    latencies, failures, routes = asyncio.run(run())
    time.sleep(1.0)  # the agents' last flush of rows still in memory (every 0.5 s)
    drain_deadline = time.monotonic() + 120
    while time.monotonic() < drain_deadline:
        counts = [ledger(files / n) for n in names]
        if all(c.get("queued", 1) == 0 for c in counts):
            break
        time.sleep(0.5)
    for agent in agents:
        agent.stop()
    gateway.stop()
    counts = [ledger(files / n) for n in names]
    kept = sum(c.get("kept", 0) for c in counts)
    queued = sum(c.get("queued", 0) for c in counts)
    lost = sum(c.get(k, 0) for c in counts
               for k in ("evicted_age", "evicted_space", "quarantined", "dropped"))
    # Every line of every stored batch, duplicates included (export would hide them).
    stored = [json.loads(line)["record_id"]
              for p in (files / "registry" / "hard_examples").glob("digits/*/*.jsonl")
              for line in p.read_text().splitlines() if line.strip()]
    print(f"\n1. chaos: {seconds:.0f} s at {rate:.0f} requests/s over 3 agents, gateway "
          f"SIGKILLed {kills} times (every {kill_every:.0f} s)")
    print(f"  app requests {len(latencies) + len(failures)}, failed {len(failures)} (goal 0)"
          + (f": {sorted(set(failures))}" if failures else ""))
    print(f"  latency p50 {np.percentile(latencies, 50) * 1e3:.1f} ms, p99 "
          f"{np.percentile(latencies, 99) * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms "
          f"(deadline {DEADLINE_S * 1e3:.0f} ms)")
    print(f"  routes {dict(sorted(routes.items()))}")
    print(f"  hard examples kept {kept}, stored on the gateway {len(stored)} "
          f"({len(set(stored))} distinct), still queued in the ledgers {queued}, lost {lost} "
          "(goal: kept = stored + queued, no duplicates)")


# ------------------------------------------------------------------------- costs


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(folder: Path, agent_id: str) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate for ``agent_id``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("bench CA")).issuer_name(_name("bench CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for stem, common, sans in (
        ("server", "gateway", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", agent_id, [x509.UniformResourceIdentifier(f"edgecloud://agent/{agent_id}")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .sign(ca_key, hashes.SHA256()))
        out[f"{stem}_cert"] = folder / f"{stem}.pem"
        out[f"{stem}_key"] = folder / f"{stem}.key"
        out[f"{stem}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{stem}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return out


def alternate_p50(addresses: list[str], requests: list, calls: int) -> list[float]:
    """p50 µs per address of sequential calls, alternating call by call."""
    channels = [grpc.insecure_channel(a) for a in addresses]
    stubs = [v2_grpc.GRPCInferenceServiceStub(c) for c in channels]
    times: list[list[float]] = [[] for _ in stubs]
    for stub in stubs:  # warm up
        for r in requests[:200]:
            stub.ModelInfer(r, timeout=5)
    for i in range(calls):
        for k, stub in enumerate(stubs):
            start = time.perf_counter()
            stub.ModelInfer(requests[i % len(requests)], timeout=5)
            times[k].append(time.perf_counter() - start)
    for c in channels:
        c.close()
    return [float(np.percentile(t, 50)) * 1e6 for t in times]


def costs(files: Path, rows: np.ndarray, calls: int) -> None:
    pki = make_pki(files, "tls-agent")
    plain_gw = Server(gateway_args(files, "127.0.0.1:0"), files, "cost-plain-gw")
    tls_gw = Server([*gateway_args(files, "127.0.0.1:0"), "--tls-cert", str(pki["server_cert"]),
                     "--tls-key", str(pki["server_key"]), "--tls-client-ca", str(pki["ca"])],
                    files, "cost-tls-gw")
    plain_addr, tls_addr = plain_gw.address(), tls_gw.address()
    servers = [plain_gw, tls_gw]
    try:
        plain = Server(agent_args(files, "plain-agent", plain_addr, upload_hard_examples=False),
                       files, "plain-agent")
        tls = Server([*agent_args(files, "tls-agent", tls_addr, upload_hard_examples=False),
                      "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"]),
                      "--tls-key", str(pki["client_key"])], files, "tls-agent")
        kept = Server(agent_args(files, "ledger-agent", plain_addr), files, "ledger-agent")
        servers += [plain, tls, kept]
        a_plain, a_tls, a_kept = plain.address(), tls.address(), kept.address()
        cloud = [request(r, route="cloud") for r in rows[:500]]
        p_plain, p_tls = alternate_p50([a_plain, a_tls], cloud, calls)
        hard = [request(r, confidence_threshold=1.0) for r in rows[:500]]
        q_plain, q_kept = alternate_p50([a_plain, a_kept], hard, calls)
    finally:
        for server in servers:
            server.stop()
    print(f"\n2. cost per request at one in flight (p50 of {calls} calls each, alternating)")
    print(f"  {'':44} {'plain µs':>10} {'with µs':>10} {'ratio':>7} {'goal':>6}")
    for label, base, ours in (("mutual TLS agent↔gateway, every row escalated", p_plain, p_tls),
                              ("hard-example ledger, every row hard", q_plain, q_kept)):
        print(f"  {label:44} {base:10.1f} {ours:10.1f} {ours / base:7.2f} {'≤1.10':>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="chaos run length (120)")
    parser.add_argument("--kill-every", type=float, default=20.0,
                        help="seconds between gateway kills (20)")
    parser.add_argument("--rate", type=float, default=200.0, help="app requests per second (200)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per cost figure (2000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp)
        write_example(files)
        with np.load(files / "test.npz") as data:
            rows = data["X"].astype(np.float32)
        chaos(files, args.seconds, args.kill_every, args.rate, rows)
        costs(files, rows, args.calls)


if __name__ == "__main__":
    main()
