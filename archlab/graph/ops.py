"""Graph operations in pure PyTorch: scatter/segment reductions, self loops, degrees, normalization,
dense and sparse (CSR) adjacency. No compiled extensions.

Every function takes ``edge_index`` in the convention of :mod:`archlab.graph.structure`
(row 0 = source ``j``, row 1 = target ``i``).
"""

from __future__ import annotations

import warnings
from typing import Literal, NamedTuple

import torch
from torch import Tensor

Reduce = Literal["sum", "mean", "max", "min"]

# CSR matmul is stable for what archlab uses it for (CSR @ dense, differentiable in the dense side).
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def scatter(src: Tensor, index: Tensor, dim_size: int, reduce: Reduce = "sum") -> Tensor:
    """Reduce rows of ``src`` into ``dim_size`` buckets: ``out[k] = reduce_{e : index[e] = k} src[e]``.

    Empty buckets are 0 for every reduction (also for max/min, as in PyG).

    Shapes:
        src: (E, *D), index: (E,) int64 in [0, dim_size) -> (dim_size, *D)
    """
    shape = (dim_size, *src.shape[1:])
    if reduce == "sum":
        return src.new_zeros(shape).index_add_(0, index, src)
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    if reduce == "mean":
        out = src.new_zeros(shape).index_add_(0, index, src)
        count = torch.bincount(index, minlength=dim_size).clamp_(min=1).to(src.dtype)
        return out / count.view(-1, *([1] * (src.dim() - 1)))
    if reduce in ("max", "min"):
        op = "amax" if reduce == "max" else "amin"
        return src.new_zeros(shape).scatter_reduce_(0, idx, src, reduce=op, include_self=False)
    raise ValueError(f"unknown reduction {reduce!r}; choose sum, mean, max or min")


def segment_softmax(scores: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Softmax of ``scores`` over the entries that share an ``index`` (e.g. the edges into one node).

    Shapes:
        scores: (E, *H), index: (E,) -> (E, *H); entries with the same index sum to 1.
    """
    idx = index.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)
    shape = (dim_size, *scores.shape[1:])
    peak = scores.new_full(shape, float("-inf")).scatter_reduce_(0, idx, scores.detach(), "amax", include_self=True)
    exp = (scores - peak.gather(0, idx)).exp()
    denom = scores.new_zeros(shape).index_add_(0, index, exp)
    return exp / denom.gather(0, idx)


def degree(index: Tensor, num_nodes: int, weight: Tensor | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """How often each node occurs in ``index`` (weighted by ``weight`` when given). Shape (num_nodes,)."""
    if weight is None:
        return torch.bincount(index, minlength=num_nodes).to(dtype)
    return torch.zeros(num_nodes, dtype=weight.dtype, device=weight.device).index_add_(0, index, weight)


def remove_self_loops(edge_index: Tensor, edge_attr: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    keep = edge_index[0] != edge_index[1]
    return edge_index[:, keep], (edge_attr[keep] if edge_attr is not None else None)


def add_self_loops(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None,
                   fill_value: float = 1.0) -> tuple[Tensor, Tensor | None]:
    """Append one loop ``i -> i`` per node (existing loops are kept: call :func:`remove_self_loops` first
    for exactly one). Loop weights are ``fill_value`` when ``edge_weight`` is given."""
    loops = torch.arange(num_nodes, device=edge_index.device).repeat(2, 1)
    out = torch.cat([edge_index, loops], dim=1)
    if edge_weight is None:
        return out, None
    fill = edge_weight.new_full((num_nodes, *edge_weight.shape[1:]), fill_value)
    return out, torch.cat([edge_weight, fill])


def coalesce(edge_index: Tensor, num_nodes: int, edge_attr: Tensor | None = None,
             reduce: Reduce = "sum") -> tuple[Tensor, Tensor | None]:
    """Sort edges by (target, source) and merge duplicates (their ``edge_attr`` reduced by ``reduce``)."""
    key = edge_index[1] * num_nodes + edge_index[0]
    unique, inverse = torch.unique(key, sorted=True, return_inverse=True)
    out = torch.stack([unique % num_nodes, unique // num_nodes])
    if edge_attr is None:
        return out, None
    return out, scatter(edge_attr, inverse, len(unique), reduce)


def to_undirected(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Add every missing reverse edge; duplicates removed, sorted as by :func:`coalesce`."""
    both = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    return coalesce(both, num_nodes)[0]


def is_undirected(edge_index: Tensor, num_nodes: int) -> bool:
    a = coalesce(edge_index, num_nodes)[0]
    b = coalesce(edge_index.flip(0), num_nodes)[0]
    return a.shape == b.shape and bool(torch.equal(a, b))


def gcn_norm(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None,
             add_loops: bool = True) -> tuple[Tensor, Tensor]:
    """Symmetric normalization of Kipf & Welling (2017): ``Â = D̃^-1/2 (A + I) D̃^-1/2``.

    Returns ``(edge_index, w)`` with ``w[e] = 1 / sqrt(deg(j) deg(i))`` for edge ``e = j -> i``,
    degrees counted on the target side after adding the self loops (each node gets exactly one).
    """
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.shape[1], device=edge_index.device)
    if add_loops:
        edge_index, edge_weight = remove_self_loops(edge_index, edge_weight)
        edge_index, edge_weight = add_self_loops(edge_index, num_nodes, edge_weight, 1.0)
    deg = degree(edge_index[1], num_nodes, edge_weight)
    inv_sqrt = deg.pow(-0.5).masked_fill_(deg == 0, 0.0)
    return edge_index, inv_sqrt[edge_index[0]] * edge_weight * inv_sqrt[edge_index[1]]


