"""The edgecloud command: clear messages and exit code 2 for bad input, clean stops."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgecloud.cli import build_parser
from edgecloud.router import RequestContext, Side, decide, parse_policy, score_rows


def edgecloud(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecloud", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(256))
    bad_policy = tmp_path / "bad_policy.yaml"
    bad_policy.write_text("name: digits\nthreshold: 1.7\n")
    not_yaml = tmp_path / "not_yaml.yaml"
    not_yaml.write_text("name: [unclosed\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"garbage": garbage, "bad_policy": bad_policy, "not_yaml": not_yaml,
            "a_file": a_file}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["agent", "run", "--model", "digits={missing}"], "does not exist"),
        (["agent", "run", "--model", "digits"], "KEY=VALUE"),
        (["agent", "run", "--model", "digits={edge}", "--policy", "{bad_policy}"], "threshold"),
        (["agent", "run", "--model", "digits={edge}", "--policy", "{not_yaml}"], "policy"),
        (["agent", "run", "--model", "digits={edge}", "--labels", "site"], "KEY=VALUE"),
        (["agent", "run", "--model", "digits={garbage}", "--listen", "127.0.0.1:0"],
         "garbage.onnx"),
        (["gateway", "serve", "--listen", "nowhere", "--model", "digits={cloud}"], "HOST:PORT"),
        (["gateway", "serve", "--listen", "127.0.0.1:0", "--model", "digits={garbage}"],
         "garbage.onnx"),
        (["example", "digits", "--out", "{a_file}"], "a_file"),
        (["gateway", "serve", "--listen", "127.0.0.1:0", "--model", "digits={cloud}",
          "--tls-cert", "{a_file}"], "TLS needs both"),
        (["gateway", "serve", "--listen", "127.0.0.1:0", "--model", "digits={cloud}",
          "--tls-cert", "{a_file}", "--tls-key", "{a_file}"], "not PEM"),
        (["agent", "batch", "--model", "digits={edge}", "--input", "{missing}",
          "--output", "{tmp}/out.jsonl"], "does not exist"),
        (["agent", "batch", "--model", "digits={edge}", "--input", "{test_npz}",
          "--output", "{a_file}/out.jsonl"], "a_file"),
        (["demo", "--agents", "0"], "--agents"),
        (["gateway", "serve", "--listen", "127.0.0.1:0", "--registry", "ftp://bucket/x"],
         "not a registry location"),
        (["gateway", "serve", "--listen", "127.0.0.1:0", "--model", "digits={cloud}",
          "--scores-output", "digits=logits"], "has no output 'logits'"),
        (["gateway", "serve", "--listen", "127.0.0.1:0", "--model", "digits={cloud}",
          "--scores-output", "other=probabilities"], "not served with --model"),
        (["agent", "run", "--listen", "127.0.0.1:0", "--model", "digits={edge}",
          "--scores-output", "logits"], "has no output 'logits'"),
        (["agent", "run", "--model", "digits={edge}", "--scores-output", "digits="],
         "OUTPUT or NAME=OUTPUT"),
        (["gateway", "serve", "--max-batch-size", "digits=many"], "NAME=number"),
        (["agent", "run", "--listen", "127.0.0.1:0", "--model", "digits={edge}",
          "--data-dir", "{tmp}/agent", "--gateway", "ipv4:127.0.0.1"], "a port is needed"),
        (["agent", "batch", "--model", "digits={edge}", "--policy", "{policy}",
          "--input", "{test_npz}", "--output", "{tmp}/out.jsonl",
          "--gateway", "unix:///run/gw.sock"], "scheme 'unix:' is not supported"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, fragment, bad_files, digits_dir, tmp_path):
    """Each mistake gets one line on stderr naming the problem, exit code 2, no traceback."""
    names = {**bad_files, "edge": digits_dir / "edge.onnx", "cloud": digits_dir / "cloud.onnx",
             "missing": tmp_path / "missing.onnx", "tmp": tmp_path,
             "test_npz": digits_dir / "test.npz", "policy": digits_dir / "policy.yaml"}
    result = edgecloud(*(a.format(**names) for a in args))
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_command_matches_flags_exactly(capsys) -> None:
    """No parser or subparser accepts a prefix of a flag; a prefix exits with code 2."""
    parser = build_parser()
    assert all(not p.allow_abbrev for p in _parsers(parser))
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["gateway", "serve", "--lis", "127.0.0.1:0"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --lis" in capsys.readouterr().err


def test_gateway_takes_registry_and_its_former_flag() -> None:
    """`gateway serve` reads --registry, and --registry-dir still means the same."""
    parser = build_parser()
    for flag in ("--registry", "--registry-dir"):
        assert parser.parse_args(["gateway", "serve", flag, "/shared"]).registry == "/shared"


def test_gateway_takes_batching_limits_per_model_as_flags(tmp_path) -> None:
    """`gateway serve` batching flags set gateway-wide limits (N) and one model's (NAME=N),
    over the config file's."""
    from edgecloud.cli import _batching
    from edgecloud.cloud_gateway.settings import GatewaySettings
    from edgecloud.core.settings import load_settings

    config = tmp_path / "gateway.yaml"
    config.write_text("batching:\n  max_queue_rows: 500\n  workers: 3\n")
    args = build_parser().parse_args([
        "gateway", "serve", "--max-batch-size", "32", "--max-batch-size", "digits=8",
        "--max-queue-delay-ms", "digits=0", "--batch-workers", "big=1"])
    settings = load_settings(GatewaySettings, config, batching=_batching(args))
    assert settings.batching.for_model("digits") == {
        "max_batch_size": 8, "max_queue_delay_ms": 0.0, "max_queue_rows": 500, "workers": 3}
    assert settings.batching.for_model("big")["workers"] == 1
    assert settings.batching.for_model("other")["max_batch_size"] == 32


