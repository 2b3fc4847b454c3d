"""Shared fixtures: the bundled digits files, a small trained MLP, real servers on loopback."""

from __future__ import annotations

import signal
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from edgecloud.cloud_gateway.app import GatewayApp
from edgecloud.cloud_gateway.settings import GatewaySettings
from edgecloud.edge_agent.app import AgentApp
from edgecloud.edge_agent.settings import AgentSettings
from edgecloud.examples.digits import write_example
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

TASK = "digits"

pytest_plugins = ["s3_server"]
"""The S3 server fixtures (s3_endpoint, bucket), for the tests that ask for them."""


@pytest.fixture(scope="session", autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Processes started without --data-dir keep their state in the test run's temp folder."""
    home = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled digits example written to a folder once per test run."""
    out = tmp_path_factory.mktemp("digits")
    write_example(out)
    return out


@pytest.fixture(scope="session")
def digits_test(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The digits test split (X float32 [n, 64], y int64 [n])."""
    with np.load(digits_dir / "test.npz") as data:
        return data["X"], data["y"]


@pytest.fixture(scope="session")
def mlp(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scikit-learn MLP (MatMul-based once converted) trained on the calibration split."""
    pytest.importorskip("sklearn")
    pytest.importorskip("skl2onnx")
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    with np.load(digits_dir / "calibration.npz") as data:
        X, y = data["X"], data["y"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)
        classifier.fit(X, y)
        model = convert_sklearn(
            classifier,
            initial_types=[("pixels", FloatTensorType([None, 64]))],
            options={id(classifier): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def onnx_reference(digits_dir: Path) -> Callable[[str, np.ndarray], np.ndarray]:
    """Run a bundled model directly with onnxruntime (the ground truth)."""
    sessions = {
        name: ort.InferenceSession(str(digits_dir / f"{name}.onnx"),
                                   providers=["CPUExecutionProvider"])
        for name in ("edge", "cloud")
    }

    def run(which: str, x: np.ndarray) -> np.ndarray:
        return sessions[which].run(None, {"pixels": x})[0]

    return run


GatewayFactory = Callable[..., Awaitable[GatewayApp]]
AgentFactory = Callable[..., Awaitable[AgentApp]]


@pytest.fixture
async def start_gateway(tmp_path: Path, digits_dir: Path) -> AsyncIterator[GatewayFactory]:
    """Start real gateways on 127.0.0.1 (port 0 unless given); all stopped at teardown."""
    apps: list[GatewayApp] = []

    async def start(listen: str = "127.0.0.1:0", **overrides) -> GatewayApp:
        fields = {
            "listen": listen,
            "data_dir": tmp_path / f"gateway-{len(apps)}",
            "models": {TASK: digits_dir / "cloud.onnx"},
            "drain_grace_s": 1.0,
            **overrides,
        }
        app = GatewayApp(GatewaySettings(**fields))
        apps.append(app)
        await app.start()
        return app

    yield start
    for app in apps:
        await app.stop(grace_s=0.5)


@pytest.fixture
async def start_agent(tmp_path: Path, digits_dir: Path) -> AsyncIterator[AgentFactory]:
    """Start real agents on 127.0.0.1:0; all stopped at teardown."""
    apps: list[AgentApp] = []

    async def start(gateway: str | None, **overrides) -> AgentApp:
        fields = {
            "listen": "127.0.0.1:0",
            "gateway": gateway,
            "data_dir": tmp_path / f"agent-{len(apps)}",
            "models": {TASK: digits_dir / "edge.onnx"},
            "policies": [digits_dir / "policy.yaml"],
            "agent_id": f"test-agent-{len(apps)}",
            "shadow_seed": 0,
            **overrides,
        }
        app = AgentApp(AgentSettings(**fields))
        apps.append(app)
        await app.start()
        return app

    yield start
    for app in apps:
        await app.stop(grace_s=0.5)


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[str], pb_grpc.GRPCInferenceServiceStub]]:
    """Open real v2 client channels to addresses; all closed at teardown."""
    opened: list[grpc.aio.Channel] = []

    def stub(address: str) -> pb_grpc.GRPCInferenceServiceStub:
        channel = grpc.aio.insecure_channel(address)
        opened.append(channel)
        return pb_grpc.GRPCInferenceServiceStub(channel)

    yield stub
    for channel in opened:
        await channel.close()


@pytest.fixture
async def processes():
    """Processes started by a test; any still running are killed at teardown."""
    started: list = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            await process.stop(signal.SIGKILL)
