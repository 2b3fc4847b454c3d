"""Properties of the artifact manifest parser (core.artifacts), on generated documents."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from properties import PROPERTIES

from edgecloud.core.artifacts import Manifest, canonical_json, parse_manifest
from edgecloud.core.errors import InvalidInput
from edgecloud.core.tensors import V2_TO_NUMPY

VALID = {
    "kind": "model", "name": "digits", "version": "3", "target": "edge",
    "digest": "sha256:" + "0" * 64, "size": 4179, "created": "2024-06-10T12:00:00+00:00",
    "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
    "sample_input": [{"name": "pixels", "datatype": "FP32", "shape": [1, 4],
                      "data": [0.0, 0.25, 0.5, 1.0]}],
    "expected_output": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 2],
                         "data": [0.5, 0.5]}],
}
"""A model manifest as the publisher writes it."""

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
"""Any JSON value."""


def _paths(document, prefix=()):
    """Every place in a JSON document where a value could be replaced."""
    yield prefix
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _paths(value, (*prefix, index))


PATHS = [path for path in _paths(VALID) if path]


def _replaced(document, path, value):
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _parsed_or_invalid(data: bytes) -> Manifest | None:
    """parse_manifest, with the property every caller relies on: a Manifest whose sample
    tensors each give an array or InvalidInput, or InvalidInput naming the problem."""
    try:
        manifest = parse_manifest(data)
    except InvalidInput as exc:
        assert exc.message
        return None
    for tensor in (*manifest.sample_input, *manifest.expected_output):
        try:
            array = tensor.array()
        except InvalidInput as exc:
            assert tensor.name in exc.message
        else:
            assert array.dtype == V2_TO_NUMPY[tensor.datatype]
            assert list(array.shape) == tensor.shape
    return manifest


@PROPERTIES
@given(st.binary(max_size=300))
def test_any_bytes_are_a_manifest_or_invalid_input(data: bytes) -> None:
    """Bytes that are not a manifest are InvalidInput, never another exception."""
    _parsed_or_invalid(data)


@PROPERTIES
@given(JSON)
def test_any_json_is_a_manifest_or_invalid_input(document) -> None:
    """Any JSON document is a manifest or InvalidInput, never another exception."""
    _parsed_or_invalid(json.dumps(document).encode())


@PROPERTIES
@given(st.sampled_from(PATHS), JSON)
def test_a_manifest_with_one_odd_value_is_valid_or_invalid_input(path, value) -> None:
    """A publisher's manifest with any one value replaced by any JSON value is a manifest
    whose samples are usable or refused with InvalidInput, or is InvalidInput itself."""
    _parsed_or_invalid(json.dumps(_replaced(VALID, path, value)).encode())


SAMPLES = st.sampled_from([name for name in V2_TO_NUMPY if name != "BYTES"]).flatmap(
    lambda datatype: st.tuples(
        st.just(datatype),
        st.lists(st.integers(0, 3), min_size=1, max_size=3).flatmap(
            lambda shape: st.tuples(st.just(shape), st.lists(
                st.integers(0, 1), min_size=int(np.prod(shape)),
                max_size=int(np.prod(shape)))))))


@PROPERTIES
@given(st.text(alphabet="abcXYZ019_-.", min_size=1, max_size=20).filter(
    lambda s: s[0].isalnum()), st.integers(0, 2**40), SAMPLES)
def test_manifests_round_trip_through_their_canonical_bytes(name: str, size: int,
                                                            sample) -> None:
    """A valid manifest parsed from its canonical bytes is equal and canonicalizes to the
    same bytes (the bytes that are signed)."""
    datatype, (shape, data) = sample
    document = {**VALID, "name": name, "size": size,
                "sample_input": [{"name": "x", "datatype": datatype, "shape": shape,
                                  "data": data}]}
    manifest = parse_manifest(canonical_json(document))
    assert parse_manifest(manifest.canonical()) == manifest
    assert manifest.canonical() == parse_manifest(manifest.canonical()).canonical()
    assert manifest.sample_input[0].array().shape == tuple(shape)
