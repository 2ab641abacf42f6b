"""BERT, RoBERTa, ALBERT, DistilBERT: equal to Hugging Face transformers (tiny random models), in and out
of the HF format, plus the pieces the peer does not cover (positions, sharing, distillation loss)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import archlab
from archlab import from_hf
from archlab.models.transformers.distilbert import distillation_loss

TOL = 1e-4
V, T = 100, 12


pytestmark = pytest.mark.usefixtures("single_thread")


def _hf():
    return pytest.importorskip("transformers", reason="transformers is a test-only peer (pip install transformers)")


def _hf_config(kind: str, **extra):
    tr = _hf()
    common = dict(vocab_size=V, max_position_embeddings=40, num_labels=3)
    bert_like = dict(common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if kind == "bert":
        return tr.BertConfig(**{**bert_like, **extra})
    if kind == "roberta":
        return tr.RobertaConfig(**{**bert_like, "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1,
                                   **extra})
    if kind == "albert":
        return tr.AlbertConfig(**{**bert_like, "embedding_size": 16, **extra})
    return tr.DistilBertConfig(**{**common, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, **extra})


STEMS = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "distilbert": "DistilBert"}
SUFFIX = {"mlm": "ForMaskedLM", "classify": "ForSequenceClassification", "none": "Model"}
AUTO = {"mlm": "AutoModelForMaskedLM", "classify": "AutoModelForSequenceClassification", "none": "AutoModel"}


def _hf_model(kind: str, head: str, **extra):
    tr = _hf()
    torch.manual_seed(0)
    model = getattr(tr, STEMS[kind] + SUFFIX[head])(_hf_config(kind, **extra)).eval()
    with torch.no_grad():  # HF starts biases at 0 and LayerNorms at 1: perturb all, so a wrong mapping shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(kind: str, pad: int):
    """Right padding in rows 1 and 2 (pad tokens there), two segments where the model has them."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, -4:] = 0
    mask[2, -7:] = 0
    ids[mask == 0] = pad
    kw = {"input_ids": ids, "attention_mask": mask}
    if kind in ("bert", "albert"):
        kw["token_type_ids"] = (torch.arange(T) >= 5).long().expand(3, T).contiguous()
    return kw


def _close_on_tokens(a, b, mask):
    """max |a - b| over the real (unpadded) positions of ``[B, T, ...]`` tensors."""
    keep = mask.bool()
    assert a.shape == b.shape
    return (a[keep] - b[keep]).abs().max().item()


def _ours(model, inputs):
    return model.encode(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"),
                        output_hidden_states=True)


CASES = [(k, h) for k in STEMS for h in ("mlm", "classify", "none")]


@pytest.mark.parametrize("kind,head", CASES)
def test_equal_to_hugging_face_and_round_trip(kind, head, tmp_path):
    tr = _hf()
    hf = _hf_model(kind, head)
    hf.save_pretrained(tmp_path / "hf")
    model = from_hf(tmp_path / "hf")
    assert model.registry_name == kind and model.config.head == head
    assert not model.training
    inputs = _inputs(kind, hf.config.pad_token_id)
    mask = inputs["attention_mask"]
    with torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True)
        last, states = _ours(model, inputs)
        out = model(**inputs)
    assert len(states) == len(ref.hidden_states) == 3
    for ours, theirs in zip(states, ref.hidden_states, strict=True):
        assert _close_on_tokens(ours, theirs, mask) <= TOL
    if head == "mlm":
        assert out.shape == (3, T, V)
        assert _close_on_tokens(out, ref.logits, mask) <= TOL
    elif head == "classify":
        assert out.shape == (3, 3)
        assert (out - ref.logits).abs().max().item() <= TOL
    else:
        assert _close_on_tokens(out, ref.last_hidden_state, mask) <= TOL
        if kind != "distilbert":  # the base model's pooler is kept and equal
            assert (model.pooler(last) - ref.pooler_output).abs().max().item() <= TOL

    # round trip: archlab -> HF directory -> transformers loads it with no missing or unexpected tensor
    model.save_hf(tmp_path / "back")
    back, info = getattr(tr, AUTO[head]).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert type(back) is type(hf)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        again = back.eval()(**inputs)
    first = ref.logits if head != "none" else ref.last_hidden_state
    second = again.logits if head != "none" else again.last_hidden_state
    assert torch.equal(first, second)
    assert archlab.registry.get(kind).cls.config_from_hf(json.loads((tmp_path / "back/config.json").read_text())) \
        == model.config