def to_dense_adj(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None) -> Tensor:
    """Dense ``(N, N)`` matrix ``A[i, j] = sum of the weights of edges j -> i`` (target row, source column),
    so ``A @ X`` aggregates source features into targets."""
    w = edge_weight if edge_weight is not None else torch.ones(edge_index.shape[1], device=edge_index.device)
    adj = torch.zeros(num_nodes * num_nodes, dtype=w.dtype, device=w.device)
    adj.index_add_(0, edge_index[1] * num_nodes + edge_index[0], w)
    return adj.view(num_nodes, num_nodes)


def to_csr(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None,
           num_cols: int | None = None) -> Tensor:
    """Sparse CSR ``(N, num_cols)`` with the layout of :func:`to_dense_adj` (duplicates summed).

    ``num_cols`` (default ``num_nodes``) lets bipartite blocks (sampled mini-batches) have fewer
    target rows than source columns: row = target, column = source.
    """
    cols = num_nodes if num_cols is None else num_cols
    w = edge_weight if edge_weight is not None else torch.ones(edge_index.shape[1], device=edge_index.device)
    key = edge_index[1] * cols + edge_index[0]
    unique, inverse = torch.unique(key, sorted=True, return_inverse=True)
    values = torch.zeros(len(unique), dtype=w.dtype, device=w.device).index_add_(0, inverse, w)
    rows, col = unique // cols, unique % cols
    crow = torch.zeros(num_nodes + 1, dtype=torch.long, device=w.device)
    crow[1:] = torch.bincount(rows, minlength=num_nodes).cumsum(0)
    return torch.sparse_csr_tensor(crow, col, values, (num_nodes, cols), check_invariants=False)


class SparseAdj(NamedTuple):
    """A sparse CSR matrix together with its transpose (also CSR).

    ``adj @ x`` is cheap in CSR, but autograd's backward needs ``adj.T @ grad``, and PyTorch builds that
    transpose by converting and sorting the matrix on every backward pass. Keeping the transpose (built
    once, next to the matrix) makes the backward as cheap as the forward. For a symmetric matrix (the
    normalized adjacency of an undirected graph) both fields may hold the same tensor.
    """

    csr: Tensor
    csr_t: Tensor

    @staticmethod
    def build(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None,
              num_cols: int | None = None) -> SparseAdj:
        """Like :func:`to_csr` (row = target, column = source), plus the transpose."""
        cols = num_nodes if num_cols is None else num_cols
        return SparseAdj(to_csr(edge_index, num_nodes, edge_weight, cols),
                         to_csr(edge_index.flip(0), cols, edge_weight, num_nodes))


