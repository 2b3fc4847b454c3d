"""Live policy changes from files: edit the policy, the agent follows.

The watcher polls each ``--policy`` file's modification time and size; when
one changes it parses the new document and swaps it into its task like a
fleet-delivered policy. A file that does not parse, or names another task,
is logged and the running policy stays.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from edgecloud.core.errors import EdgecloudError
from edgecloud.edge_agent.service import EdgeService
from edgecloud.edge_agent.tasks import read_policy_file

log = structlog.get_logger("edgecloud.agent.policy")


class PolicyWatcher:
    """Reloads policy files when they change."""

    def __init__(self, service: EdgeService, paths: list[Path], poll_s: float = 1.0) -> None:
        self._service = service
        self._paths = [Path(p) for p in paths]
        self._poll_s = poll_s
        self._seen: dict[Path, tuple[int, int] | None] = {p: self._stamp(p) for p in self._paths}
        self._task: asyncio.Task | None = None
        self.reloads = 0
        """Policies swapped in from files since start."""

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def start(self) -> None:
        """Start polling (inside the running loop)."""
        if self._paths:
            self._task = asyncio.create_task(self._run(), name="policy-watch")

    async def aclose(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            await self.check()

    async def check(self) -> None:
        """Look at every file once; reload the ones that changed."""
        for path in self._paths:
            stamp = self._stamp(path)
            if stamp == self._seen.get(path):
                continue
            self._seen[path] = stamp
            if stamp is None:
                log.warning("policy_file_missing", path=str(path))
                continue
            try:
                policy = await asyncio.to_thread(read_policy_file, path)
                task = self._service.task(policy.name)
                current = task.current
                self._service.install(current.model, policy,
                                      model_digest=current.model_digest,
                                      policy_digest=f"file:{stamp[0]}:{stamp[1]}")
            except EdgecloudError as exc:
                log.error("policy_reload_failed", path=str(path), error=exc.message)
                continue
            self.reloads += 1
            log.info("policy_reloaded", path=str(path), task=policy.name,
                     version=policy.version, threshold=policy.threshold)
