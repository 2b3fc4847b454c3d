"""The fleet console in a real browser: headless Chromium against a real gateway and two agents.

Screenshots of every page go to ``$EDGECLOUD_SCREENSHOTS`` when it is set, else to
``screenshots/`` in the test's temporary folder (the path is printed).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from browser import ConsolePage, requires_browser
from fleet_helpers import (
    digits_like_model,
    publish_model,
    publish_policy,
    running_version,
    wait_until,
)
from selenium.webdriver.common.by import By

from edgecloud.cloud_gateway.hard_examples import HardExampleStore
from edgecloud.cloud_gateway.registry import Registry
from edgecloud.core.signing import generate_keypair, key_fingerprint, load_public_key
from edgecloud.core.tensors import InferRequest
from edgecloud.examples.digits import load_split
from edgecloud.router import TuningTarget, dump_policy, parse_policy, tune

TASK = "digits"
TOKENS = {"operator": "operator-token-0123456789abcdef",
          "viewer": "viewer-token-0123456789abcdef",
          "agent-0": "agent0-token-0123456789abcdef",
          "agent-1": "agent1-token-0123456789abcdef"}

pytestmark = [
    pytest.mark.e2e,
    requires_browser,
]


class Console(ConsolePage):
    """The console's fleet pages in the browser; every method blocks (run it in a
    thread)."""

    def text(self, css: str) -> str:
        return " ".join(e.text for e in self.driver.find_elements(By.CSS_SELECTOR, css))

    def wait_text(self, css: str, wanted: str) -> str:
        return self.wait(lambda d: wanted in self.text(css) and self.text(css),
                         f"{wanted!r} in {css}")

    def open(self) -> None:
        self.driver.get(self.url)
        self.wait(lambda d: d.find_element(By.ID, "login").is_displayed()
                  or d.find_element(By.ID, "page").is_displayed(), "the console to start")

    def log_in(self, token: str) -> None:
        self.submit_token(token)

    def go(self, page: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, f'#nav a[data-page="{page}"]').click()
        self.wait(lambda d: d.find_element(By.ID, "page").get_attribute("data-page") == page,
                  f"the {page} page")

    def rollout_state(self) -> str:
        card = self.driver.find_element(By.CSS_SELECTOR,
                                        f'.rollout[data-model="{TASK}"][data-target="edge"]')
        return card.get_attribute("data-state")

    def click_action(self, action: str) -> None:
        css = (f'button.action[data-action="{action}"][data-model="{TASK}"]'
               '[data-target="edge"]')

        def click(driver) -> bool:  # found and clicked in one go: the page redraws as it polls
            driver.find_element(By.CSS_SELECTOR, css).click()
            return True

        self.wait(click, f"the {action} button")
        self.wait(lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is not None,
                  "the confirmation dialog")

    def answer_dialog(self, confirm: bool) -> None:
        self.driver.find_element(By.ID, "confirm-ok" if confirm else "confirm-cancel").click()
        self.wait(lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is None,
                  "the dialog to close")


def _write_tokens(path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "operators": [TOKENS["operator"]], "viewers": [TOKENS["viewer"]],
        "agents": {TOKENS["agent-0"]: "agent-0", TOKENS["agent-1"]: "agent-1"}}))
    return path


def _tuned_policy(digits_dir: Path, onnx_reference, out: Path) -> Path:
    """The bundled policy tuned again on the calibration split, as version 2 (with its
    curve)."""
    x, y = load_split("calibration")
    base = parse_policy((digits_dir / "policy.yaml").read_bytes())
    policy, _ = tune(onnx_reference("edge", x), onnx_reference("cloud", x), y,
                     TuningTarget(kind="probabilities", target_gap=0.005, base_policy=base))
    out.write_text(dump_policy(policy.model_copy(update={"version": "2"})))
    return out


async def _post(address: str, path: str, token: str | None, content_type: str) -> int:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session, session.post(
            f"http://{address}{path}", data=b'{"target": "edge"}', headers=headers) as response:
        assert "error" in await response.json() or response.status == 200
        return response.status


async def test_the_console_shows_the_fleet_and_rolls_back_in_a_browser(
        start_gateway, start_agent, tmp_path, digits_dir, digits_test, onnx_reference, browser,
        screenshots):
    """Against a gateway with an operator and a viewer token and two agents: a bad token is
    refused on the login form; the agents appear; a rollout started from the command line
    shows its progress; a rollback clicked and confirmed in the console takes both agents
    back to the previous version (cancelled, it does nothing); models show who signed them,
    policies their tuning curve, hard examples their 8×8 input; a viewer sees no action
    button and its action call is refused with 403 (401 without a token); a gateway without
    tokens lets the page in as operator and says so."""
    registry = tmp_path / "registry"
    private, public = generate_keypair(tmp_path / "keys")
    tokens = _write_tokens(tmp_path / "tokens.yaml")
    for _, path, target, version in (("edge", digits_dir / "edge.onnx", "edge", "1"),
                                        ("cloud", digits_dir / "cloud.onnx", "cloud", "1"),
                                        ("v2", digits_like_model(tmp_path / "v2.onnx", "softmax",
                                                                 seed=3), "edge", "2")):
        await asyncio.to_thread(publish_model, registry, TASK, path, target, version=version,
                                key=private)
    await asyncio.to_thread(publish_policy, registry, digits_dir / "policy.yaml", key=private)
    await asyncio.to_thread(publish_policy, registry,
                            _tuned_policy(digits_dir, onnx_reference, tmp_path / "tuned.yaml"),
                            key=private)
    gateway = await start_gateway(models={}, registry=registry, registry_poll_ms=50,
                                  http_listen="127.0.0.1:0", tokens_file=tokens,
                                  trust_key=public)
    agents = []
    for i in range(2):
        (tmp_path / f"agent-{i}.token").write_text(TOKENS[f"agent-{i}"])
        agents.append(await start_agent(
            gateway.address, models={}, policies=[], agent_id=f"agent-{i}",
            labels={"site": f"site-{i}"}, token_file=tmp_path / f"agent-{i}.token",
            trust_key=public, status_interval_s=0.2, reconnect_max_s=0.5))
    await wait_until(lambda: all(running_version(a) == "1" for a in agents), 20,
                     "both agents on version 1")
    x, _ = digits_test
    await agents[0].service.answer(InferRequest(model_name=TASK, inputs={"pixels": x[:80]}), 5.0)
    await agents[0].uploader.upload()  # or the agent's own upload loop got there first
    store = HardExampleStore(registry / "hard_examples")
    await wait_until(lambda: store.recent(1), 20, "hard examples at the gateway")

    page = Console(browser, f"http://{gateway.http_address}/console", screenshots)

    def run(method, *args):
        return asyncio.to_thread(method, *args)

    # A bad token, then an agent's, are refused on the login form.
    await run(page.open)
    await run(page.log_in, "not-a-token-of-this-gateway")
    assert "Token refused: unknown bearer token" in await run(
        page.wait_text, "#login-error", "unknown bearer token")
    assert not await run(lambda: browser.find_element(By.ID, "nav").is_displayed())
    await run(page.shot, "login-refused")
    await run(page.log_in, TOKENS["agent-0"])
    await run(page.wait_text, "#login-error", "the agent role may not")

    # The operator sees both agents, where they are connected and what they run.
    await run(page.log_in, TOKENS["operator"])
    await run(page.wait_text, "#who", "operator")
    for i in range(2):
        row = f'#agents-table tr[data-agent="agent-{i}"]'
        await run(page.wait_text, f"{row} td.model-version", "1")
        assert f"site=site-{i}" in await run(page.text, row)
        assert "(here)" in await run(page.text, row)
    await run(page.shot, "agents")

    # A rollout started from the command line shows its progress, up to both agents.
    token_file = tmp_path / "operator.token"
    token_file.write_text(TOKENS["operator"] + "\n")
    cli = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "edgecloud", "models", "rollout", TASK, "2",
                         "--percent", "100", "--gateway", gateway.address,
                         "--token-file", str(token_file)],
        capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    await run(page.go, "rollouts")
    await wait_until(lambda: all(running_version(a) == "2" for a in agents), 20,
                     "both agents on version 2")
    await run(page.wait_text, ".rollout .progress-text", "2 of 2 assigned agents run 2")
    assert await run(page.rollout_state) == "active"
    await run(page.shot, "rollouts")

    # Rollback: cancelled it changes nothing; confirmed it reaches both agents.
    await run(page.click_action, "rollback")
    await run(page.shot, "rollback-confirmation")
    await run(page.answer_dialog, False)
    assert await run(page.rollout_state) == "active"
    assert Registry(registry).rollout(TASK).state == "active"
    await run(page.click_action, "rollback")
    await run(page.answer_dialog, True)
    await wait_until(lambda: all(running_version(a) == "1" for a in agents), 20,
                     "both agents back on version 1")
    await run(page.wait, lambda d: page.rollout_state() == "rolled_back", "rolled_back")
    await run(page.wait_text, "#flash", "now rolled_back")
    assert Registry(registry).rollout(TASK).state == "rolled_back"
    await run(page.shot, "rollouts-rolled-back")

    # Models: which key signed each version.
    await run(page.go, "models")
    await run(page.wait_text, '.model tr[data-version="2"] .signature',
              f"signed by {key_fingerprint(load_public_key(public))}")
    await run(page.shot, "models")

    # Policies: the tuned version draws its curve, the hand-written one says it has none.
    await run(page.go, "policies")
    await run(page.wait, lambda d: d.find_elements(
        By.CSS_SELECTOR, '.policy[data-version="2"] svg.curve polyline'), "the tuning curve")
    await run(page.wait_text, '.policy[data-version="1"] .no-curve', "No tuning curve")
    await run(page.shot, "policies")

    # Hard examples: each one's 8×8 input drawn from its numbers.
    await run(page.go, "examples")
    cells = await run(page.wait, lambda d: [e.get_attribute("data-cells") for e in
                                            d.find_elements(By.CSS_SELECTOR, "svg.digit")],
                      "a drawn input")
    assert set(cells) == {"64"}
    assert "agent-0" in await run(page.text, ".example")
    await run(page.shot, "examples")

    # The viewer sees everything and can do nothing.
    await run(page.log_out)
    await run(page.log_in, TOKENS["viewer"])
    await run(page.wait_text, "#banner", "Read-only")
    await run(page.go, "rollouts")
    await run(page.wait_text, ".rollout", "rolled_back")
    assert await run(lambda: browser.find_elements(By.CSS_SELECTOR, "button.action")) == []
    assert await run(page.text, "#flash") == ""  # the operator's last action stays with them
    await run(page.shot, "viewer-rollouts")
    action = f"/console/api/rollouts/{TASK}/pause"
    assert await _post(gateway.http_address, action, TOKENS["viewer"], "application/json") == 403
    assert await _post(gateway.http_address, action, None, "application/json") == 401
    assert await _post(gateway.http_address, action, TOKENS["operator"], "text/plain") == 415
    assert Registry(registry).rollout(TASK).state == "rolled_back"

    # A gateway without tokens lets the page in as operator and says so.
    open_gateway = await start_gateway(models={}, registry=registry, http_listen="127.0.0.1:0",
                                       trust_key=public)
    page.url = f"http://{open_gateway.http_address}/console"
    await run(page.open)
    await run(page.wait_text, "#banner", "no tokens configured")
    assert await run(page.text, "#who") == "open gateway (operator)"
    await run(page.shot, "open-gateway")
    assert {p.name for p in screenshots.glob("*.png")} >= {
        f"{name}.png" for name in ("login-refused", "agents", "rollouts", "rollback-confirmation",
                                   "rollouts-rolled-back", "models", "policies", "examples",
                                   "viewer-rollouts", "open-gateway")}
