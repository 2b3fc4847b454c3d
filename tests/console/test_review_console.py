"""The review page in a real browser: headless Chromium against a real gateway and agent.

A reviewer labels three queued rows, by clicking a class and by its digit key; the app
that asked for better answers gets the labels from the agent; a viewer sees the queue
but no label buttons. Screenshots go to ``$EDGECLOUD_SCREENSHOTS`` when it is set, else
to ``screenshots/`` in the test's temporary folder (the path is printed).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from browser import ConsolePage, requires_browser
from review_helpers import REVIEWER, VIEWER, answer_of, ask_better, queue_of, review_setup
from selenium.webdriver.common.by import By

from edgecloud.protos.answers.v1 import answers_pb2 as apb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as fpb_grpc

pytestmark = [
    pytest.mark.e2e,
    requires_browser,
]


class ReviewPage(ConsolePage):
    """The console's review page in the browser; every method blocks (run it in a thread)."""

    def log_in(self, token: str) -> None:
        self.driver.get(self.url + "#review")
        self.submit_token(token)
        self.wait(lambda d: d.find_element(By.ID, "page").get_attribute("data-page") == "review",
                  "the review page")

    def rows(self) -> list[str]:
        return [card.get_attribute("data-review")
                for card in self.driver.find_elements(By.CSS_SELECTOR, "article.review")]

    def wait_rows(self, count: int) -> list[str]:
        self.wait(lambda d: len(self.rows()) == count, f"{count} rows on the review page")
        return self.rows()

    def click_label(self, review_id: str, label: int) -> None:
        css = f'article.review[data-review="{review_id}"] button.label[data-label="{label}"]'

        def click(driver) -> bool:  # found and clicked in one go: the page redraws as it polls
            driver.find_element(By.CSS_SELECTOR, css).click()
            return True

        self.wait(click, f"the label button {label}")

    def press(self, key: str) -> None:
        self.driver.find_element(By.TAG_NAME, "body").send_keys(key)


async def test_a_reviewer_labels_three_rows_and_the_app_gets_them(
        start_gateway, start_agent, tmp_path, digits_dir, digits_test, browser, screenshots):
    """A viewer sees the three queued rows (pictures, both models' answers) and no label
    button; a reviewer sees only the review page, labels the oldest row with a click and
    the next two with digit keys; each leaves the queue, and the app's Answers.Get says
    source reviewer with the label given."""
    tokens, policy = review_setup(tmp_path, digits_dir)
    gateway = await start_gateway(registry=tmp_path / "registry", tokens_file=tokens,
                                  http_listen="127.0.0.1:0")
    agent = await start_agent(gateway.address, fleet=False, agent_id="agent-0",
                              token_file=tmp_path / "agent.token", policies=[policy])
    x, _ = digits_test
    ids = await ask_better(agent.address, x[:3])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        queue = await queue_of(fpb_grpc.ReviewServiceStub(channel), REVIEWER, 3)
    answer_of_row = {item.review_id: item.example.answer_id for item in queue.items}
    assert sorted(answer_of_row.values()) == sorted(ids)
    page = ReviewPage(browser, f"http://{gateway.http_address}/console", screenshots)

    def run(method, *args):
        return asyncio.to_thread(method, *args)

    await run(page.log_in, VIEWER)
    rows = await run(page.wait_rows, 3)
    assert rows == [item.review_id for item in queue.items]  # oldest first
    assert len(browser.find_elements(By.CSS_SELECTOR, "article.review svg.digit")) == 3
    assert not browser.find_elements(By.CSS_SELECTOR, "button.label")
    assert "Read-only" in browser.find_element(By.ID, "banner").text
    await run(page.shot, "review-viewer")
    await run(page.log_out)

    await run(page.log_in, REVIEWER)
    await run(page.wait_rows, 3)
    shown = [link.get_attribute("data-page")
             for link in browser.find_elements(By.CSS_SELECTOR, "#nav a")
             if link.is_displayed()]
    assert shown == ["review"]
    await run(page.shot, "review-reviewer")
    wanted = {rows[0]: 7, rows[1]: 3, rows[2]: 5}
    await run(page.click_label, rows[0], wanted[rows[0]])
    assert await run(page.wait_rows, 2) == rows[1:]
    await run(page.press, str(wanted[rows[1]]))
    assert await run(page.wait_rows, 1) == rows[2:]
    await run(page.press, str(wanted[rows[2]]))
    await run(page.wait_rows, 0)
    await run(page.shot, "review-done")

    for review_id, label in wanted.items():
        got = await answer_of(agent.address, answer_of_row[review_id], "reviewer")
        assert got.state == apb.ANSWER_STATE_ANSWERED and got.source == "reviewer"
        assert list(got.labels) == [label] and got.answered_by == "rita"
