"""The seam between the agent's domain and the cloud.

:class:`CloudClient` is the one protocol the domain calls; the gRPC
implementation lives in ``edge_agent.grpc.cloud_client`` and tests may plug
in any object with the same methods.
"""

from __future__ import annotations

from typing import Protocol

from edgecloud.core.tensors import InferRequest, InferResponse, ModelInfo


class CloudClient(Protocol):
    """Asks the cloud gateway to answer rows the edge model is unsure of."""

    async def infer(
        self, request: InferRequest, timeout_s: float, request_id: str
    ) -> InferResponse:
        """Run ``request`` on the gateway within ``timeout_s``.

        Raises a :class:`~core.errors.EdgecloudError` subclass on failure.
        """
        ...

    async def metadata(self, model_name: str, timeout_s: float) -> ModelInfo:
        """The gateway's signature of ``model_name``; NotFound when it serves no such model."""
        ...

    async def reconnected(self) -> None:
        """Return once the connection to the gateway is up again after it was down.

        The first call remembers whether the connection is up now and waits
        for the next time it comes up after being down; each later call waits
        for the next such reconnection. Cancelling a call is safe.
        """
        ...

    async def aclose(self) -> None:
        """Close the connection."""
        ...
