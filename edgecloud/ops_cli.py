"""Operator commands: keys, tokens, model publication and rollouts, policies, fleet status,
hard-example export."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TransferSpeedColumn,
)
from rich.table import Table

from edgecloud.common_cli import CliError, add_verbose


def _add_target(p: argparse.ArgumentParser) -> None:
    """Where the command acts (one of three is required), and how to reach a gateway."""
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--gateway", metavar="HOST:PORT",
                       help="act through this gateway's admin service (operator role)")
    group.add_argument("--registry", metavar="DIR|s3://BUCKET/PREFIX",
                       help="act on a registry directly: the directory or object storage the "
                       "gateway's --registry names (read commands refuse one holding none)")
    group.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="act on the registry of the gateway started with this --data-dir "
                       "(DIR/registry; the gateway's default data directory is "
                       "~/.local/state/edgecloud/gateway)")
    p.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3 endpoint of an s3:// --registry (default: $AWS_ENDPOINT_URL, else "
                   "AWS; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    p.add_argument("--trust-key", type=Path, default=None, metavar="FILE",
                   help="with --registry or --data-dir: the operator's public key; "
                   "publications must be signed with its private key, and stored versions "
                   "whose signature does not verify are hidden (as the gateway does)")
    p.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help="operator bearer token for --gateway (default: $EDGECLOUD_TOKEN; "
                   "none: no token sent)")
    p.add_argument("--tls-ca", type=Path, default=None, metavar="FILE",
                   help="CA of the gateway's certificate (default: plaintext)")
    p.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                   help="client certificate, for gateways that require mTLS (default: none)")
    p.add_argument("--tls-key", type=Path, default=None, metavar="FILE",
                   help="key of --tls-cert (default: none)")
    add_verbose(p)


def _operator(args: argparse.Namespace, *, create: bool = False):
    """The target the command acts on; only publishing may create a registry."""
    from edgecloud.cloud_gateway.registry import is_registry, registry_location
    from edgecloud.core.signing import load_public_key
    from edgecloud.operations import GatewayOperator, RegistryOperator

    if args.gateway:
        import sys

        from edgecloud.core.auth import check_token, is_loopback, read_token
        from edgecloud.core.grpc_server import split_host_port
        from edgecloud.core.tls import channel_credentials

        host, _ = split_host_port(args.gateway)
        variable = os.environ.get("EDGECLOUD_TOKEN") or None
        token = read_token(args.token_file) or (
            check_token(variable, "the token in EDGECLOUD_TOKEN") if variable else None)
        credentials = (channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
                       if args.tls_ca or args.tls_cert else None)
        if token and credentials is None and not is_loopback(host):
            print(f"WARNING: sending the operator token to {args.gateway} in plaintext; "
                  "anyone on the path can read and reuse it (give --tls-ca)", file=sys.stderr)
        return GatewayOperator(args.gateway, token=token, credentials=credentials)
    trust = load_public_key(args.trust_key) if args.trust_key is not None else None
    if args.registry is not None:
        location = registry_location(args.registry, s3_endpoint=args.s3_endpoint)
        return RegistryOperator(location, create=create, trust_key=trust)
    if is_registry(args.data_dir):
        raise CliError(f"{args.data_dir} is a registry, not a gateway data directory: "
                       f"pass --registry {args.data_dir}")
    return RegistryOperator(args.data_dir / "registry", create=create, trust_key=trust)


def _pairs(values, what: str) -> dict[str, str]:
    from edgecloud.common_cli import pairs as parse

    return parse(values, what) or {}


# -- keys ---------------------------------------------------------------------------


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from edgecloud.core.signing import generate_keypair, key_fingerprint, load_public_key

    private, public = generate_keypair(args.out)
    print(f"private key: {private} (keep it with the operator; mode 0600)")
    print(f"public key:  {public} (give it to agents as --trust-key)")
    print(f"fingerprint: {key_fingerprint(load_public_key(public))} (models list shows it "
          "beside the versions signed with this key)")
    return 0


# -- tokens -------------------------------------------------------------------------


def _token_input(args: argparse.Namespace) -> str:
    """The token to hash: from --token-file, else the first line of standard input."""
    import sys

    from edgecloud.core.auth import check_token, read_token

    if args.token_file is not None:
        return read_token(args.token_file) or ""
    return check_token(sys.stdin.readline().strip(), "the token read from standard input")


def cmd_tokens_hash(args: argparse.Namespace) -> int:
    from edgecloud.core.auth import hash_token

    print(hash_token(_token_input(args)))
    return 0


def cmd_tokens_generate(args: argparse.Namespace) -> int:
    from edgecloud.core.auth import generate_token, hash_token

    token = generate_token()
    print(f"token: {token}  (give it to the agent or operator; keep it secret)")
    print(f"hash:  {hash_token(token)}  (what the gateway's tokens file may hold instead)")
    return 0


# -- models -------------------------------------------------------------------------


def cmd_models_publish(args: argparse.Namespace) -> int:
    from edgecloud.operations import publish_model_file

    if not args.file.is_file():
        raise CliError(f"model file {args.file} does not exist")
    op = _operator(args, create=True)
    try:
        console = Console(stderr=True)
        with Progress("[progress.description]{task.description}", BarColumn(),
                      DownloadColumn(), TransferSpeedColumn(), console=console,
                      transient=True, disable=not console.is_terminal) as progress:
            bar = progress.add_task(f"publishing {args.name} ({args.target})",
                                    total=args.file.stat().st_size)
            reply = publish_model_file(op, args.file, name=args.name, target=args.target,
                                       version=args.version, key=args.key,
                                       promote=args.promote, scores_output=args.scores_output,
                                       progress=lambda n: progress.advance(bar, n))
    finally:
        op.close()
    print(f"published {reply['name']} version {reply['version']} ({args.target}, "
          f"{reply['digest'][:19]}…, {'signed' if reply['signed'] else 'UNSIGNED'}); "
          f"generation {reply['generation']}")
    if reply["scores_output"]:
        how = "as given" if args.scores_output else "the one float [N, classes] output"
        print(f"class scores: output {reply['scores_output']!r} ({how})")
    if args.target == "cloud" and not args.promote:
        # Say what happens next: a cloud version is a candidate until promoted.
        op = _operator(args)
        try:
            record = op.list_models(args.name)[args.name].get("cloud_rollout") or {}
        finally:
            op.close()
        if record.get("candidate") == reply["version"]:
            print(f"version {reply['version']} is the cloud candidate and answers no requests "
                  f"yet: `edgecloud models promote {args.name} --target cloud` serves it, "
                  f"`edgecloud models rollout {args.name} {reply['version']} --target cloud "
                  "--percent P` gives it P% of the requests")
    return 0


def _rollout_line(record: dict) -> str:
    candidate = record.get("candidate")
    cloud = record.get("target") == "cloud"
    text = f"{record['name']}{' (cloud)' if cloud else ''}: stable {record.get('stable')}"
    if candidate:
        text += (f", candidate {candidate} at {record.get('percent', 0):g}%"
                 f"{' of requests' if cloud else ''}")
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
                            max_failures=args.max_failures or 0, target=args.target)
    finally:
        op.close()
    print(_rollout_line(record))
    return 0


def cmd_models_floor(args: argparse.Namespace) -> int:
    from edgecloud.operations import publish_floor

    op = _operator(args)
    try:
        reply = publish_floor(op, args.name, args.version, key=args.key)
    finally:
        op.close()
    print(f"floor of {reply['name']}: version {reply['version']} "
          f"({'signed' if reply['signed'] else 'UNSIGNED'}); agents refuse older edge "
          f"versions; generation {reply['generation']}")
    return 0


def _simple_action(action: str):
    def run(args: argparse.Namespace) -> int:
        op = _operator(args)
        try:
            if action in ("pin", "unpin"):
                fields = {"version": getattr(args, "version", ""), "agent_id": args.agent}
            else:
                fields = {"target": args.target}
            record = op.rollout(action, args.name, **fields)
        finally:
            op.close()
        print(_rollout_line(record))
        return 0

    return run


def _served_by(info: dict, version: str, target: str, now: float) -> str:
    """Replicas serving a cloud version (with the candidate's share of requests); a replica
    silent for three heartbeats is marked, it may have stopped without saying so."""
    from edgecloud.cloud_gateway.registry import REPLICA_HEARTBEAT_S

    if target != "cloud":
        return ""
    out = []
    for replica, serving in sorted((info.get("served_by") or {}).items()):
        text = escape(replica)
        if serving.get("candidate") == version:
            text += f" ({serving.get('percent', 0):g}%)"
        elif serving.get("version") != version:
            continue
        updated = serving.get("updated")
        if updated and now - float(updated) > 3 * REPLICA_HEARTBEAT_S:
            text += f" [yellow](silent, {_ago(updated, now)})[/yellow]"
        out.append(text)
    return ", ".join(out)


def cmd_models_list(args: argparse.Namespace) -> int:
    op = _operator(args)
    try:
        described = op.list_models(args.name or "")
    finally:
        op.close()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    if not described:
        Console().print("no models: nothing has been published to this registry yet")
        return 0
    from edgecloud.core.artifacts import version_key

    now = time.time()
    table = Table(title="models", title_justify="left")
    for column in ("model", "version", "target", "size", "signed", "created", "role",
                   "served by"):
        table.add_column(column, overflow="fold")
    for name, info in described.items():
        for v in info["versions"]:
            rollout = info.get("cloud_rollout" if v["target"] == "cloud" else "rollout") or {}
            share = " of requests" if v["target"] == "cloud" else ""
            role = ("stable" if v["version"] == rollout.get("stable") else
                    f"candidate {rollout.get('percent', 0):g}%{share} ({rollout.get('state')})"
                    if v["version"] == rollout.get("candidate") else "")
            floor = (info.get("floor") or {}).get("version")
            if floor is not None and v["target"] == "edge":
                if v["version"] == floor:
                    role = f"{role}, floor" if role else "floor"
                elif version_key(v["version"]) < version_key(floor):
                    role = f"{role}, below floor" if role else "below floor"
            signed = (f"yes ({v['signed_by']})" if v["signed"] and v.get("signed_by") else
                      "yes" if v["signed"] else
                      "unchecked" if v.get("signature") == "unchecked" else "no")
            table.add_row(escape(name), escape(v["version"]), v["target"], f"{v['size']:,}",
                          signed, v["created"], role,
                          _served_by(info, v["version"], v["target"], now))
    Console().print(table)
    return 0


# -- policies -----------------------------------------------------------------------


def cmd_policy_publish(args: argparse.Namespace) -> int:
    from edgecloud.operations import publish_policy_document
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
        raise CliError(f"{args.file} is a policy for task {policy.name!r}, not {args.name!r} "
                       f"(policy tune --task {args.name} names it)")
    op = _operator(args, create=True)
    try:
        # The version is the registry's to give: the published document carries it.
        reply = publish_policy_document(op, document, version=args.version, key=args.key)
    finally:
        op.close()
    print(f"published policy {reply['name']} version {reply['version']}; "
          f"generation {reply['generation']}")
    return 0


# -- fleet --------------------------------------------------------------------------


def _ago(seconds: float | None, now: float) -> str:
    if not seconds:
        return "never"
    delta = max(now - float(seconds), 0.0)
    if delta < 120:
        return f"{delta:.0f}s ago"
    if delta < 7200:
        return f"{delta / 60:.0f}m ago"
    return f"{delta / 3600:.0f}h ago"


def _when(at: float) -> str:
    return dt.datetime.fromtimestamp(at).strftime("%m-%d %H:%M:%S") if at else "-"


def _drift_text(drift: dict, wide: bool) -> str:
    status = drift["status"]
    if not status:
        return "-"
    if status == "insufficient_data":
        if wide:
            return f"insufficient data ({drift['rows']}/{drift['min_rows']} rows)"
        return "insufficient\ndata"
    colour = {"warn": "yellow", "alarm": "red"}.get(status)
    text = f"{status}{' ' if wide else chr(10)}psi {drift['psi']:.2f}"
    return f"[{colour}]{text}[/{colour}]" if colour else text


def _swap_text(swap: dict) -> str:
    text = escape(f"{swap['task']} {swap['kind']} {swap['version']}")
    if swap["ok"]:
        return f"{text} ok"
    return f"[red]{text} FAILED[/red]: {escape(swap['reason'])}"


def _fallback_text(r: dict) -> str:
    by_reason = ", ".join(f"{kind} {n}" for kind, n in r["fallbacks_by_reason"].items())
    return f"{r['fallbacks']} ({by_reason})" if by_reason else str(r["fallbacks"])


def _ledger_text(ledger: dict | None) -> str:
    """An agent's hard-example ledger: what waits, what was sent, what was lost."""
    if ledger is None:
        return "-"
    text = f"{ledger['queued']} queued, {ledger['uploaded']} sent"
    lost = [f"{ledger[k]} {k}" for k in ("evicted", "quarantined", "dropped") if ledger[k]]
    if lost:
        text += f", [red]{', '.join(lost)}[/red]"
    return text


def _table(title: str = "") -> Table:
    return Table(title=title or None, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0),
                 title_justify="left")


