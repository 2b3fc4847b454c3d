"""Who is calling and what they may do: bearer tokens, certificate identities, roles.

A tokens file (YAML) names who may do what::

    operators: [TOKEN, ...]          # publish, roll out, export, fleet status
    viewers: [TOKEN, ...]            # fleet status and model listings, read-only
    reviewers: [TOKEN, ...]          # the review queue: read it and label its rows
    agents: {TOKEN: AGENT_ID, ...}   # watch, fetch, report (as that agent only), infer

(``operators``, ``viewers`` and ``reviewers`` may also map each token to a name shown in
the logs.) A TOKEN is the token itself, printable ASCII without spaces and at
least :data:`MIN_TOKEN_LENGTH` characters long, or its hash,
``sha256:<64 hex digits>`` (``edgecloud tokens hash`` prints it), so the file
need not hold a single secret. A file with anything else (an empty or null
item, a number, a token that is too short, the same token twice, an unknown
key) is refused at load with every problem named. The server keeps only the
hashes and looks up the hash of the token a call presents: nothing is
compared with the secret itself, and any text a caller sends (non-ASCII
included) is simply an unknown token.

With mutual TLS a client certificate may name its holder in a URI subject
alternative name: ``edgecloud://agent/AGENT_ID``, ``edgecloud://operator/NAME``
or ``edgecloud://viewer/NAME``. The common name is never read: an agent's
certificate cannot act as another agent or as an operator, whatever its
subject says. A call that presents both a certificate identity and a token
must present the same role (and the same agent id); a certificate without an
edgecloud identity proves only that the CA signed it, and the call then needs
a token.

Clients send ``authorization: Bearer TOKEN`` in the call metadata. The
servicers read the caller of the current call with :func:`current_principal`.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
import yaml

from edgecloud.core.errors import InvalidInput, PermissionDenied, Unauthenticated
from edgecloud.core.hard_examples import AGENT_ID_RE

log = structlog.get_logger("edgecloud.auth")

OPERATOR = "operator"
AGENT = "agent"
VIEWER = "viewer"
REVIEWER = "reviewer"
ROLES = (OPERATOR, VIEWER, REVIEWER, AGENT)
AUTH_KEY = "authorization"
MIN_TOKEN_LENGTH = 16
"""Shortest token accepted (``edgecloud tokens generate`` makes 43-character ones)."""
TOKEN_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")
IDENTITY_URI = "edgecloud://"
"""Prefix of the URI SAN that names a certificate's holder: ``edgecloud://ROLE/NAME``."""
_FILE_KEYS = {"operators": OPERATOR, "viewers": VIEWER, "reviewers": REVIEWER,
              "agents": AGENT}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role, the agent id (agents) or a name, and how it was shown."""

    role: str
    name: str = ""
    via: str = "token"
    """``token`` or ``certificate``."""

    @property
    def agent_id(self) -> str:
        """The agent this principal speaks for ('' unless the role is ``agent``)."""
        return self.name if self.role == AGENT else ""

    def describe(self) -> str:
        """``agent cam-7``, ``operator alice``, ``operator`` (for messages)."""
        return f"{self.role} {self.name}" if self.name else self.role


def check_token(token: object, where: str = "token") -> str:
    """``token`` when it may be a bearer token; InvalidInput saying why not."""
    if token is None:
        raise InvalidInput(f"{where} is empty (null)")
    if not isinstance(token, str):
        raise InvalidInput(f"{where} is a {type(token).__name__}, not text (quote it)")
    if not token:
        raise InvalidInput(f"{where} is empty")
    if not _TOKEN_RE.match(token):
        raise InvalidInput(f"{where} must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_LENGTH:
        raise InvalidInput(f"{where} is {len(token)} characters long; tokens need at least "
                           f"{MIN_TOKEN_LENGTH} (edgecloud tokens generate makes one)")
    return token


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of a valid token (what a tokens file may hold instead of it)."""
    return "sha256:" + hashlib.sha256(check_token(token).encode("ascii")).hexdigest()


def generate_token() -> str:
    """A new random token (256 bits, URL-safe base64)."""
    return secrets.token_urlsafe(32)


def _stored_hash(entry: object, where: str) -> str:
    """The hash a tokens-file entry stands for (it is a hash, or a token to hash)."""
    if isinstance(entry, str) and TOKEN_HASH_RE.match(entry):
        return entry
    return hash_token(check_token(entry, where))


