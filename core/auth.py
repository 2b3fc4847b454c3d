"""Bearer tokens with roles, checked once per call by a server interceptor.

A tokens file (YAML) names who may do what::

    operators: [TOKEN, ...]          # publish, roll out, fleet status
    agents: {TOKEN: AGENT_ID, ...}   # watch, fetch, report (as that agent only), infer

Without a tokens file the server is open (and says so in its log). Clients
send ``authorization: Bearer TOKEN`` in the call metadata.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from edgecloud.core.errors import InvalidInput

OPERATOR = "operator"
AGENT = "agent"
AUTH_KEY = "authorization"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling."""

    role: str
    agent_id: str = ""


class Tokens:
    """The tokens a server accepts."""

    def __init__(self, operators: Iterable[str], agents: dict[str, str]) -> None:
        self._operators = [t for t in operators if t]
        self._agents = dict(agents)

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """Read a tokens file; InvalidInput names the problem."""
        try:
            document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise InvalidInput(f"cannot read tokens file {path}: {exc.strerror}") from None
        except yaml.YAMLError:
            raise InvalidInput(f"tokens file {path} is not valid YAML") from None
        operators = document.get("operators") or []
        agents = document.get("agents") or {}
        if not isinstance(operators, list) or not isinstance(agents, dict):
            raise InvalidInput(f"tokens file {path}: 'operators' must be a list and "
                               "'agents' a mapping of token to agent id")
        return cls([str(t) for t in operators], {str(k): str(v) for k, v in agents.items()})

    def principal(self, token: str) -> Principal | None:
        """The principal a token stands for, compared in constant time."""
        for known in self._operators:
            if hmac.compare_digest(known, token):
                return Principal(OPERATOR)
        for known, agent_id in self._agents.items():
            if hmac.compare_digest(known, token):
                return Principal(AGENT, agent_id)
        return None


def bearer(metadata) -> str:
    """The bearer token in call metadata, or ''."""
    for key, value in metadata or ():
        if key == AUTH_KEY and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return ""


def principal_of(tokens: Tokens | None, context: grpc.aio.ServicerContext) -> Principal | None:
    """The caller, when tokens are configured (None when the server is open)."""
    if tokens is None:
        return None
    return tokens.principal(bearer(context.invocation_metadata()))


def _deny(code: grpc.StatusCode, message: str):
    async def unary(request, context):
        await context.abort(code, message)

    async def stream(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover (abort raises)

    return unary, stream


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose token lacks a role the method needs."""

    def __init__(self, tokens: Tokens, roles_for: Callable[[str], frozenset[str] | None]) -> None:
        self._tokens = tokens
        self._roles_for = roles_for

    async def intercept_service(self, continuation, handler_call_details):
        needed = self._roles_for(handler_call_details.method)
        if needed is None:
            return await continuation(handler_call_details)
        token = bearer(handler_call_details.invocation_metadata)
        who = self._tokens.principal(token) if token else None
        if who is not None and who.role in needed:
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if who is None:
            code, message = grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token"
        else:
            code = grpc.StatusCode.PERMISSION_DENIED
            message = f"the {who.role} role may not call {handler_call_details.method}"
        unary, stream = _deny(code, message)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(stream)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(unary)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata that carries ``token`` (empty when None)."""
    return ((AUTH_KEY, f"Bearer {token}"),) if token else ()


def read_token(path: Path | None) -> str | None:
    """A token from a file (first line), or None."""
    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, IndexError):
        raise InvalidInput(f"cannot read a token from {path}") from None
    if not token:
        raise InvalidInput(f"token file {path} is empty")
    return token
