"""A command's inputs: images given as PATH[:GROUP], ``--steps`` (names or a JSON / YAML file), transform files.

Each reader turns a bad input into a one-line :class:`~lazyreg.errors.LazyregError` naming the
argument (``fixed: ...``, ``--steps: ...``, ``-t: ...``), before anything is computed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import LazyregError

__all__ = ["split_path", "image_spacing", "open_input", "read_steps", "load_transforms", "input_paths"]

#: The flag that sets the spacing of each image argument (``--spacing`` sets both images' too).
SPACING_FLAGS = {"fixed": "--fixed-spacing", "moving": "--moving-spacing", "path": "--spacing"}


def image_spacing(args: Any, what: str) -> Any:
    """The spacing given on the command line for the image argument ``what``, or None.

    ``fixed`` takes ``--fixed-spacing``, ``moving`` ``--moving-spacing``, each else ``--spacing``;
    ``path`` (``info``) takes ``--spacing``.

    Examples
    --------
    >>> import argparse
    >>> from lazyreg.cli.inputs import image_spacing
    >>> args = argparse.Namespace(spacing=2.0, moving_spacing=None, fixed_spacing=(3.0, 1.0, 1.0))
    >>> image_spacing(args, "fixed"), image_spacing(args, "moving")
    ((3.0, 1.0, 1.0), 2.0)
    """
    own = getattr(args, f"{what}_spacing", None)
    return getattr(args, "spacing", None) if own is None else own


def split_path(spec: str, group: str | None = None) -> tuple[str, str | None]:
    """``PATH:GROUP`` -> (PATH, GROUP) when PATH exists and the whole string does not.

    Examples
    --------
    >>> import tempfile
    >>> from lazyreg.cli.inputs import split_path
    >>> with tempfile.TemporaryDirectory() as d:
    ...     split_path(d + ":lowres") == (d, "lowres")
    True
    >>> split_path("missing.n5:lowres")  # PATH does not exist: the colon is part of the name
    ('missing.n5:lowres', None)
    """
    if group is None and ":" in spec and not Path(spec).exists():
        head, _, tail = spec.rpartition(":")
        if head and Path(head).exists():
            return head, (tail or None)
    return spec, group


def open_input(spec: str, what: str = "path", group: str | None = None, spacing: Any = None) -> Any:
    """Open an image given as PATH[:GROUP]; a missing path is a one-line error naming ``what``.

    ``spacing`` (see :func:`image_spacing`) overrides the file's; an image without spacing
    metadata is an error that names the flag to pass (``--spacing``, ``--fixed-spacing`` ...).

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> from lazyreg.cli.inputs import open_input
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = lazyreg.to_zarr(lazyreg.image(np.zeros((4, 6, 8), np.uint8), spacing=1.0), d + "/img.ome.zarr")
    ...     open_input(d + "/img.ome.zarr:0", "fixed").shape
    (4, 6, 8)
    >>> open_input("missing.zarr", "fixed")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: fixed: missing.zarr does not exist
    """
    from ..io.open import open_image

    path, group = split_path(spec, group)
    if not Path(path).expanduser().exists():
        head = spec.rpartition(":")[0] if (":" in spec and group is None and spec.rpartition(":")[0]) else spec
        raise LazyregError(f"{what}: {head} does not exist")
    flag = SPACING_FLAGS.get(what, "--spacing")
    try:
        return open_image(path, group=group, spacing=spacing)
    except LazyregError as e:
        msg = str(e)
        msg = msg[len("path: "):] if msg.startswith("path: ") else msg
        if "group=" in msg:
            msg += " (on the command line: PATH:GROUP, e.g. fix.n5:lowres)"
        both = " (or --spacing for both images)" if flag != "--spacing" else ""
        if msg.startswith("spacing: "):
            msg = f"spacing ({flag}{both}): {msg[len('spacing: '):]}"
        msg = msg.replace("pass spacing=(z, y, x)", f"pass {flag} Z,Y,X{both}")
        raise LazyregError(msg if msg.startswith(f"{what}:") else f"{what}: {msg}") from None


def _steps_from_data(data: Any, where: str) -> list:
    """Steps as loaded from JSON / YAML: pairs, bare names, {name: options} or {"steps": [...]}."""
    if isinstance(data, dict) and "steps" in data:
        data = data["steps"]
    if isinstance(data, dict):  # {ransac: {...}, affine: {}} (ordered)
        data = [[k, v] for k, v in data.items()]
    if not isinstance(data, list) or not data:
        raise LazyregError(f"--steps: {where}: expected a non-empty list of steps, e.g. [[\"ransac\", {{}}], [\"affine\", {{}}]]")
    out = []
    for st in data:
        if isinstance(st, dict) and len(st) == 1:
            (name, opts), = st.items()
            st = [name, opts if opts is not None else {}]
        out.append(st)
    return out


def _load_step_file(p: Path) -> Any:
    """The data of a JSON or YAML step file (one-line errors)."""
    if not p.is_file():
        raise LazyregError(f"--steps: {p} does not exist" + (" (it is a folder)" if p.exists() else ""))
    raw = p.read_text()
    if p.suffix.lower() not in (".yaml", ".yml"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            raise LazyregError(f"--steps: {p} is not valid JSON ({e.msg}, line {e.lineno})") from None
    try:
        import yaml
    except ImportError:
        raise LazyregError(
            f"--steps: reading {p.name} needs PyYAML, which is not installed (pip install pyyaml); "
            'or write the steps as JSON, e.g. [["ransac", {"blob_sizes": [6, 20]}], ["affine", {}]]'
        ) from None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LazyregError(f"--steps: {p} is not valid YAML ({problem}{where})") from None


def read_steps(text: str) -> list[tuple[str, dict]]:
    """``--steps``: a JSON / YAML file or comma-separated names, as ``(name, options)`` pairs.

    The steps are validated by :func:`lazyreg.registration.steps.parse_steps` (one-line errors
    naming ``--steps``), but returned as the user gave them, each as a ``(name, options)`` pair:
    what ``lazyreg.align`` and ``lazyreg.align_piecewise`` take, and what ``report.json`` records.

    Examples
    --------
    >>> from lazyreg.cli.inputs import read_steps
    >>> read_steps("ransac, affine")
    [('ransac', {}), ('affine', {})]
    >>> read_steps("ransac,afine")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: --steps: 'ransac,afine': steps[1]: unknown step 'afine'...
    """
    from ..registration.steps import parse_steps

    p = Path(text)
    if p.suffix.lower() in (".json", ".yaml", ".yml") or p.is_file():
        steps = _steps_from_data(_load_step_file(p), str(p))
        where = str(p)
    else:
        steps = [name.strip() for name in text.split(",") if name.strip()]
        where = repr(text)
        if not steps:
            raise LazyregError(f"--steps: no step names in {where}")
    try:
        parse_steps(steps)  # only to validate: its result is for the step functions
    except LazyregError as e:
        raise LazyregError(f"--steps: {where}: {e}") from None
    return [(st, {}) if isinstance(st, str) else (st[0], dict(st[1] or {})) for st in steps]


def load_transforms(specs: Sequence[str], flag: str) -> list:
    """Transform files, in the order given (a composite ITK file contributes its list).

    Examples
    --------
    >>> import tempfile, lazyreg
    >>> from lazyreg.cli.inputs import load_transforms
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = lazyreg.save_transform(lazyreg.Affine.from_translation(1.0), d + "/a.txt")
    ...     [type(t).__name__ for t in load_transforms([d + "/a.txt", d + "/a.txt"], "-t")]
    ['Affine', 'Affine']
    """
    from ..io.transform_files import load_transform

    out: list = []
    for spec in specs:
        if not Path(spec).exists():
            raise LazyregError(f"{flag}: {spec} does not exist")
        try:
            t = load_transform(spec)
        except LazyregError as e:
            msg = str(e)
            msg = msg[len("path: "):] if msg.startswith("path: ") else msg
            raise LazyregError(f"{flag}: {msg}") from None
        out.extend(t if isinstance(t, list) else [t])
    return out


def input_paths(*specs: str) -> list[Path]:
    """The absolute paths of the inputs given as PATH[:GROUP] (empty ones left out).

    Examples
    --------
    >>> from lazyreg.cli.inputs import input_paths
    >>> [p.name for p in input_paths("fix.n5", "", "affine.txt")]
    ['fix.n5', 'affine.txt']
    """
    return [Path(split_path(s)[0]).expanduser().resolve() for s in specs if s]
