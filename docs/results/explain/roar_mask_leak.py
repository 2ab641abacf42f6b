"""ROAR mask-leak check (docs/explain.md, ROAR on the ViT): retrain the run's ViT architecture on images that are
the removal mask only (1 on the top-t% pixels of the Integrated Gradients map for the true class, 0 elsewhere),
same 2000 / 400 digits, 6 epochs, seed 0 and map settings as the ROAR table; a random ranking as the control.

Run from the project root (needs runs/explain_vit, see docs/explain.md); output as in roar_mask_leak.txt:

    ARCHLAB_DATA=/work/shared/datasets OMP_NUM_THREADS=1 .venv/bin/python docs/results/explain/roar_mask_leak.py
"""

import argparse
import time

import torch

from archlab import config
from archlab.explain.command import _load, maps
from archlab.explain.roar import in_batches, remove_top, retrain_accuracy
from archlab.registry import create


def main() -> None:
    torch.set_num_threads(1)
    model, data, _ = _load("runs/explain_vit")
    cfg = config.to_dict(model.config)
    n = 2000
    train_x, train_y, test_x, test_y = data.train.x[:n], data.train.y[:n], data.test.x[:400], data.test.y[:400]
    background = float(data.train.x[:1024].min())
    args = argparse.Namespace(steps=16, samples=128, seed=0, layer=None, shap_background=16, shap_samples=None)
    t0 = time.perf_counter()

    def ig(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return maps(model, x, y, "integrated_gradients", background, args)

    rankings = {"integrated_gradients": (in_batches(ig, train_x, train_y), in_batches(ig, test_x, test_y))}
    gen = torch.Generator().manual_seed(0)
    rankings["random"] = (torch.rand(train_x.shape, generator=gen), torch.rand(test_x.shape, generator=gen))
    print("maps", time.perf_counter() - t0, flush=True)
    one = torch.tensor([1.0])
    for name, (a_train, a_test) in rankings.items():
        for f in (0.1, 0.5):
            # 0 everywhere except 1 on the removed pixels: the mask and nothing else
            mask_train = remove_top(torch.zeros_like(train_x), a_train, f, one)
            mask_test = remove_top(torch.zeros_like(test_x), a_test, f, one)
            acc = retrain_accuracy(lambda: create(model.registry_name, **cfg), mask_train, train_y, mask_test, test_y,
                                   epochs=6)
            print(f"mask only, {name}, {f:.0%} removed: test accuracy {acc:.3f}", flush=True)


if __name__ == "__main__":
    main()
