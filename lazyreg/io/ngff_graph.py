"""NGFF (OME-Zarr RFC-5) coordinate transformations turned into lazyreg transform lists.

A document's coordinate systems and transformations (``ome.scene``, ``multiscales[].coordinateSystems``
/ ``coordinateTransformations``, or the same keys at its top level) form a graph; the path from the
``input`` coordinate system to the ``output`` one is followed (an edge walked backwards is inverted:
closed form for the linear types, the explicit ``inverse`` of a ``bijection``; a ``displacements``
cannot be). An NGFF transform maps input points to output points, so the lazyreg list maps
``input``-space points to ``output``-space points: input = fixed space, output = moving space.

NGFF parameters are in the axis order of their coordinate systems; lazyreg's are z, y, x. Spatial axes
named z, y, x (in any order) are matched by name, other names by position (z, y, x). A 2D coordinate
system (``y``, ``x``) is embedded as the plane of a 3D one with z passed through unchanged: 2D affines
act on every z plane; a 2D displacement field becomes a one-plane field (z spacing 1, origin 0, so it
displaces points with ``|z| < 0.5``). Only ``space`` axes are supported (channel / time axes, and
transforms between spaces of different dimension, are refused).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from pathlib import Path
from typing import Any, Callable

import dask.array as da
import numpy as np

from ..errors import LazyregError
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField

__all__ = ["NgffField", "graph_of", "transforms_from_ngff"]

_LINEAR = ("identity", "scale", "translation", "affine", "rotation", "mapAxis", "byDimension")


@dataclasses.dataclass
class NgffField:
    """A displacement field in the index space of a coordinate system (n = 2 or 3 axes).

    ``values`` has the n spatial axes then the vector axis (length n, components in axis order);
    ``spacing`` and ``origin`` place the voxel centres (same axis order).

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.io.ngff_graph import NgffField
    >>> NgffField(np.zeros((4, 5, 2)), (1.0, 1.0), (0.0, 0.0)).values.shape
    (4, 5, 2)
    """

    values: Any
    spacing: tuple[float, ...]
    origin: tuple[float, ...]


@dataclasses.dataclass
class _Ctx:
    where: str
    read_field: Callable[[dict, int], NgffField]
    read_param: Callable[[dict, str], Any]
    in_names: list[str]
    out_names: list[str]


def _err(ctx: _Ctx, msg: str) -> LazyregError:
    return LazyregError(f"path: {ctx.where}: {msg}"[:600])


def _numbers(t: dict, key: str, shape: tuple[int, ...], ctx: _Ctx) -> np.ndarray:
    raw = ctx.read_param(t, key)
    try:
        a = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        raise _err(ctx, f"'{key}' of a {t.get('type')} transformation must hold numbers, got {str(raw)[:80]}") from None
    if key == "affine" and a.shape == (shape[0] + 1, shape[1]) and np.allclose(a[-1], np.eye(shape[1])[-1]):
        a = a[:-1]  # a full homogeneous matrix, accepted too
    if a.shape != shape or not np.all(np.isfinite(a)):
        raise _err(ctx, f"'{key}' must be {shape[0] if len(shape) == 1 else shape} finite numbers for a "
                        f"{shape[0]}-D coordinate system, got {str(raw)[:120]}")
    return a


def _axis_index(v: Any, names: list[str], n: int, ctx: _Ctx) -> int:
    if isinstance(v, str) and v in names:
        return names.index(v)
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < n:
        return int(v)
    raise _err(ctx, f"byDimension axis {v!r} is neither an index < {n} nor one of the axes {names}")


def _by_dimension(t: dict, n: int, ctx: _Ctx) -> np.ndarray:
    items = t.get("transformations")
    if not isinstance(items, list) or not items:
        raise _err(ctx, "a byDimension transformation needs a non-empty 'transformations' list")
    m, covered = np.eye(n + 1), []
    m[:n, :n] = 0.0
    for item in items:
        child = item.get("transformation", item) if isinstance(item, dict) else None
        if not isinstance(child, dict) or not isinstance(item.get("input_axes"), list) or not isinstance(item.get("output_axes"), list):
            raise _err(ctx, f"each byDimension item needs 'input_axes', 'output_axes' and a transformation, got {str(item)[:120]}")
        ia = [_axis_index(v, ctx.in_names, n, ctx) for v in item["input_axes"]]
        oa = [_axis_index(v, ctx.out_names, n, ctx) for v in item["output_axes"]]
        if len(ia) != len(oa) or not ia:
            raise _err(ctx, f"byDimension item with {len(ia)} input and {len(oa)} output axes")
        sub = _linear(_ops(child, len(ia), ctx), len(ia), ctx)
        m[np.ix_(oa, ia)] = sub[:-1, :-1]
        m[oa, n] = sub[:-1, -1]
        covered += oa
    if sorted(covered) != list(range(n)):
        raise _err(ctx, f"byDimension must give every output axis exactly once, got output axes {sorted(covered)}")
    return m


def _linear(op_list: list, n: int, ctx: _Ctx) -> np.ndarray:
    m = np.eye(n + 1)
    for op in op_list:
        if not isinstance(op, np.ndarray):
            raise _err(ctx, "a displacements transformation inside byDimension is not supported")
        m = op @ m
    return m


def _leaf(t: dict, n: int, ctx: _Ctx) -> list:
    """Operations (application order) of a transformation that is not a wrapper."""
    kind, m = t["type"], np.eye(n + 1)
    if kind == "identity":
        return []
    if kind == "scale":
        s = _numbers(t, "scale", (n,), ctx)
        if np.any(s == 0):
            raise _err(ctx, f"a scale of 0 is not invertible: {s.tolist()}")
        m[:n, :n] = np.diag(s)
    elif kind == "translation":
        m[:n, n] = _numbers(t, "translation", (n,), ctx)
    elif kind == "affine":
        m[:n] = _numbers(t, "affine", (n, n + 1), ctx)
    elif kind == "rotation":
        m[:n, :n] = _numbers(t, "rotation", (n, n), ctx)
    elif kind == "mapAxis":
        perm = t.get("mapAxis")
        if not isinstance(perm, list) or sorted(perm) != list(range(n)):
            raise _err(ctx, f"'mapAxis' must be a permutation of 0..{n - 1} (the list form), got {str(perm)[:80]}")
        m[:n, :n] = np.eye(n)[perm]
    elif kind == "byDimension":
        m = _by_dimension(t, n, ctx)
    elif kind == "displacements":
        return [ctx.read_field(t, n)]
    elif kind == "coordinates":
        raise _err(ctx, "'coordinates' transformations are not supported (lazyreg reads 'displacements' fields)")
    else:
        raise _err(ctx, f"unknown transformation type {kind!r}")
    return [m]


def _invert(op_list: list, ctx: _Ctx) -> list:
    out = []
    for op in reversed(op_list):
        if not isinstance(op, np.ndarray):
            raise _err(ctx, "a 'displacements' field cannot be inverted in closed form: read it in its own direction "
                            "(input= / output= as written) and invert it with lazyreg.invert_field")
        if not np.isfinite(np.linalg.cond(op)) or np.linalg.cond(op) > 1e12:
            raise _err(ctx, "a singular linear transformation cannot be inverted")
        out.append(np.linalg.inv(op))
    return out


def _ops(t: Any, n: int, ctx: _Ctx, inverse: bool = False) -> list:
    """Operations of an NGFF transformation in application order (inverted when ``inverse``)."""
    if not isinstance(t, dict) or not isinstance(t.get("type"), str):
        raise _err(ctx, f"expected a transformation object with a 'type', got {str(t)[:120]}")
    kind = t["type"]
    if kind == "sequence":
        items = t.get("transformations")
        if not isinstance(items, list):
            raise _err(ctx, "a sequence needs a 'transformations' list")
        return [op for item in (items[::-1] if inverse else items) for op in _ops(item, n, ctx, inverse)]
    if kind == "bijection":
        return _ops(t.get("inverse" if inverse else "forward"), n, ctx)
    if kind == "inverseOf":
        return _ops(t.get("transformation"), n, ctx, not inverse)
    got = _leaf(t, n, ctx)
    return _invert(got, ctx) if inverse else got


def _ref(v: Any) -> str | None:
    """The key of an ``input`` / ``output`` value: a name, or ``path/name`` for an image's system."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("name"), str):
        return f"{v['path'].strip('/')}/{v['name']}" if isinstance(v.get("path"), str) and v["path"].strip("/") else v["name"]
    return None


