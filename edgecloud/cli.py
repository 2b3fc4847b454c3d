"""The ``edgecloud`` command line.

Every subcommand turns bad input into one clear message on stderr and exit
code 2; nothing the user typed produces a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path

from edgecloud.common_cli import CliError, add_verbose, leaf_parser, run
from edgecloud.common_cli import pairs as _pairs


def _model_paths(values: Sequence[str] | None) -> dict[str, Path] | None:
    pairs = _pairs(values, "--model")
    if pairs is None:
        return None
    paths = {name: Path(p) for name, p in pairs.items()}
    for name, path in paths.items():
        if not path.is_file():
            raise CliError(f"--model {name}: file {path} does not exist")
    return paths


def _scores_outputs(values: Sequence[str] | None,
                    models: dict[str, Path] | None) -> dict[str, str] | None:
    """``--scores-output``: ``NAME=OUTPUT`` per model, or ``OUTPUT`` for every ``--model``."""
    if not values:
        return None
    out: dict[str, str] = {}
    for item in values:
        name, sep, output = item.partition("=")
        names = [name] if sep else list(models or ())
        if not sep:
            output = item
            if not names:
                raise CliError(f"--scores-output {item}: name the model as NAME=OUTPUT "
                               "(there is no --model to apply it to)")
        if not output or not all(names):
            raise CliError(f"--scores-output must be OUTPUT or NAME=OUTPUT (got {item!r})")
        for key in names:
            if key in out:
                raise CliError(f"--scores-output for {key!r} given twice")
            out[key] = output
    return out


def _execution_providers(values: Sequence[str] | None) -> dict[str, list[str]] | None:
    """``--providers``: ``NAME=P1,P2`` for one model, ``P1,P2`` for every other one."""
    if not values:
        return None
    out: dict[str, list[str]] = {}
    for item in values:
        name, sep, listed = item.rpartition("=")
        key = name if sep else "default"
        providers = [p.strip() for p in listed.split(",") if p.strip()]
        if not key or not providers:
            raise CliError(f"--providers must be P1,P2 or NAME=P1,P2 (got {item!r})")
        if key in out:
            raise CliError(f"--providers for {key!r} given twice")
        out[key] = providers
    return out


def _add_scores_output_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--scores-output", action="append", metavar="[NAME=]OUTPUT",
                   help=f"output of {what} that holds the class scores: NAME=OUTPUT for one "
                   "model, OUTPUT for every --model (repeatable; default: the policy's "
                   "scores_output, else the model's one float [N, classes] output)")


_BATCHING_FLAGS = (
    ("--max-batch-size", "max_batch_size", int, "N",
     "most rows in one model run; larger requests are split (default 64)"),
    ("--max-queue-delay-ms", "max_queue_delay_ms", float, "MS",
     "longest a forming batch waits for more requests; a lone request never waits "
     "(default 2)"),
    ("--max-queue-rows", "max_queue_rows", int, "N",
     "rows allowed to wait; more are refused with RESOURCE_EXHAUSTED (default 4096)"),
    ("--batch-workers", "workers", int, "N",
     "batches of one model run at the same time (default 2)"),
)


def _add_batching_flags(p: argparse.ArgumentParser) -> None:
    for flag, _field, _kind, metavar, text in _BATCHING_FLAGS:
        p.add_argument(flag, action="append", metavar=f"[NAME=]{metavar}",
                       help=f"{text}; NAME={metavar} for one model, {metavar} for every model "
                       "(repeatable)")


def _batching(args: argparse.Namespace) -> dict | None:
    """The batching section the batching flags give, or None when none was given."""
    section: dict = {}
    for flag, field, kind, _metavar, _text in _BATCHING_FLAGS:
        for item in getattr(args, flag[2:].replace("-", "_")) or ():
            name, sep, text = item.rpartition("=")
            try:
                value = kind(text)
            except ValueError:
                raise CliError(f"{flag} must be a number or NAME=number (got {item!r})") from None
            if sep and not name:
                raise CliError(f"{flag} must be a number or NAME=number (got {item!r})")
            target = section.setdefault("models", {}).setdefault(name, {}) if sep else section
            if field in target:
                raise CliError(f"{flag} given twice for {name or 'every model'}")
            target[field] = value
    return section or None


def _add_logging_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=("auto", "json", "console"), default=None,
                   help="log output format (default: auto, console on a terminal, else JSON)")
    p.add_argument("--log-level", default=None, metavar="LEVEL",
                   help="lowest level logged: debug, info, warning or error (default: info)")


def _add_process_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="YAML settings file; flags and EDGECLOUD_* variables override it "
                   "(default: none)")
    p.add_argument("--http-listen", default=None, metavar="HOST:PORT",
                   help="serve HTTP on this address: v2 REST and Prometheus /metrics "
                   "(default: off)")
    p.add_argument("--port-file", type=Path, default=None, metavar="FILE",
                   help="write the bound HOST:PORT to this file once serving (default: none)")
    _add_logging_flags(p)


class _Parser(argparse.ArgumentParser):
    """Matches long flags exactly: a prefix (``--lis`` for ``--listen``) is refused.

    Subparsers are made of the parent's class, so every command inherits this.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = _Parser(
        prog="edgecloud",
        description="Hybrid edge-cloud inference: answer easy inputs on the device, "
        "escalate hard ones to the cloud.",
    )
    from edgecloud.core import __version__

    parser.add_argument("--version", action="version", version=f"edgecloud {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a gateway and three agents on this machine")
    demo.add_argument("--json", type=Path, default=None, metavar="FILE",
                      help="also write the results here as JSON (default: none)")
    demo.add_argument("--agents", type=int, default=3, metavar="N",
                      help="number of agents, 1 to 16 (default 3)")
    demo.add_argument("--streams", type=int, default=2, metavar="N",
                      help="concurrent sensor streams per agent, 1 to 16 (default 2)")
    demo.add_argument("--loop", action="store_true",
                      help="run one turn of the improvement loop instead: a weak edge model, "
                      "hard rows reviewed and exported, a retrained edge model rolled out, "
                      "figures before and after (needs the examples extra; default: off)")
    demo.set_defaults(handler=_cmd_demo)

    example = sub.add_parser("example", help="write a bundled example to a folder")
    example.add_argument("name", choices=("digits",), help="the example: digits (8x8 images "
                         "of handwritten digits, an edge and a cloud model, a policy)")
    example.add_argument("--out", type=Path, required=True, metavar="DIR",
                         help="folder to write into (made if missing)")
    add_verbose(example)
    example.set_defaults(handler=_cmd_example)

    gateway = sub.add_parser("gateway", help="the cloud gateway")
    gsub = gateway.add_subparsers(dest="gateway_command", required=True, metavar="COMMAND")
    serve = gsub.add_parser("serve", help="serve v2 inference for the cloud models")
    serve.add_argument("--listen", default=None, metavar="HOST:PORT",
                       help="address to serve on (default 127.0.0.1:8001; port 0 picks one)")
    serve.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                       help="gateway data folder (default: $XDG_STATE_HOME/edgecloud/gateway, "
                       "else ~/.local/state/edgecloud/gateway)")
    serve.add_argument("--model", action="append", metavar="NAME=FILE",
                       help="serve an ONNX file under NAME (repeatable; default: none, only "
                       "what the registry holds)")
    _add_scores_output_flag(serve, "a --model")
    serve.add_argument("--providers", action="append", metavar="[NAME=]P1,P2",
                       help="ONNX Runtime execution providers in order of preference "
                       "(CUDAExecutionProvider, TensorrtExecutionProvider, "
                       "CPUExecutionProvider): NAME=P1,P2 for one model, P1,P2 for every "
                       "other (repeatable; default: CPU); missing ones fall back to CPU")
    serve.add_argument("--registry", default=None, metavar="DIR|s3://BUCKET/PREFIX",
                       help="the registry, shared by replicas: a directory or S3-compatible "
                       "object storage (default: DATA_DIR/registry)")
    serve.add_argument("--s3-endpoint", default=None, metavar="URL",
                       help="S3 endpoint of an s3:// registry (default: $AWS_ENDPOINT_URL, else "
                       "AWS; credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    serve.add_argument("--registry-dir", dest="registry", help=argparse.SUPPRESS)
    serve.add_argument("--replica", default=None, metavar="NAME",
                       help="this replica's name in fleet status and models list "
                       "(default: HOSTNAME-PID)")
    serve.add_argument("--trust-key", type=Path, default=None, metavar="FILE",
                       help="operator public key; refuse publications it did not sign "
                       "(default: accept unsigned)")
    serve.add_argument("--tokens-file", type=Path, default=None, metavar="FILE",
                       help="YAML of bearer tokens (or their sha256: hashes) with roles: "
                       "operators, viewers, agents (default: none; without it and "
                       "--tls-client-ca the gateway is open)")
    serve.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                       help="server certificate, PEM (default: plaintext)")
    serve.add_argument("--tls-key", type=Path, default=None, metavar="FILE",
                       help="key of --tls-cert, PEM")
    serve.add_argument("--tls-client-ca", type=Path, default=None, metavar="FILE",
                       help="require client certificates signed by this CA, mTLS; a "
                       "certificate's URI SAN edgecloud://ROLE/NAME names its holder "
                       "(default: no client certificates)")
    _add_batching_flags(serve)
    serve.add_argument("--max-concurrent-rpcs", type=int, default=None, metavar="N",
                       help="calls served at once, open streams included; more are refused "
                       "with RESOURCE_EXHAUSTED (default 32768)")
    serve.add_argument("--max-streams-per-connection", type=int, default=None, metavar="N",
                       help="calls one connection may have open at once (default 256)")
    serve.add_argument("--max-pending-rpcs", type=int, default=None, metavar="N",
                       help="new calls held while the server takes earlier ones (a fleet "
                       "reconnecting at once); more are refused (default 32768)")
    _add_process_flags(serve)
    serve.set_defaults(handler=_cmd_gateway_serve)

    agent = sub.add_parser("agent", help="the edge agent")
    asub = agent.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    run = asub.add_parser("run", help="serve v2 inference to device apps")
    run.add_argument("--gateway", default=None, metavar="HOST:PORT",
                     help="cloud gateway address: its balancer's or a name with several "
                     "addresses (dns:///HOST:PORT), or ipv4:A:P,B:P / ipv6:[A]:P,[B]:P, "
                     "spread round robin; without it every row stays on the edge")
    run.add_argument("--listen", default=None, metavar="HOST:PORT",
                     help="address apps call (default 127.0.0.1:8000; port 0 picks one)")
    run.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                     help="agent data folder (default: $XDG_STATE_HOME/edgecloud/agent, "
                     "else ~/.local/state/edgecloud/agent)")
    run.add_argument("--model", action="append", metavar="NAME=FILE",
                     help="serve task NAME with this edge ONNX file (repeatable; default: "
                     "none, only what the fleet assigns)")
    run.add_argument("--policy", action="append", type=Path, metavar="FILE",
                     help="routing policy file (repeatable; each names its task)")
    _add_scores_output_flag(run, "a task's edge model")
    run.add_argument("--agent-id", default=None, metavar="ID",
                     help="identity in the fleet (default: host name)")
    run.add_argument("--labels", nargs="+", metavar="KEY=VALUE", default=None,
                     help="labels that rollout selectors match, e.g. site=berlin hw=jetson "
                     "(default: none)")
    run.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                     help="file with this agent's bearer token for the gateway (default: none)")
    run.add_argument("--tls-ca", type=Path, default=None, metavar="FILE",
                     help="CA of the gateway's certificate: talk TLS to the gateway "
                     "(default: plaintext)")
    run.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                     help="client certificate, for gateways that require mTLS; its URI SAN "
                     "edgecloud://agent/AGENT_ID must name this agent (default: none)")
    run.add_argument("--tls-key", type=Path, default=None, metavar="FILE",
                     help="key of --tls-cert")
    run.add_argument("--trust-key", type=Path, default=None, metavar="FILE",
                     help="operator public key; only artifacts it signed are loaded "
                     "(default: load unsigned ones too)")
    run.add_argument("--status-interval", type=float, default=None, metavar="SECONDS",
                     help="seconds between status reports to the gateway (default 10)")
    _add_process_flags(run)
    run.set_defaults(handler=_cmd_agent_run)

    batch = asub.add_parser("batch", help="route a whole .npz file and write JSON lines")
    batch.add_argument("--gateway", default=None, metavar="HOST:PORT",
                       help="cloud gateway address (as for agent run); without it every "
                       "row stays on the edge")
    batch.add_argument("--model", action="append", required=True, metavar="NAME=FILE",
                       help="task NAME and its edge ONNX file")
    batch.add_argument("--policy", action="append", type=Path, metavar="FILE",
                       help="routing policy file (names its task)")
    _add_scores_output_flag(batch, "the edge model")
    batch.add_argument("--input", type=Path, required=True, metavar="FILE.npz",
                       help="input .npz (X, optional labels y)")
    batch.add_argument("--output", type=Path, required=True, metavar="FILE.jsonl",
                       help="output .jsonl, one line per row")
    batch.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                       help="rows routed per chunk, at least 1; the hard rows of a chunk go to "
                       "the cloud in one call (default 256, or the model's fixed batch size)")
    batch.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="YAML settings file (default: none)")
    _add_logging_flags(batch)
    batch.set_defaults(handler=_cmd_agent_batch)

    from edgecloud import ops_cli, quantize_cli, tune_cli

    groups = ops_cli.register(sub)

    quantize_cli.register(groups["models"])
    tune_cli.register_policy_commands(groups["policy"])
    return parser