class Tokens:
    """The tokens a server accepts, kept as hashes only."""

    def __init__(self, operators: Iterable[str] | Mapping[str, str] = (),
                 agents: Mapping[str, str] | None = None,
                 viewers: Iterable[str] | Mapping[str, str] = (),
                 reviewers: Iterable[str] | Mapping[str, str] = ()) -> None:
        """Tokens (or ``sha256:`` hashes) by role; InvalidInput names every problem."""
        self._by_hash: dict[str, Principal] = {}
        problems: list[str] = []
        for key, entries in (("operators", operators), ("viewers", viewers),
                             ("reviewers", reviewers), ("agents", agents or {})):
            self._add(key, entries, problems)
        if problems:
            raise InvalidInput("; ".join(problems))

    def _add(self, key: str, entries, problems: list[str]) -> None:
        role = _FILE_KEYS[key]
        if isinstance(entries, Mapping):
            items = list(entries.items())
        elif role != AGENT and isinstance(entries, list | tuple):
            items = [(entry, "") for entry in entries]
        else:
            shape = "a mapping of token to agent id" if role == AGENT else \
                "a list of tokens (or a mapping of token to name)"
            problems.append(f"'{key}' must be {shape}")
            return
        for number, (entry, name) in enumerate(items, 1):
            where = f"{key} item {number}"
            try:
                digest = _stored_hash(entry, where)
            except InvalidInput as exc:
                problems.append(exc.message)
                continue
            if role == AGENT and not (isinstance(name, str) and AGENT_ID_RE.match(name)):
                problems.append(f"{where}: agent id {name!r} is not valid (letters, digits "
                                "and _.:@-, at most 128)")
                continue
            if role != AGENT and not isinstance(name, str):
                problems.append(f"{where}: the name must be text")
                continue
            if digest in self._by_hash:
                problems.append(f"{where}: the same token is already given to the "
                                f"{self._by_hash[digest].describe()}")
                continue
            self._by_hash[digest] = Principal(role, name)

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """Read a tokens file; InvalidInput names the file and every problem in it."""
        try:
            document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidInput(f"cannot read tokens file {path}: {exc.strerror}") from None
        except (yaml.YAMLError, UnicodeDecodeError):
            raise InvalidInput(f"tokens file {path} is not valid YAML") from None
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise InvalidInput(f"tokens file {path}: expected a mapping with operators, "
                               "viewers and agents")
        unknown = sorted(str(k) for k in document if k not in _FILE_KEYS)
        if unknown:
            raise InvalidInput(f"tokens file {path}: unknown key(s) {', '.join(unknown)} "
                               "(expected operators, viewers, reviewers, agents)")
        try:
            return cls(**{key: document.get(key) or ({} if key == "agents" else [])
                          for key in _FILE_KEYS})
        except InvalidInput as exc:
            raise InvalidInput(f"tokens file {path}: {exc.message}") from None

    def __len__(self) -> int:
        return len(self._by_hash)

    def principal(self, token: str) -> Principal | None:
        """The principal a presented token stands for, or None (never raises).

        The lookup is by the token's SHA-256: timing can tell an attacker about
        hashes at most, which says nothing about any token.
        """
        if not isinstance(token, str) or not _TOKEN_RE.match(token) or \
                len(token) < MIN_TOKEN_LENGTH:
            return None
        return self._by_hash.get("sha256:" + hashlib.sha256(token.encode("ascii")).hexdigest())


def bearer(metadata) -> str:
    """The bearer token in call metadata, or ''."""
    for key, value in metadata or ():
        if key == AUTH_KEY and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return ""


def certificate_principal(auth_context: Mapping[str, Iterable[bytes]]) -> Principal | None:
    """The identity a verified client certificate names, from its URI SAN; None when it
    names none. Unauthenticated when it names several or a malformed one."""
    uris = [u.decode("utf-8", "replace") for u in auth_context.get("peer_uri") or ()]
    if not uris:  # gRPC builds before peer_uri: every SAN, of any type
        uris = [u.decode("utf-8", "replace")
                for u in auth_context.get("x509_subject_alternative_name") or ()]
    ours = sorted({u for u in uris if u.startswith(IDENTITY_URI)})
    if not ours:
        return None
    if len(ours) > 1:
        raise Unauthenticated(f"the client certificate names {len(ours)} edgecloud "
                              f"identities ({', '.join(ours)}); it must name one")
    role, _, name = ours[0][len(IDENTITY_URI):].partition("/")
    if role not in ROLES or not AGENT_ID_RE.match(name):
        raise Unauthenticated(f"the client certificate's identity {ours[0]!r} is not "
                              "edgecloud://ROLE/NAME with ROLE agent, operator, viewer or reviewer")
    return Principal(role, name, "certificate")