def graph_of(attrs: dict, load_system: Callable[[str, str], list | None] | None = None) -> tuple[dict, list]:
    """The coordinate systems (key -> axes) and transformations (input key, output key, dict) of a document.

    Read from ``ome.scene``, the ``multiscales`` entries, and the same keys at the top level (the JSON
    form of the specification's examples). Transformations without ``input`` / ``output`` (e.g. those
    of OME-Zarr 0.4 / 0.5 ``multiscales``) are not edges. An input / output given as
    ``{"path": p, "name": n}`` has the key ``"p/n"``; ``load_system(p, n)`` supplies its axes.

    Examples
    --------
    >>> from lazyreg.io.ngff_graph import graph_of
    >>> doc = {"ome": {"scene": {"coordinateSystems": [{"name": "a", "axes": []}, {"name": "b", "axes": []}],
    ...        "coordinateTransformations": [{"type": "identity", "input": {"name": "a"}, "output": "b"}]}}}
    >>> systems, edges = graph_of(doc)
    >>> sorted(systems), [(a, b) for a, b, _ in edges]
    (['a', 'b'], [('a', 'b')])
    """
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else {}
    ms = ome.get("multiscales", attrs.get("multiscales"))
    places = [attrs, ome, ome.get("scene"), attrs.get("scene")] + (ms if isinstance(ms, list) else [])
    systems: dict[str, list] = {}
    edges: list[tuple[str, str, dict]] = []
    for place in places:
        if not isinstance(place, dict):
            continue
        for cs in place.get("coordinateSystems") or []:
            if isinstance(cs, dict) and isinstance(cs.get("name"), str) and isinstance(cs.get("axes"), list):
                systems.setdefault(cs["name"], [a if isinstance(a, dict) else {"name": str(a)} for a in cs["axes"]])
        for t in place.get("coordinateTransformations") or []:
            a, b = (_ref(t.get(k)) for k in ("input", "output")) if isinstance(t, dict) else (None, None)
            if a and b and (a, b, t) not in edges:
                edges.append((a, b, t))
    for key in {k for a, b, _ in edges for k in (a, b)} - set(systems):
        if "/" in key and load_system is not None:
            found = load_system(*key.rsplit("/", 1))
            if found is not None:
                systems[key] = found
    return systems, edges


