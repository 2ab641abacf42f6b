"""A restricted unpickler for the Planetoid files, which exist only as Python 2 pickles, and the
NAS-Bench-Graph tables (``archlab.search.nasbench``), which are Python 3 pickles of plain dicts.

Unpickling runs code: a pickle names callables (``module.name``) and calls them with arguments of its
choosing, so ``pickle.load`` on a downloaded file can run ``os.system``. :class:`RestrictedUnpickler`
resolves names only from an allow-list (:data:`ALLOWED`) -- exactly what the Planetoid files
(``ind.<name>.{x,y,tx,ty,allx,ally,graph}``) contain -- and refuses anything else with
:class:`~archlab.errors.ArchlabError` before it is called:

========================================  =================================================
name in the file                          resolved to
========================================  =================================================
``numpy.ndarray``, ``numpy.dtype``        the numpy types (dense label arrays)
``numpy.core.multiarray._reconstruct``    numpy's array reconstructor (``numpy._core`` in 2.x)
``scipy.sparse.csr.csr_matrix``           :class:`CSRMatrix`, a local stand-in: scipy is not
                                          needed, and no scipy code runs
``collections.defaultdict``               the adjacency dict of lists
``__builtin__.list``                      its ``list`` default factory
========================================  =================================================

The NAS-Bench-Graph tables use a separate, smaller list (:data:`NASBENCH_ALLOWED`, passed as
``allowed=``): ``numpy.dtype`` and ``numpy.core.multiarray.scalar``, the latter resolved to
:func:`_numpy_scalar` (one numeric numpy scalar from its raw bytes), so a Planetoid read still refuses
``scalar`` and a table read refuses everything Planetoid needs.

None of these can reach the file system, the network or the interpreter; numpy refuses object
arrays whose pickled payload is raw bytes, and the elements of a list payload are resolved through
the same allow-list.
"""

from __future__ import annotations

import collections
import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArchlabError


class CSRMatrix:
    """What a pickled ``scipy.sparse.csr_matrix`` holds, captured without scipy.

    CSR layout: the non-zeros of row ``r`` are ``data[indptr[r]:indptr[r + 1]]`` in the columns
    ``indices[indptr[r]:indptr[r + 1]]``. The pickle creates the object empty (``NEWOBJ`` with no
    arguments) and then hands its ``__dict__`` to :meth:`__setstate__`; every other key of that
    dict (``format``, ``maxprint``, scipy's private flags) is ignored.

    Shapes:
        data: (nnz,) values; indices: (nnz,) int column ids; indptr: (rows + 1,) int offsets;
        shape: (rows, cols)
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"csr_matrix: expected a state dict, got {type(state).__name__}")
        arrays = {}
        for key in ("data", "indices", "indptr"):
            value = state.get(key)
            if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in "biuf":
                raise pickle.UnpicklingError(f"csr_matrix: {key!r} must be a 1-d numeric array")
            arrays[key] = value
        shape = state.get("_shape")
        if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise pickle.UnpicklingError(f"csr_matrix: '_shape' must be a pair of sizes, got {shape!r}")
        data, indices, indptr = arrays["data"], arrays["indices"], arrays["indptr"]
        if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
            raise pickle.UnpicklingError("csr_matrix: 'indices' and 'indptr' must be integer arrays")
        rows, cols = shape
        if (len(indptr) != rows + 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0)
                or indptr[-1] != len(indices) or len(data) != len(indices)
                or (len(indices) and (indices.min() < 0 or indices.max() >= cols))):
            raise pickle.UnpicklingError(f"csr_matrix: inconsistent CSR arrays for shape {shape}")
        self.data, self.indices, self.indptr, self.shape = data, indices, indptr, (rows, cols)

    @property
    def nnz(self) -> int:
        return len(self.data)

    def toarray(self) -> np.ndarray:
        """The dense (rows, cols) array; duplicate entries are summed, as scipy does."""
        out = np.zeros(self.shape, dtype=self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        np.add.at(out, (rows, self.indices.astype(np.int64)), self.data)
        return out

    def to_tensor(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense (rows, cols) tensor."""
        return torch.from_numpy(self.toarray()).to(dtype)