class _SpMM(torch.autograd.Function):
    """``A @ x`` with a precomputed ``A.T`` for the backward pass (no gradient for ``A``'s values)."""

    @staticmethod
    def forward(ctx, a: Tensor, a_t: Tensor, x: Tensor) -> Tensor:
        ctx.a_t = a_t
        return a @ x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:
        return None, None, ctx.a_t @ grad


def spmm(adj: Tensor | SparseAdj, x: Tensor) -> Tensor:
    """``adj @ x`` for a :class:`SparseAdj`, a sparse CSR or a dense ``adj``; differentiable in ``x``.

    With a :class:`SparseAdj` the backward uses the stored transpose; mixed dtypes (bf16 ``x`` under
    autocast, fp32 matrix) are computed in fp32 and cast back.
    """
    matrix = adj.csr if isinstance(adj, SparseAdj) else adj
    if matrix.layout != torch.sparse_csr:
        return matrix @ x
    dtype = x.dtype
    # The sparse kernels have no bf16/fp16 variant: run them in the matrix's precision with autocast off.
    with torch.autocast(x.device.type, enabled=False):
        if dtype != matrix.dtype:
            x = x.to(matrix.dtype)
        if isinstance(adj, SparseAdj) and x.requires_grad:
            out = _SpMM.apply(adj.csr, adj.csr_t, x)
        else:
            out = matrix @ x
    return out.to(dtype)


#: Dense node features with fewer non-zeros than this fraction of their entries take the sparse path.
SPARSE_FEATURES_BELOW = 0.25


