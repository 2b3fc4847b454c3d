"""The project installs as one import package, `edgecloud`, with its data files."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "edgecloud": "edgecloud",
    "core": "edgecloud/core",
    "router": "edgecloud/router",
    "protos": "edgecloud/protos",
    "edge_agent": "edgecloud/edge_agent",
    "cloud_gateway": "edgecloud/cloud_gateway",
}
"""Repository folder → where it lands in the installed package."""

DATA_FILES = (
    "edgecloud/protos/inference/grpc_predict_v2.proto",
    "edgecloud/protos/inference/grpc_predict_v2_pb2.py",
    "edgecloud/protos/inference/grpc_predict_v2_pb2.pyi",
    "edgecloud/protos/inference/grpc_predict_v2_pb2_grpc.py",
    "edgecloud/protos/fleet/v1/fleet.proto",
    "edgecloud/protos/fleet/v1/fleet_pb2.py",
    "edgecloud/protos/fleet/v1/fleet_pb2.pyi",
    "edgecloud/protos/fleet/v1/fleet_pb2_grpc.py",
    "edgecloud/protos/answers/v1/answers.proto",
    "edgecloud/protos/answers/v1/answers_pb2.py",
    "edgecloud/protos/answers/v1/answers_pb2.pyi",
    "edgecloud/protos/answers/v1/answers_pb2_grpc.py",
    "edgecloud/examples/digits/edge.onnx",
    "edgecloud/examples/digits/cloud.onnx",
    "edgecloud/examples/digits/policy.yaml",
    "edgecloud/examples/digits/calibration.npz",
    "edgecloud/examples/digits/test.npz",
    "edgecloud/cloud_gateway/console/static/console.html",
    "edgecloud/cloud_gateway/console/static/console.js",
    "edgecloud/cloud_gateway/console/static/console.css",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the source tree (the build writes beside its sources)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".ruff_cache")
    shutil.copytree(ROOT, src, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(tmp / "dist"), str(src)],
        check=True, capture_output=True, timeout=300,
    )
    (built,) = (tmp / "dist").glob("edgecloud-*.whl")
    return built


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_has_one_top_level_package(wheel: Path) -> None:
    """Apart from its metadata, everything in the wheel lives under `edgecloud/`."""
    tops = {name.split("/", 1)[0] for name in _names(wheel)}
    tops = {top for top in tops if not top.endswith(".dist-info")}
    assert tops == {"edgecloud"}


def test_wheel_carries_protos_stubs_and_the_example(wheel: Path) -> None:
    """The .proto contracts, their generated modules, the bundled digits example and the
    console's page ship."""
    names = set(_names(wheel))
    missing = [name for name in DATA_FILES if name not in names]
    assert not missing, missing


def test_wheel_carries_every_module_of_the_source_tree(wheel: Path) -> None:
    """Every Python module under the mapped folders is in the wheel (no package forgotten)."""
    names = set(_names(wheel))
    missing = []
    for folder, installed in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            target = f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
            if target not in names:
                missing.append(target)
    assert not missing, f"add these packages to [tool.setuptools] packages: {missing}"


def test_installed_wheel_imports_from_site_packages(wheel: Path, tmp_path: Path) -> None:
    """Installed on its own, the wheel's parts import from where it was installed."""
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    script = (
        "import edgecloud.cli, edgecloud.router, edgecloud.edge_agent.app, "
        "edgecloud.cloud_gateway.app, edgecloud.protos.fleet.v1.fleet_pb2 as f\n"
        "for m in (edgecloud.cli, edgecloud.router, edgecloud.edge_agent.app, f):\n"
        "    print(m.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-P", "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    files = out.split()
    assert len(files) == 4
    assert all(Path(f).is_relative_to(site) for f in files), files


@pytest.mark.parametrize("name", ["core", "router", "protos", "edge_agent", "cloud_gateway"])
def test_tests_do_not_see_the_working_tree(name: str) -> None:
    """The repository's folders are not importable under their own names in the test run."""
    assert importlib.util.find_spec(name) is None
