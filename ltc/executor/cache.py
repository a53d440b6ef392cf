"""The cache of captured sampling graphs: keys, object identities, and least-recently-used eviction.

A captured graph reads its state buffers, the model weights, the keyword tensors and the random
generator *by address*.  Its cache key is therefore

    (plan fingerprint, mode, shape, dtype, device, ops backend, finite check,
     model identities, model_kwargs signature, generator identity, capture backend)

and an entry is only used for the very objects it was captured with, unchanged: it keeps
references to the model callables and the generator (weak ones where possible: a remembered
failure must not keep a model alive; a captured walk holds its models anyway, because its graphs
read their weights by address), and the addresses of the parameters and buffers of the
``torch.nn.Module`` s it can see (the callable itself, the instance of a bound method, or a module
held in an attribute of the callable).  A dead reference, another object at a reused ``id``, or a
moved weight (``model.to(...)``, ``.half()``) makes the entry stale: it is dropped and the walk
is captured again.

Pass the same callable objects to reuse graphs: a fresh ``lambda`` per call is a new identity
and is captured again every time (the cache holds at most ``capacity`` entries).
"""
from __future__ import annotations

import inspect
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .capture import GraphCaptureError


def _referent(obj):
    """A callable returning ``obj``: a weak reference when possible, else a strong one."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _parts(obj) -> tuple:
    # a bound method is a new object at every attribute access: identify it by (instance, function)
    return (obj.__self__, obj.__func__) if inspect.ismethod(obj) else (obj,)


def _modules(fn) -> list[torch.nn.Module]:
    found = [p for p in _parts(fn) if isinstance(p, torch.nn.Module)]
    if not found and hasattr(fn, "__dict__") and not inspect.isfunction(fn):
        found = [v for v in vars(fn).values() if isinstance(v, torch.nn.Module)]
    return found


def weight_addresses(fn) -> tuple:
    """Addresses of the parameters and buffers of the modules visible from ``fn`` (see above)."""
    return tuple(t.data_ptr() for m in _modules(fn) for t in (*m.parameters(), *m.buffers()))


@dataclass(frozen=True, eq=False)
class Identity:
    """Who a cache entry was captured for: ``key`` (hashable, part of the cache key), the
    references to check on a hit, and the weight addresses at capture time."""

    key: tuple
    refs: tuple
    weights: tuple

    def matches(self, other: "Identity") -> bool:
        """The referenced objects are alive, are the same objects, and their weights did not move."""
        return self.weights == other.weights and all(ref() is obj() for ref, obj in zip(self.refs, other.refs))


def identify(fns, generator=None) -> Identity:
    """The identity of the model callables ``fns`` (and of ``generator``, or None)."""
    parts = [p for fn in fns for p in _parts(fn)] + ([generator] if generator is not None else [])
    weights = tuple(weight_addresses(fn) for fn in fns)
    return Identity(tuple(id(p) for p in parts), tuple(_referent(p) for p in parts), weights)


def kwargs_signature(kwargs: dict) -> tuple:
    """Hashable description of ``model_kwargs``: tensors by (shape, dtype, device) -- their values
    are copied into static buffers before every replay -- and other values by value."""
    signature = []
    for name in sorted(kwargs):
        value = kwargs[name]
        if isinstance(value, torch.Tensor):
            signature.append((name, "tensor", tuple(value.shape), str(value.dtype), str(value.device)))
            continue
        try:
            hash(value)
        except TypeError:
            raise GraphCaptureError(
                f"model_kwargs[{name!r}] is a {type(value).__name__}: a captured model can only take tensors "
                "(copied into static buffers before every replay) and hashable constants") from None
        signature.append((name, "value", type(value).__qualname__, value))
    return tuple(signature)


class GraphCache:
    """Least-recently-used map ``key -> value`` whose entries are checked against an
    :class:`Identity` on every lookup (stale entries are dropped)."""

    def __init__(self, capacity: int = 8):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self._entries: OrderedDict = OrderedDict()

    def get(self, key: tuple, identity: Identity):
        """The value stored for ``key`` if it was captured for ``identity``, else None."""
        full = (key, identity.key)
        found = self._entries.get(full)
        if found is None:
            return None
        stored_identity, value = found
        if not stored_identity.matches(identity):
            del self._entries[full]
            return None
        self._entries.move_to_end(full)
        return value

    def put(self, key: tuple, identity: Identity, value) -> None:
        full = (key, identity.key)
        self._entries[full] = (identity, value)
        self._entries.move_to_end(full)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def values(self) -> list:
        return [value for _, value in self._entries.values()]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
