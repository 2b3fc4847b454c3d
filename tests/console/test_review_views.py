"""What the review page is sent for each kind of input: pictures, colour pictures, tables."""

from __future__ import annotations

import numpy as np
import pytest

from edgecloud.cloud_gateway.console.views import image_of, review_entry
from edgecloud.cloud_gateway.review import review_row
from edgecloud.core.hard_examples import HardExample, InputRow, KeptExample


@pytest.mark.parametrize(("shape", "channels_last"), [
    ((1, 3, 5, 4), False), ((1, 5, 4, 3), True), ((3, 5, 4), False)])
def test_colour_pictures_are_drawn_in_rgb(shape, channels_last):
    """[C, H, W] and [H, W, C] rows with 3 channels are drawn as 5x4 RGB pictures, values
    pixel by pixel (channels last); uint8 rows say their scale is 255."""
    values = np.arange(60, dtype=np.uint8).reshape(shape)
    image = image_of(values)
    assert (image["rows"], image["cols"], image["channels"], image["scale"]) == (5, 4, 3, 255.0)
    hwc = values.reshape(shape[-3:]) if channels_last else np.moveaxis(
        values.reshape(shape[-3:]), 0, -1)
    assert image["values"] == hwc.astype(float).ravel().tolist()
    assert image_of(values.astype(np.float32))["scale"] is None


def _kept(name: str, array: np.ndarray) -> KeptExample:
    example = HardExample("digits", "1", "1", (InputRow.of(name, array),),
                          (0.1, 0.7, 0.2), (0.5, 0.2, 0.3), "1", "cloud", "review", 0.7, 100.0,
                          answer_id="ab" * 16, answer_row=0)
    return KeptExample.new("agent-0", 1, example)


def test_a_review_row_shows_a_picture_or_a_table_and_both_answers():
    """An 8x8 row is drawn; a 10-value sensor row comes as a table; both models' top
    classes and scores, the class count and the expiry are given."""
    picture = review_entry(review_row(_kept("pixels", np.ones((1, 64), np.float32)), 60.0))
    assert picture["inputs"][0]["image"]["rows"] == 8 and picture["inputs"][0]["table"] is None
    assert picture["edge"]["class"] == 1 and picture["cloud"]["class"] == 0
    assert picture["classes"] == 3 and picture["expires_at"] == 160.0
    assert picture["answer_id"] == "ab" * 16
    sensor = review_entry(review_row(_kept("readings", np.arange(10, dtype=np.float32)[None]),
                                     60.0))
    assert sensor["inputs"][0]["image"] is None
    assert sensor["inputs"][0]["table"] == list(range(10))