@pytest.mark.parametrize("kind,extra", [
    ("albert", dict(num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2, hidden_act="gelu")),
    ("distilbert", dict(sinusoidal_pos_embds=True, activation="relu")),
    ("bert", dict(hidden_act="gelu_new", type_vocab_size=3, classifier_dropout=0.3)),
])
def test_variants_equal_to_hugging_face(kind, extra, tmp_path):
    hf = _hf_model(kind, "mlm", **extra)
    hf.save_pretrained(tmp_path)
    model = from_hf(tmp_path)
    inputs = _inputs(kind, hf.config.pad_token_id)
    with torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True)
        last, states = _ours(model, inputs)
        out = model(**inputs)
    assert len(states) == len(ref.hidden_states)
    for ours, theirs in zip(states, ref.hidden_states, strict=True):
        assert _close_on_tokens(ours, theirs, inputs["attention_mask"]) <= TOL
    assert _close_on_tokens(out, ref.logits, inputs["attention_mask"]) <= TOL
    if kind == "albert":  # 4 layers from 2 groups x 2 distinct layers: 2 x 2 parameter sets, 8 applications
        assert len(model.layer_sequence()) == 8 and len({id(m) for m in model.layer_sequence()}) == 4
    if kind == "distilbert":  # a fresh model starts from HF's (and the paper's) table, and keeps it fixed
        assert not model.embeddings.position_embeddings.weight.requires_grad
        fresh = archlab.create("distilbert", max_position_embeddings=40, hidden_size=32, sinusoidal_positions=True)
        hf_table = type(hf)(hf.config).distilbert.embeddings.position_embeddings.weight
        torch.testing.assert_close(fresh.embeddings.position_embeddings.weight, hf_table, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", list(STEMS))
def test_missing_config_keys_take_hugging_face_defaults(kind):
    """A config.json may leave keys at their defaults out: ours must be HF's."""
    tr = _hf()
    cls = archlab.registry.get(kind).cls
    full = getattr(tr, STEMS[kind] + "Config")().to_dict()
    assert cls.config_from_hf({"model_type": kind}) == cls.config_from_hf(full)


def test_pretraining_checkpoint_and_old_names_load_as_mlm(tmp_path):
    """A BertForPreTraining file (next-sentence head, pooler, saved tied decoder, TF gamma/beta names)
    loads as the mlm model: the extra tensors are dropped, the prediction logits are equal."""
    tr = _hf()
    torch.manual_seed(0)
    hf = tr.BertForPreTraining(_hf_config("bert")).eval()
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in state.items()}
    assert "cls.seq_relationship.weight" in state and "bert.pooler.dense.weight" in state
    save_file(state, tmp_path / "model.safetensors")
    model = from_hf(tmp_path)
    assert model.config.head == "mlm" and model.pooler is None
    inputs = _inputs("bert", 0)
    with torch.no_grad():
        assert _close_on_tokens(model(**inputs), hf(**inputs).prediction_logits, inputs["attention_mask"]) <= TOL


