"""Tests for snuc.datasets: the loaders against the real files, checksums, data-dir lookup,
and the metrics (JSB NLL, spike-count accuracy, perplexity) on hand-checked examples."""

from __future__ import annotations

import gzip
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from snuc import datasets
from snuc.datasets import (
    MNIST_CODING_BLOCK,
    MNIST_MAX_RATE,
    accuracy_from_counts,
    batchify,
    chorale_to_roll,
    iter_rate_coded,
    iter_scoring_spikes,
    jsb_nll,
    jsb_nll_sum,
    lm_nll_sum,
    load_jsb,
    load_mnist,
    load_ptb,
    pad_sequences,
    parse_idx,
    perplexity,
    predictions_from_counts,
    ptb_vocab,
    rate_code,
    resolve_data_dir,
)
from snuc.ir.errors import SnucError


@pytest.fixture(scope="module")
def mnist_train(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist("train", data_dir)


def _copy(data_dir: Path, relpath: str, dest_root: Path) -> Path:
    dest = dest_root / relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / relpath, dest)
    return dest


# ---------------------------------------------------------------------------- JSB


@pytest.mark.parametrize(
    ("split", "count", "shortest", "longest", "total", "lowest", "highest"),
    [
        ("train", 229, 25, 129, 13_807, 43, 96),
        ("valid", 76, 32, 144, 4_602, 48, 96),
        ("test", 77, 32, 160, 4_725, 45, 96),
    ],
)
def test_jsb_quarter_matches_data_readme(
    data_dir, split, count, shortest, longest, total, lowest, highest
):
    rolls = load_jsb(split, data_dir)
    lengths = [len(r) for r in rolls]
    assert len(rolls) == count
    assert (min(lengths), max(lengths), sum(lengths)) == (shortest, longest, total)
    assert all(r.dtype == np.float32 and r.shape[1] == 88 for r in rolls)
    stacked = np.concatenate(rolls)
    assert set(np.unique(stacked)) <= {0.0, 1.0}
    keys = np.flatnonzero(stacked.any(axis=0)) + 21
    assert (keys.min(), keys.max()) == (lowest, highest)
    assert stacked.sum(axis=1).max() == 4


def test_jsb_first_test_chorale_roll(data_dir):
    first = load_jsb("test", data_dir)[0]
    # The file's first step is MIDI [72, 76, 79, 84]; column = note - 21.
    assert list(np.flatnonzero(first[0])) == [72 - 21, 76 - 21, 79 - 21, 84 - 21]


def test_jsb_16th_grid_loads_with_same_split_sizes(data_dir):
    rolls = load_jsb("valid", data_dir, grid="16th")
    assert len(rolls) == 76
    assert sum(len(r) for r in rolls) == 18_408
    assert np.concatenate(rolls).sum(axis=1).max() <= 4


def test_jsb_bad_split_and_grid(data_dir):
    with pytest.raises(SnucError, match="unknown JSB split 'dev'.*train, valid, test"):
        load_jsb("dev", data_dir)
    with pytest.raises(SnucError, match="unknown JSB grid 'eighth'"):
        load_jsb("test", data_dir, grid="eighth")


def test_chorale_to_roll_unison_rest_and_range():
    roll = chorale_to_roll([[21, 108], [], [60.0, 60]])
    assert roll.shape == (3, 88)
    assert list(np.flatnonzero(roll[0])) == [0, 87]
    assert not roll[1].any()
    assert list(np.flatnonzero(roll[2])) == [39]
    with pytest.raises(SnucError, match=r"x, step 1: MIDI note 20 is outside .* 21\.\.108"):
        chorale_to_roll([[60], [20]], where="x")
    with pytest.raises(SnucError, match="MIDI note 109"):
        chorale_to_roll([[109]])
    with pytest.raises(SnucError, match="not an integer MIDI note"):
        chorale_to_roll([[60.5]])


