"""Loaders and metrics for the paper's three tasks (SPEC §11): JSB chorales, MNIST, PTB.

NumPy only: ``snuc eval`` runs without torch, and training scripts wrap these arrays in
tensors themselves. Every file is checked against the digest it had when the data set was
assembled (``../shared/data/README.md``) before it is parsed, so a result is never computed
from a truncated or edited copy.

Where the data are (:func:`resolve_data_dir`), first match wins:

1. the ``data_dir`` argument (``--data-dir`` on the command line);
2. the environment variable ``SNUC_DATA``;
3. ``../shared/data`` relative to the current working directory;
4. ``../shared/data`` relative to the repository root (the folder holding ``snuc/``).

An explicit ``data_dir`` or ``SNUC_DATA`` that does not exist is an error; snuc never falls
back from a location the user named to one they did not.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snuc.ir.errors import SnucError

DATA_ENV_VAR = "SNUC_DATA"
"""Environment variable naming the data directory (the folder holding jsb/, mnist/, ptb/)."""

_REPO_ROOT = Path(__file__).resolve().parent.parent
_DEFAULT_RELATIVE = Path("..") / "shared" / "data"
_HOW_TO_POINT = f"point snuc at the data folder with --data-dir DIR or {DATA_ENV_VAR}=DIR"


# --------------------------------------------------------------------------------------
# Locating and verifying files


@dataclass(frozen=True)
class _DataFile:
    """One file of the data set and the digest it must have.

    Attributes:
        relpath: path below the data directory, with forward slashes.
        algorithm: ``hashlib`` name of the digest.
        digest: expected hex digest.
        gzipped: the digest is of the decompressed content (MNIST's published md5s are of
            the uncompressed IDX files).
    """

    relpath: str
    algorithm: str
    digest: str
    gzipped: bool = False


def _table(*files: _DataFile) -> dict[str, _DataFile]:
    return {f.relpath: f for f in files}


_FILES = _table(
    # MNIST: md5 of the uncompressed IDX files, from ../shared/data/README.md and
    # mnist/MD5SUMS.uncompressed.
    _DataFile("mnist/train-images-idx3-ubyte.gz", "md5", "6bbc9ace898e44ae57da46a324031adb", True),
    _DataFile("mnist/train-labels-idx1-ubyte.gz", "md5", "a25bea736e30d166cdddb491f175f624", True),
    _DataFile("mnist/t10k-images-idx3-ubyte.gz", "md5", "2646ac647ad5339dbf082846283269ea", True),
    _DataFile("mnist/t10k-labels-idx1-ubyte.gz", "md5", "27ae3e4e09519cfbb04c329615203637", True),
    # PTB: md5 of the text files, from ../shared/data/README.md.
    _DataFile("ptb/ptb.train.txt", "md5", "f26c4b92c5fdc7b3f8c7cdcb991d8420"),
    _DataFile("ptb/ptb.valid.txt", "md5", "aa0affc06ff7c36e977d7cd49e3839bf"),
    _DataFile("ptb/ptb.test.txt", "md5", "8b80168b89c18661a38ef683c0dc3721"),
    # JSB: the data README lists no digests; these are `sha256sum` of the two JSON files
    # as shipped in ../shared/data/jsb (czhuang/JSB-Chorales-dataset, commit 9a7f733).
    _DataFile(
        "jsb/jsb-chorales-quarter.json",
        "sha256",
        "2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91",
    ),
    _DataFile(
        "jsb/jsb-chorales-16th.json",
        "sha256",
        "8730aca7b64e7d29493733d1cf19fad4a5b351d8f1845e57dac27728104fd39f",
    ),
)

# Files already verified in this process, keyed by (resolved path, size, mtime): a file
# replaced or edited since is checked again, an unchanged one is not hashed twice.
_verified: set[tuple[str, int, int]] = set()


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the data directory (the folder holding ``jsb/``, ``mnist/`` and ``ptb/``).

    Args:
        data_dir: an explicit directory; overrides everything else.

    Returns:
        The directory, resolved to an absolute path. The order searched is in the module
        docstring: ``data_dir``, ``$SNUC_DATA``, ``../shared/data`` from the working
        directory, ``../shared/data`` from the repository root.

    Raises:
        SnucError: the named directory does not exist, or no default location does.
    """
    if data_dir is not None:
        return _existing_dir(Path(data_dir), "given as data_dir / --data-dir")
    from_env = os.environ.get(DATA_ENV_VAR, "")
    if from_env:
        return _existing_dir(Path(from_env), f"from {DATA_ENV_VAR}")
    candidates = [Path.cwd() / _DEFAULT_RELATIVE, _REPO_ROOT / _DEFAULT_RELATIVE]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c.resolve()) for c in candidates)
    raise SnucError(f"data directory not found (tried {tried}); {_HOW_TO_POINT}")


