"""CLIP (archlab/models/ssl/clip.py), the generated captions (archlab/data/captions.py) and the clip loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import archlab
from archlab.data.captions import (
    ALPHABET,
    PROMPTS,
    WORDS,
    CaptionGenerator,
    attributes,
    caption_tokenizer,
    class_prompts,
    encode,
    measure,
)
from archlab.errors import ArchlabError
from archlab.recipe import from_dict
from archlab.runner import train
from archlab.train.clip import recall_at_k

TINY = {"name": "clip", "encoder": "cnn2d", "encoder_config": {"image_size": 8, "channels": [8], "hidden": 16},
        "embed_dim": 16, "text_width": 16, "text_depth": 1, "text_heads": 2}


def _tiny():
    return archlab.create("clip", **{k: v for k, v in TINY.items() if k != "name"})


# ---------------------------------------------------------------------------------------------- loss


def test_clip_loss_equals_a_hand_computed_symmetric_cross_entropy():
    torch.manual_seed(0)
    model = _tiny()
    images, tokens = torch.randn(5, 1, 8, 8), torch.randint(1, 40, (5, 12))
    with torch.no_grad():
        loss = model.ssl_loss(images, tokens)
        i = model.encode_image(images)
        t = model.encode_text(tokens)
    s = float(model.logit_scale.detach().exp())
    total = 0.0
    for a in range(5):   # rows: image a against every text; columns: text a against every image
        cos_row = [float(F.cosine_similarity(i[a], t[b], dim=0)) for b in range(5)]
        cos_col = [float(F.cosine_similarity(i[b], t[a], dim=0)) for b in range(5)]
        for cos in (cos_row, cos_col):
            total += -(s * cos[a]) + math.log(sum(math.exp(s * c) for c in cos))
    assert float(loss) == pytest.approx(total / 10, abs=1e-5)
    assert s == pytest.approx(1 / 0.07, rel=1e-6)


def test_logit_scale_is_clipped_at_the_maximum():
    model = _tiny()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    out = model.after_step(0.5)
    assert out["logit_scale"] == pytest.approx(100.0, rel=1e-5)


def test_text_encoder_reads_the_last_character_and_ignores_padding():
    torch.manual_seed(0)
    model = _tiny().eval()
    tok = caption_tokenizer()
    a = encode(["the digit 7"], tok, 20)
    b = encode(["the digit 7"], tok, 56)
    assert torch.allclose(model.encode_text(a), model.encode_text(b), atol=1e-6)
    c = encode(["the digit 1"], tok, 20)
    assert not torch.allclose(model.encode_text(a), model.encode_text(c))


# ------------------------------------------------------------------------------------------ captions


def _digit_images(n: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 10


def test_caption_generator_is_deterministic_under_a_seed_and_covers_every_class():
    x, y = _digit_images()
    attrs = attributes(x, y)
    gen = CaptionGenerator(p_attribute=0.5)
    a = gen.captions(y, attrs, torch.Generator().manual_seed(3))
    b = gen.captions(y, attrs, torch.Generator().manual_seed(3))
    c = gen.captions(y, attrs, torch.Generator().manual_seed(4))
    assert a == b and a != c
    for label, text in zip(y.tolist(), a, strict=True):   # every caption names its own digit
        words = set(text.replace(",", " ").split())
        assert WORDS[label] in words or str(label) in words
        assert not words & ({WORDS[c] for c in range(10) if c != label} | {str(c) for c in range(10) if c != label})
    assert {int(lbl) for lbl in y} == set(range(10))
    assert len(set(a)) > 30                               # several templates and wordings
    assert any(w in " ".join(a) for w in ("thick", "thin", "slanted", "small", "large"))
    tok = caption_tokenizer()
    assert tok.vocab_size == len(ALPHABET) == 40 and tok.encode("_") == [0]
    # the longest possible caption fits the default context
    gen_all = CaptionGenerator(p_attribute=1.0)
    many = gen_all.captions(torch.arange(2000) % 10, torch.tensor([[0, 2, 2]]).repeat(2000, 1),
                            torch.Generator().manual_seed(0))
    assert max(len(t) for t in many) <= 56
    ids = encode(many[:5], tok, 56)
    assert ids.shape == (5, 56) and (ids[:, 0] != 0).all()


def test_measured_attributes_follow_the_pixels():
    thin = torch.zeros(2, 1, 28, 28)
    thin[:, 0, 4:24, 13] = 1.0                         # a vertical stroke
    thick = thin.clone()
    thick[:, 0, 4:24, 12:16] = 1.0
    m = measure(torch.cat([thin, thick]))
    assert m["mass"][2] > 3 * m["mass"][0] and m["height"][0] == 20
    right = torch.zeros(1, 1, 28, 28)                  # "/" : higher rows (smaller index) further right
    left = torch.zeros(1, 1, 28, 28)
    for r in range(4, 24):
        right[0, 0, r, 24 - r] = 1.0
        left[0, 0, r, r] = 1.0
    s = measure(torch.cat([right, left]))["slant"]
    assert s[0] < 0 < s[1]
    # class-wise tertiles: within one class, the heaviest third is "thick" (2), the lightest "thin" (0)
    x = torch.stack([torch.full((1, 4, 4), v) * (torch.arange(16).view(1, 4, 4) < k)
                     for v, k in zip([1.0] * 9, range(2, 11), strict=True)])
    a = attributes(x, torch.zeros(9, dtype=torch.long))
    assert a[:3, 0].tolist() == [0, 0, 0] and a[-3:, 0].tolist() == [2, 2, 2]


def test_caption_errors_are_one_line():
    with pytest.raises(ArchlabError, match="holds 5"):
        encode(["the digit 7"], caption_tokenizer(), 5)
    with pytest.raises(ArchlabError, match="images"):
        measure(torch.zeros(3, 40))
    with pytest.raises(ArchlabError, match="0-9"):
        class_prompts(11)


# ---------------------------------------------------------------------------------------- zero-shot


def test_zero_shot_on_a_toy_separable_case():
    """Images that are one-hot codes and an encoder that copies them; texts encoded so that the prompts of
    class c all point along axis c: zero-shot must label every image with its class, and any single
    template disagreeing is outvoted by the ensemble."""
    model = _tiny()
    c, p = 4, len(PROMPTS)
    prompts = torch.arange(c * p * 3).view(c, p, 3)
    images = torch.eye(c).repeat(3, 1)                  # 12 "images", class i % 4

    def encode_text(tokens):
        cls = tokens[:, 0] // (p * 3)
        e = F.one_hot(cls, c).float()
        bad = (tokens[:, 0] // 3) % p == 0              # the first template points at the next class
        e[bad] = F.one_hot((cls[bad] + 1) % c, c).float()
        return e

    model.encode_text = encode_text
    model.encode_image = lambda x: x
    classes = model.class_embeddings(prompts)
    assert classes.shape == (c, c) and torch.allclose(classes.norm(dim=1), torch.ones(c))
    assert model.zero_shot(images, classes).tolist() == (torch.arange(12) % c).tolist()


def test_recall_at_k_counts_matches_in_the_top_k():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.2, 0.7], [0.1, 0.3, 0.2]])
    match = torch.eye(3, dtype=torch.bool)
    r = recall_at_k(sim, match, [1, 2, 3])
    # ranks of the matches: 1, 3, 2
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


# -------------------------------------------------------------------------------------------- loop


def _recipe() -> dict:
    return {
        "name": "clip_tiny", "seed": 0, "model": dict(TINY),
        "data": {"name": "digits", "batch_size": 32, "val_fraction": 0.2},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"loop": "clip", "steps": 6, "eval_every": 3, "log_every": 2, "checkpoint_every": 3},
        "loop": {"retrieval_size": 100},
    }


def test_clip_loop_resumes_bit_exactly(assert_resume_exact):
    assert_resume_exact(_recipe())


def test_clip_loop_end_to_end(tmp_path):
    raw = _recipe()
    raw["train"]["steps"] = 60
    summary = train(from_dict(copy.deepcopy(raw)), out=tmp_path / "run", progress=False, log=lambda _m: None)
    m = summary["metrics"]
    for key in ("val_zeroshot_acc", "test_zeroshot_acc", "test_i2t_r1", "test_i2t_r5", "test_i2t_r10",
                "test_t2i_r1", "test_t2i_r10"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["test_i2t_r1"] <= m["test_i2t_r5"] <= m["test_i2t_r10"]
    assert m["test_zeroshot_acc"] > 0.2                 # 60 steps on 8x8 digits: twice chance (0.1) or more
    assert (tmp_path / "run" / "plots" / "embedding.png").is_file()
    assert type(archlab.load(tmp_path / "run")).registry_name == "clip"


@pytest.mark.parametrize("change,message", [
    ({"train": {"loop": "ssl", "steps": 2}, "loop": {"augment": ["translate:1"]}}, "use train.loop = \"clip\""),
    ({"model": {"name": "simclr", "encoder": "cnn2d", "encoder_config": {"image_size": 8}}},
     "use train.loop = \"ssl\""),
    ({"model": {**TINY, "vocab_size": 20}}, "captions use 40 symbols"),
    ({"data": {"name": "mnist1d", "options": {"num_samples": 200}}}, "captions images"),
])
def test_bad_clip_recipes_fail_before_training(change, message, tmp_path):
    raw = {**_recipe(), **change}
    with pytest.raises(ArchlabError, match=message):
        train(from_dict(raw), out=tmp_path / "run", progress=False, log=lambda _m: None)