def test_weights_must_match_exactly(tmp_path):
    hf = _hf_model("bert", "classify")
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file({**state, "bert.encoder.layer.0.extra.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(archlab.ArchlabError, match="unexpected.*extra"):
        from_hf(tmp_path)
    save_file({k: v for k, v in state.items() if k != "classifier.bias"}, tmp_path / "model.safetensors")
    with pytest.raises(archlab.ArchlabError, match="missing.*classifier.bias"):
        from_hf(tmp_path)


def test_native_model_exports_to_hugging_face(tmp_path):
    """A model built in archlab (not imported) is read by transformers with equal outputs."""
    tr = _hf()
    torch.manual_seed(0)
    model = archlab.create("roberta", vocab_size=V, hidden_size=32, max_position_embeddings=40, head="classify",
                           num_labels=4).eval()
    model.save_hf(tmp_path)
    hf = tr.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids, mask = type(model).example_input(model.config, batch_size=3)
    with torch.no_grad():
        assert (model(ids, mask) - hf(input_ids=ids, attention_mask=mask).logits).abs().max().item() <= TOL


# -------------------------------------------------------------------------------- without the peer
def test_roberta_positions_skip_padding():
    model = archlab.create("roberta")
    pad = model.config.pad_token_id
    ids = torch.tensor([[5, 6, pad, 7, pad], [pad, pad, 8, 9, 10]])
    assert model.embeddings.position_ids(ids).tolist() == [[2, 3, 1, 4, 1], [1, 1, 2, 3, 4]]
    assert type(model).max_length(model.config) == 128
    with pytest.raises(ValueError, match="longer than the 128"):
        model(torch.full((1, 129), 5))


def test_albert_shares_parameters_across_depth():
    shallow, deep = archlab.create("albert", num_layers=1), archlab.create("albert", num_layers=12)
    assert deep.num_parameters() == shallow.num_parameters()
    assert len(deep.layer_sequence()) == 12 and len({id(m) for m in deep.layer_sequence()}) == 1
    assert deep.embeddings.word_embeddings.weight.shape == (1000, 32)  # factorized: V x E, then E -> H
    ids, mask = type(deep).example_input(deep.config)
    assert deep(ids, mask).shape == (2, 16, 1000)


def test_heads_own_only_what_they_use():
    for name in ("bert", "roberta", "albert", "distilbert"):
        mlm, cls, base = (archlab.create(name, head=h) for h in ("mlm", "classify", "none"))
        keys = {h: set(m.state_dict()) for h, m in (("mlm", mlm), ("classify", cls), ("none", base))}
        assert not any(k.startswith(("pooler", "classifier")) for k in keys["mlm"])
        assert not any(k.startswith(("pooler", "mlm_head")) for k in keys["classify"])
        assert all(k.startswith(("embeddings", "layers")) for k in keys["none"])
    with_pooler = archlab.create("bert", head="none", pooler=True)
    assert with_pooler.pooler is not None
    with pytest.raises(archlab.ArchlabError, match="pooler"):
        archlab.create("bert", head="mlm", pooler=True)


def test_padding_does_not_change_real_tokens():
    """Appending padding leaves the outputs at the real positions unchanged (the mask works)."""
    for name in ("bert", "roberta", "albert", "distilbert"):
        model = archlab.create(name, dropout=0.0, attention_dropout=0.0).eval()
        ids, _ = type(model).example_input(model.config, batch_size=1)
        pad = model.config.pad_token_id
        padded = torch.cat([ids, torch.full((1, 5), pad)], dim=1)
        mask = torch.cat([torch.ones(1, ids.shape[1]), torch.zeros(1, 5)], dim=1)
        with torch.no_grad():
            torch.testing.assert_close(model(padded, mask)[:, :ids.shape[1]], model(ids), atol=1e-5, rtol=0)


def test_distilbert_rejects_token_types():
    model = archlab.create("distilbert")
    ids, mask = type(model).example_input(model.config)
    with pytest.raises(ValueError, match="token type"):
        model(ids, mask, torch.zeros_like(ids))


def test_distillation_loss():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    temp, alpha = 3.0, 0.7
    p_t = F.softmax(t / temp, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean()
    expected = alpha * temp ** 2 * kl + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, t, y, temp, alpha), expected)
    torch.testing.assert_close(distillation_loss(s, t, y, temp, 0.0), F.cross_entropy(s, y))
    # a student equal to its teacher pays only the hard-label term
    torch.testing.assert_close(distillation_loss(t, t, y, temp, 0.4), 0.6 * F.cross_entropy(t, y))
    # masked-LM shape: positions labelled -100 count in neither term
    s3, t3 = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    y3 = torch.tensor([[1, -100, 2, -100], [-100, 0, -100, -100]])
    keep = y3 != -100
    torch.testing.assert_close(distillation_loss(s3, t3, y3, temp, alpha),
                               distillation_loss(s3[keep], t3[keep], y3[keep], temp, alpha))
    distillation_loss(s, t, y, temp, alpha).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        distillation_loss(s, t, y, 0.0, alpha)