def test_gateway_drains_and_exits_on_sigterm(tmp_path, digits_dir):
    """A gateway process writes its port file, then exits 0 promptly on SIGTERM."""
    port_file = tmp_path / "gw.port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecloud", "gateway", "serve", "--listen", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "gw"), "--model", f"digits={digits_dir / 'cloud.onnx'}",
         "--port-file", str(port_file), "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert port_file.exists(), proc.stdout.read().decode() if proc.poll() is not None else ""
        assert port_file.read_text().startswith("127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    events = [json.loads(line)["event"] for line in output.decode().splitlines()
              if line.startswith("{")]
    assert "gateway_draining" in events and "gateway_stopped" in events


@pytest.mark.e2e
async def test_agent_batch_routes_a_whole_file(start_gateway, tmp_path, digits_dir,
                                               digits_test, onnx_reference):
    """`agent batch` writes one JSON line per row, routed as decide() says, with the
    answering model's prediction, and prints a summary table."""
    gateway = await start_gateway()
    out = tmp_path / "answers.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecloud", "agent", "batch", "--gateway", gateway.address,
        "--model", f"digits={digits_dir / 'edge.onnx'}", "--policy",
        str(digits_dir / "policy.yaml"), "--input", str(digits_dir / "test.npz"),
        "--output", str(out), "--chunk-rows", "100", "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, stderr.decode()
    x, y = digits_test
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in lines] == list(range(len(x)))
    policy = parse_policy((digits_dir / "policy.yaml").read_text())
    confidence, predicted = score_rows(policy, onnx_reference("edge", x))
    plan = decide(policy, confidence, predicted, RequestContext(time_left_s=30.0))
    expected = ["cloud" if side == Side.CLOUD else "edge" for side in plan.side.tolist()]
    assert [r["route"] for r in lines] == expected
    cloud_pred = np.argmax(onnx_reference("cloud", x), axis=1)
    for r in lines:
        want = cloud_pred[r["row"]] if r["route"] == "cloud" else predicted[r["row"]]
        assert r["prediction"] == want
        assert r["label"] == y[r["row"]]
    assert "escalation rate" in stdout.decode()
    assert gateway.metrics.rows.labels("digits")._value.get() == expected.count("cloud")


@pytest.mark.e2e
def test_demo_meets_its_targets(tmp_path):
    """The demo runs the whole system and the hybrid is within 0.5 points of cloud-only
    accuracy with at most 15% of inputs escalated; no request fails."""
    out = tmp_path / "demo.json"
    result = edgecloud("demo", "--json", str(out), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())
    assert figures["cloud_only"]["accuracy"] - figures["hybrid"]["accuracy"] <= 0.005
    assert figures["hybrid"]["escalation_rate"] <= 0.15
    assert figures["edge_only"]["accuracy"] < figures["cloud_only"]["accuracy"]
    assert figures["edge_only"]["escalation_rate"] == 0.0
    assert figures["cloud_only"]["escalation_rate"] == 1.0


@pytest.mark.e2e
async def test_agent_batch_runs_a_batch_of_one_model_without_chunk_rows(start_gateway,
                                                                       tmp_path):
    """A default skl2onnx export with a batch dimension of 1 routes a whole file without
    --chunk-rows: one row per run, every row answered, labels written as numbers."""
    pytest.importorskip("skl2onnx")
    from sklearn_models import export, iris

    edge = export("logistic", tmp_path / "edge.onnx", batch=1)
    cloud = export("forest", tmp_path / "cloud.onnx", batch=1)
    gateway = await start_gateway(models={"iris": cloud})
    x, y = iris()
    np.savez(tmp_path / "iris.npz", X=x[:40], y=y[:40])
    out = tmp_path / "answers.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecloud", "agent", "batch", "--gateway", gateway.address,
        "--model", f"iris={edge}", "--input", str(tmp_path / "iris.npz"), "--output",
        str(out), "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in lines] == list(range(40))
    assert all(len(r["outputs"]["output_probability"]) == 3 for r in lines)
    assert all(isinstance(r["outputs"]["output_label"], int) for r in lines)
    assert sum(r["prediction"] == r["label"] for r in lines) >= 30