def _numpy_reconstruct() -> Any:
    # numpy 2 moved the C module to numpy._core; numpy.core still works there but warns on import.
    try:
        return importlib.import_module("numpy._core.multiarray")._reconstruct
    except ImportError:  # numpy 1.x
        return importlib.import_module("numpy.core.multiarray")._reconstruct


def _numpy_scalar(dtype: Any, payload: Any = None) -> Any:
    """numpy's scalar reconstructor, limited to numeric dtypes and a raw-bytes payload of the right size.

    ``numpy.core.multiarray.scalar(dtype('O'), obj)`` returns ``obj`` itself; refusing object (and any
    non-numeric) dtype keeps this name from smuggling anything the allow-list does not already permit.
    """
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc":
        raise pickle.UnpicklingError(f"numpy scalar: only numeric dtypes are allowed, got {dtype!r}")
    if not isinstance(payload, bytes) or len(payload) != dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy scalar: expected {dtype.itemsize} raw bytes for {dtype}")
    return np.frombuffer(payload, dtype=dtype)[0]


#: ``(module, name)`` as written in the pickle -> the object it resolves to. Both spellings of
#: renamed modules are listed (Python 2 ``__builtin__`` / 3 ``builtins``; scipy's ``csr`` /
#: ``_csr``; numpy's ``core`` / ``_core``) because :meth:`RestrictedUnpickler.find_class` sees the
#: names before Python's own Python-2 renaming.
ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("scipy.sparse.csr", "csr_matrix"): CSRMatrix,
    ("scipy.sparse._csr", "csr_matrix"): CSRMatrix,
    ("collections", "defaultdict"): collections.defaultdict,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}


#: The NAS-Bench-Graph tables (``{key: {"valid_perf": float, "perf": float, "latency": float, "para":
#: numpy.float64}}``): only the dtype and a numeric-only scalar reconstructor.
NASBENCH_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the names in ``allowed`` (default :data:`ALLOWED`,
    the Planetoid files'; :data:`NASBENCH_ALLOWED` for the NAS-Bench-Graph tables).

    ``source`` names the data in error messages (the file's path); ``kind`` names the file type.
    """

    def __init__(self, file: io.BufferedIOBase, source: str,
                 allowed: dict[tuple[str, str], Any] | None = None, kind: str = "Planetoid") -> None:
        # latin1: Python 2 str payloads (numpy's raw array bytes) must come back byte for byte.
        super().__init__(file, encoding="latin1")
        self.source = source
        self.allowed = ALLOWED if allowed is None else allowed
        self.kind = kind

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise ArchlabError(
                f"{self.source}: refusing to unpickle {module}.{name} (not a name the {self.kind} files use; "
                "the file may be corrupt or malicious)"
            ) from None


def loads(data: bytes, source: str = "<bytes>", allowed: dict[tuple[str, str], Any] | None = None,
          kind: str = "Planetoid") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``allowed``: its allow-list, default
    :data:`ALLOWED`).

    A name outside :data:`ALLOWED` raises ArchlabError naming it and ``source``; a malformed pickle
    raises ArchlabError naming ``source``.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), source, allowed, kind).load()
    # A refused name (ArchlabError) passes through. What broken pickles raise: bad opcodes,
    # truncation, and wrong arguments to the allowed callables.
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise ArchlabError(f"{source}: not a valid pickle of the expected data ({type(exc).__name__}: {exc})") from None


def load(path: Path, allowed: dict[tuple[str, str], Any] | None = None, kind: str = "Planetoid") -> Any:
    """Unpickle the file at ``path`` with :func:`loads`."""
    path = Path(path)
    return loads(path.read_bytes(), str(path), allowed, kind)
