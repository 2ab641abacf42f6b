"""Secure aggregation (Bonawitz et al. 2017): the unmasked sum is exact with and without dropouts below the
threshold, aggregation refuses above it, every masked vector the server sees looks uniform, and Shamir
sharing / float encoding round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from archlab.errors import ArchlabError

pytest.importorskip("cryptography", reason="secure aggregation needs the cryptography package (test extra)")
from archlab.federated.secagg import decode_sum, encode, secure_sum, shamir_join, shamir_split  # noqa: E402

DIM = 4096


def _inputs(n: int, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, 2**32, DIM, dtype=np.uint64).astype(np.uint32) for u in range(n)}


def _plain_sum(inputs: dict[int, np.ndarray], ids) -> np.ndarray:
    total = np.zeros(DIM, dtype=np.uint32)
    for u in ids:
        total = total + inputs[u]
    return total


def test_shamir_any_t_shares_recover_the_secret():
    secret = 2**255 + 12345
    shares = shamir_split(secret, 5, 3)
    assert shamir_join(shares[:3]) == secret and shamir_join([shares[4], shares[1], shares[2]]) == secret
    assert shamir_join(shares[:2]) != secret  # two shares of a degree-2 polynomial say nothing about f(0)


def test_sum_is_exact_without_dropouts():
    inputs = _inputs(5)
    z, _ = secure_sum(inputs, threshold=3)
    assert np.array_equal(z, _plain_sum(inputs, range(5)))


def test_sum_is_exact_with_dropouts_below_the_threshold():
    inputs = _inputs(6, seed=1)
    z, masked = secure_sum(inputs, threshold=3, drop_before_input=frozenset({1, 4}),
                           drop_before_unmask=frozenset({5}))
    assert set(masked) == {0, 2, 3, 5}
    assert np.array_equal(z, _plain_sum(inputs, [0, 2, 3, 5]))  # 5 sent its input, then left: still counted


def test_aggregation_refuses_when_too_many_drop_out():
    with pytest.raises(ArchlabError, match="2 clients answered the unmasking round but the threshold is 3"):
        secure_sum(_inputs(5), threshold=3, drop_before_input=frozenset({0, 1}), drop_before_unmask=frozenset({2}))


def test_masked_vectors_look_uniform():
    """A client's masked vector of all zeros: its bytes pass a chi-square test against uniform (255 degrees of
    freedom: mean 255, std 22.6; the bound is 7 std), and two runs on the same input share nothing."""
    zeros = {u: np.zeros(DIM, dtype=np.uint32) for u in range(3)}
    _, masked = secure_sum(zeros, threshold=2)
    _, again = secure_sum(zeros, threshold=2)
    for y in masked.values():
        counts = np.bincount(y.view(np.uint8), minlength=256)
        expected = len(y) * 4 / 256
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 255 + 7 * 22.6
    assert not np.array_equal(masked[0], again[0])


def test_float_updates_round_trip_through_the_field():
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.1, DIM) for _ in range(4)]
    z, _ = secure_sum({u: encode(v, clip=1.0) for u, v in enumerate(updates)}, threshold=2)
    assert np.abs(decode_sum(z, 4, clip=1.0) - sum(updates)).max() <= 4 * 1.0 / (2**16 - 1) + 1e-12


def test_federated_rounds_with_secure_aggregation_match_plain_averaging(tmp_path, assert_resume_exact):
    import torch

    import archlab
    from archlab.recipe import from_dict
    from archlab.runner import train

    def raw(**loop) -> dict:
        return {"name": "secagg_tiny", "seed": 0, "model": {"name": "mlp", "in_features": 64, "hidden": [16]},
                "data": {"name": "digits", "batch_size": 20, "val_fraction": 0.0},
                "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.0},
                "train": {"loop": "federated", "steps": 3, "log_every": 1, "checkpoint_every": 1},
                "loop": {"clients": 6, "fraction": 0.5, **loop}}

    for name, r in (("plain", raw()), ("secure", raw(secure_aggregation=True, secagg_clip=1.0))):
        train(from_dict(r), out=tmp_path / name, progress=False, log=lambda _m: None)
    plain, secure = archlab.load(tmp_path / "plain").state_dict(), archlab.load(tmp_path / "secure").state_dict()
    for k in plain:  # 2^32 / 3 levels over [-1, 1]: quantization error < 1e-9 per entry and round
        torch.testing.assert_close(secure[k], plain[k], rtol=0, atol=1e-6)
    assert_resume_exact(raw(secure_aggregation=True, secagg_clip=1.0))
