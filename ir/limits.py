"""Limits that every reader checks before it allocates or parses (SPEC §9).

A small file must not be able to make snuc allocate without bound: an ONNX shape constant
of 10^9, a deeply nested JSON or TOML document, a 5,000-digit integer. Each reader asks
here *before* the work, with what the input declares, and refuses with one line that names
the limit and, where raising it makes sense, how.

* :func:`check_tensor_bytes`: one tensor that a reader is about to create. The limit is
  :data:`DEFAULT_MAX_TENSOR_BYTES` (2 GiB), raised or lowered with the environment
  variable :data:`MAX_TENSOR_BYTES_ENV`: a legitimate model is far below it (the largest
  shipped weight matrix, PTB's 200 x 10,000 readout, is 8 MB; a network of 10^8 float32
  weights in one matrix takes 400 MB).
* :func:`check_nesting`: how deep ``[``/``{`` nest in a JSON or TOML text, found by a
  linear scan before the recursive parsers of the standard library run (they raise
  RecursionError from about 1,000 levels; a real document has fewer than ten).
* :func:`load_json`: ``json.loads`` behind those checks, every failure a SnucError.
* :func:`read_toml`: a TOML file read and parsed behind them, every failure a SnucError.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Iterable
from pathlib import Path

from snuc.ir.errors import SnucError

__all__ = [
    "DEFAULT_MAX_TENSOR_BYTES",
    "MAX_NESTING",
    "MAX_TENSOR_BYTES_ENV",
    "check_nesting",
    "check_tensor_bytes",
    "load_json",
    "max_tensor_bytes",
    "read_toml",
]

MAX_TENSOR_BYTES_ENV = "SNUC_MAX_TENSOR_BYTES"
"""The environment variable that sets :func:`max_tensor_bytes`."""

DEFAULT_MAX_TENSOR_BYTES = 2 << 30
"""The largest tensor a reader creates unless :data:`MAX_TENSOR_BYTES_ENV` says otherwise."""

MAX_NESTING = 64
"""The deepest nesting of arrays and tables accepted in a JSON or TOML document."""


def max_tensor_bytes() -> int:
    """The largest tensor, in bytes, that a reader may create (see the module docstring).

    Raises:
        SnucError: the environment variable is set but not a positive integer.
    """
    text = os.environ.get(MAX_TENSOR_BYTES_ENV)
    if text is None:
        return DEFAULT_MAX_TENSOR_BYTES
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()) or len(stripped) > 20 or int(stripped) < 1:
        raise SnucError(
            f"{MAX_TENSOR_BYTES_ENV}={text!r} must be a positive integer (bytes), e.g. "
            f"{DEFAULT_MAX_TENSOR_BYTES}"
        )
    return int(stripped)


def check_tensor_bytes(what: str, shape: Iterable[int], itemsize: int) -> None:
    """Refuse to create a tensor of ``shape`` whose size exceeds :func:`max_tensor_bytes`.

    Args:
        what: the tensor, as the message should name it (e.g. ``"initial state 's'"``).
        shape: its dimensions (non-negative integers).
        itemsize: bytes per element.

    Raises:
        SnucError: one line naming the tensor, its size and the limit.
    """
    dims = [int(d) for d in shape]
    nbytes = math.prod(dims) * int(itemsize)
    limit = max_tensor_bytes()
    if nbytes > limit:
        raise SnucError(
            f"{what} would take {_bytes_text(nbytes)} (shape [{', '.join(map(str, dims))}]), "
            f"over the limit of {_bytes_text(limit)} for one tensor; if the model really is "
            f"this large, raise it with {MAX_TENSOR_BYTES_ENV}=<bytes>"
        )


def check_nesting(text: str, what: str, limit: int = MAX_NESTING) -> None:
    """Refuse a JSON or TOML ``text`` whose arrays and tables nest deeper than ``limit``.

    Brackets inside strings count too: the bound is conservative, never too lax, and no
    real document comes near it.

    Raises:
        SnucError: one line naming ``what`` and the limit.
    """
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > limit:
                raise SnucError(
                    f"{what} nests arrays or objects more than {limit} deep; snuc reads "
                    f"documents of a few levels"
                )
        elif char in "]}":
            depth = max(depth - 1, 0)


def load_json(text: str | bytes, what: str) -> object:
    """``json.loads(text)`` after :func:`check_nesting`; every failure is a SnucError.

    Raises:
        SnucError: not JSON, nested too deep, or an integer too long to convert.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SnucError(f"{what} is not UTF-8 text") from None
    check_nesting(text, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SnucError(f"{what} is not valid JSON ({err.msg}, line {err.lineno})") from None
    except ValueError as err:  # an integer beyond Python's digit limit
        raise SnucError(f"{what} holds a number snuc cannot read: {str(err)[:120]}") from None


def read_toml(path: str | os.PathLike[str], what: str) -> dict:
    """The table of the TOML file at ``path`` after :func:`check_nesting`.

    Raises:
        SnucError: a missing or unreadable file, invalid TOML, nesting too deep, or an
            integer too long to convert; one line naming ``what``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SnucError(f"cannot read {what}: {reason}") from None
    check_nesting(text, what)
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:  # ValueError: a too-long integer
        raise SnucError(f"{what} is not valid TOML: {' '.join(str(exc).split())}") from None


def _bytes_text(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"
