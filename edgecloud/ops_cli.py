"""Operator commands: keys, model publication and rollouts, policies, fleet status,
hard-example export."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TransferSpeedColumn,
)
from rich.table import Table

from edgecloud.common_cli import CliError


def _add_target(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--gateway", metavar="HOST:PORT", help="gateway admin address")
    group.add_argument("--registry", metavar="DIR",
                       help="act on a registry directly: the directory the gateway's "
                       "--registry names")
    group.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="act on the registry of the gateway with this --data-dir "
                       "(DIR/registry)")
    p.add_argument("--token-file", type=Path, default=None,
                   help="operator bearer token for the gateway (or EDGECLOUD_TOKEN)")
    p.add_argument("--tls-ca", type=Path, default=None, help="CA of the gateway's certificate")
    p.add_argument("--tls-cert", type=Path, default=None, help="client certificate (mTLS)")
    p.add_argument("--tls-key", type=Path, default=None, help="client key (mTLS)")


def _operator(args: argparse.Namespace, *, create: bool = False):
    """The target the command acts on; only publishing may create a registry."""
    from edgecloud.cloud_gateway.registry import is_registry, registry_path
    from edgecloud.operations import GatewayOperator, RegistryOperator

    if args.gateway:
        from edgecloud.core.auth import read_token
        from edgecloud.core.tls import channel_credentials

        token = read_token(args.token_file) or os.environ.get("EDGECLOUD_TOKEN") or None
        credentials = (channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
                       if args.tls_ca or args.tls_cert else None)
        return GatewayOperator(args.gateway, token=token, credentials=credentials)
    if args.registry is not None:
        return RegistryOperator(registry_path(args.registry), create=create)
    if is_registry(args.data_dir):
        raise CliError(f"{args.data_dir} is a registry, not a gateway data directory: "
                       f"pass --registry {args.data_dir}")
    return RegistryOperator(args.data_dir / "registry", create=create)


def _pairs(values, what: str) -> dict[str, str]:
    from edgecloud.common_cli import pairs as parse

    return parse(values, what) or {}


# -- keys ---------------------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from edgecloud.core.signing import generate_keypair

    private, public = generate_keypair(args.out)
    print(f"private key: {private} (keep it with the operator; mode 0600)")
    print(f"public key:  {public} (give it to agents as --trust-key)")
    return 0


# -- models -------------------------------------------------------------------------


def cmd_models_publish(args: argparse.Namespace) -> int:
    from edgecloud.operations import publish_model_file

    if not args.file.is_file():
        raise CliError(f"model file {args.file} does not exist")
    op = _operator(args, create=True)
    try:
        with Progress("[progress.description]{task.description}", BarColumn(),
                      DownloadColumn(), TransferSpeedColumn(), console=Console(stderr=True),
                      transient=True) as progress:
            bar = progress.add_task(f"publishing {args.name} ({args.target})",
                                    total=args.file.stat().st_size)
            reply = publish_model_file(op, args.file, name=args.name, target=args.target,
                                       version=args.version, key=args.key,
                                       promote=args.promote,
                                       progress=lambda n: progress.advance(bar, n))
    finally:
        op.close()
    print(f"published {reply['name']} version {reply['version']} ({args.target}, "
          f"{reply['digest'][:19]}…, {'signed' if reply['signed'] else 'UNSIGNED'}); "
          f"generation {reply['generation']}")
    return 0


def _rollout_line(record: dict) -> str:
    candidate = record.get("candidate")
    text = f"{record['name']}: stable {record.get('stable')}"
    if candidate:
        text += f", candidate {candidate} at {record.get('percent', 0):g}%"
        if record.get("selector"):
            text += " of " + ",".join(f"{k}={v}" for k, v in record["selector"].items())
    text += f" ({record.get('state')})"
    return text


def cmd_models_rollout(args: argparse.Namespace) -> int:
    if not 0.0 <= args.percent <= 100.0:
        raise CliError("--percent must be within 0 and 100")
    op = _operator(args)
    try:
        record = op.rollout("start", args.name, version=args.version, percent=args.percent,
                            selector=_pairs(args.selector, "--selector"),
                            max_failures=args.max_failures or 0)
    finally:
        op.close()
    print(_rollout_line(record))
    return 0


def _simple_action(action: str):
    def run(args: argparse.Namespace) -> int:
        op = _operator(args)
        try:
            fields = {}
            if action in ("pin", "unpin"):
                fields = {"version": getattr(args, "version", ""), "agent_id": args.agent}
            record = op.rollout(action, args.name, **fields)
        finally:
            op.close()
        print(_rollout_line(record))
        return 0

    return run


def cmd_models_list(args: argparse.Namespace) -> int:
    op = _operator(args)
    try:
        described = op.list_models(args.name or "")
    finally:
        op.close()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    table = Table(title="models")
    for column in ("model", "version", "target", "size", "signed", "created", "role"):
        table.add_column(column)
    for name, info in described.items():
        rollout = info.get("rollout") or {}
        for v in info["versions"]:
            role = ("stable" if v["version"] == rollout.get("stable") else
                    f"candidate {rollout.get('percent', 0):g}% ({rollout.get('state')})"
                    if v["version"] == rollout.get("candidate") else "")
            table.add_row(name, v["version"], v["target"], f"{v['size']:,}",
                          "yes" if v["signed"] else "no", v["created"], role)
    Console().print(table)
    return 0


# -- policies -----------------------------------------------------------------------


def cmd_policy_publish(args: argparse.Namespace) -> int:
    from edgecloud.core.artifacts import build_policy_manifest
    from edgecloud.operations import sign_manifest
    from edgecloud.router import PolicyError, parse_policy

    try:
        document = args.file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        policy = parse_policy(document)
    except PolicyError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    if policy.name != args.name:
        raise CliError(f"{args.file} is a policy for task {policy.name!r}, not {args.name!r}")
    manifest = build_policy_manifest(document, name=policy.name, version=policy.version)
    data = manifest.canonical()
    op = _operator(args, create=True)
    try:
        reply = op.publish_policy(data, sign_manifest(data, args.key), document)
    finally:
        op.close()
    print(f"published policy {reply['name']} version {reply['version']}; "
          f"generation {reply['generation']}")
    return 0


# -- fleet --------------------------------------------------------------------------


def _ago(seconds: float | None) -> str:
    if not seconds:
        return "-"
    delta = max(time.time() - float(seconds), 0.0)
    return f"{delta:.0f}s ago" if delta < 120 else f"{delta / 60:.0f}m ago"


_LEDGER_FIELDS = ("kept", "queued", "queued_bytes", "uploaded", "evicted_age",
                  "evicted_space", "quarantined", "dropped")


def _ledger(agent: dict) -> dict | None:
    """The agent's hard-example counters (uint64 arrive as JSON strings), with the total
    evicted; None for an agent that keeps none."""
    ledger = agent.get("hard_examples")
    if not ledger:
        return None
    counts = {name: int(ledger.get(name, 0) or 0) for name in _LEDGER_FIELDS}
    counts["evicted"] = counts["evicted_age"] + counts["evicted_space"]
    return counts


def fleet_rows(agents: list[dict]) -> list[dict]:
    """One flat record per agent and task (what the table and --json show)."""
    rows = []
    for agent in agents:
        last = agent.get("last_swap") or {}
        base = {
            "agent_id": agent.get("agent_id"),
            "labels": agent.get("labels", {}),
            "replica": agent.get("replica"),
            "last_seen": agent.get("last_seen"),
            "last_swap": ({"name": last.get("name"), "version": last.get("version"),
                           "kind": last.get("kind"), "ok": bool(last.get("ok")),
                           "reason": last.get("reason", "")} if last.get("name") else None),
            "hard_examples": _ledger(agent),
        }
        tasks = agent.get("tasks") or [{}]
        for task in tasks:
            rows_n = int(task.get("rows", 0) or 0)
            escalated = int(task.get("escalated_rows", 0) or 0)
            rows.append({
                **base,
                "task": task.get("name"),
                "model_version": task.get("model_version"),
                "policy_version": task.get("policy_version"),
                "waiting_for": task.get("waiting_for", ""),
                "requests": int(task.get("requests", 0) or 0),
                "rows": rows_n,
                "escalation_rate": escalated / rows_n if rows_n else 0.0,
                "fallbacks": int(task.get("fallback_rows", 0) or 0),
                "drift": {"status": task.get("drift_status", ""),
                          "psi": task.get("drift_psi", 0.0),
                          "ks_pvalue": task.get("drift_ks_pvalue", 1.0)},
            })
    return rows


def _ledger_text(ledger: dict | None) -> str:
    if ledger is None:
        return "-"
    text = f"{ledger['queued']} queued, {ledger['uploaded']} sent"
    lost = [f"{ledger[k]} {k}" for k in ("evicted", "quarantined", "dropped") if ledger[k]]
    if lost:
        text += f", [red]{', '.join(lost)}[/red]"
    return text


def cmd_fleet_status(args: argparse.Namespace) -> int:
    op = _operator(args)
    try:
        agents = op.fleet_status()
    finally:
        op.close()
    rows = fleet_rows(agents)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"fleet: {len(agents)} agents "
                        f"({dt.datetime.now().astimezone().strftime('%H:%M:%S')})")
    for column in ("agent", "labels", "replica", "seen", "task", "model", "policy",
                   "last swap", "requests", "escalated", "fallbacks", "drift", "hard examples"):
        table.add_column(column)
    for r in rows:
        swap = r["last_swap"]
        swap_text = "-" if swap is None else (
            f"{swap['kind']} {swap['version']} ok" if swap["ok"]
            else f"[red]{swap['kind']} {swap['version']} FAILED: {swap['reason']}[/red]")
        drift = r["drift"]
        drift_text = drift["status"] or "-"
        if drift["status"]:
            drift_text += f" (psi {drift['psi']:.2f})"
        versions = {kind: str(r[f"{kind}_version"] or "-") for kind in ("model", "policy")}
        if r["waiting_for"] in versions:
            versions[r["waiting_for"]] = f"[yellow]waiting for {r['waiting_for']}[/yellow]"
        table.add_row(
            str(r["agent_id"]), ",".join(f"{k}={v}" for k, v in r["labels"].items()),
            str(r["replica"]), _ago(r["last_seen"]), str(r["task"] or "-"),
            versions["model"], versions["policy"], swap_text,
            str(r["requests"]), f"{r['escalation_rate']:.1%}", str(r["fallbacks"]), drift_text,
            _ledger_text(r["hard_examples"]),
        )
    Console().print(table)
    return 0


# -- hard examples ------------------------------------------------------------------

_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: an ISO 8601 date or time (UTC unless it says otherwise), or a
    duration back from now (``90s``, ``30m``, ``12h``, ``7d``); returns Unix seconds."""
    value = text.strip()
    unit = _DURATION_UNITS.get(value[-1:].lower())
    if unit is not None:
        try:
            amount = float(value[:-1])
        except ValueError:
            amount = -1.0
        if amount >= 0:
            return (time.time() if now is None else now) - amount * unit
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--since {text!r}: give an ISO 8601 time (2024-05-01, "
                       "2024-05-01T12:00:00Z) or a duration (30m, 12h, 7d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def cmd_examples_export(args: argparse.Namespace) -> int:
    from edgecloud.dataset_export import export_examples

    since = parse_since(args.since) if args.since else 0.0
    op = _operator(args)
    try:
        summary = export_examples(op.hard_examples(args.task, since), args.out)
    finally:
        op.close()
    shapes = ", ".join(f"{name} {list(shape)}" for name, shape in summary.shapes.items())
    print(f"exported {summary.records} hard examples of {args.task} to {args.out} "
          f"({summary.examples_path.name}: {shapes or 'no inputs'}; "
          f"{summary.index_path.name})")
    return 0


# -- parser -------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> dict[str, argparse._SubParsersAction]:
    """Add ``keys``, ``models``, ``policy``, ``fleet`` and ``examples``; returns the
    subparsers other modules add to."""
    keys = sub.add_parser("keys", help="operator signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    gen = ksub.add_parser("generate", help="make an Ed25519 key pair")
    gen.add_argument("--out", type=Path, required=True, help="folder for the key files")
    gen.set_defaults(handler=cmd_keys_generate)

    models = sub.add_parser("models", help="publish and roll out models")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    pub = msub.add_parser("publish", help="publish a model version")
    pub.add_argument("name")
    pub.add_argument("file", type=Path)
    pub.add_argument("--target", choices=("edge", "cloud"), required=True)
    pub.add_argument("--version", default=None, help="version (default: next number)")
    pub.add_argument("--key", type=Path, default=None, help="operator private key to sign with")
    pub.add_argument("--promote", action="store_true",
                     help="make it the stable version at once (fleet-wide)")
    _add_target(pub)
    pub.set_defaults(handler=cmd_models_publish)

    lst = msub.add_parser("list", help="versions and rollouts")
    lst.add_argument("name", nargs="?", default="")
    lst.add_argument("--json", action="store_true")
    _add_target(lst)
    lst.set_defaults(handler=cmd_models_list)

    roll = msub.add_parser("rollout", help="roll a candidate version out to part of the fleet")
    roll.add_argument("name")
    roll.add_argument("version")
    roll.add_argument("--percent", type=float, required=True)
    roll.add_argument("--selector", nargs="+", metavar="KEY=VALUE", default=None)
    roll.add_argument("--max-failures", type=int, default=None,
                      help="failed swaps that halt the rollout (default 3)")
    _add_target(roll)
    roll.set_defaults(handler=cmd_models_rollout)

    for action, text in (("promote", "make the candidate stable everywhere"),
                         ("rollback", "send every agent back to the stable version"),
                         ("pause", "hold the rollout where it is"),
                         ("resume", "continue a paused rollout")):
        p = msub.add_parser(action, help=text)
        p.add_argument("name")
        _add_target(p)
        p.set_defaults(handler=_simple_action(action))
    pin = msub.add_parser("pin", help="pin one agent to a version")
    pin.add_argument("name")
    pin.add_argument("version")
    pin.add_argument("--agent", required=True)
    _add_target(pin)
    pin.set_defaults(handler=_simple_action("pin"))
    unpin = msub.add_parser("unpin", help="let an agent follow the rollout again")
    unpin.add_argument("name")
    unpin.add_argument("--agent", required=True)
    _add_target(unpin)
    unpin.set_defaults(handler=_simple_action("unpin"))

    policy = sub.add_parser("policy", help="routing policies")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    ppub = psub.add_parser("publish", help="publish a policy version to the fleet")
    ppub.add_argument("name")
    ppub.add_argument("file", type=Path)
    ppub.add_argument("--key", type=Path, default=None, help="operator private key to sign with")
    _add_target(ppub)
    ppub.set_defaults(handler=cmd_policy_publish)

    fleet = sub.add_parser("fleet", help="the fleet of agents")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    status = fsub.add_parser("status", help="every agent: versions, swaps, traffic, drift")
    status.add_argument("--json", action="store_true")
    _add_target(status)
    status.set_defaults(handler=cmd_fleet_status)

    examples = sub.add_parser("examples", help="hard examples the fleet kept")
    esub = examples.add_subparsers(dest="examples_command", required=True, metavar="COMMAND")
    export = esub.add_parser("export", help="write a task's hard examples as a data set: "
                             "DIR/examples.npz (inputs) and DIR/index.jsonl (one line each)")
    export.add_argument("--task", required=True, help="task whose examples to export")
    export.add_argument("--since", default=None, metavar="TIME",
                        help="only examples kept since TIME: ISO 8601 (UTC unless given) "
                        "or a duration back from now (30m, 12h, 7d)")
    export.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write examples.npz and index.jsonl into")
    _add_target(export)
    export.set_defaults(handler=cmd_examples_export)
    return {"models": msub, "policy": psub}
