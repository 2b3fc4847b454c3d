"""The README, followed literally, works.

Every ``sh`` block of the README after the quick start runs here, in order, in
one empty folder, as a user pasting them into one shell would run them: a
command ending in ``&`` is a server started in the background (and waited for
until it listens), every other command must exit 0. The README's loopback
addresses are mapped to free ports. Only ``edgecloud`` commands and ``curl``
calls to the servers are run; ``kubectl`` needs a cluster and is left out.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
NOT_OURS = {"kubectl"}
"""Programs the README mentions that a test on loopback cannot run."""
CLIENTS = {"curl"}
"""Programs other than ``edgecloud`` that the README runs against the servers, as they are
(skipped where the machine lacks them)."""
ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")


def readme_commands(text: str) -> list[str]:
    """The commands of every ``sh`` block after the quick start, continuations joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)
    commands = []
    for block in blocks[1:]:  # the first block is the quick start (make demo / make test)
        for line in block.replace("\\\n", " ").splitlines():
            if shlex.split(line, comments=True):
                commands.append(line)
    return commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port_file: Path, proc: subprocess.Popen, command: str) -> None:
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None:
            pytest.fail(f"`{command}` exited with {proc.returncode} before it listened:\n"
                        f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"`{command}` did not listen within 60 s")
        time.sleep(0.05)


def test_readme_commands_list_is_not_empty() -> None:
    """The README has command blocks past the quick start, and each names a program."""
    commands = readme_commands(README.read_text())
    assert len(commands) >= 10
    for line in commands:
        program = shlex.split(line, comments=True)[0]
        assert program == "edgecloud" or program in NOT_OURS | CLIENTS, line


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_readme_commands_run_in_order(tmp_path: Path) -> None:
    """Each README command, run in order on loopback, succeeds (servers start and listen)."""
    text = README.read_text()
    ports = {port: _free_port() for port in sorted(set(ADDRESS.findall(text)))}
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECLOUD_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    servers: list[subprocess.Popen] = []
    try:
        for n, line in enumerate(readme_commands(text)):
            line = ADDRESS.sub(lambda m: f"127.0.0.1:{ports[m.group(1)]}", line)
            argv = shlex.split(line, comments=True)
            if argv[0] in NOT_OURS or (argv[0] in CLIENTS and shutil.which(argv[0]) is None):
                continue
            background = argv[-1] == "&"
            if background:
                argv = argv[:-1]
            command = ([sys.executable, "-m", "edgecloud", *argv[1:]]
                       if argv[0] == "edgecloud" else argv)
            if background:
                port_file = tmp_path / f"server-{n}.port"
                proc = subprocess.Popen(
                    [*command, "--port-file", str(port_file)], cwd=tmp_path, env=env,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, text=True)
                servers.append(proc)
                _wait_for(port_file, proc, line)
                continue
            result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=300, stdin=subprocess.DEVNULL)
            assert result.returncode == 0, (
                f"`{line}` exited with {result.returncode}:\n{result.stdout}\n{result.stderr}")
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in servers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