def _perm(axes: list[dict], key: str, where: str) -> tuple[int, list[int], list[str]]:
    """(n, perm, names): lifted index axis i is lazyreg axis ``perm[i]`` (0 = z, 1 = y, 2 = x)."""
    names = [str(a.get("name", "")) for a in axes]
    bad = [(a.get("name"), a.get("type")) for a in axes if a.get("type") not in (None, "space")]
    if bad or len(axes) not in (2, 3):
        raise LazyregError(
            f"path: {where}: coordinate system {key!r} has axes {names}; lazyreg reads transforms between 2D or 3D "
            f"spaces of 'space' axes only{f' (not {bad})' if bad else ''}"
        )
    low = [s.lower() for s in names]
    if len(axes) == 3:
        return 3, (["zyx".index(s) for s in low] if sorted(low) == ["x", "y", "z"] else [0, 1, 2]), names
    return 2, [0] + ([1 + "yx".index(s) for s in low] if sorted(low) == ["x", "y"] else [1, 2]), names


def _lift(op: Any, n: int) -> Any:
    """A 2D operation as a 3D one acting on the last two axes (z passes through)."""
    if n == 3:
        return op
    if isinstance(op, np.ndarray):
        m = np.eye(4)
        m[1:, 1:] = op
        return m
    v = op.values if isinstance(op.values, da.Array) else da.from_array(np.asarray(op.values))
    v = da.concatenate([da.zeros_like(v[..., :1]), v], axis=-1)[None]
    return NgffField(v, (1.0, *op.spacing), (0.0, *op.origin))


def _to_zyx(op: Any, perm: list[int]) -> Any:
    """The operation conjugated into lazyreg's z, y, x order (lifted index axis i = zyx axis perm[i])."""
    p = np.eye(4)
    p[:3, :3] = np.eye(3)[perm]
    if isinstance(op, np.ndarray):
        return np.linalg.inv(p) @ op @ p
    inv = list(np.argsort(perm))
    v = op.values if isinstance(op.values, da.Array) else np.asarray(op.values)
    if inv != [0, 1, 2]:
        v = v.transpose(*inv, 3)[..., inv]
    return DisplacementField.from_array(
        v, tuple(float(op.spacing[i]) for i in inv), tuple(float(op.origin[i]) for i in inv)
    )