class Authenticator:
    """Turns a call's credentials (token, client certificate) into a :class:`Principal`."""

    def __init__(self, tokens: Tokens | None, certificates: bool) -> None:
        """``certificates``: the server verifies client certificates (mutual TLS), so the
        identities they name can be trusted."""
        self.tokens = tokens
        self.certificates = certificates

    def identify(self, metadata, auth_context: Mapping[str, Iterable[bytes]]) -> Principal:
        """The caller; Unauthenticated or PermissionDenied saying what is wrong."""
        by_cert = certificate_principal(auth_context) if self.certificates else None
        token = bearer(metadata)
        by_token = None
        if token and self.tokens is not None:
            by_token = self.tokens.principal(token)
            if by_token is None:
                raise Unauthenticated("unknown bearer token")
        if by_cert is not None and by_token is not None:
            if (by_cert.role, by_cert.agent_id) != (by_token.role, by_token.agent_id):
                raise PermissionDenied(f"the client certificate names the "
                                       f"{by_cert.describe()} but the token belongs to the "
                                       f"{by_token.describe()}")
            return by_cert
        who = by_cert or by_token
        if who is None:
            if self.certificates and self.tokens is not None:
                detail = ("no bearer token, and the client certificate names no edgecloud "
                          "identity (URI SAN edgecloud://ROLE/NAME)")
            elif self.certificates:
                detail = ("the client certificate names no edgecloud identity (URI SAN "
                          "edgecloud://agent/AGENT_ID, edgecloud://operator/NAME or "
                          "edgecloud://viewer/NAME)")
            else:
                detail = "missing bearer token"
            raise Unauthenticated(detail)
        return who


_CALLER: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "edgecloud_caller", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being served (None on an open server)."""
    return _CALLER.get()


@contextlib.contextmanager
def acting_as(who: Principal | None) -> Iterator[None]:
    """Within the block, :func:`current_principal` is ``who`` (for transports other than
    gRPC, whose interceptor sets it per call)."""
    token = _CALLER.set(who)
    try:
        yield
    finally:
        _CALLER.reset(token)


def _guard(handler, authenticator: Authenticator, needed: frozenset[str], method: str):
    """``handler`` with its behaviour run only for callers holding one of ``needed``.

    Each RPC runs in a task of its own, so the caller set here stays with the call.
    """

    async def admit(context) -> None:
        try:
            who = authenticator.identify(context.invocation_metadata(), context.auth_context())
            if who.role not in needed:
                raise PermissionDenied(f"the {who.role} role may not call {method}")
        except (Unauthenticated, PermissionDenied) as exc:
            code = (grpc.StatusCode.UNAUTHENTICATED if isinstance(exc, Unauthenticated)
                    else grpc.StatusCode.PERMISSION_DENIED)
            log.warning("call_refused", method=method, code=code.name, problem=exc.message,
                        peer=context.peer())
            await context.abort(code, exc.message)
        _CALLER.set(who)

    def wrap(behavior):
        if behavior is None:
            return None
        if inspect.isasyncgenfunction(behavior):
            async def stream(request, context):
                await admit(context)
                async for item in behavior(request, context):
                    yield item
            return stream

        async def unary(request, context):
            await admit(context)
            return await behavior(request, context)
        return unary

    return handler._replace(
        unary_unary=wrap(handler.unary_unary), unary_stream=wrap(handler.unary_stream),
        stream_unary=wrap(handler.stream_unary), stream_stream=wrap(handler.stream_stream))


MAX_GUARDED_METHODS = 256
"""Guarded handlers an interceptor keeps (the methods a server serves; callers may name
methods that do not exist, which get no handler and are not kept)."""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose caller lacks a role the method needs (logged once each)."""

    def __init__(self, authenticator: Authenticator,
                 roles_for: Callable[[str], frozenset[str] | None]) -> None:
        self._authenticator = authenticator
        self._roles_for = roles_for
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        """Method -> its handler and the guarded one, built once (not once per call)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        kept = self._guarded.get(method)
        if kept is not None and kept[0] is handler:
            return kept[1]
        needed = self._roles_for(method)
        if handler is None or needed is None:
            return handler
        guarded = _guard(handler, self._authenticator, needed, method)
        if len(self._guarded) < MAX_GUARDED_METHODS:
            self._guarded[method] = (handler, guarded)
        return guarded


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata that carries ``token`` (empty when None)."""
    return ((AUTH_KEY, f"Bearer {token}"),) if token else ()


def read_token(path: Path | None) -> str | None:
    """A token from a file (first line), or None; InvalidInput when it is not one."""
    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError):
        raise InvalidInput(f"cannot read a token from {path}") from None
    if not token:
        raise InvalidInput(f"token file {path} is empty")
    return check_token(token, f"the token in {path}")


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