def _setup_logging(settings) -> None:
    from edgecloud.core.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)


def _cmd_gateway_serve(args: argparse.Namespace) -> int:
    from edgecloud.cloud_gateway.app import run_gateway
    from edgecloud.cloud_gateway.settings import GatewaySettings
    from edgecloud.core.settings import load_settings

    models = _model_paths(args.model)
    settings = load_settings(
        GatewaySettings, args.config, listen=args.listen, data_dir=args.data_dir,
        models=models, scores_outputs=_scores_outputs(args.scores_output, models),
        execution_providers=_execution_providers(args.providers),
        http_listen=args.http_listen,
        port_file=args.port_file, log_format=args.log_format, log_level=args.log_level,
        registry=args.registry, s3_endpoint=args.s3_endpoint, replica=args.replica,
        trust_key=args.trust_key,
        tokens_file=args.tokens_file, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca, batching=_batching(args),
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_streams_per_connection=args.max_streams_per_connection,
        max_pending_rpcs=args.max_pending_rpcs,
    )
    _setup_logging(settings)
    asyncio.run(run_gateway(settings))
    return 0


def _agent_settings(args: argparse.Namespace, **extra):
    from edgecloud.core.settings import load_settings
    from edgecloud.edge_agent.settings import AgentSettings

    for path in args.policy or ():
        if not path.is_file():
            raise CliError(f"--policy: file {path} does not exist")
    models = _model_paths(args.model)
    return load_settings(
        AgentSettings, args.config, gateway=args.gateway, models=models,
        scores_outputs=_scores_outputs(args.scores_output, models),
        policies=args.policy, log_format=args.log_format, log_level=args.log_level, **extra,
    )