def _ledger_text(ledger: dict | None) -> str:
    if ledger is None:
        return "-"
    text = f"{ledger['queued']} queued, {ledger['uploaded']} sent"
    lost = [f"{ledger[k]} {k}" for k in ("evicted", "quarantined", "dropped") if ledger[k]]
    if lost:
        text += f", [red]{', '.join(lost)}[/red]"
    return text


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from edgecloud.operations import fleet_rows

    op = _operator(args)
    try:
        agents = op.fleet_status()
    finally:
        op.close()
    now = time.time()
    rows = fleet_rows(agents, now)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    # --wide: one line per agent and task, however wide; else fit the terminal.
    console = Console(width=1000) if args.wide else Console()
    if not agents:
        console.print("no agents: none has reported to this registry yet")
        return 0
    offline = len({r["agent_id"] for r in rows if not r["online"]})
    title = f"fleet: {len(agents)} agents"
    if offline:
        title += f", {offline} offline"
    table = _table(f"{title} ({dt.datetime.now().astimezone().strftime('%H:%M:%S')})")
    table.show_lines = not args.wide
    if args.wide:
        columns = ["agent", "labels", "replica", "seen", "task", "model", "policy",
                   "requests", "escalated", "fallbacks", "drift", "last swap", "hard examples"]
    else:
        columns = ["agent", "seen", "task", "versions", "traffic", "drift"]
    for column in columns:
        numeric = column in ("requests", "escalated", "fallbacks")
        table.add_column(column, justify="right" if numeric else "left",
                         no_wrap=column in ("agent", "task"), overflow="fold")
    for r in rows:
        versions = {kind: escape(str(r[f"{kind}_version"] or "-")) for kind in ("model", "policy")}
        if r["waiting_for"] in versions:
            versions[r["waiting_for"]] = f"[yellow]waiting for {r['waiting_for']}[/yellow]"
        escalated = f"{r['escalation_rate']:.1%}"
        if r["cloud_problem"]:
            escalated = f"[red]refused: {escape(r['cloud_problem'])}[/red]"
        seen = _ago(r["last_seen"], now)
        if not r["online"]:
            seen = f"[red]offline[/red]{' ' if args.wide else chr(10)}{seen}"
        agent = escape(str(r["agent_id"]))
        task = escape(str(r["task"] or "-"))
        if args.wide:
            table.add_row(
                agent, escape(",".join(f"{k}={v}" for k, v in r["labels"].items()) or "-"),
                escape(str(r["replica"] or "-")), seen, task, versions["model"],
                versions["policy"], str(r["requests"]), escalated,
                _fallback_text(r), _drift_text(r["drift"], wide=True),
                _swap_text(r["last_swap"] | {"task": r["task"]}) if r["last_swap"] else "-",
                _ledger_text(r["hard_examples"]))
        else:
            table.add_row(
                agent, seen, task,
                "\n".join(f"{kind} {v}" if not v.startswith("[") else v
                          for kind, v in versions.items()),
                f"{r['requests']} req\n"
                + (f"{escalated}\n" if r["cloud_problem"] else f"{escalated} esc\n")
                + f"{r['fallbacks']} fallbacks"
                + (f"\nhard: {_ledger_text(r['hard_examples'])}" if r["hard_examples"] else ""),
                _drift_text(r["drift"], wide=False))
    console.print(table)
    fallbacks = [r for r in rows if r["fallbacks_by_reason"]]
    if fallbacks and not args.wide:
        table = _table("fallbacks by reason (rows the cloud failed)")
        for column in ("agent", "task", "reason", "rows"):
            table.add_column(column, justify="right" if column == "rows" else "left",
                             overflow="fold")
        for r in fallbacks:
            for kind, n in r["fallbacks_by_reason"].items():
                table.add_row(escape(str(r["agent_id"])), escape(str(r["task"])), kind, str(n))
        console.print()
        console.print(table)
    histories = {r["agent_id"]: r["swap_history"] for r in rows if r["swap_history"]}
    if histories:
        table = _table("recent swaps (newest last)")
        for column in ("agent", "when", "swap"):
            table.add_column(column, no_wrap=column != "swap", overflow="fold")
        for agent_id, history in histories.items():
            for swap in history:
                table.add_row(escape(str(agent_id)), _when(swap["at"]), _swap_text(swap))
        console.print()
        console.print(table)
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
        labels = op.review_labels(args.task) if args.labelled else None
        summary = export_examples(op.hard_examples(args.task, since), args.out, labels)
    finally:
        op.close()
    shapes = ", ".join(f"{name} {list(shape)}" for name, shape in summary.shapes.items())
    what = "labelled rows" if args.labelled else "hard examples"
    print(f"exported {summary.records} {what} of {args.task} to {args.out} "
          f"({summary.examples_path.name}: {shapes or 'no inputs'}; "
          f"{summary.index_path.name})")
    return 0


