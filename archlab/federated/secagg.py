"""Secure aggregation: the server learns the sum of the clients' vectors and nothing else (Bonawitz et al. 2017).

Practical Secure Aggregation for Privacy-Preserving Machine Learning (CCS 2017), the semi-honest protocol
(no signatures). Vectors are integers mod R = 2^32 (float updates are quantized first, :func:`encode`).
Every client u holds two X25519 key pairs, (c_sk, c_pk) for encrypting messages to other clients and
(s_sk, s_pk) for masks, and a random 32-byte self-mask seed b_u:

    0  AdvertiseKeys   u -> server: c_pk_u, s_pk_u                     (the server forwards all of them)
    1  ShareKeys       u splits s_sk_u and b_u into n Shamir shares, threshold t, and sends share v to
                       client v encrypted with ChaCha20-Poly1305 under HKDF(X25519(c_sk_u, c_pk_v)) via the server
    2  MaskedInput     u -> server: y_u = x_u + PRG(b_u) + sum_{v != u} sign(u, v) PRG(s_uv)   (mod R)
                       with s_uv = HKDF(X25519(s_sk_u, s_pk_v)) = s_vu and sign = +1 if u < v else -1
    3  Unmasking       every survivor v reveals, for each other client u, the share of b_u if u sent y_u,
                       or the share of s_sk_u if u dropped out -- never both
    server: z = sum_{u in U2} y_u - sum_{u in U2} PRG(b_u) - (the pairwise masks between U2 and each dropped u)

The pairwise masks of two survivors cancel in the sum; the self mask b_u keeps y_u uniformly random even
if u's pairwise masks were all revealed (a client that is late but not dropped). With fewer than t
survivors at step 3 no secret can be rebuilt and aggregation stops with a one-line error. PRG is the
ChaCha20 keystream; keys come from HKDF-SHA256. Cryptographic primitives come from the ``cryptography``
package (extra ``federated``); Shamir sharing over the prime 2^521 - 1 is plain polynomial arithmetic.

:func:`secure_sum` plays every party in one process (the in-process loop). On Flower each step is a message
(:meth:`archlab.federated.flower.Transport.secure_train`): a node keeps its clients' state between messages
(:meth:`SecAggClient.to_state`), the payloads travel as flat byte records (:func:`pack_keys`,
:func:`pack_revealed`) and the server finishes with :func:`unmask_sum`, the same code :func:`secure_sum` ends with.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

import numpy as np

from ..errors import ArchlabError

R_BITS = 32
PRIME = 2**521 - 1
"""Shamir's field: a Mersenne prime larger than any 256-bit secret."""


def _crypto():  # noqa: ANN202 -- the cryptography modules, imported when secure aggregation is used
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError:
        raise ArchlabError("secure aggregation needs the 'cryptography' package: pip install 'archlab[federated]'") \
            from None
    return hashes, serialization, X25519PrivateKey, X25519PublicKey, Cipher, algorithms, ChaCha20Poly1305, HKDF


# -- Shamir t-of-n secret sharing over GF(PRIME) -------------------------------------------------------
def shamir_split(secret: int, n: int, t: int) -> list[tuple[int, int]]:
    """``n`` shares ``(x, f(x))``, x = 1..n, of a random degree-(t-1) polynomial with f(0) = secret."""
    coeffs = [secret] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    return [(x, sum(c * pow(x, i, PRIME) for i, c in enumerate(coeffs)) % PRIME) for x in range(1, n + 1)]


def shamir_join(shares: list[tuple[int, int]]) -> int:
    """f(0) by Lagrange interpolation from at least t shares."""
    total = 0
    for i, (xi, yi) in enumerate(shares):
        num = den = 1
        for j, (xj, _) in enumerate(shares):
            if i != j:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


# -- key agreement, PRG, encryption --------------------------------------------------------------------
def _kdf(shared: bytes, info: bytes) -> bytes:
    hashes, *_, HKDF = _crypto()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def prg(seed: bytes, dim: int) -> np.ndarray:
    """``dim`` pseudo-random integers mod 2^32 from a 32-byte seed (the ChaCha20 keystream)."""
    *_, Cipher, algorithms, _, _ = _crypto()
    stream = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor().update(b"\0" * (4 * dim))
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32)


