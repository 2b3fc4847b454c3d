"""The gateway's data plane: validate, batch, run, split.

Transports (the v2 gRPC servicer) convert requests and await
:meth:`GatewayService.infer`; nothing here imports grpc.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import structlog

from edgecloud.cloud_gateway.batching import BatchingConfig, DynamicBatcher
from edgecloud.cloud_gateway.metrics import GatewayMetrics
from edgecloud.core import __version__
from edgecloud.core.errors import DeadlineExceeded, NotFound, Unavailable
from edgecloud.core.model import OnnxModel, RunTimer
from edgecloud.core.tensors import (
    InferRequest,
    InferResponse,
    ModelInfo,
    requested_outputs,
)

log = structlog.get_logger("edgecloud.gateway")

SERVER_NAME = "edgecloud-gateway"


def _batchable(model: OnnxModel) -> bool:
    """Rows can be stacked when every input and output has a free first dimension."""
    specs = (*model.inputs, *model.outputs)
    return all(spec.shape and spec.shape[0] < 0 for spec in specs)


class _Served:
    """One loaded model version and its batcher."""

    def __init__(self, model: OnnxModel, batcher: DynamicBatcher | None,
                 executor: ThreadPoolExecutor) -> None:
        self.model = model
        self.batcher = batcher
        self.executor = executor

    async def run(self, inputs: dict[str, np.ndarray], deadline: float | None) -> dict:
        if self.batcher is not None:
            return await self.batcher.submit(inputs, deadline)
        return await self.model.run_async(inputs, executor=self.executor)


class GatewayService:
    """Serves a set of ONNX models with per-model dynamic batching."""

    server_name = SERVER_NAME
    server_version = __version__

    def __init__(
        self,
        batching: BatchingConfig | Callable[[str], BatchingConfig],
        *,
        executor_threads: int = 4,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._batching = batching if callable(batching) else (lambda _name, b=batching: b)
        """Model name -> the limits of its batcher."""
        self._executor = ThreadPoolExecutor(executor_threads, thread_name_prefix="onnx")
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._models: dict[str, _Served] = {}
        self._candidates: dict[str, tuple[_Served, float]] = {}
        """Name -> candidate version and the percentage of requests it answers."""
        self._retiring: set[asyncio.Task] = set()
        self._ready = False

    @property
    def clock(self) -> Callable[[], float]:
        """The clock deadlines passed to :meth:`infer` are measured on."""
        return self._clock

    def _serve(self, model: OnnxModel) -> _Served:
        batcher = None
        if _batchable(model):
            timer = RunTimer(model)
            executor = self._executor

            async def run_batch(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return await asyncio.get_running_loop().run_in_executor(
                    executor, timer.run, inputs)

            batcher = DynamicBatcher(
                model.name,
                run_batch,
                self._batching(model.name),
                clock=self._clock,
                on_batch=self._metrics.batch_observer(model.name) if self._metrics else None,
                run_inline=timer.run_if_below,
            )
            batcher.start()
        return _Served(model, batcher, self._executor)

    def _retire(self, old: _Served | None) -> None:
        if old is not None and old.batcher is not None:
            # The old version finishes what it has queued, then stops.
            task = asyncio.get_running_loop().create_task(old.batcher.aclose())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def add_model(self, model: OnnxModel) -> None:
        """Serve ``model`` under its name; replaces a previous version once it is loaded.

        Promoting the candidate (the same model object) keeps its batcher.
        """
        candidate = self._candidates.get(model.name)
        if candidate is not None and candidate[0].model is model:
            served = self._candidates.pop(model.name)[0]
        else:
            served = self._serve(model)
        old = self._models.get(model.name)
        self._models[model.name] = served
        log.info("model_serving", model=model.name, version=model.version,
                 batched=served.batcher is not None)
        self._retire(old)

    def set_candidate(self, model: OnnxModel, percent: float) -> None:
        """Answer ``percent`` of the requests for ``model.name`` (that name no version) with
        ``model``; the stable version answers the rest."""
        if model.name not in self._models:
            raise NotFound(f"model {model.name!r} has no stable version to share requests with")
        old = self._candidates.get(model.name)
        if old is not None and old[0].model is model:
            self._candidates[model.name] = (old[0], percent)
            return
        self._candidates[model.name] = (self._serve(model), percent)
        log.info("candidate_serving", model=model.name, version=model.version, percent=percent)
        if old is not None:
            self._retire(old[0])

    def drop_candidate(self, name: str) -> None:
        """Stop answering requests with the candidate of ``name`` (if any)."""
        old = self._candidates.pop(name, None)
        if old is not None:
            log.info("candidate_dropped", model=name, version=old[0].model.version)
            self._retire(old[0])

    def serving(self) -> dict[str, dict]:
        """Per model: the stable version, and the candidate with its share of requests."""
        out = {}
        for name, served in sorted(self._models.items()):
            candidate = self._candidates.get(name)
            out[name] = {"version": served.model.version,
                         "candidate": candidate[0].model.version if candidate else None,
                         "percent": candidate[1] if candidate else 0.0}
        return out

    def set_ready(self, ready: bool) -> None:
        """Readiness as reported by ServerReady (false while draining)."""
        self._ready = ready

    @property
    def ready(self) -> bool:
        """True when the server accepts inference requests."""
        return self._ready

    def model_names(self) -> list[str]:
        """Names of the served models."""
        return sorted(self._models)

    def _served(self, name: str, version: str = "") -> _Served:
        served = self._models.get(name)
        if served is None:
            raise NotFound(f"model {name!r} is not served here")
        if version and version != served.model.version:
            candidate = self._candidates.get(name)
            if candidate is not None and candidate[0].model.version == version:
                return candidate[0]
            raise NotFound(
                f"model {name!r} version {version!r} is not served here "
                f"(serving {served.model.version!r})"
            )
        return served

    def _pick(self, name: str, version: str) -> _Served:
        """The version that answers a request: as asked, else the candidate for its share."""
        if not version:
            candidate = self._candidates.get(name)
            if candidate is not None and self._rng.random() * 100.0 < candidate[1]:
                return candidate[0]
        return self._served(name, version)

    def served_model(self, name: str) -> OnnxModel | None:
        """The stable model serving ``name``, or None."""
        served = self._models.get(name)
        return served.model if served is not None else None

    def served_version(self, name: str) -> str | None:
        """Version of ``name`` being served, or None."""
        served = self._models.get(name)
        return served.model.version if served is not None else None

    def queued_rows(self, name: str) -> int:
        """Rows of ``name`` waiting for a batch."""
        batcher = self._served(name).batcher
        return batcher.queued_rows if batcher is not None else 0

    def model_ready(self, name: str, version: str = "") -> bool:
        """True when the model (and version, if given) is loaded and serving."""
        try:
            self._served(name, version)
        except NotFound:
            return False
        return self._ready

    def metadata(self, name: str, version: str = "") -> ModelInfo:
        """Signature of a served model."""
        served = self._served(name, version)
        model = served.model
        candidate = self._candidates.get(name)
        versions = (model.version,)
        if not version and candidate is not None:
            versions += (candidate[0].model.version,)
        return ModelInfo(model.name, versions, model.platform, model.inputs,
                         model.outputs,
                         served.batcher.config.max_batch_size if served.batcher is not None
                         else 0, execution_provider=model.providers[0])

    async def infer(
        self, request: InferRequest, time_left_s: float | None = None, request_id: str = ""
    ) -> InferResponse:
        """Validate and run one request through the model's batcher.

        ``time_left_s`` is the caller's remaining deadline; a request still
        queued when it runs out is dropped before compute. ``request_id`` is
        the caller's id for logs.
        """
        deadline = None if time_left_s is None else self._clock() + time_left_s
        if not self._ready:
            raise Unavailable("gateway is not ready (starting or draining)")
        if time_left_s is not None and time_left_s <= 0:
            raise DeadlineExceeded("deadline passed before the request reached a model")
        served = self._pick(request.model_name, request.model_version)
        model = served.model
        inputs = model.validate_inputs(request.inputs)
        wanted = requested_outputs(request.requested_outputs,
                                   [spec.name for spec in model.outputs], f"model {model.name!r}")
        started = self._clock()
        outputs = await served.run(inputs, deadline)
        if self._metrics is not None:
            self._metrics.observe_request(model.name, self._clock() - started,
                                          _rows(inputs))
        return InferResponse(
            model_name=model.name,
            model_version=model.version,
            id=request.id,
            outputs={name: outputs[name] for name in wanted},
        )

    async def aclose(self) -> None:
        """Stop every batcher and the worker threads."""
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for served in [*self._models.values(), *(c for c, _ in self._candidates.values())]:
            if served.batcher is not None:
                await served.batcher.aclose()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1