def test_every_argument_says_what_it_does_and_its_default() -> None:
    """Every argument of every command has help text; the ones whose limits or defaults
    are easy to get wrong state them."""
    parser = build_parser()
    missing = []
    helps: dict[str, list[str]] = {}
    for p in _parsers(parser):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if action.help == argparse.SUPPRESS:
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            if not action.help:
                missing.append(f"{p.prog} {name}")
            helps.setdefault(name, []).append(action.help or "")
    assert missing == []
    for flag, fragments in (("--percent", ("0", "100")), ("--selector", ("KEY=VALUE", "label")),
                            ("--data-dir", ("default",)), ("--chunk-rows", ("default",)),
                            ("--replica", ("default",)), ("--max-failures", ("default",))):
        for text in helps[flag]:
            assert all(f in text or f in flag for f in fragments), (flag, text)
    rollout = next(p for p in _parsers(parser) if p.prog.endswith("models rollout"))
    assert "KEY=VALUE" in rollout.format_help()


def test_version_flag_prints_the_version() -> None:
    """`edgecloud --version` prints the package version and exits 0."""
    from edgecloud.core import __version__

    result = edgecloud("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edgecloud {__version__}"


def test_a_mistyped_flag_shows_the_subcommands_usage(capsys) -> None:
    """A flag the subcommand does not have gets that subcommand's usage, not the top
    level's, and exit code 2."""
    from edgecloud.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["models", "list", "--registry", "/nowhere", "--jsn"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: edgecloud models list")
    assert "edgecloud models list: error: unrecognized arguments: --jsn" in err


def test_operator_commands_print_no_json_log_lines(tmp_path, bad_files) -> None:
    """An operator command that fails prints one readable error line on stderr and no
    JSON log lines; --verbose adds the library's warning as text, not JSON."""
    args = ("models", "publish", "digits", str(bad_files["garbage"]), "--target", "edge",
            "--registry", str(tmp_path / "registry"))
    quiet = edgecloud(*args)
    assert quiet.returncode == 2
    assert quiet.stderr.splitlines() == [
        line for line in quiet.stderr.splitlines() if line.startswith("edgecloud: error:")]
    assert len(quiet.stderr.splitlines()) == 1
    verbose = edgecloud(*args, "--verbose")
    assert verbose.returncode == 2
    assert "model_load_failed" in verbose.stderr
    assert not any(line.lstrip().startswith("{") for line in verbose.stderr.splitlines())


def test_gateway_checks_every_setting_before_creating_anything(tmp_path) -> None:
    """`gateway serve --config deploy/config/gateway.yaml` on a machine without its key and
    tokens files exits 2 naming both files, and creates neither the data directory nor the
    registry (the config's paths are pointed at a temporary folder)."""
    import yaml

    config = Path(__file__).resolve().parents[2] / "deploy" / "config" / "gateway.yaml"
    settings = yaml.safe_load(config.read_text())
    if Path(settings["trust_key"]).exists() or Path(settings["tokens_file"]).exists():
        pytest.skip("this machine has the deployment's key files")
    env = {**os.environ, "EDGECLOUD_GATEWAY_DATA_DIR": str(tmp_path / "data"),
           "EDGECLOUD_GATEWAY_REGISTRY": str(tmp_path / "registry")}
    result = subprocess.run(
        [sys.executable, "-m", "edgecloud", "gateway", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert settings["trust_key"] in result.stderr and settings["tokens_file"] in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "registry").exists()


def test_gateway_reports_every_bad_file_at_once(tmp_path, bad_files) -> None:
    """A gateway given a bad key, an unreadable tokens file, half a TLS pair and a bad model
    names each problem in one message and creates no data directory."""
    result = edgecloud(
        "gateway", "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
        "--trust-key", str(bad_files["a_file"]), "--tokens-file", str(tmp_path / "none.yaml"),
        "--tls-cert", str(bad_files["a_file"]), "--model", f"digits={bad_files['garbage']}")
    assert result.returncode == 2, result.stderr
    for fragment in ("not a PEM public key", "none.yaml", "TLS needs both", "garbage.onnx"):
        assert fragment in result.stderr, (fragment, result.stderr)
    assert not (tmp_path / "data").exists()