def _path(edges: list[tuple[str, str, dict]], start: str, goal: str) -> list[tuple[dict, bool, str, str]] | None:
    """Edges (transformation, walked backwards?, from, to) of a shortest path, forward edges first."""
    steps: dict[str, tuple] = {start: ()}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            out = []
            while steps[node]:
                prev, t, back = steps[node]
                out.append((t, back, prev, node))
                node = prev
            return out[::-1]
        nxt = [(b, t, False) for a, b, t in edges if a == node] + [(a, t, True) for a, b, t in edges if b == node]
        for other, t, back in nxt:
            if other not in steps:
                steps[other] = (node, t, back)
                queue.append(other)
    return None


def _merge(zyx_ops: list) -> list[Affine | DisplacementField]:
    """lazyreg list (last applied first) from operations in application order; linear runs composed."""
    out: list = []
    for op in zyx_ops:
        if isinstance(op, np.ndarray) and out and isinstance(out[-1], np.ndarray):
            out[-1] = op @ out[-1]
        else:
            out.append(op)
    result = [Affine(o) if isinstance(o, np.ndarray) else o for o in out if not (isinstance(o, np.ndarray) and np.allclose(o, np.eye(4), rtol=0, atol=1e-15))]
    return result[::-1]


def transforms_from_ngff(
    systems: dict[str, list[dict]],
    edges: list[tuple[str, str, dict]],
    input: str,
    output: str,
    *,
    where: str,
    read_field: Callable[[dict, int], NgffField],
    read_param: Callable[[dict, str], Any] | None = None,
) -> list[Affine | DisplacementField]:
    """The lazyreg transform list mapping ``input``-system points to ``output``-system points.

    Parameters
    ----------
    systems : dict
        Coordinate system key -> its ``axes`` list.
    edges : list of (input key, output key, transformation dict)
        The graph's transformations.
    input, output : str
        Keys of the start (fixed space) and end (moving space) coordinate systems.
    where : str
        Names the file in messages.
    read_field : callable
        ``read_field(transformation, n)`` -> :class:`NgffField` for ``displacements``.
    read_param : callable, optional
        ``read_param(transformation, key)`` -> parameter values (default ``transformation[key]``).

    Returns
    -------
    list of Affine and DisplacementField
        lazyreg order (the last element is applied first); empty for the identity.

    Raises
    ------
    LazyregError
        Unknown coordinate systems, no path between them, unsupported or malformed transformations.

    Examples
    --------
    >>> from lazyreg.io.ngff_graph import transforms_from_ngff
    >>> yx = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    >>> edges = [("a", "b", {"type": "translation", "translation": [10, 20]})]
    >>> [A] = transforms_from_ngff({"a": yx, "b": yx}, edges, "b", "a", where="example", read_field=None)
    >>> A([0.0, 11.0, 22.0])       # 2D (y, x) embedded with z passed through; walked backwards
    array([0., 1., 2.])
    """
    for name, argname in ((input, "input"), (output, "output")):
        if name not in systems:
            raise LazyregError(f"{argname}: no coordinate system {name!r} in {where}; it defines {sorted(systems)}")
    steps = _path(edges, input, output)
    if steps is None:
        raise LazyregError(f"input: {where} has no chain of transformations from {input!r} to {output!r}")
    zyx_ops: list = []
    for t, back, a, b in steps:
        n_a, perm_a, names_a = _perm(systems[a], a, where)
        n_b, perm_b, names_b = _perm(systems[b], b, where)
        if n_a != n_b:
            raise LazyregError(f"path: {where}: the transformation {a!r} -> {b!r} maps {n_a}-D to {n_b}-D points")
        ctx = _Ctx(f"{where} (transformation {t.get('name') or t.get('type')!r}, {a!r} -> {b!r})",
                   read_field, read_param or (lambda tr, key: tr.get(key)),
                   names_b if back else names_a, names_a if back else names_b)
        pb = np.eye(4)
        pb[:3, :3] = np.eye(3)[perm_b]
        pa = np.eye(4)
        pa[:3, :3] = np.eye(3)[perm_a]
        zyx_ops += [_to_zyx(_lift(op, n_a), perm_a) for op in _ops(t, n_a, ctx, inverse=back)]
        zyx_ops.append(np.linalg.inv(pb) @ pa)  # from a's axis order to b's
    return _merge(zyx_ops)
