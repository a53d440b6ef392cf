"""The cache of captured sampling graphs: keys, object identities, and least-recently-used eviction.

A captured graph reads its state buffers, the model weights, the keyword tensors and the random
generator *by address*.  Its cache key is therefore

    (plan fingerprint, mode, shape, dtype, device, ops backend, finite check, ambient numerics,
     model identities, model_kwargs signature, generator identity, capture backend)

and an entry is only used for the very objects it was captured with: it keeps references to the
model callables and the generator (weak ones where possible: a remembered failure must not keep a
model alive), and the identity and address of every tensor the callables can reach
(:func:`reachable_tensors`): parameters, buffers and tensor attributes of every ``torch.nn.Module``
found by :func:`ltc.io.weight_holders` -- in the callable itself, the instance of a bound method,
an :class:`ltc.Model`'s function, the function, arguments and keywords of a ``functools.partial``,
a function's closure cells, ``__wrapped__`` and the globals its code names, and the attributes of
plain objects, a few levels deep.  A captured walk also holds those tensors strongly, so their memory cannot be reused by
another tensor while its graphs may read it.

What is checked, and what is frozen at capture:

* Replacing a weight (``load_state_dict(..., assign=True)``, ``model.to(...)``, ``.half()``,
  rebinding a tensor in a closure or attribute, another module in an attribute) changes an
  identity or address: the entry is stale, dropped, and the walk is captured again.
* Changing a weight *in place* (``p.copy_(...)``, ``load_state_dict`` without ``assign``) keeps
  its address: replays read the new values, as eager calls would.
* Everything else the model's Python code reads -- non-tensor attributes, flags, globals that are
  not tensors or modules, hooks, which branch an ``if`` takes -- is frozen at capture: a replay
  repeats the device work of the capture.  Sample with ``graph=False`` (or ``graphs.clear_cache()``
  after such a change) when the model's Python behaviour changes between calls.

Pass the same callable objects to reuse graphs: a fresh ``lambda`` per call is a new identity
and is captured again every time (the cache holds at most ``capacity`` entries).
"""
from __future__ import annotations

import inspect
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_flatten

from ..io import weight_holders
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


def reachable_tensors(fn) -> list[torch.Tensor]:
    """Every tensor ``fn`` can read, each once: the parameters, buffers and tensor attributes of the
    modules it reaches and the loose tensors it holds (:func:`ltc.io.weight_holders` finds them)."""
    found, seen = [], set()
    for holder in weight_holders(fn):
        tensors = [holder] if isinstance(holder, torch.Tensor) else [
            t for m in holder.modules()
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False),
                      *(v for v in vars(m).values() if isinstance(v, torch.Tensor)))]
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                found.append(t)
    return found


def weight_addresses(fn) -> tuple:
    """``(id, address)`` of every tensor ``fn`` can read (:func:`reachable_tensors`)."""
    return tuple((id(t), t.data_ptr()) for t in reachable_tensors(fn))


@dataclass(frozen=True, eq=False)
class Identity:
    """Who a cache entry was captured for: ``key`` (hashable, part of the cache key), the
    references to check on a hit, the tensor identities and addresses at capture time, and
    (for a captured walk) strong references to those tensors in ``held``."""

    key: tuple
    refs: tuple
    weights: tuple
    held: tuple = ()

    def matches(self, other: "Identity") -> bool:
        """The referenced objects are alive, are the same objects, and no tensor they read was
        replaced or moved."""
        return self.weights == other.weights and all(ref() is obj() for ref, obj in zip(self.refs, other.refs))


def identify(fns, generator=None, *, hold: bool = False) -> Identity:
    """The identity of the model callables ``fns`` (and of ``generator``, or None); with ``hold``
    it keeps the tensors they read alive (a captured walk's graphs read them by address)."""
    parts = [p for fn in fns for p in _parts(fn)] + ([generator] if generator is not None else [])
    tensors = [reachable_tensors(fn) for fn in fns]
    weights = tuple(tuple((id(t), t.data_ptr()) for t in ts) for ts in tensors)
    held = tuple(t for ts in tensors for t in ts) if hold else ()
    return Identity(tuple(id(p) for p in parts), tuple(_referent(p) for p in parts), weights, held)


def kwargs_signature(kwargs: dict) -> tuple:
    """Hashable description of ``model_kwargs``: each value's pytree structure (dicts, lists and
    tuples, e.g. SDXL's ``added_cond_kwargs``) with its tensor leaves by (shape, dtype, device) --
    their values are copied into static buffers before every replay -- and other leaves by value."""
    signature = []
    for name in sorted(kwargs):
        leaves, spec = tree_flatten(kwargs[name])
        described = []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                described.append(("tensor", tuple(leaf.shape), str(leaf.dtype), str(leaf.device)))
                continue
            try:
                hash(leaf)
            except TypeError:
                raise GraphCaptureError(
                    f"model_kwargs[{name!r}] holds a {type(leaf).__name__}: a captured model can only take "
                    "tensors (copied into static buffers before every replay), hashable constants, and "
                    "dicts, lists and tuples of them") from None
            described.append(("value", type(leaf).__qualname__, leaf))
        signature.append((name, str(spec), tuple(described)))
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
