"""Reviewers' labels of single rows, as the label stream delivers them to the answer store."""

from __future__ import annotations

import numpy as np
import pytest

from edgecloud.core.errors import InvalidInput, NotFound
from edgecloud.edge_agent.answers import (
    AnswerLimits,
    AnswerRecord,
    AnswerState,
    AnswerStore,
    new_answer_id,
)


class Clock:
    """A settable wall clock (Unix seconds)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path):
    opened = AnswerStore(tmp_path / "ledger.sqlite3", AnswerLimits(), clock=Clock())
    opened.start()
    yield opened
    await opened.aclose()


def _two_rows() -> AnswerRecord:
    return AnswerRecord(
        answer_id=new_answer_id(), task="digits", state=AnswerState.ANSWERED, source="cloud",
        answered_by="digits:1", created_at=1_700_000_000.0, answered_at=1_700_000_001.0,
        route=("cloud", "cloud"), better=("pending", "pending"), classes=(3, 7),
        confidence=(0.4, 0.5), outputs={"probabilities": np.zeros((2, 10), np.float32)})


async def test_rows_are_labelled_one_at_a_time_and_a_repeat_changes_nothing(store):
    """The second row's label leaves the first row's class (label -1 until labelled); the
    first row's label then completes it; the same label sent again is not applied again."""
    record = _two_rows()
    store.add(record)
    second = await store.set_row_label(record.answer_id, 1, 2, "rita", 1_700_000_050.0)
    assert (second.labels, second.classes, second.source, second.answered_by,
            second.answered_at) == ((-1, 2), (3, 2), "reviewer", "rita", 1_700_000_050.0)
    first = await store.set_row_label(record.answer_id, 0, 9, "sam", 1_700_000_060.0)
    assert (first.labels, first.classes, first.answered_by) == ((9, 2), (9, 2), "sam")
    assert await store.set_row_label(record.answer_id, 0, 9, "sam", 1_700_000_060.0) is None
    assert (await store.get(record.answer_id)).labels == (9, 2)


async def test_a_row_the_answer_lacks_or_an_unknown_answer_is_refused(store):
    """Row 2 of a two-row answer is InvalidInput; an id never kept is NotFound."""
    record = _two_rows()
    store.add(record)
    with pytest.raises(InvalidInput):
        await store.set_row_label(record.answer_id, 2, 1, "rita", 1_700_000_050.0)
    with pytest.raises(NotFound):
        await store.set_row_label(new_answer_id(), 0, 1, "rita", 1_700_000_050.0)