# -- parser -------------------------------------------------------------------------


def _name(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="task name of the model (e.g. digits)")


def _model_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", choices=("edge", "cloud"), default="edge",
                   help="edge: the versions agents run; cloud: the versions gateway replicas "
                   "serve (default: edge)")


def register(sub: argparse._SubParsersAction) -> dict[str, argparse._SubParsersAction]:
    """Add ``keys``, ``tokens``, ``models``, ``policy``, ``fleet`` and ``examples``; returns the
    subparsers other modules add to."""
    keys = sub.add_parser("keys", help="operator signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    gen = ksub.add_parser("generate", help="make an Ed25519 key pair")
    gen.add_argument("--out", type=Path, required=True, metavar="DIR",
                     help="folder for operator.key and operator.pub (made if missing; "
                     "existing keys are never overwritten)")
    add_verbose(gen)
    gen.set_defaults(handler=cmd_keys_generate)

    tokens = sub.add_parser("tokens", help="bearer tokens for the gateway's tokens file")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True, metavar="COMMAND")
    thash = tsub.add_parser("hash", help="print a token's hash (sha256:...), which the "
                            "tokens file may hold instead of the token itself",
                            description="Read a token from --token-file or the first line of "
                            "standard input (never the command line, where it would stay in "
                            "the shell's history) and print its hash.")
    thash.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                       help="file whose first line is the token (default: standard input)")
    add_verbose(thash)
    thash.set_defaults(handler=cmd_tokens_hash)
    tgen = tsub.add_parser("generate", help="make a new random token and print it with its "
                           "hash")
    add_verbose(tgen)
    tgen.set_defaults(handler=cmd_tokens_generate)

    models = sub.add_parser("models", help="publish and roll out models")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    pub = msub.add_parser("publish", help="publish a model version",
                          description="Publish an ONNX file as a new version of a task's edge "
                          "or cloud model. The first version of each becomes stable; later "
                          "edge versions wait for `models rollout`, later cloud versions are "
                          "the candidate (answering no requests) until promoted or rolled "
                          "out.")
    _name(pub)
    pub.add_argument("file", type=Path, help="the ONNX file")
    pub.add_argument("--target", choices=("edge", "cloud"), required=True,
                     help="edge: run by the agents; cloud: served by the gateway replicas")
    pub.add_argument("--version", default=None,
                     help="version (default: the next number, never handed out twice)")
    pub.add_argument("--key", type=Path, default=None, metavar="FILE",
                     help="operator private key to sign with (default: unsigned, refused "
                     "by gateways and agents with --trust-key)")
    pub.add_argument("--promote", action="store_true",
                     help="make it the stable version at once, fleet-wide (default: off)")
    pub.add_argument("--scores-output", default=None, metavar="NAME",
                     help="output that holds the class scores, checked before publishing "
                     "(default: an edge model's one float [N, classes] output; the task's "
                     "policy names it for the agents)")
    _add_target(pub)
    pub.set_defaults(handler=cmd_models_publish)

    lst = msub.add_parser("list", help="versions, rollouts and what each replica serves")
    lst.add_argument("name", nargs="?", default="", help="one task (default: every model)")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_target(lst)
    lst.set_defaults(handler=cmd_models_list)

    roll = msub.add_parser("rollout", help="roll a candidate version out to part of the fleet "
                           "(edge) or of the requests (cloud)")
    _name(roll)
    roll.add_argument("version", help="the published version to roll out")
    roll.add_argument("--percent", type=float, required=True, metavar="0-100",
                      help="edge: share of the matching agents (by a stable hash of their id); "
                      "cloud: share of the requests (0 to 100)")
    roll.add_argument("--selector", nargs="+", metavar="KEY=VALUE", default=None,
                      help="edge only: KEY=VALUE labels an agent must all have (as given to "
                      "`agent run --labels`), e.g. site=berlin hw=jetson (default: every agent)")
    roll.add_argument("--max-failures", type=int, default=None, metavar="N",
                      help="failed swaps (edge: agents; cloud: replicas) that halt the rollout "
                      "and send everyone back to stable (default 3, at least 1)")
    _model_target(roll)
    _add_target(roll)
    roll.set_defaults(handler=cmd_models_rollout)

    for action, text in (("promote", "make the candidate stable everywhere"),
                         ("rollback", "send everyone back to the stable version"),
                         ("pause", "hold the rollout where it is"),
                         ("resume", "continue a paused rollout")):
        p = msub.add_parser(action, help=text)
        _name(p)
        _model_target(p)
        _add_target(p)
        p.set_defaults(handler=_simple_action(action))
    floor = msub.add_parser(
        "floor", help="set a task's signed minimum edge version: agents refuse older ones",
        description="Publish a signed minimum version of a task's edge model. Agents that "
        "trust the key refuse every older version, whatever a gateway or the network tells "
        "them, and never lower a floor they have seen. The floor only rises, and the versions "
        "the rollout assigns must be at or above it.")
    _name(floor)
    floor.add_argument("version", help="the oldest edge version agents may run (published)")
    floor.add_argument("--key", type=Path, default=None, metavar="FILE",
                       help="operator private key to sign with (default: unsigned, refused "
                       "by gateways and agents with --trust-key)")
    _add_target(floor)
    floor.set_defaults(handler=cmd_models_floor)
    pin = msub.add_parser("pin", help="pin one agent to an edge version")
    _name(pin)
    pin.add_argument("version", help="the edge version the agent runs, whatever the rollout")
    pin.add_argument("--agent", required=True, metavar="AGENT_ID", help="the agent's id")
    _add_target(pin)
    pin.set_defaults(handler=_simple_action("pin"))
    unpin = msub.add_parser("unpin", help="let an agent follow the rollout again")
    _name(unpin)
    unpin.add_argument("--agent", required=True, metavar="AGENT_ID", help="the agent's id")
    _add_target(unpin)
    unpin.set_defaults(handler=_simple_action("unpin"))

    policy = sub.add_parser("policy", help="routing policies")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    ppub = psub.add_parser("publish", help="publish a policy version to the fleet")
    ppub.add_argument("name", help="task name the policy routes (must match the file's)")
    ppub.add_argument("file", type=Path, help="the policy file (YAML or JSON)")
    ppub.add_argument("--version", default=None,
                      help="version to publish as (default: the next free number in the "
                      "registry; the published document carries it)")
    ppub.add_argument("--key", type=Path, default=None, metavar="FILE",
                      help="operator private key to sign with (default: unsigned, refused "
                      "by gateways and agents with --trust-key)")
    _add_target(ppub)
    ppub.set_defaults(handler=cmd_policy_publish)

    fleet = sub.add_parser("fleet", help="the fleet of agents")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    status = fsub.add_parser("status", help="every agent: versions, swaps, traffic, drift")
    status.add_argument("--json", action="store_true",
                        help="print JSON (one record per agent and task) instead of tables")
    status.add_argument("--wide", action="store_true",
                        help="one line per agent and task with labels, replica and last swap, "
                        "however wide (default: fit the terminal)")
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
    export.add_argument("--labelled", action="store_true",
                        help="only the rows a reviewer labelled, each index line with its "
                        "label, reviewer and labelled_at (policy tune --field reads it)")
    _add_target(export)
    export.set_defaults(handler=cmd_examples_export)
    return {"models": msub, "policy": psub}
