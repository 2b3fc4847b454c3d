"""Tokens files, token hashes and certificate identities."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.core.auth import (
    AGENT,
    MIN_TOKEN_LENGTH,
    OPERATOR,
    VIEWER,
    Authenticator,
    Principal,
    Tokens,
    call_metadata,
    certificate_principal,
    generate_token,
    hash_token,
    is_loopback,
    read_token,
)
from edgecloud.core.errors import InvalidInput, PermissionDenied, Unauthenticated

OP = "op-token-0123456789"
AG = "ag-token-0123456789"
VW = "vw-token-0123456789"


def _load(tmp_path: Path, text: str) -> Tokens:
    path = tmp_path / "tokens.yaml"
    path.write_text(text, encoding="utf-8")
    return Tokens.load(path)


def test_roles_come_from_the_file_and_unknown_tokens_get_none(tmp_path) -> None:
    """Each listed token stands for its role (agents with their id); anything else is None."""
    tokens = _load(tmp_path, f"operators: [{OP}]\nviewers: [{VW}]\nagents: {{{AG}: cam-7}}\n")
    assert tokens.principal(OP) == Principal(OPERATOR)
    assert tokens.principal(VW) == Principal(VIEWER)
    assert tokens.principal(AG) == Principal(AGENT, "cam-7")
    assert tokens.principal(AG).agent_id == "cam-7"
    assert tokens.principal("None") is None and tokens.principal("") is None


@pytest.mark.parametrize(("text", "problem"), [
    ("operators: [null]\n", "operators item 1 is empty (null)"),
    ("operators: [~, real-token-0123456789]\n", "operators item 1 is empty (null)"),
    ("operators: ['']\n", "operators item 1 is empty"),
    ("operators: [12345678901234567890]\n", "operators item 1 is a int, not text"),
    ("operators: [short]\n", "operators item 1 is 5 characters long"),
    ("operators: ['with space 0123456789']\n", "printable ASCII without spaces"),
    ("operators: ['tökén-0123456789-abc']\n", "printable ASCII without spaces"),
    (f"agents: {{{AG}: null}}\n", "agents item 1: agent id None is not valid"),
    ("agents: {null: cam-7}\n", "agents item 1 is empty (null)"),
    (f"agents: [{AG}]\n", "'agents' must be a mapping of token to agent id"),
    (f"operators: {OP}\n", "'operators' must be a list of tokens"),
    (f"operators: [{OP}]\nagents: {{{OP}: cam-7}}\n", "already given to the operator"),
    (f"operator: [{OP}]\n", "unknown key(s) operator"),
    ("- just a list\n", "expected a mapping"),
    ("operators: [a\n", "is not valid YAML"),
])
def test_bad_tokens_files_are_refused_at_load_naming_the_problem(tmp_path, text,
                                                                 problem) -> None:
    """Null, empty, non-text, short, non-ASCII or repeated tokens, bad agent ids and unknown
    keys refuse the whole file with a message naming the item (a null never becomes the
    token "None")."""
    with pytest.raises(InvalidInput) as err:
        _load(tmp_path, text)
    assert problem in err.value.message
    assert "tokens.yaml" in err.value.message


def test_the_file_may_hold_hashes_instead_of_tokens(tmp_path) -> None:
    """A ``sha256:`` entry stands for the token it hashes; the token itself is not needed."""
    tokens = _load(tmp_path, f"operators: ['{hash_token(OP)}']\n"
                             f"agents: {{'{hash_token(AG)}': cam-7}}\n")
    assert tokens.principal(OP) == Principal(OPERATOR)
    assert tokens.principal(AG) == Principal(AGENT, "cam-7")
    assert tokens.principal(hash_token(OP)) is None  # the hash is not a token


def test_presented_tokens_never_raise() -> None:
    """Non-ASCII, control characters, empty and very long tokens are unknown, not errors."""
    tokens = Tokens([OP])
    for presented in ("tökén-0123456789-abc", "\x00" * 20, "", "x" * 100_000, OP + "\n"):
        assert tokens.principal(presented) is None


def test_generated_tokens_are_accepted_and_read_back(tmp_path) -> None:
    """A generated token is long enough, hashes, and reads back from a token file."""
    token = generate_token()
    assert len(token) >= MIN_TOKEN_LENGTH
    assert Tokens([hash_token(token)]).principal(token) == Principal(OPERATOR)
    (tmp_path / "t").write_text(token + "\n")
    assert read_token(tmp_path / "t") == token
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(InvalidInput, match="at least"):
        read_token(tmp_path / "short")


_TEXT = st.one_of(st.none(), st.integers(), st.booleans(), st.text(max_size=40),
                  st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e),
                          min_size=MIN_TOKEN_LENGTH, max_size=40))
_ENTRIES = st.one_of(_TEXT, st.lists(_TEXT, max_size=4),
                     st.dictionaries(st.text(max_size=30), _TEXT, max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.one_of(_ENTRIES, st.dictionaries(
    st.sampled_from(["operators", "viewers", "agents", "other"]), _ENTRIES, max_size=4)))
def test_any_document_loads_or_is_refused_with_invalid_input(tmp_path_factory, document) -> None:
    """Whatever YAML a tokens file holds, loading it gives Tokens or InvalidInput, and a
    loaded file never lets an empty, short or "None" token in."""
    path = tmp_path_factory.mktemp("tokens") / "tokens.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    try:
        tokens = Tokens.load(path)
    except InvalidInput:
        return
    for presented in ("None", "", "null", "0", "False"):
        assert tokens.principal(presented) is None


_TOKEN = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e),
                 min_size=MIN_TOKEN_LENGTH, max_size=64)


@settings(max_examples=200, deadline=None)
@given(st.lists(_TOKEN, min_size=1, max_size=6, unique=True), st.data())
def test_valid_files_round_trip_through_hashes(tmp_path_factory, secrets_, data) -> None:
    """Every token of a valid file, written as itself or as its hash, stands for its role
    and agent, and no other text (of any alphabet) stands for anyone."""
    roles = data.draw(st.lists(st.sampled_from([OPERATOR, VIEWER, AGENT]),
                               min_size=len(secrets_), max_size=len(secrets_)))
    hashed = data.draw(st.lists(st.booleans(), min_size=len(secrets_), max_size=len(secrets_)))
    document: dict = {"operators": [], "viewers": [], "agents": {}}
    for i, (token, role, as_hash) in enumerate(zip(secrets_, roles, hashed, strict=True)):
        entry = hash_token(token) if as_hash else token
        if role == AGENT:
            document["agents"][entry] = f"agent-{i}"
        else:
            document[f"{role}s"].append(entry)
    path = tmp_path_factory.mktemp("tokens") / "tokens.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    tokens = Tokens.load(path)
    for i, (token, role) in enumerate(zip(secrets_, roles, strict=True)):
        assert tokens.principal(token) == Principal(role, f"agent-{i}" if role == AGENT else "")
    other = data.draw(st.text(max_size=80).filter(lambda t: t not in secrets_))
    assert tokens.principal(other) is None


def _context(*uris: str) -> dict:
    return {"peer_uri": [u.encode() for u in uris], "x509_common_name": [b"operator"]}


def test_certificates_name_their_holder_by_uri_and_never_by_common_name() -> None:
    """``edgecloud://ROLE/NAME`` names the holder; a certificate without one names nobody
    (its common name is ignored), and several or malformed identities are refused."""
    assert certificate_principal(_context("edgecloud://agent/cam-7")) == Principal(
        AGENT, "cam-7", "certificate")
    assert certificate_principal(_context("edgecloud://operator/alice")).role == OPERATOR
    assert certificate_principal(_context("spiffe://x/y")) is None
    for bad in (("edgecloud://agent/a", "edgecloud://operator/b"),
                ("edgecloud://admin/x",), ("edgecloud://agent/",)):
        with pytest.raises(Unauthenticated):
            certificate_principal(_context(*bad))


def test_certificate_and_token_must_agree() -> None:
    """With both, role and agent id must match; an agent certificate with an operator token
    (or another agent's token) is refused, and a certificate without an identity needs a
    token."""
    auth = Authenticator(Tokens([OP], {AG: "cam-7"}), certificates=True)
    cam7 = _context("edgecloud://agent/cam-7")
    assert auth.identify(call_metadata(AG), cam7).agent_id == "cam-7"
    assert auth.identify((), cam7).agent_id == "cam-7"
    with pytest.raises(PermissionDenied, match="names the agent cam-7 but the token belongs "
                                               "to the operator"):
        auth.identify(call_metadata(OP), cam7)
    with pytest.raises(PermissionDenied):
        auth.identify(call_metadata(AG), _context("edgecloud://agent/cam-8"))
    with pytest.raises(Unauthenticated, match="no bearer token"):
        auth.identify((), _context())
    assert auth.identify(call_metadata(OP), _context()).role == OPERATOR
    with pytest.raises(Unauthenticated, match="unknown bearer token"):
        auth.identify(call_metadata("tökén-0123456789-abc"), cam7)


def test_loopback_addresses() -> None:
    """Loopback hosts are told apart from every other address."""
    assert all(map(is_loopback, ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "10.0.0.1", "[::]", "gateway.example")))