def _raw(key) -> bytes:  # noqa: ANN001 -- an X25519 key of either kind
    _, serialization, *_ = _crypto()
    if hasattr(key, "private_bytes"):
        return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class SecAggClient:
    """One client's side of the protocol."""

    uid: int
    x: np.ndarray
    """The client's input: uint32 (mod 2^32)."""
    c_sk: object = field(init=False)
    s_sk: object = field(init=False)
    b: bytes = field(init=False)
    inbox: dict[int, bytes] = field(default_factory=dict)
    """Encrypted shares received from other clients, by sender."""
    own_b_share: tuple[int, int] = (0, 0)
    """The client's own share of b (it reveals it at unmasking: it is alive, so b is what gets removed)."""

    def __post_init__(self) -> None:
        _, _, X25519PrivateKey, *_ = _crypto()
        self.c_sk, self.s_sk = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self.b = os.urandom(32)

    def to_state(self) -> dict[str, bytes]:
        """Everything the client keeps between the protocol's messages, as bytes (a Flower node stores it in its
        ``Context.state`` while the server runs the next step with the other clients)."""
        state = {"uid": _int_bytes(self.uid), "x": self.x.astype("<u4").tobytes(), "c_sk": _raw(self.c_sk),
                 "s_sk": _raw(self.s_sk), "b": self.b, "own_b_share": b"".join(map(_int_bytes, self.own_b_share))}
        state.update({f"inbox.{u}": blob for u, blob in self.inbox.items()})
        return state

    @classmethod
    def from_state(cls, state: dict[str, bytes]) -> SecAggClient:
        """The client :meth:`to_state` saved."""
        _, _, X25519PrivateKey, *_ = _crypto()
        client = object.__new__(cls)
        client.uid = _bytes_int(state["uid"])
        client.x = np.frombuffer(state["x"], dtype="<u4").astype(np.uint32)
        client.c_sk = X25519PrivateKey.from_private_bytes(state["c_sk"])
        client.s_sk = X25519PrivateKey.from_private_bytes(state["s_sk"])
        client.b = state["b"]
        share = state["own_b_share"]
        client.own_b_share = (_bytes_int(share[:SHARE_BYTES]), _bytes_int(share[SHARE_BYTES:]))
        client.inbox = {int(k.split(".", 1)[1]): v for k, v in state.items() if k.startswith("inbox.")}
        return client

    def advertise(self) -> tuple[bytes, bytes]:
        return _raw(self.c_sk.public_key()), _raw(self.s_sk.public_key())

    def _channel(self, peer_c_pk: bytes) -> object:
        *_, X25519PublicKey, _, _, ChaCha20Poly1305, _ = _crypto()
        return ChaCha20Poly1305(_kdf(self.c_sk.exchange(X25519PublicKey.from_public_bytes(peer_c_pk)), b"channel"))

    def share_keys(self, keys: dict[int, tuple[bytes, bytes]], t: int) -> dict[int, bytes]:
        """Encrypted (s_sk share, b share) for every other client, by recipient."""
        ids = sorted(keys)
        s_shares = shamir_split(int.from_bytes(_raw(self.s_sk), "big"), len(ids), t)
        b_shares = shamir_split(int.from_bytes(self.b, "big"), len(ids), t)
        out = {}
        for (v, (s_x, s_y)), (b_x, b_y) in zip(zip(ids, s_shares, strict=True), b_shares, strict=True):
            if v == self.uid:
                self.own_b_share = (b_x, b_y)
                continue
            msg = b"".join(n.to_bytes(66, "big") for n in (self.uid, v, s_x, s_y, b_y))
            nonce = os.urandom(12)
            out[v] = nonce + self._channel(keys[v][0]).encrypt(nonce, msg, None)
        return out

    def masked_input(self, keys: dict[int, tuple[bytes, bytes]]) -> np.ndarray:
        *_, X25519PublicKey, _, _, _, _ = _crypto()
        y = self.x.astype(np.uint32) + prg(self.b, len(self.x))
        for v, (_, s_pk) in keys.items():
            if v == self.uid:
                continue
            mask = prg(_kdf(self.s_sk.exchange(X25519PublicKey.from_public_bytes(s_pk)), b"mask"), len(self.x))
            y = y + mask if self.uid < v else y - mask  # uint32 arithmetic wraps mod 2^32
        return y

    def unmask(self, keys: dict[int, tuple[bytes, bytes]], survivors: set[int]) -> dict[int, tuple[str, tuple]]:
        """For every sender u: ("b", share) if u is a survivor, ("s", share) if it dropped out; and its own b share."""
        out: dict[int, tuple[str, tuple]] = {self.uid: ("b", self.own_b_share)}
        for u, blob in self.inbox.items():
            msg = self._channel(keys[u][0]).decrypt(blob[:12], blob[12:], None)
            sender, recipient, x, s_y, b_y = (int.from_bytes(msg[i:i + 66], "big") for i in range(0, 330, 66))
            if (sender, recipient) != (u, self.uid):
                raise ArchlabError(f"secure aggregation: a share for {sender}->{recipient} arrived as {u}->{self.uid}")
            out[u] = ("b", (x, b_y)) if u in survivors else ("s", (x, s_y))
        return out


SHARE_BYTES = 66
"""Bytes of one field element (a share's x or y, a secret; < 2^521)."""


def _int_bytes(n: int) -> bytes:
    return n.to_bytes(SHARE_BYTES, "big")


def _bytes_int(b: bytes) -> int:
    return int.from_bytes(b, "big")


# -- the messages' payloads as flat {str: bytes} records (what a Flower ConfigRecord carries) ---------
def pack_keys(keys: dict[int, tuple[bytes, bytes]]) -> dict[str, bytes]:
    """AdvertiseKeys' public keys of every client, for the ShareKeys and later messages."""
    return {f"{kind}.{u}": pk for u, pair in keys.items() for kind, pk in zip("cs", pair, strict=True)}


