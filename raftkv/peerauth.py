"""Proof of cluster membership between peers: a shared token, never sent, proved by HMAC.

A cluster may share a secret token (`raftkv serve --cluster-token`). A node that has one
accepts a peer connection only after this exchange, in frames of at most
`wire.MAX_HELLO_FRAME_BYTES`::

    connector -> acceptor   {"hello": "peer", "id": C, "http": ..., "nonce": Nc}
    acceptor  -> connector  {"nonce": Na, "proof": HMAC(token, ["acceptor", C, A, Nc, Na])}
    connector -> acceptor   {"proof": HMAC(token, ["connector", C, A, Nc, Na])}

then Raft messages from the connector. HMAC is HMAC-SHA256 over the msgpack encoding of the
list; C and A are the two node ids (A the acceptor's own), Nc and Na 32 random bytes each.
Both sides prove the token (a connector does not feed its log to an impostor either); each
proof covers both fresh nonces, both ids and the direction, so no proof can be replayed on
another connection, for another pair of nodes, or reflected back to the node that made it.
Proofs are compared in constant time. Clients do not authenticate: the token proves
membership of the cluster, not the right to use it.

A node without a token sends no challenge and accepts a hello without a nonce, as before
tokens existed; a connector with a token refuses an acceptor that sends no proof.

Errors: TokenError (ValueError), a token that cannot be loaded; the message says why.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import msgpack

__all__ = [
    "ACCEPTOR",
    "CONNECTOR",
    "NONCE_BYTES",
    "Handshake",
    "TokenError",
    "is_nonce",
    "load_token",
    "new_nonce",
]

NONCE_BYTES = 32
ACCEPTOR = "acceptor"
CONNECTOR = "connector"
ENV_PREFIX = "env:"


class TokenError(ValueError):
    """A cluster token that cannot be used: missing, empty, or readable by others."""


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def is_nonce(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == NONCE_BYTES


@dataclass(frozen=True)
class Handshake:
    """One connection's exchange: who connects to whom, and both nonces."""

    connector: str
    acceptor: str
    connector_nonce: bytes
    acceptor_nonce: bytes

    def proof(self, token: bytes, role: str) -> bytes:
        """The proof that the side playing `role` (ACCEPTOR or CONNECTOR) holds `token`."""
        signed = msgpack.packb(
            [role, self.connector, self.acceptor, self.connector_nonce, self.acceptor_nonce],
            use_bin_type=True,
        )
        return hmac.new(token, signed, hashlib.sha256).digest()

    def verify(self, token: bytes, role: str, proof: object) -> bool:
        """Whether `proof` (anything a peer sent) is the proof of `role`."""
        return isinstance(proof, bytes) and hmac.compare_digest(proof, self.proof(token, role))


def load_token(spec: str) -> bytes:
    """The token named by `spec`: ``env:NAME`` (environment variable NAME) or a file path.

    Surrounding whitespace is dropped. Raises TokenError for an empty token, a missing
    variable or file, or a file that its group or others may read or write.
    """
    if spec.startswith(ENV_PREFIX):
        name = spec[len(ENV_PREFIX) :]
        if name not in os.environ:
            raise TokenError(f"environment variable {name!r} is not set")
        text, where = os.environ[name], f"environment variable {name!r}"
    else:
        text, where = _read_private_file(Path(spec)), str(spec)
    token = text.strip()
    if not token:
        raise TokenError(f"{where} holds an empty token")
    return token.encode("utf-8")


def _read_private_file(path: Path) -> str:
    try:
        with path.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise TokenError(f"{path} is not a regular file")
            if mode & 0o077:
                raise TokenError(
                    f"{path} has mode {stat.S_IMODE(mode):04o}: a token file must be private "
                    f"(chmod 600 {path})"
                )
            data = f.read(64 << 10)
    except OSError as exc:
        raise TokenError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError(f"{path} is not UTF-8 text") from None
