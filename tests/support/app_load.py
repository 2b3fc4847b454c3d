"""A device app for load tests: one-row requests at a steady rate through an agent."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from edgecloud.core import codec
from edgecloud.core.tensors import InferRequest
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc

DEADLINE_S = 0.5
"""Every app request's gRPC deadline: its latency budget."""
RATE = 100
"""App requests per second."""


class App:
    """A device app: one-row requests at a steady rate, each with the same deadline."""

    def __init__(self, address: str, rows: np.ndarray, **parameters) -> None:
        self.address = address
        self.rows = rows
        self.parameters = parameters
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.routes: list[str] = []

    async def run(self, seconds: float) -> None:
        """Send RATE requests a second for ``seconds``, concurrently, none waiting on another."""
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            calls = []
            start = time.monotonic()
            for i in range(int(seconds * RATE)):
                await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
                row = self.rows[i % len(self.rows)][np.newaxis]
                calls.append(asyncio.create_task(self._one(stub, row)))
            await asyncio.gather(*calls)

    async def _one(self, stub, row: np.ndarray) -> None:
        request = codec.encode_infer_request(InferRequest(
            model_name="digits", inputs={"pixels": row}, parameters=self.parameters))
        sent = time.monotonic()
        try:
            reply = await stub.ModelInfer(request, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            self.failures.append(f"{exc.code().name}: {exc.details()}")
            return
        self.latencies.append(time.monotonic() - sent)
        self.routes.append(codec.decode_infer_response(reply).parameters["route"])

    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99))
