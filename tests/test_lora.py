"""LoRA (archlab/nn/lora.py): equal to peft's LoRA on a tiny Hugging Face GPT-2 loaded through ``from_hf``
(outputs, adapter gradients, merged weights), merge/unmerge, injection by name into GPT and BERT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archlab
from archlab.nn.lora import (
    LoRAConfig,
    LoRALinear,
    count_trainable,
    inject_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
    set_merged,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# archlab GPT module -> GPT-2 module (peft target names)
PAIRS = {"attn.qkv": "attn.c_attn", "attn.out": "attn.c_proj", "ffn.fc1": "mlp.c_fc"}


def _hf_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                                  attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    return hf


def test_equal_to_peft_outputs_gradients_and_merged_weights(tmp_path):
    peft = pytest.importorskip("peft")
    hf = _hf_gpt2(tmp_path)
    ours = archlab.from_hf(tmp_path).eval()
    rank, alpha = 4, 12.0
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                     target_modules=list(PAIRS.values()), fan_in_fan_out=True))
    adapted = inject_lora(ours, LoRAConfig(rank=rank, alpha=alpha, targets=list(PAIRS)))
    assert len(adapted) == 2 * len(PAIRS)
    # B starts at zero in both, so give both the same random A and B (peft: A [r, in], B [out, r] as ours).
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for i in range(2):
            for mine, hf_name in PAIRS.items():
                ml = ours.get_submodule(f"layers.{i}.{mine}")
                tl = theirs.base_model.model.transformer.h[i].get_submodule(hf_name)
                ml.lora_A.copy_(torch.randn(ml.lora_A.shape, generator=g) * 0.3)
                ml.lora_B.copy_(torch.randn(ml.lora_B.shape, generator=g) * 0.3)
                tl.lora_A["default"].weight.copy_(ml.lora_A)
                tl.lora_B["default"].weight.copy_(ml.lora_B)
    ids = torch.randint(0, 97, (3, 16), generator=g)
    target = torch.randint(0, 97, (3, 16), generator=g)
    ours_logits, theirs_logits = ours(ids), theirs(input_ids=ids).logits
    assert (ours_logits - theirs_logits).abs().max() <= 1e-5
    F.cross_entropy(ours_logits.flatten(0, 1), target.flatten()).backward()
    F.cross_entropy(theirs_logits.flatten(0, 1), target.flatten()).backward()
    for i in range(2):
        for mine, hf_name in PAIRS.items():
            ml = ours.get_submodule(f"layers.{i}.{mine}")
            tl = theirs.base_model.model.transformer.h[i].get_submodule(hf_name)
            assert (ml.lora_A.grad - tl.lora_A["default"].weight.grad).abs().max() <= 1e-5
            assert (ml.lora_B.grad - tl.lora_B["default"].weight.grad).abs().max() <= 1e-5
    # only the adapters train, in both
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        f"layers.{i}.{m}.lora_{x}" for i in range(2) for m in PAIRS for x in "AB"}
    assert count_trainable(ours)[0] == sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    # merged weights equal peft's merge_and_unload (GPT-2's Conv1D stores [in, out]: transpose)
    merged_hf = theirs.merge_and_unload()
    merge_lora(ours)
    assert not lora_layers(ours)
    for i in range(2):
        for mine, hf_name in PAIRS.items():
            w = ours.get_submodule(f"layers.{i}.{mine}").weight
            ref = merged_hf.transformer.h[i].get_submodule(hf_name).weight.t()
            assert type(ours.get_submodule(f"layers.{i}.{mine}")) is nn.Linear
            assert (w - ref).abs().max() <= 1e-5
    with torch.no_grad():
        assert (ours(ids) - merged_hf(input_ids=ids).logits).abs().max() <= 1e-5


def test_starts_as_the_frozen_layer_and_merge_unmerge_round_trip():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    x = torch.randn(5, 12)
    ref = base(x).detach()
    w0 = base.weight.detach().clone()
    layer = LoRALinear.from_linear(base, rank=3, alpha=6.0)
    assert layer.weight is base.weight and not layer.weight.requires_grad  # shared, frozen
    assert torch.equal(layer(x), ref)  # B = 0
    with torch.no_grad():
        layer.lora_B.normal_()
    unmerged = layer(x).detach()
    assert torch.allclose(unmerged, ref + (x @ layer.lora_A.t() @ layer.lora_B.t()) * 2.0, atol=1e-5)
    layer.merge()
    assert layer.merged and torch.allclose(layer(x), unmerged, atol=1e-5)
    assert torch.allclose(layer.weight, w0 + 2.0 * layer.lora_B @ layer.lora_A, atol=1e-6)
    layer.unmerge()
    assert torch.allclose(layer.weight, w0, atol=1e-6) and torch.allclose(layer(x), unmerged, atol=1e-5)
    plain = layer.to_linear()
    assert type(plain) is nn.Linear and torch.allclose(plain(x), unmerged, atol=1e-5)


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_initialization_follows_peft(init):
    torch.manual_seed(0)
    layer = LoRALinear.from_linear(nn.Linear(400, 50), rank=8, alpha=8.0, init=init)
    a = layer.lora_A.detach()
    assert torch.count_nonzero(layer.lora_B) == 0
    if init == "kaiming":  # nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in))
        assert a.abs().max() <= 1 / 400 ** 0.5 and a.std().item() == pytest.approx(1 / (3 * 400) ** 0.5, rel=0.1)
    else:  # N(0, 1/r^2)
        assert a.std().item() == pytest.approx(1 / 8, rel=0.1)


def test_gpt_lora_trains_only_adapters_and_merges_to_a_plain_gpt(tmp_path):
    torch.manual_seed(0)
    gpt = archlab.create("gpt", vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
    keys = set(gpt.state_dict())
    ids = torch.randint(0, 50, (2, 16))
    before = gpt(ids).detach()
    names = inject_lora(gpt, LoRAConfig(rank=2, alpha=4.0, dropout=0.1))
    assert names == ["layers.0.attn.qkv", "layers.0.attn.out", "layers.1.attn.qkv", "layers.1.attn.out"]
    assert set(gpt.state_dict()) == keys | set(lora_state_dict(gpt))  # base keys unchanged: init_from works
    gpt.eval()
    assert torch.equal(gpt(ids), before)
    trainable, total = count_trainable(gpt)
    assert trainable == 2 * (2 * (32 + 96) + 2 * (32 + 32))
    opt = torch.optim.SGD([p for p in gpt.parameters() if p.requires_grad], lr=0.5)
    gpt.train()
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(gpt(ids).flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
        opt.step()
    gpt.eval()
    with torch.no_grad():
        adapted = gpt(ids)
        assert not torch.allclose(adapted, before)
        set_merged(gpt, True)
        assert torch.allclose(gpt(ids), adapted, atol=1e-5)
        set_merged(gpt, False)
        merge_lora(gpt)
        assert torch.allclose(gpt(ids), adapted, atol=1e-5)
    assert set(gpt.state_dict()) == keys
    gpt.save_pretrained(tmp_path)
    assert torch.allclose(archlab.load(tmp_path)(ids), adapted, atol=1e-5)


def test_bert_injection_by_name():
    torch.manual_seed(0)
    bert = archlab.create("bert", vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32).eval()
    names = inject_lora(bert, LoRAConfig(rank=2, targets=["attn.qkv", "ffn.fc1"]))
    assert names and all(n.endswith(("attn.qkv", "ffn.fc1")) for n in names)
    with pytest.raises(ValueError, match="no Linear layer matches targets"):
        inject_lora(bert, LoRAConfig(targets=["q_proj"]))


# ------------------------------------------------------------------------------ the lm_finetune loop
FT = {
    "name": "lora_tiny", "seed": 0,
    "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "bias": False},
    "data": {"name": "text_toy", "batch_size": 8,
             "options": {"pattern": "the quick brown fox jumps over the lazy dog.\n", "repeats": 60}},
    "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0},
    "train": {"loop": "lm_finetune", "steps": 8, "eval_every": 4, "log_every": 2, "checkpoint_every": 6},
    "loop": {"eval_iters": 2, "pretrain_steps": 8, "split": 0.5, "lora_rank": 2, "lora_alpha": 4.0},
}


def _train(raw, out, resume=False):
    import copy

    from archlab.recipe import from_dict
    from archlab.runner import train

    return train(from_dict(copy.deepcopy(raw)), out=out, resume=resume, progress=False, log=lambda _m: None)


def test_lm_finetune_lora_run_shares_pretraining_with_full_finetuning_and_resumes(tmp_path, assert_resume_exact):
    lora = _train(FT, tmp_path / "lora")["metrics"]
    full = _train({**FT, "loop": {**FT["loop"], "lora_rank": 0}}, tmp_path / "fullft")["metrics"]
    # the pretraining phase is the same run in both; then only the adapters (or every weight) train
    assert lora["pretrained_val_loss"] == full["pretrained_val_loss"]
    n = archlab.load(tmp_path / "fullft").num_parameters()
    assert full["trainable_params"] == n and full["trainable_fraction"] == 1.0
    assert lora["trainable_params"] == 2 * (2 * (32 + 96) + 2 * (32 + 32))
    assert lora["trainable_fraction"] == pytest.approx(lora["trainable_params"] / n)
    assert lora["val_loss"] < lora["pretrained_val_loss"]
    # the saved model is a plain GPT with the adapters merged in: same keys as the pretrained architecture
    saved = archlab.load(tmp_path / "lora")
    assert not lora_layers(saved) and set(saved.state_dict()) == set(archlab.load(tmp_path / "fullft").state_dict())
    assert (tmp_path / "lora" / "samples.txt").is_file()
    # cut back to the checkpoint in the pretraining phase (step 6): LoRA is injected on the way, exactly
    assert_resume_exact(FT)


def test_lm_finetune_from_init_from_run(tmp_path):
    pre = {**FT, "train": {**FT["train"], "loop": "lm"}, "loop": {"eval_iters": 2}}
    _train(pre, tmp_path / "pre")
    raw = {**FT, "train": {**FT["train"], "init_from": str(tmp_path / "pre")},
           "loop": {"eval_iters": 2, "split": 0.0, "lora_rank": 2, "lora_targets": ["ffn.fc1"]}}
    m = _train(raw, tmp_path / "ft")["metrics"]
    assert m["trainable_params"] == 2 * 2 * (32 + 128) and m["val_loss"] < m["pretrained_val_loss"]


@pytest.mark.parametrize("loop, match", [
    ({"pretrain_steps": 5, "split": 0.0}, "split must be in"),
    ({"lora_rank": 2, "lora_targets": []}, "targets must name"),
    ({"lora_rank": -1}, "lora_rank must be >= 0"),
])
def test_lm_finetune_bad_loop_table(loop, match):
    from archlab.errors import ArchlabError
    from archlab.recipe import from_dict

    with pytest.raises(ArchlabError, match=match):
        from_dict({**FT, "loop": loop})


def test_lm_finetune_unknown_targets_are_one_line(tmp_path):
    from archlab.errors import ArchlabError

    with pytest.raises(ArchlabError, match="loop.lora_targets: no Linear layer matches"):
        _train({**FT, "loop": {**FT["loop"], "lora_targets": ["q_proj"]}}, tmp_path / "bad")