def test_pad_sequences_time_major_zero_padded():
    a = np.ones((2, 88), np.float32)
    b = np.full((4, 88), 2.0, np.float32)
    X, lengths = pad_sequences([a, b])
    assert X.shape == (4, 2, 88) and X.dtype == np.float32
    assert lengths.dtype == np.int64 and list(lengths) == [2, 4]
    np.testing.assert_array_equal(X[:2, 0], a)
    assert not X[2:, 0].any()
    np.testing.assert_array_equal(X[:, 1], b)
    with pytest.raises(SnucError, match="sequence 1 has shape"):
        pad_sequences([a, np.ones((3, 12), np.float32)])
    with pytest.raises(SnucError, match="at least one"):
        pad_sequences([])


def _nll_loop(probs, X, lengths, eps=1e-7):
    """The protocol written out chorale by chorale, frame by frame, note by note."""
    total, frames = 0.0, 0
    for n, length in enumerate(lengths):
        for t in range(length - 1):
            for k in range(X.shape[2]):
                p = min(max(float(probs[t, n, k]), eps), 1 - eps)
                x = float(X[t + 1, n, k])
                total -= x * math.log(p) + (1 - x) * math.log(1 - p)
            frames += 1
    return total / frames


def test_jsb_nll_matches_direct_loop():
    rng = np.random.default_rng(0)
    rolls = [(rng.random((length, 88)) < 0.05).astype(np.float32) for length in (5, 1, 9, 3)]
    X, lengths = pad_sequences(rolls)
    probs = rng.random(X.shape).astype(np.float32)
    probs[0, 0, :3] = [0.0, 1.0, 1.0]  # exercise the clipping
    X[1, 0, :3] = [1.0, 0.0, 1.0]
    assert jsb_nll(probs, X, lengths) == pytest.approx(_nll_loop(probs, X, lengths), rel=1e-9)


def test_jsb_nll_hand_computed():
    X = np.zeros((3, 2, 88), np.float32)
    probs = np.full((3, 2, 88), np.nan, np.float32)  # padding and last steps never read
    # Chorale 0, length 2: one predicted frame, all notes off, p = 0.5: 88 ln 2.
    probs[0, 0] = 0.5
    # Chorale 1, length 3: frame 1 has note 0 on with p = 0.9 and 87 notes off with
    # p = 0.1 (88 × −ln 0.9); frame 2 is silent with p = 0.2 (88 × −ln 0.8).
    probs[0, 1] = 0.1
    probs[0, 1, 0] = 0.9
    X[1, 1, 0] = 1.0
    probs[1, 1] = 0.2
    expected = 88 * (math.log(2) - math.log(0.9) - math.log(0.8)) / 3
    assert jsb_nll(probs, X, np.array([2, 3])) == pytest.approx(expected, rel=1e-6)
    nll, frames = jsb_nll_sum(probs, X, [2, 3])
    assert frames == 3 and nll == pytest.approx(3 * expected, rel=1e-6)


def test_jsb_nll_clips_with_documented_eps():
    X = np.zeros((2, 1, 88), np.float32)
    X[1, 0, 0] = 1.0
    probs = np.zeros((2, 1, 88), np.float32)
    assert jsb_nll(probs, X, [2]) == pytest.approx(-math.log(1e-7) - 87 * math.log1p(-1e-7))


def test_jsb_nll_errors():
    X = np.zeros((3, 1, 88), np.float32)
    with pytest.raises(SnucError, match="same shape"):
        jsb_nll(np.zeros((3, 2, 88)), X, [3])
    with pytest.raises(SnucError, match="lengths"):
        jsb_nll(np.zeros_like(X), X, [4])
    with pytest.raises(SnucError, match="nothing is predicted"):
        jsb_nll(np.zeros_like(X), X, [1])
    with pytest.raises(SnucError, match="not logits"):
        jsb_nll(np.full_like(X, 2.5), X, [3])


# ---------------------------------------------------------------------------- MNIST


def test_mnist_train_matches_data_readme(mnist_train):
    images, labels = mnist_train
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60_000,) and labels.dtype == np.int64
    assert list(labels[:5]) == [5, 0, 4, 1, 9]
    assert set(np.unique(labels)) == set(range(10))
    # Mean and std after /255 from a histogram: exact, and no 60000×784 float copy.
    histogram = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = histogram @ values / histogram.sum()
    std = math.sqrt(histogram @ (values - mean) ** 2 / histogram.sum())
    assert (round(mean, 4), round(std, 4)) == (0.1307, 0.3081)