def sparse_features(x: Tensor, below: float = SPARSE_FEATURES_BELOW) -> Tensor:
    """``x`` as a sparse CSR tensor if it is a dense float matrix with fewer than ``below * x.numel()``
    non-zeros (bag-of-words node features); otherwise ``x`` itself.

    Why: the first layer of a node model reads ``x`` three times per step (input dropout, ``x W``, and
    ``x.T @ grad`` for the weight gradient). On Cora (1.3% non-zero) the CSR path does that work for the
    non-zeros only, which makes a GCN training step about 18x faster. The result is the same function
    (:func:`linear` and :func:`dropout` accept both layouts). ``x`` that requires grad stays dense: the
    sparse path computes no gradient for the features.

    Shapes: x: (N, F) -> (N, F), strided or sparse CSR
    """
    if x.layout != torch.strided or x.dim() != 2 or not x.is_floating_point() or x.requires_grad \
            or x.numel() == 0 or int(torch.count_nonzero(x)) >= below * x.numel():
        return x
    return x.to_sparse_csr()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` for a dense or sparse CSR ``x`` (bag-of-words node features stay sparse).

    Shapes: x: (N, F_in) dense or CSR, weight: (F_out, F_in) -> (N, F_out)
    """
    if x.layout == torch.sparse_csr:
        # No bf16 sparse kernels: the sparse product runs in the features' precision, autocast off.
        with torch.autocast(weight.device.type, enabled=False):
            w = weight.to(x.dtype)
            out = _SparseLinear.apply(x, _transposed(x), w) if w.requires_grad else torch.sparse.mm(x, w.t())
        return out if bias is None else out + bias
    out = x @ weight.t()
    return out if bias is None else out + bias


class _TransposeLayout:
    """The CSR layout of ``x.T`` for one sparsity pattern: ``x.T`` has values ``x.values()[perm]``.
    Sparse features keep their pattern (dropout only zeroes stored values), so this is built once."""

    def __init__(self) -> None:
        self.crow: Tensor | None = None  # held (with col) so their storage, the cache key, cannot be reused
        self.col: Tensor | None = None
        self.value: tuple[Tensor, Tensor, Tensor] | None = None

    def get(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        crow, col = x.crow_indices(), x.col_indices()
        if self.crow is None or crow.data_ptr() != self.crow.data_ptr() or crow.shape != self.crow.shape \
                or col.data_ptr() != self.col.data_ptr() or col.shape != self.col.shape:
            rows = torch.repeat_interleave(torch.arange(x.shape[0], device=x.device), crow.diff())
            perm = torch.argsort(col * x.shape[0] + rows, stable=True)
            crow_t = torch.zeros(x.shape[1] + 1, dtype=crow.dtype, device=x.device)
            crow_t[1:] = torch.bincount(col, minlength=x.shape[1]).cumsum(0)
            self.crow, self.col, self.value = crow, col, (crow_t, rows[perm].to(col.dtype), perm)
        return self.value


_TRANSPOSE = _TransposeLayout()


def _transposed(x: Tensor) -> Tensor:
    crow_t, col_t, perm = _TRANSPOSE.get(x)
    return torch.sparse_csr_tensor(crow_t, col_t, x.values()[perm], (x.shape[1], x.shape[0]), check_invariants=False)


class _SparseLinear(torch.autograd.Function):
    """``x @ W.T`` for sparse CSR ``x``; the backward ``grad_W = (x.T @ grad).T`` uses a prepared ``x.T``
    (PyTorch would convert and sort ``x`` on every backward pass). No gradient for ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor, x_t: Tensor, weight: Tensor) -> Tensor:
        ctx.x_t = x_t
        return torch.sparse.mm(x, weight.t())

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:
        return None, None, (ctx.x_t @ grad).t()


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout for dense or sparse CSR tensors (see :func:`sparse_dropout`).

    Dense tensors: each entry kept with probability ``1 - p`` and scaled by ``1 / (1 - p)`` -- the same
    function as ``F.dropout``, but drawing the mask with ``rand`` (about 2x faster on CPU than the
    Bernoulli kernel; this matters for wide node-feature matrices).
    """
    if not training or p == 0.0:
        return x
    if x.layout == torch.sparse_csr:
        return sparse_dropout(x, p, training)
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = torch.rand_like(x) >= p
    return x * keep * (1.0 / (1.0 - p))


def sparse_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout of a sparse CSR tensor's stored values (zeros stay zero, so this is the same function as
    dense dropout on the densified tensor, at the cost of the non-zeros only)."""
    if not training or p == 0.0:
        return x
    values = torch.nn.functional.dropout(x.values(), p, True)
    return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), values, x.shape, check_invariants=False)


def laplacian_eigenvectors(edge_index: Tensor, num_nodes: int, k: int) -> Tensor:
    """The ``k`` eigenvectors of the normalized Laplacian ``I - D^-1/2 A D^-1/2`` with the smallest
    non-trivial eigenvalues (dense eigendecomposition: fine for small graphs). Shape (N, k); columns
    beyond N - 1 are zero. Signs are arbitrary (flip them at random during training)."""
    ei, w = gcn_norm(edge_index, num_nodes, add_loops=False)
    lap = torch.eye(num_nodes) - to_dense_adj(ei.cpu(), num_nodes, w.cpu()).double()
    _, vecs = torch.linalg.eigh(lap)
    out = torch.zeros(num_nodes, k, dtype=torch.float32)
    take = min(k, num_nodes - 1)
    out[:, :take] = vecs[:, 1:1 + take].float()
    return out.to(edge_index.device)


def random_walk_pe(edge_index: Tensor, num_nodes: int, k: int) -> Tensor:
    """Random-walk positional encoding: ``pe[i, t] = (P^(t+1))[i, i]`` for ``t < k``, ``P = D^-1 A``.
    Shape (N, k). Sparse matmuls, so it scales to large graphs."""
    deg = degree(edge_index[1], num_nodes)
    w = 1.0 / deg.clamp(min=1)[edge_index[1]]
    walk = to_csr(edge_index, num_nodes, w)  # row i: 1/deg(i) on each neighbour
    cur = walk.to_dense() if num_nodes <= 4096 else None
    out = []
    if cur is not None:
        for _ in range(k):
            out.append(torch.diagonal(cur))
            cur = walk @ cur
        return torch.stack(out, dim=1)
    # Large graphs: diag(P^t) one node block at a time.
    pe = torch.zeros(num_nodes, k)
    for start in range(0, num_nodes, 1024):
        cols = torch.arange(start, min(start + 1024, num_nodes), device=edge_index.device)
        block = torch.zeros(num_nodes, len(cols))
        block[cols, torch.arange(len(cols))] = 1.0
        for t in range(k):
            block = walk @ block
            pe[cols, t] = block[cols, torch.arange(len(cols))]
    return pe