def _cmd_agent_run(args: argparse.Namespace) -> int:
    from edgecloud.edge_agent.app import run_agent

    settings = _agent_settings(
        args, listen=args.listen, data_dir=args.data_dir, agent_id=args.agent_id,
        labels=_pairs(args.labels, "--labels"), http_listen=args.http_listen,
        port_file=args.port_file, trust_key=args.trust_key, token_file=args.token_file,
        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        status_interval_s=args.status_interval,
    )
    _setup_logging(settings)
    asyncio.run(run_agent(settings))
    return 0


def _cmd_agent_batch(args: argparse.Namespace) -> int:
    from edgecloud.batch_cli import run_batch_command

    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise CliError("--chunk-rows must be at least 1")
    if not args.input.is_file():
        raise CliError(f"--input: file {args.input} does not exist")
    settings = _agent_settings(args)
    if len(settings.models) != 1:
        raise CliError("agent batch routes one task: give exactly one --model NAME=FILE")
    _setup_logging(settings)
    return asyncio.run(run_batch_command(settings, args.input, args.output, args.chunk_rows))


def _cmd_example(args: argparse.Namespace) -> int:
    from edgecloud.examples.digits import write_example

    try:
        written = write_example(args.out)
    except (NotADirectoryError, OSError) as exc:
        raise CliError(f"cannot write the example to {args.out}: {exc}") from None
    for path in written:
        print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgecloud.demo import run_demo

    if not 1 <= args.agents <= 16:
        raise CliError("--agents must be between 1 and 16")
    if not 1 <= args.streams <= 16:
        raise CliError("--streams must be between 1 and 16")
    if args.loop:
        import importlib

        for module in ("sklearn", "skl2onnx"):
            try:
                importlib.import_module(module)
            except ImportError:
                raise CliError(f"demo --loop retrains the edge model with scikit-learn and "
                               f"skl2onnx ({module} is missing): install the examples extra, "
                               "pip install -e '.[examples]' (or run make demo-loop)") from None
        from edgecloud.demo_loop import run_loop

        return run_loop(agents=args.agents, streams=args.streams, json_path=args.json)
    return run_demo(agents=args.agents, streams=args.streams, json_path=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgecloud`` command."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # The usage of the command that was mistyped, not the top level's.
        leaf_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    from edgecloud.core.logging import configure_logging

    # Commands print their results; library log lines stay off the terminal unless asked
    # for (--verbose), and then as text on stderr. Servers (and commands with --log-format)
    # reconfigure with their own settings.
    configure_logging("console", "info" if getattr(args, "verbose", False) else "error")
    return run(args)