def test_mnist_test_split(data_dir):
    images, labels = load_mnist("test", data_dir)
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert list(labels[:5]) == [7, 2, 1, 0, 4]
    assert images.flags.writeable


def test_mnist_bad_split(data_dir):
    with pytest.raises(SnucError, match="unknown MNIST split 'valid'; expected one of train, test"):
        load_mnist("valid", data_dir)


def _idx(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    header = bytes([0, 0, type_code, len(shape)])
    return header + b"".join(s.to_bytes(4, "big") for s in shape) + payload


def test_parse_idx_checks_magic_type_and_length():
    array = parse_idx(_idx(0x08, (2, 3), bytes(range(6))))
    np.testing.assert_array_equal(array, np.arange(6).reshape(2, 3))
    with pytest.raises(SnucError, match="f.idx: not an IDX file"):
        parse_idx(b"\x1f\x8b\x08\x00" + bytes(8), "f.idx")
    with pytest.raises(SnucError, match=r"IDX type 0x0d, expected 0x08"):
        parse_idx(_idx(0x0D, (2,), bytes(8)))
    with pytest.raises(SnucError, match=r"header says \(2, 3\) = 18 bytes, the file has 17"):
        parse_idx(_idx(0x08, (2, 3), bytes(5)))
    with pytest.raises(SnucError, match="truncated IDX header"):
        parse_idx(bytes([0, 0, 8, 3, 0, 0]))


def test_rate_code_statistics():
    rng = np.random.default_rng(1)
    images = np.zeros((200, 28, 28), np.uint8)
    images[:, :10] = 255  # white rows
    images[:, 10:20] = 128  # grey rows
    spikes = rate_code(images, 20, rng)
    assert spikes.shape == (20, 200, 784) and spikes.dtype == np.float32
    assert set(np.unique(spikes)) == {0.0, 1.0}
    per_pixel = spikes.sum(axis=0).reshape(200, 28, 28)
    # White: Binomial(20, 0.3), mean 6; the mean of 56,000 pixels is within ~0.01 of it.
    assert per_pixel[:, :10].mean() == pytest.approx(6.0, abs=0.05)
    assert per_pixel[:, 10:20].mean() == pytest.approx(6.0 * 128 / 255, abs=0.05)
    assert not per_pixel[:, 20:].any()  # black never spikes
    again = rate_code(images, 20, np.random.default_rng(1))
    np.testing.assert_array_equal(spikes, again)


def test_scoring_spikes_of_a_prefix_are_the_whole_splits_first_spikes():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(2 * MNIST_CODING_BLOCK + 5, 4, 4), dtype=np.uint8)
    labels = np.arange(len(images)) % 10
    whole = list(iter_scoring_spikes(images, labels, 6, coding_seed=7))
    assert [b.shape for b, _ in whole] == [(6, MNIST_CODING_BLOCK, 16)] * 2 + [(6, 5, 16)]
    spikes = np.concatenate([b for b, _ in whole], axis=1)
    assert np.array_equal(np.concatenate([y for _, y in whole]), labels)
    for n in (1, 37, MNIST_CODING_BLOCK + 3):
        blocks = list(iter_scoring_spikes(images[:n], labels[:n], 6, coding_seed=7))
        prefix = np.concatenate([b for b, _ in blocks], axis=1)
        assert np.array_equal(prefix, spikes[:, :n])
    other, _ = next(iter_scoring_spikes(images, labels, 6, coding_seed=8))
    assert not np.array_equal(other, spikes[:, :MNIST_CODING_BLOCK])
    expected = spikes.shape[0] * images.astype(np.float64).sum() * MNIST_MAX_RATE / 255.0
    assert spikes.sum() == pytest.approx(expected, rel=0.02)
    with pytest.raises(SnucError, match="images but"):
        next(iter_scoring_spikes(images, labels[:3], 6))


def test_rate_code_max_rate_and_errors():
    white = np.full((3, 4), 255, np.uint8)
    assert rate_code(white, 5, np.random.default_rng(0), max_rate=1.0).all()
    with pytest.raises(SnucError, match="uint8"):
        rate_code(white / 255.0, 5, np.random.default_rng(0))
    with pytest.raises(SnucError, match="steps"):
        rate_code(white, 0, np.random.default_rng(0))
    with pytest.raises(SnucError, match="max_rate"):
        rate_code(white, 5, np.random.default_rng(0), max_rate=1.5)