def _existing_dir(path: Path, origin: str) -> Path:
    if not path.is_dir():
        raise SnucError(f"data directory {path} ({origin}) does not exist; {_HOW_TO_POINT}")
    return path.resolve()


def _read_verified(relpath: str, data_dir: str | os.PathLike[str] | None) -> bytes:
    """Read a data file (decompressed if gzipped) after checking its digest."""
    spec = _FILES[relpath]
    path = resolve_data_dir(data_dir) / relpath
    key = _file_key(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SnucError(f"missing data file {path}; {_HOW_TO_POINT}") from None
    except OSError as exc:
        raise SnucError(f"cannot read data file {path}: {exc.strerror}") from None
    content = _gunzip(raw, path) if spec.gzipped else raw
    if key is None or key not in _verified:
        actual = _digest(content, spec.algorithm)
        if actual != spec.digest:
            what = "uncompressed content" if spec.gzipped else "content"
            raise SnucError(
                f"data file {path} is corrupt or a different version: {spec.algorithm} of its "
                f"{what} is {actual}, expected {spec.digest}; restore it from the data set"
            )
        if key is not None:
            _verified.add(key)
    return content


def _file_key(path: Path) -> tuple[str, int, int] | None:
    """(path, size, mtime) identifying one version of a file, or None if it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path), stat.st_size, stat.st_mtime_ns


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise SnucError(f"data file {path} is not a valid gzip file ({exc}); restore it") from None


def _digest(content: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, content).hexdigest()


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise SnucError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


# --------------------------------------------------------------------------------------
# JSB chorales

JSB_SPLITS = ("train", "valid", "test")
JSB_GRIDS = ("quarter", "16th")
PIANO_KEYS = 88
LOWEST_MIDI_NOTE = 21
"""MIDI note of piano-roll column 0 (A0); column k is note 21 + k, up to 108 (C8)."""

JSB_NLL_EPS = 1e-7
"""Probabilities are clipped to [eps, 1 - eps] (in float64) before taking logs, so a
confident wrong prediction costs -ln(1e-7) ≈ 16.1 nats per note instead of infinity."""


def load_jsb(
    split: str, data_dir: str | os.PathLike[str] | None = None, grid: str = "quarter"
) -> list[np.ndarray]:
    """Load one split of the JSB chorales as 88-key piano rolls.

    Args:
        split: ``"train"``, ``"valid"`` or ``"test"`` (229 / 76 / 77 chorales).
        data_dir: the data directory (see :func:`resolve_data_dir`).
        grid: ``"quarter"`` (the standard Boulanger-Lewandowski 2012 set) or ``"16th"``.

    Returns:
        ``list[np.ndarray]``, one ``float32 [T_i, 88]`` roll per chorale in file order;
        ``roll[t, k] = 1`` when MIDI note ``21 + k`` sounds at step ``t``.

    Raises:
        SnucError: bad split or grid, missing or corrupt file, or a note off the keyboard.
    """
    _check_choice(split, JSB_SPLITS, "JSB split")
    _check_choice(grid, JSB_GRIDS, "JSB grid")
    relpath = f"jsb/jsb-chorales-{grid}.json"
    content = _read_verified(relpath, data_dir)
    try:
        chorales = json.loads(content)[split]
    except (ValueError, KeyError, TypeError):
        raise SnucError(f"{relpath} has no {split!r} list of chorales; restore it") from None
    return [
        chorale_to_roll(steps, where=f"{relpath}: {split} chorale {i}")
        for i, steps in enumerate(chorales)
    ]


def chorale_to_roll(steps: Sequence[Sequence[float]], where: str = "chorale") -> np.ndarray:
    """Turn a list of time steps (each a list of MIDI notes) into a piano roll.

    A note listed twice in one step (two voices in unison, as in the 16th-note grid) is
    one key down. Notes may be ints or integral floats (the 16th-note file stores floats).

    Args:
        steps: per time step the MIDI note numbers sounding; an empty list is a rest.
        where: names the chorale in error messages.

    Returns:
        ``float32 [len(steps), 88]``; column k is MIDI note 21 + k.

    Raises:
        SnucError: a note that is not an integer in 21..108.
    """
    roll = np.zeros((len(steps), PIANO_KEYS), dtype=np.float32)
    for t, notes in enumerate(steps):
        for note in notes:
            roll[t, _piano_column(note, f"{where}, step {t}")] = 1.0
    return roll


def _piano_column(note: object, where: str) -> int:
    highest = LOWEST_MIDI_NOTE + PIANO_KEYS - 1
    is_number = isinstance(note, int | float) and not isinstance(note, bool)
    if not is_number or not math.isfinite(note) or note != int(note):
        raise SnucError(f"{where}: note {note!r} is not an integer MIDI note number")
    midi = int(note)
    if not LOWEST_MIDI_NOTE <= midi <= highest:
        raise SnucError(
            f"{where}: MIDI note {midi} is outside the 88-key range "
            f"{LOWEST_MIDI_NOTE}..{highest} of the piano roll"
        )
    return midi - LOWEST_MIDI_NOTE


def pad_sequences(rolls: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack piano rolls of different lengths into one time-major batch, zero-padded at the end.

    Padding at the end never changes a causal network's outputs inside each length
    (SPEC §1), so the padded batch can be run whole and scored with :func:`jsb_nll`.

    Args:
        rolls: ``[T_i, F]`` arrays with the same F (88 for piano rolls).

    Returns:
        ``(X, lengths)``: ``X`` is ``float32 [T_max, N, F]``, ``lengths`` is ``int64 [N]``.

    Raises:
        SnucError: no rolls, or a roll that is not 2-D with the first roll's width.
    """
    if len(rolls) == 0:
        raise SnucError("pad_sequences needs at least one sequence")
    width = np.shape(rolls[0])[-1] if np.ndim(rolls[0]) == 2 else None
    for i, roll in enumerate(rolls):
        if np.ndim(roll) != 2 or np.shape(roll)[1] != width:
            raise SnucError(
                f"pad_sequences: sequence {i} has shape {np.shape(roll)}, expected [T, {width}] "
                "like sequence 0"
            )
    lengths = np.array([len(roll) for roll in rolls], dtype=np.int64)
    batch = np.zeros((int(lengths.max()), len(rolls), width), dtype=np.float32)
    for i, roll in enumerate(rolls):
        batch[: lengths[i], i] = roll
    return batch, lengths


def jsb_nll_sum(
    probs: np.ndarray, X: np.ndarray, lengths: np.ndarray, eps: float = JSB_NLL_EPS
) -> tuple[float, int]:
    """Summed negative log-likelihood of a batch of chorales, and how many frames it covers.

    The pieces of :func:`jsb_nll`, for pooling a split scored in several batches:
    ``sum(nll) / sum(frames)`` over the batches is the split's mean NLL.

    Args:
        probs: ``[T, N, 88]`` note probabilities; the output at step t predicts frame t + 1.
        X: ``[T, N, 88]`` the piano rolls the network was fed (targets are X shifted by one).
        lengths: ``[N]`` length of each chorale; steps at or after it are ignored.
        eps: probabilities are clipped to ``[eps, 1 - eps]``.

    Returns:
        ``(nll_sum, frames)``: nats summed over the 88 notes and over every predicted frame
        ``t + 1 = 1 .. T_i - 1`` of each chorale, and the number of those frames.

    Raises:
        SnucError: mismatched shapes, lengths out of range, or probabilities outside [0, 1].
    """
    probs = np.asarray(probs)
    X = np.asarray(X)
    lengths = np.asarray(lengths, dtype=np.int64)
    if probs.ndim != 3 or probs.shape != X.shape:
        raise SnucError(
            f"jsb_nll: probs {probs.shape} and X {X.shape} must have the same shape [T, N, 88]"
        )
    steps, batch, _ = probs.shape
    if lengths.shape != (batch,) or np.any(lengths < 0) or np.any(lengths > steps):
        raise SnucError(f"jsb_nll: lengths must be [{batch}] integers in 0..{steps}")
    # predicted[t, n]: the output at step t of chorale n predicts a frame inside its length.
    predicted = np.arange(steps - 1)[:, None] < (lengths - 1)[None, :]
    p = probs[:-1][predicted].astype(np.float64)
    x = X[1:][predicted].astype(np.float64)
    if p.size and not (np.all(p >= 0.0) and np.all(p <= 1.0)):
        raise SnucError(
            "jsb_nll: probs must be probabilities in [0, 1] (sigmoid outputs, not logits), "
            f"found values in [{np.nanmin(p):.4g}, {np.nanmax(p):.4g}] or NaN"
        )
    p = np.clip(p, eps, 1.0 - eps)
    nll = -np.sum(x * np.log(p) + (1.0 - x) * np.log1p(-p))
    return float(nll), int(predicted.sum())


def jsb_nll(
    probs: np.ndarray, X: np.ndarray, lengths: np.ndarray, eps: float = JSB_NLL_EPS
) -> float:
    """Mean negative log-likelihood per predicted frame (SPEC §11's protocol).

    NLL = −Σ_notes [x log p + (1−x) log(1−p)], summed over every predicted frame
    (t + 1 = 1 … T_i − 1 of each chorale: the output at step t predicts frame t + 1),
    divided by the number of predicted frames, pooled over the batch. Computed in float64
    with p clipped to ``[eps, 1 - eps]`` (:data:`JSB_NLL_EPS`).

    Args:
        probs: ``[T, N, 88]`` note probabilities (sigmoid outputs).
        X: ``[T, N, 88]`` the input piano rolls, as from :func:`pad_sequences`.
        lengths: ``[N]`` chorale lengths.
        eps: clipping bound for the probabilities.

    Returns:
        The mean NLL in nats per frame.

    Raises:
        SnucError: bad shapes or values (see :func:`jsb_nll_sum`), or no predicted frame.
    """
    nll, frames = jsb_nll_sum(probs, X, lengths, eps)
    if frames == 0:
        raise SnucError("jsb_nll: no chorale is longer than one step, so nothing is predicted")
    return nll / frames


# --------------------------------------------------------------------------------------
# MNIST

MNIST_SPLITS = ("train", "test")
MNIST_STEPS = 20
MNIST_MAX_RATE = 0.3
"""Spike probability per step of a white pixel. The SNU authors' toolkit (IBM neuroaikit,
REFERENCE.md) rate-codes MNIST over 20 steps with about 6 expected spikes for a white
pixel: 6 / 20 = 0.3."""

_MNIST_FILES = {
    "train": ("mnist/train-images-idx3-ubyte.gz", "mnist/train-labels-idx1-ubyte.gz"),
    "test": ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
}
_IDX_UBYTE = 0x08


def load_mnist(
    split: str, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST from the original gzipped IDX files.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: the data directory (see :func:`resolve_data_dir`).

    Returns:
        ``(images, labels)``: ``uint8 [N, 28, 28]`` and ``int64 [N]`` (digits 0..9).

    Raises:
        SnucError: bad split, missing or corrupt files, or files that are not MNIST IDX.
    """
    _check_choice(split, MNIST_SPLITS, "MNIST split")
    images_path, labels_path = _MNIST_FILES[split]
    images = parse_idx(_read_verified(images_path, data_dir), images_path)
    labels = parse_idx(_read_verified(labels_path, data_dir), labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise SnucError(f"{images_path}: images are {images.shape}, expected [N, 28, 28]")
    if labels.ndim != 1 or len(labels) != len(images):
        raise SnucError(f"{labels_path}: labels are {labels.shape}, expected [{len(images)}]")
    if labels.max(initial=0) > 9:
        raise SnucError(f"{labels_path}: label {labels.max()} is not a digit 0..9")
    return images, labels.astype(np.int64)


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse an uncompressed IDX file of unsigned bytes (LeCun's MNIST format).

    The header is two zero bytes, a type code (0x08 = unsigned byte), the number of
    dimensions d, then d big-endian uint32 sizes; the values follow in C order.

    Args:
        data: the file's bytes.
        name: names the file in error messages.

    Returns:
        A writable ``uint8`` array of the sizes in the header.

    Raises:
        SnucError: a bad magic number, a type other than unsigned byte, or a length that
            does not match the header.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise SnucError(f"{name}: not an IDX file (bad magic number {data[:4].hex()})")
    if data[2] != _IDX_UBYTE:
        raise SnucError(f"{name}: IDX type 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise SnucError(f"{name}: truncated IDX header ({ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise SnucError(
            f"{name}: IDX header says {shape} = {expected} bytes, the file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def rate_code(
    images: np.ndarray,
    steps: int,
    rng: np.random.Generator,
    *,
    max_rate: float = MNIST_MAX_RATE,
    image_major: bool = False,
) -> np.ndarray:
    """Bernoulli rate coding: a pixel spikes at each step with probability intensity × rate.

    Args:
        images: ``uint8 [N, ...]`` (e.g. ``[N, 28, 28]``); flattened per image.
        steps: number of time steps.
        rng: the random generator; every spike is one draw from it, in ``[steps, N, pixels]``
            order, so the same generator state gives the same spikes.
        max_rate: spike probability per step of a white (255) pixel; the default
            :data:`MNIST_MAX_RATE` gives about 6 spikes over 20 steps. Black pixels never
            spike.
        image_major: draw in ``[N, steps, pixels]`` order instead, so that the spikes of
            the first n images do not depend on how many images follow them.

    Returns:
        ``float32 [steps, N, pixels]`` of 0/1 spikes, time-major.

    Raises:
        SnucError: images not uint8 with a batch axis, steps < 1, or max_rate not in (0, 1].
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 2:
        raise SnucError(
            f"rate_code: images must be uint8 [N, ...] (raw 0..255 intensities), "
            f"got {images.dtype} {images.shape}"
        )
    if int(steps) != steps or steps < 1:
        raise SnucError(f"rate_code: steps must be a positive integer, got {steps!r}")
    if not 0.0 < max_rate <= 1.0:
        raise SnucError(f"rate_code: max_rate is a probability per step in (0, 1], got {max_rate}")
    flat = images.reshape(len(images), -1)
    p_spike = flat.astype(np.float32) * np.float32(max_rate / 255.0)
    # random() is in [0, 1): a zero probability never fires, a probability of 1 always does.
    if image_major:
        draws = rng.random((len(flat), int(steps), flat.shape[1]), dtype=np.float32)
        return (draws < p_spike[:, None]).transpose(1, 0, 2).astype(np.float32)
    draws = rng.random((int(steps), *flat.shape), dtype=np.float32)
    return (draws < p_spike[None]).astype(np.float32)


def iter_rate_coded(
    images: np.ndarray,
    labels: np.ndarray,
    steps: int,
    batch_size: int,
    rng: np.random.Generator,
    *,
    max_rate: float = MNIST_MAX_RATE,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Rate-code a data set batch by batch, so it is never held in memory whole.

    All 10,000 MNIST test images over 20 steps would take 627 MB as float32; one batch of
    b images takes ``steps * b * 784 * 4`` bytes.

    Args:
        images: ``uint8 [N, ...]`` images.
        labels: ``[N]`` labels, sliced alongside.
        steps: time steps per image.
        batch_size: images per batch (the last batch may be smaller).
        rng: the random generator, drawn from batch after batch; the spikes depend on the
            batch size as well as the generator's state.
        max_rate: as in :func:`rate_code`.

    Yields:
        ``(spikes, labels)``: ``float32 [steps, b, pixels]`` and ``labels[i : i + b]``, in
        order, every image exactly once.

    Raises:
        SnucError: images and labels of different lengths, or batch_size < 1.
    """
    if len(images) != len(labels):
        raise SnucError(
            f"iter_rate_coded: {len(images)} images but {len(labels)} labels; pass one per image"
        )
    if int(batch_size) != batch_size or batch_size < 1:
        raise SnucError(
            f"iter_rate_coded: batch_size must be a positive integer, got {batch_size!r}"
        )
    for start in range(0, len(images), int(batch_size)):
        stop = start + int(batch_size)
        yield rate_code(images[start:stop], steps, rng, max_rate=max_rate), labels[start:stop]


MNIST_CODING_BLOCK = 1000
"""Images rate-coded per generator call when a split is scored (:func:`iter_scoring_spikes`):
a bound on memory, not on the spikes, which do not depend on it."""


def iter_scoring_spikes(
    images: np.ndarray,
    labels: np.ndarray,
    steps: int,
    coding_seed: int = 0,
    *,
    max_rate: float = MNIST_MAX_RATE,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The fixed rate coding a split is scored with, by ``snuc eval`` and by the training
    script alike, so that both report the same accuracy for the same weights.

    One generator, ``numpy.random.default_rng(coding_seed)``, draws image after image
    (:func:`rate_code` with ``image_major``), in blocks of :data:`MNIST_CODING_BLOCK`
    images: image i's spikes depend on the seed and on i alone, so a prefix of a split
    (``--limit``) gets the spikes the whole split gets.

    Yields:
        ``(spikes, labels)``: ``float32 [steps, b, pixels]`` and the block's labels.

    Raises:
        SnucError: as :func:`rate_code`, or images and labels of different lengths.
    """
    if len(images) != len(labels):
        raise SnucError(
            f"iter_scoring_spikes: {len(images)} images but {len(labels)} labels; pass one "
            "per image"
        )
    rng = np.random.default_rng(coding_seed)
    for start in range(0, len(images), MNIST_CODING_BLOCK):
        stop = start + MNIST_CODING_BLOCK
        block = rate_code(images[start:stop], steps, rng, max_rate=max_rate, image_major=True)
        yield block, labels[start:stop]


def predictions_from_counts(outputs: np.ndarray) -> np.ndarray:
    """Class per sample: the argmax of the outputs summed over time (spike counts).

    Args:
        outputs: ``[T, N, C]`` outputs per step (spikes, or any per-step score).

    Returns:
        ``int64 [N]``; ties go to the lowest class index.

    Raises:
        SnucError: outputs not 3-D.
    """
    outputs = np.asarray(outputs)
    if outputs.ndim != 3:
        raise SnucError(f"outputs must be [T, N, classes], got shape {outputs.shape}")
    counts = outputs.sum(axis=0, dtype=np.float64)
    return np.argmax(counts, axis=-1).astype(np.int64)


def accuracy_from_counts(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose summed-over-time output is largest for the true class.

    Args:
        outputs: ``[T, N, C]`` outputs per step.
        labels: ``[N]`` true classes.

    Returns:
        The accuracy in [0, 1]; ties go to the lowest class index.

    Raises:
        SnucError: outputs not 3-D, or labels not ``[N]``.
    """
    predictions = predictions_from_counts(outputs)
    labels = np.asarray(labels)
    if labels.shape != predictions.shape or labels.size == 0:
        raise SnucError(
            f"accuracy_from_counts: labels {labels.shape} must be [N] with N = "
            f"{predictions.shape[0]} > 0 as in outputs [T, N, classes]"
        )
    return float(np.mean(predictions == labels))


# --------------------------------------------------------------------------------------
# Penn Treebank

PTB_SPLITS = ("train", "valid", "test")
PTB_VOCAB_SIZE = 10_000
EOS = "<eos>"
"""Appended to every line (Mikolov's convention), so sentence ends are predicted too."""

# Built vocabularies, keyed like _verified by the train file's (path, size, mtime).
_vocab_cache: dict[tuple[str, int, int], tuple[str, ...]] = {}


def _ptb_words(split: str, data_dir: str | os.PathLike[str] | None) -> list[str]:
    """The split's words, each line's words followed by ``<eos>``."""
    text = _read_verified(f"ptb/ptb.{split}.txt", data_dir).decode("utf-8")
    # split("\n") rather than splitlines(): only newline ends a line, as in the files'
    # origin; the piece after the final newline is not a line.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    words: list[str] = []
    for line in lines:
        words.extend(line.split())
        words.append(EOS)
    return words


def ptb_vocab(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The PTB vocabulary, built from the train split: id → word.

    Order: by frequency in the train split (``<eos>`` counted once per line), most
    frequent first; equal counts by the words' code-point order. So ``the`` is id 0,
    ``<unk>`` 1, ``<eos>`` 2.

    Args:
        data_dir: the data directory (see :func:`resolve_data_dir`).

    Returns:
        The 10,000 words.

    Raises:
        SnucError: missing or corrupt file, or a vocabulary not of 10,000 words.
    """
    path = resolve_data_dir(data_dir) / "ptb" / "ptb.train.txt"
    key = _file_key(path)
    if key is not None and key in _vocab_cache:
        return list(_vocab_cache[key])
    counts = Counter(_ptb_words("train", data_dir))
    vocab = tuple(sorted(counts, key=lambda word: (-counts[word], word)))
    if len(vocab) != PTB_VOCAB_SIZE:
        raise SnucError(f"{path}: {len(vocab)} distinct words, expected {PTB_VOCAB_SIZE}")
    if key is not None:
        _vocab_cache[key] = vocab
    return list(vocab)


def load_ptb(split: str, data_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """Load one PTB split as a single stream of token ids.

    Args:
        split: ``"train"``, ``"valid"`` or ``"test"`` (929,589 / 73,760 / 82,430 tokens
            including one ``<eos>`` per line).
        data_dir: the data directory (see :func:`resolve_data_dir`).

    Returns:
        ``int64 [tokens]``, ids into :func:`ptb_vocab`.

    Raises:
        SnucError: bad split, missing or corrupt file, or a word not in the vocabulary.
    """
    _check_choice(split, PTB_SPLITS, "PTB split")
    index = {word: i for i, word in enumerate(ptb_vocab(data_dir))}
    words = _ptb_words(split, data_dir)
    try:
        return np.fromiter((index[w] for w in words), dtype=np.int64, count=len(words))
    except KeyError as exc:
        raise SnucError(
            f"ptb/ptb.{split}.txt: word {exc.args[0]!r} is not in the train vocabulary"
        ) from None


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Cut a token stream into ``batch_size`` contiguous columns (standard LM batching).

    Column b holds tokens ``b*T .. (b+1)*T - 1``; the ``len(ids) % batch_size`` tokens at
    the end are dropped. Running the columns as a batch over time carries each column's
    state across consecutive windows of rows.

    Args:
        ids: ``[N]`` token ids.
        batch_size: number of columns B.

    Returns:
        ``[T, B]`` with ``T = len(ids) // B``, same dtype as ``ids``, time-major.

    Raises:
        SnucError: ids not 1-D, batch_size < 1, or fewer ids than columns.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise SnucError(f"batchify: ids must be a 1-D token stream, got shape {ids.shape}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise SnucError(f"batchify: batch_size must be a positive integer, got {batch_size!r}")
    steps = len(ids) // int(batch_size)
    if steps == 0:
        raise SnucError(f"batchify: {len(ids)} ids cannot fill {batch_size} columns")
    return np.ascontiguousarray(ids[: steps * int(batch_size)].reshape(int(batch_size), steps).T)


def lm_nll_sum(
    log_probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None
) -> tuple[float, int]:
    """Summed negative log-likelihood of the targets, and how many tokens it covers.

    The pieces of :func:`perplexity`, for pooling a split scored window by window:
    ``exp(sum(nll) / sum(tokens))`` over the windows is the split's perplexity.

    Args:
        log_probs: ``[T, B, V]`` log-softmax outputs.
        targets: ``[T, B]`` integer token ids, each in ``0..V-1``.
        mask: optional ``[T, B]`` booleans; only True positions count.

    Returns:
        ``(nll_sum, tokens)`` in nats.

    Raises:
        SnucError: mismatched shapes, or targets out of range.
    """
    log_probs = np.asarray(log_probs)
    targets = np.asarray(targets)
    if log_probs.ndim != 3 or targets.shape != log_probs.shape[:2]:
        raise SnucError(
            f"log_probs {log_probs.shape} must be [T, B, V] and targets {targets.shape} [T, B]"
        )
    if not np.issubdtype(targets.dtype, np.integer):
        raise SnucError(f"targets must be integer token ids, got {targets.dtype}")
    vocab = log_probs.shape[2]
    if targets.size and (targets.min() < 0 or targets.max() >= vocab):
        raise SnucError(f"targets must be token ids in 0..{vocab - 1}")
    if mask is None:
        mask = np.ones(targets.shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != targets.shape:
        raise SnucError(f"mask {mask.shape} must have the targets' shape {targets.shape}")
    picked = np.take_along_axis(log_probs, targets[..., None].astype(np.intp), axis=2)[..., 0]
    return float(-np.sum(picked[mask], dtype=np.float64)), int(mask.sum())


def perplexity(log_probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Perplexity: exp of the mean negative log-likelihood of the targets.

    Args:
        log_probs: ``[T, B, V]`` log-softmax outputs; the output at step t is scored
            against ``targets[t]`` (for a language model, the token at t + 1).
        targets: ``[T, B]`` integer token ids.
        mask: optional ``[T, B]`` booleans; only True positions count.

    Returns:
        ``exp(mean NLL)``; uniform predictions over V words give V.

    Raises:
        SnucError: bad shapes or targets (see :func:`lm_nll_sum`), or no token to score.
    """
    nll, tokens = lm_nll_sum(log_probs, targets, mask)
    if tokens == 0:
        raise SnucError("perplexity: no token to score (empty targets or an all-False mask)")
    return math.exp(nll / tokens)