def unpack_keys(record: dict[str, bytes]) -> dict[int, tuple[bytes, bytes]]:
    ids = sorted({int(k.split(".", 1)[1]) for k in record})
    return {u: (bytes(record[f"c.{u}"]), bytes(record[f"s.{u}"])) for u in ids}


def pack_revealed(items: dict[int, tuple[str, tuple[int, int]]]) -> dict[str, bytes]:
    """One helper's Unmasking answer: for every client u, "b" or "s" and the share (x, y)."""
    return {str(u): kind.encode() + _int_bytes(x) + _int_bytes(y) for u, (kind, (x, y)) in items.items()}


def unpack_revealed(record: dict[str, bytes]) -> dict[int, tuple[str, tuple[int, int]]]:
    out = {}
    for u, blob in record.items():
        blob = bytes(blob)
        out[int(u)] = (blob[:1].decode(), (_bytes_int(blob[1:1 + SHARE_BYTES]), _bytes_int(blob[1 + SHARE_BYTES:])))
    return out


def unmask_sum(masked: dict[int, np.ndarray], revealed: dict[int, list[tuple[str, tuple[int, int]]]],
               keys: dict[int, tuple[bytes, bytes]], threshold: int) -> np.ndarray:
    """The server's last step: from the masked inputs of the survivors (``masked``) and the shares the helpers
    revealed, by the client they belong to, the sum of the survivors' inputs (mod 2^32)."""
    _, _, X25519PrivateKey, X25519PublicKey, *_ = _crypto()
    survivors = set(masked)
    dim = len(next(iter(masked.values())))
    z = np.zeros(dim, dtype=np.uint32)
    for y in masked.values():
        z = z + y
    for u, items in revealed.items():
        if len(items) < threshold:
            raise ArchlabError(f"secure aggregation: only {len(items)} shares of client {u}'s secret arrived, "
                               f"the threshold is {threshold}")
        kinds = {kind for kind, _ in items}
        if kinds != {"b" if u in survivors else "s"}:
            raise ArchlabError(f"secure aggregation: the helpers revealed {sorted(kinds)} shares of client {u}, "
                               f"which {'sent' if u in survivors else 'did not send'} its masked input")
        secret = shamir_join([s for _, s in items][:threshold])
        if u in survivors:  # remove u's self mask
            z = z - prg(secret.to_bytes(32, "big"), dim)
        else:  # u dropped: rebuild its mask key and remove its pairwise masks with every survivor
            s_sk = X25519PrivateKey.from_private_bytes(secret.to_bytes(32, "big"))
            for v in survivors:
                mask = prg(_kdf(s_sk.exchange(X25519PublicKey.from_public_bytes(keys[v][1])), b"mask"), dim)
                z = z - mask if v < u else z + mask  # v added +mask when v < u
    return z


def secure_sum(inputs: dict[int, np.ndarray], threshold: int, drop_before_input: frozenset[int] = frozenset(),
               drop_before_unmask: frozenset[int] = frozenset()) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Run the protocol among ``inputs`` (client id -> uint32 vector); clients in ``drop_before_input``
    vanish after ShareKeys, those in ``drop_before_unmask`` after sending their masked input.
    Returns the sum (mod 2^32) of the inputs of the clients whose masked input arrived, and the masked
    vectors the server saw (by client)."""
    clients = {u: SecAggClient(u, np.asarray(x, dtype=np.uint32)) for u, x in inputs.items()}
    if not 2 <= threshold <= len(clients):
        raise ArchlabError(f"secure aggregation: threshold must be in [2, {len(clients)}], got {threshold}")
    keys = {u: c.advertise() for u, c in clients.items()}  # round 0
    for u, c in clients.items():  # round 1: the server routes the ciphertexts
        for v, blob in c.share_keys(keys, threshold).items():
            clients[v].inbox[u] = blob
    masked = {u: c.masked_input(keys) for u, c in clients.items() if u not in drop_before_input}  # round 2
    survivors = set(masked)
    helpers = [v for v in survivors if v not in drop_before_unmask]  # round 3
    if len(helpers) < threshold:
        raise ArchlabError(f"secure aggregation: {len(helpers)} clients answered the unmasking round but the "
                           f"threshold is {threshold}; the sum cannot be recovered (too many dropouts)")
    revealed: dict[int, list[tuple[str, tuple]]] = {}
    for v in helpers:
        for u, item in clients[v].unmask(keys, survivors).items():
            revealed.setdefault(u, []).append(item)
    z = unmask_sum(masked, revealed, keys, threshold)
    return z, masked


def encode(v: np.ndarray, clip: float, levels: int = 2**16 - 1) -> np.ndarray:
    """Floats in [-clip, clip] -> integers 0..levels (round to nearest) as uint32."""
    return np.rint((np.clip(v, -clip, clip) + clip) / (2 * clip) * levels).astype(np.uint32)


def decode_sum(z: np.ndarray, n: int, clip: float, levels: int = 2**16 - 1) -> np.ndarray:
    """The float sum of ``n`` encoded vectors from their integer sum (exact while n * levels < 2^32)."""
    return z.astype(np.float64) / levels * 2 * clip - n * clip