def test_iter_rate_coded_covers_every_image_once():
    count, pixels = 23, 30
    images = np.zeros((count, pixels), np.uint8)
    images[np.arange(count), np.arange(count)] = 255  # image i lights pixel i only
    labels = np.arange(count) % 10
    seen, seen_labels, sizes = [], [], []
    chunks = iter_rate_coded(images, labels, 4, 5, np.random.default_rng(0), max_rate=1.0)
    for spikes, batch_labels in chunks:
        assert spikes.shape[0] == 4 and spikes.shape[2] == pixels
        sizes.append(spikes.shape[1])
        seen.extend(np.flatnonzero(s) for s in spikes[0])
        seen_labels.extend(batch_labels)
    assert sizes == [5, 5, 5, 5, 3]
    assert [list(s) for s in seen] == [[i] for i in range(count)]
    assert seen_labels == list(labels)
    with pytest.raises(SnucError, match="3 images but 2 labels"):
        next(iter_rate_coded(images[:3], labels[:2], 4, 5, np.random.default_rng(0)))
    with pytest.raises(SnucError, match="batch_size"):
        next(iter_rate_coded(images, labels, 4, 0, np.random.default_rng(0)))


def test_accuracy_from_counts_sums_over_time_and_breaks_ties_low():
    outputs = np.zeros((3, 4, 10), np.float32)
    outputs[:, 0, 7] = 1  # 3 spikes on class 7
    outputs[0, 0, 2] = 1
    outputs[0, 1, 4] = outputs[1, 1, 6] = 1  # tie 4 vs 6 → 4
    outputs[2, 2, 9] = 1  # a late single spike still counts
    # sample 3: no spikes at all → class 0
    assert list(predictions_from_counts(outputs)) == [7, 4, 9, 0]
    assert accuracy_from_counts(outputs, np.array([7, 6, 9, 0])) == pytest.approx(0.75)
    with pytest.raises(SnucError, match="labels"):
        accuracy_from_counts(outputs, np.array([7, 6]))
    with pytest.raises(SnucError, match=r"\[T, N, classes\]"):
        accuracy_from_counts(outputs[0], np.array([7, 6, 9, 0]))


# ---------------------------------------------------------------------------- PTB


@pytest.mark.parametrize(
    ("split", "tokens", "lines"),
    [("train", 929_589, 42_068), ("valid", 73_760, 3_370), ("test", 82_430, 3_761)],
)
def test_ptb_token_counts_match_data_readme(data_dir, split, tokens, lines):
    ids = load_ptb(split, data_dir)
    assert ids.dtype == np.int64 and ids.shape == (tokens,)
    eos = ptb_vocab(data_dir).index("<eos>")
    assert np.count_nonzero(ids == eos) == lines
    assert ids[-1] == eos
    assert ids.min() >= 0 and ids.max() < 10_000


def test_ptb_vocab_order_and_round_trip(data_dir):
    vocab = ptb_vocab(data_dir)
    assert len(vocab) == len(set(vocab)) == 10_000
    assert vocab[:4] == ["the", "<unk>", "<eos>", "N"]  # train counts 50770, 45020, 42068, 32481
    ids = load_ptb("valid", data_dir)
    text = (data_dir / "ptb" / "ptb.valid.txt").read_text()
    first_line = text.split("\n")[0].split()
    assert [vocab[i] for i in ids[: len(first_line) + 1]] == [*first_line, "<eos>"]


def test_ptb_bad_split(data_dir):
    with pytest.raises(SnucError, match="unknown PTB split"):
        load_ptb("dev", data_dir)


def test_batchify_columns_are_contiguous_segments():
    out = batchify(np.arange(10), 3)
    np.testing.assert_array_equal(out, [[0, 3, 6], [1, 4, 7], [2, 5, 8]])
    assert out.flags.c_contiguous
    with pytest.raises(SnucError, match="cannot fill"):
        batchify(np.arange(2), 3)
    with pytest.raises(SnucError, match="batch_size"):
        batchify(np.arange(10), 0)


