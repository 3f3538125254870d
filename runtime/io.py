"""Reading ``snuc run``'s input and writing its outputs (SPEC §6), safely.

Inputs are ``.npy`` files read without pickles. Outputs are written to a temporary name
beside the destination and renamed into place, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from snuc.ir.errors import SnucError


def read_array(path: str | os.PathLike, what: str = "input file") -> np.ndarray:
    """The array in a ``.npy`` file, never unpickled; a one-line SnucError naming ``what``
    and the path if it is missing, not an array file, or an array of Python objects."""
    path = Path(path)
    if not path.is_file():
        raise SnucError(f"{what} {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        array = None
    if not isinstance(array, np.ndarray):
        raise SnucError(f"{what} {path} is not a .npy array of numbers")
    return array


def read_input(path: str | os.PathLike) -> np.ndarray:
    """``snuc run``'s ``--input``: see :func:`read_array`."""
    return read_array(path, "input file")


def default_output_path(input_path: str | os.PathLike, n_outputs: int) -> Path:
    """``<input>.out.npy`` beside the input; ``.npz`` when the model has several outputs."""
    path = Path(input_path)
    stem = path.name[: -len(".npy")] if path.name.endswith(".npy") else path.name
    return path.with_name(f"{stem}.out.{'npy' if n_outputs == 1 else 'npz'}")


def write_outputs(path: str | os.PathLike, outputs: np.ndarray | Mapping[str, np.ndarray]) -> Path:
    """Write one output as ``.npy`` or several as ``.npz`` by name, atomically."""
    path = Path(path)
    several = isinstance(outputs, Mapping)
    if several and path.suffix != ".npz":
        raise SnucError(f"the model has {len(outputs)} outputs: name an .npz output, not {path}")
    if not several and path.suffix != ".npy":
        raise SnucError(f"the output {path} must be a .npy file")
    if not path.parent.is_dir():
        raise SnucError(f"cannot write {path}: directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if several:
                np.savez(f, **dict(outputs))
            else:
                np.save(f, outputs, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SnucError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
