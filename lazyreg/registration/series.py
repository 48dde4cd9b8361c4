"""``align_series``: many rounds registered to one fixed round (or each to its neighbour), as one graph.

EASI-FISH and other multi-round experiments image the same tissue several times; every round is
registered to a fixed round (or, for a drifting series, each round to the previous one, the
transforms composed). Each pair is :func:`lazyreg.align` (and optionally
:func:`lazyreg.align_piecewise`) as usual, so memory per task is bounded as for one pair; the rounds
share one graph and registration results are computed once per session
(:mod:`lazyreg.result_cache`), whichever computation needs them first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import xarray as xr

from ..errors import LazyregError
from ..images import validate_image
from ..resample import apply_transform
from ..result_cache import compute_together
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from ..validation import check_seed
from .piecewise import align_piecewise
from .pipeline import align
from .steps import parse_steps

__all__ = ["align_series", "SeriesAlignment"]


@dataclass
class SeriesAlignment:
    """The lazy result of :func:`align_series`: per round, the transforms from fixed to that round.

    Attributes
    ----------
    names : list of str
        The rounds, in order.
    transforms : dict
        ``name -> [A, ...]``: the list that maps fixed physical points into that round (for
        :func:`lazyreg.apply_transform`); with ``chain=True`` the composed list
        ``[*T_k, ..., *T_1]``.
    pairs : dict
        ``name -> (reference name, [A] or [A, field])``: what was registered for that round, to
        which image (``"fixed"`` or the previous round).
    piecewise : bool
        Whether the last transform of each pair is a piecewise field (its report: one row per block).

    Examples
    --------
    >>> import lazyreg
    >>> fixed, m1, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    >>> series = lazyreg.align_series(fixed, {"r1": m1}, "affine")
    >>> series.names, [type(t).__name__ for t in series.transforms["r1"]]
    (['r1'], ['Affine'])
    """

    names: list[str]
    transforms: dict[str, list] = field(default_factory=dict)
    pairs: dict[str, tuple[str, list]] = field(default_factory=dict)
    piecewise: bool = False

    def report(self) -> list[dict]:
        """One table for every round: a row per global step and per piecewise block.

        Computes the reports of all rounds together (each registration once); rows carry
        ``round``, ``reference`` and ``kind`` (``"step"`` or ``"block"``) before the step's or
        block's own columns.

        Examples
        --------
        >>> import lazyreg
        >>> fixed, m1, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
        >>> rows = lazyreg.align_series(fixed, [m1], "affine").report()
        >>> [(r["round"], r["kind"], r["step"]) for r in rows]
        [('round1', 'step', 'affine')]
        """
        lazy = []
        for name in self.names:
            ref, ts = self.pairs[name]
            lazy.append((name, ref, "step", ts[0].report))
            if self.piecewise:
                lazy.append((name, ref, "block", ts[-1].report))
        values = compute_together(*[r for *_, r in lazy])
        rows: list[dict] = []
        for (name, ref, kind, _), reports in zip(lazy, values):
            for row in reports or []:
                rows.append({"round": name, "reference": ref, "kind": kind, **row})
        return rows

    def compute(self, **kwargs: Any) -> SeriesAlignment:
        """Every round's transforms computed together (in one graph: shared tasks run once).

        Examples
        --------
        >>> import lazyreg
        >>> fixed, m1, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
        >>> lazyreg.align_series(fixed, [m1], "affine").compute().transforms["round1"][0].is_lazy
        False
        """
        flat = [(name, i, t) for name in self.names for i, t in enumerate(self.pairs[name][1])]
        parts = [x for *_, t in flat for x in (t.matrix if isinstance(t, Affine) else t.data, t.report)]
        done = compute_together(*parts, **kwargs)
        concrete = {
            (name, i): (Affine(v, report=r) if isinstance(t, Affine) else DisplacementField(v, report=r))
            for (name, i, t), v, r in zip(flat, done[::2], done[1::2])
        }
        pairs = {n: (self.pairs[n][0], [concrete[(n, i)] for i in range(len(self.pairs[n][1]))]) for n in self.names}
        return _assemble(self.names, pairs, chained=self._chained(), piecewise=self.piecewise)

    def apply(self, fixed: xr.DataArray, movings: Sequence[xr.DataArray] | Mapping[str, xr.DataArray], **kwargs: Any) -> dict:
        """Each round (or any image on its grid, e.g. another channel) resampled onto ``fixed``, lazily.

        ``movings`` is matched to the rounds by name (mapping) or by order (sequence); keyword
        arguments go to :func:`lazyreg.apply_transform`.

        Examples
        --------
        >>> import lazyreg
        >>> fixed, m1, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
        >>> series = lazyreg.align_series(fixed, [m1], "affine")
        >>> series.apply(fixed, [m1])["round1"].shape
        (16, 32, 32)
        """
        named = _named(movings, "movings", self.names)
        if list(named) != self.names:
            raise LazyregError(f"movings: expected the rounds {self.names}, got {list(named)}")
        return {n: apply_transform(fixed, img, self.transforms[n], **kwargs) for n, img in named.items()}

    def _chained(self) -> bool:
        return any(ref != "fixed" for ref, _ in self.pairs.values())


def _named(movings: Any, argname: str, default_names: Sequence[str] | None = None) -> dict[str, xr.DataArray]:
    if isinstance(movings, Mapping):
        named = {str(k): v for k, v in movings.items()}
    elif isinstance(movings, (list, tuple)):
        if default_names is not None and len(default_names) == len(movings):
            named = dict(zip(default_names, movings))
        else:
            named = {f"round{i + 1}": m for i, m in enumerate(movings)}
    else:
        raise LazyregError(f"{argname}: expected a list of images or a mapping name -> image, got {type(movings).__name__}")
    if not named:
        raise LazyregError(f"{argname}: no images")
    if "fixed" in named:
        raise LazyregError(f"{argname}: 'fixed' is the name of the fixed round; name the moving rounds otherwise")
    for n, img in named.items():
        validate_image(img, f"{argname}[{n!r}]")
    return named


def _assemble(names: list[str], pairs: dict, chained: bool, piecewise: bool) -> SeriesAlignment:
    transforms: dict[str, list] = {}
    previous: list = []
    for n in names:
        own = list(pairs[n][1])
        transforms[n] = own + previous if chained else own  # [*T_k, ..., *T_1]: T_1 is applied first
        previous = transforms[n]
    return SeriesAlignment(list(names), transforms, dict(pairs), piecewise)


def align_series(
    fixed: xr.DataArray,
    movings: Sequence[xr.DataArray] | Mapping[str, xr.DataArray],
    steps: Sequence[Any] | str = "ransac,affine",
    *,
    piecewise: bool | Mapping[str, Any] = False,
    chain: bool = False,
    fixed_mask: xr.DataArray | None = None,
    seed: int = 0,
) -> SeriesAlignment:
    """Register every moving round to ``fixed`` (or each to its neighbour), lazily, as one graph.

    Parameters
    ----------
    fixed : xarray.DataArray
        The fixed round.
    movings : sequence or mapping of xarray.DataArray
        The moving rounds, in acquisition order; a mapping gives their names (else ``round1``,
        ``round2``, ...).
    steps : sequence of (name, options), or str
        Global steps of every pair, as for :func:`lazyreg.align` (default ``"ransac,affine"``).
    piecewise : bool or mapping
        Also refine every pair with :func:`lazyreg.align_piecewise` (``True``: its defaults; a
        mapping: its keyword arguments, e.g. ``{"blocksize": 64}``), on top of the global affine.
    chain : bool
        Register round ``k`` to round ``k - 1`` (round 1 to ``fixed``) and compose, for series that
        drift; the transform to round ``k`` is then ``[*T_k, ..., *T_1]``.
    fixed_mask : xarray.DataArray, optional
        Mask of ``fixed`` (used for pairs whose reference is ``fixed``).
    seed : int
        Seed of every random choice; each pair uses it.

    Returns
    -------
    SeriesAlignment
        Lazy: ``.transforms[name]`` for :func:`lazyreg.apply_transform`, ``.apply(fixed, images)``,
        ``.report()`` (one table: round x step/block), ``.compute()``.

    Examples
    --------
    >>> import lazyreg
    >>> fixed, m1, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    >>> series = lazyreg.align_series(fixed, {"dapi-r2": m1}, "affine", chain=True)
    >>> series.pairs["dapi-r2"][0]
    'fixed'
    """
    validate_image(fixed, "fixed")
    named = _named(movings, "movings")
    parse_steps(steps)  # every option checked before any graph is built
    if not isinstance(piecewise, (bool, Mapping)):
        raise LazyregError(f"piecewise: expected True/False or a mapping of align_piecewise options, got {type(piecewise).__name__}")
    options = dict(piecewise) if isinstance(piecewise, Mapping) else {}
    for bad in ("static_transforms", "fixed_mask", "seed"):
        if bad in options:
            raise LazyregError(f"piecewise: {bad!r} is set by align_series; remove it from the options")
    if not isinstance(chain, bool):
        raise LazyregError(f"chain: expected True or False, got {chain!r}")
    seed = check_seed(seed)
    pairs: dict[str, tuple[str, list]] = {}
    ref_name, ref = "fixed", fixed
    for n, moving in named.items():
        mask = fixed_mask if ref_name == "fixed" else None
        result = align(ref, moving, steps, fixed_mask=mask, seed=seed)
        ts = list(result) if isinstance(result, list) else [result]
        if piecewise is not False:
            if len(ts) != 1:
                raise LazyregError("piecewise: the global steps already end with a deformable step ('deform' or 'demons'); drop one of them")
            ts.append(align_piecewise(ref, moving, options.get("steps"), static_transforms=ts, fixed_mask=mask, seed=seed,
                                      **{k: v for k, v in options.items() if k != "steps"}))
        pairs[n] = (ref_name, ts)
        if chain:
            ref_name, ref = n, moving
    return _assemble(list(named), pairs, chained=chain, piecewise=piecewise is not False)