def test_perplexity_uniform_is_vocab_size():
    vocab = 37
    log_probs = np.full((5, 3, vocab), -math.log(vocab), np.float32)
    targets = np.random.default_rng(0).integers(0, vocab, size=(5, 3))
    assert perplexity(log_probs, targets) == pytest.approx(vocab, rel=1e-5)


def test_perplexity_tiny_example_with_mask():
    log_probs = np.log(
        np.array([[[0.5, 0.5], [0.25, 0.75]], [[0.9, 0.1], [0.2, 0.8]]], dtype=np.float64)
    )
    targets = np.array([[0, 1], [1, 0]])
    # NLLs: ln 2, −ln 0.75, −ln 0.1, −ln 0.2
    all_four = math.exp((math.log(2) - math.log(0.75) - math.log(0.1) - math.log(0.2)) / 4)
    assert perplexity(log_probs, targets) == pytest.approx(all_four)
    mask = np.array([[True, True], [False, True]])
    masked = math.exp((math.log(2) - math.log(0.75) - math.log(0.2)) / 3)
    assert perplexity(log_probs, targets, mask) == pytest.approx(masked)
    nll, tokens = lm_nll_sum(log_probs, targets, mask)
    assert tokens == 3 and nll == pytest.approx(3 * math.log(masked))
    with pytest.raises(SnucError, match="token ids in 0..1"):
        perplexity(log_probs, targets + 1)
    with pytest.raises(SnucError, match="no token"):
        perplexity(log_probs, targets, np.zeros((2, 2), bool))
    with pytest.raises(SnucError, match="must be"):
        perplexity(log_probs, targets[0])


# ---------------------------------------------------------------------------- files


