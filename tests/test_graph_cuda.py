"""Graph models on CUDA give what they give on CPU (forward and gradients), also through the sparse fast
paths, and run under bf16 autocast. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

import archlab
from archlab.models.graph.base import random_graph

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NODE_MODELS = ["gcn", "gat", "sage", "chebnet", "hgnn", "rgcn", "slgcn", "graph_transformer"]


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("name", NODE_MODELS + ["gat_v2"])
def test_cuda_matches_cpu(name: str, sparse: bool):
    kwargs = {"v2": True} if name == "gat_v2" else {}
    model_name = "gat" if name == "gat_v2" else name
    torch.manual_seed(0)
    x, ei = random_graph(40, 12, seed=1)
    x = torch.relu(x)
    cpu = archlab.create(model_name, in_channels=12, out_channels=5, **kwargs).eval()
    if sparse and not cpu.accepts_sparse:
        pytest.skip(f"{model_name} takes dense features")
    gpu = archlab.create(model_name, in_channels=12, out_channels=5, **kwargs).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    xin = x.to_sparse_csr() if sparse else x
    out_cpu = cpu(xin, ei)
    out_gpu = gpu(xin.cuda(), ei.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(out_cpu)
    (out_cpu * g).sum().backward()
    (out_gpu * g.cuda()).sum().backward()
    for (n, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad.cpu(), a.grad, atol=1e-4, rtol=1e-3, msg=lambda m, n=n: f"{n}: {m}")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu.train()(xin.cuda(), ei.cuda())
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()


def test_graph_level_models_on_cuda():
    from archlab.graph import Graph, batch_graphs

    graphs = [Graph(*random_graph(n, 6, seed=n), y=torch.tensor([n % 2])) for n in (5, 7, 9)]
    b = batch_graphs(graphs).to("cuda")
    for name in ("gin", "mpnn"):
        torch.manual_seed(0)
        cpu = archlab.create(name, in_channels=6, out_channels=2).eval()
        gpu = archlab.create(name, in_channels=6, out_channels=2).eval()
        gpu.load_state_dict(cpu.state_dict())
        gpu = gpu.cuda()
        bc = b.to("cpu")
        torch.testing.assert_close(gpu(b.x, b.edge_index, batch=b.batch).cpu(),
                                   cpu(bc.x, bc.edge_index, batch=bc.batch), atol=1e-4, rtol=1e-4)