def test_checksum_mismatch_jsb(data_dir, tmp_path):
    copy = _copy(data_dir, "jsb/jsb-chorales-quarter.json", tmp_path)
    text = copy.read_text()
    copy.write_text(text.replace("[72, 76, 79, 84]", "[72, 76, 79, 85]", 1))
    with pytest.raises(SnucError) as info:
        load_jsb("test", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(copy) in message
    assert "2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91" in message
    assert "sha256" in message and datasets._digest(copy.read_bytes(), "sha256") in message


def test_checksum_mismatch_mnist_is_of_uncompressed_content(data_dir, tmp_path):
    copy = _copy(data_dir, "mnist/t10k-labels-idx1-ubyte.gz", tmp_path)
    _copy(data_dir, "mnist/t10k-images-idx3-ubyte.gz", tmp_path)
    content = bytearray(gzip.decompress(copy.read_bytes()))
    content[-1] = (content[-1] + 1) % 10  # still a valid IDX file of digits
    copy.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(SnucError, match=r"md5 of its uncompressed content is [0-9a-f]{32}, "):
        load_mnist("test", tmp_path)
    with pytest.raises(SnucError, match="27ae3e4e09519cfbb04c329615203637"):
        load_mnist("test", tmp_path)


def test_mnist_not_gzip(data_dir, tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(SnucError, match="not a valid gzip file"):
        load_mnist("test", tmp_path)


def test_checksum_mismatch_ptb(data_dir, tmp_path):
    copy = _copy(data_dir, "ptb/ptb.train.txt", tmp_path)
    with copy.open("a") as f:
        f.write(" extra words\n")
    with pytest.raises(SnucError, match=r"ptb\.train\.txt is corrupt.*f26c4b92c5fdc7b3f8c7cdcb"):
        load_ptb("test", tmp_path)


def test_verification_is_cached_but_rechecked_after_a_change(data_dir, tmp_path, monkeypatch):
    copy = _copy(data_dir, "jsb/jsb-chorales-quarter.json", tmp_path)
    load_jsb("valid", tmp_path)
    calls = []
    real_digest = datasets._digest
    monkeypatch.setattr(
        datasets, "_digest", lambda content, alg: calls.append(alg) or real_digest(content, alg)
    )
    load_jsb("test", tmp_path)
    assert calls == []  # unchanged file: not hashed again
    # A size change, so the edit is seen even within the file system's mtime granularity.
    copy.write_text(copy.read_text().replace("[72, 76, 79, 84]", "[72, 76, 79,  84]", 1))
    with pytest.raises(SnucError, match="corrupt"):
        load_jsb("test", tmp_path)
    assert calls == ["sha256"]


def test_missing_file_names_path_and_fix(tmp_path):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(SnucError) as info:
        load_mnist("test", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz") in message
    assert "--data-dir" in message and "SNUC_DATA" in message


def test_missing_explicit_dir_is_an_error_not_a_fallback(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("SNUC_DATA", str(data_dir))
    missing = tmp_path / "nowhere"
    with pytest.raises(SnucError, match=r"data directory .*nowhere \(given as data_dir"):
        load_jsb("test", missing)


def test_snuc_data_env_var(data_dir, tmp_path, monkeypatch):
    _copy(data_dir, "jsb/jsb-chorales-quarter.json", tmp_path)
    monkeypatch.setenv("SNUC_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path.resolve()
    assert len(load_jsb("test")) == 77
    # An explicit directory wins over the environment variable.
    other = tmp_path / "other"
    other.mkdir()
    assert resolve_data_dir(other) == other.resolve()
    monkeypatch.setenv("SNUC_DATA", str(tmp_path / "gone"))
    with pytest.raises(SnucError, match=r"gone \(from SNUC_DATA\) does not exist.*--data-dir"):
        resolve_data_dir()


def test_default_dirs_cwd_then_repo_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SNUC_DATA", raising=False)
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)
    repo = tmp_path / "elsewhere" / "repo"
    repo.mkdir(parents=True)
    monkeypatch.setattr(datasets, "_REPO_ROOT", repo)
    with pytest.raises(
        SnucError, match=r"data directory not found \(tried .*shared/data.*SNUC_DATA"
    ):
        resolve_data_dir()
    beside_repo = tmp_path / "elsewhere" / "shared" / "data"
    beside_repo.mkdir(parents=True)
    assert resolve_data_dir() == beside_repo.resolve()
    beside_cwd = tmp_path / "shared" / "data"
    beside_cwd.mkdir(parents=True)
    assert resolve_data_dir() == beside_cwd.resolve()


# --------------------------------------------------------------------------- calibration


MAKE_CALIBRATION = Path(__file__).resolve().parent.parent / "examples" / "make_calibration.py"


@pytest.mark.parametrize(
    ("task", "shape", "dtype"),
    [("jsb", (None, 2, 88), "float32"), ("mnist", (20, 3, 784), "float32"),
     ("ptb", (200, 10), "int64")],
)  # fmt: skip
def test_make_calibration_writes_training_inputs(data_dir, tmp_path, task, shape, dtype):
    out = tmp_path / f"{task}.npy"
    size = {"jsb": 2, "mnist": 3, "ptb": 1}[task]
    args = [sys.executable, str(MAKE_CALIBRATION), task, str(out), "--size", str(size)]
    done = subprocess.run([*args, "--data-dir", str(data_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    x = np.load(out)
    assert x.dtype == dtype and x.ndim == len(shape)
    assert all(want in (None, got) for want, got in zip(shape, x.shape, strict=True))
    if task == "jsb":
        first, _ = pad_sequences(load_jsb("train", data_dir)[:2])
        assert np.array_equal(x, first)
    elif task == "ptb":
        assert np.array_equal(x, batchify(load_ptb("train", data_dir)[:2000], 10))
    else:
        assert set(np.unique(x)) <= {0.0, 1.0} and x.any()
        test_coding = next(iter_scoring_spikes(*load_mnist("train", data_dir), 20))[0]
        assert not np.array_equal(x, test_coding[:, :3])  # not the scored splits' spikes


def test_make_calibration_without_data_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "x.npy"
    args = [sys.executable, str(MAKE_CALIBRATION), "ptb", str(out)]
    done = subprocess.run([*args, "--data-dir", str(tmp_path / "none")], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "error:" in done.stderr and not out.exists()


def test_make_calibration_to_a_missing_directory_is_one_line(data_dir, tmp_path):
    out = tmp_path / "missing" / "x.npy"
    args = [sys.executable, str(MAKE_CALIBRATION), "ptb", str(out), "--size", "1"]
    done = subprocess.run([*args, "--data-dir", str(data_dir)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "error: cannot write" in done.stderr and "does not exist" in done.stderr
    assert list(tmp_path.iterdir()) == []
