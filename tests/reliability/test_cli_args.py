"""CLI argument fuzzing (issue 21): Hypothesis over flag values on a tiny saved model.

Every invocation either succeeds (exit 0) or exits 2 with exactly one line on stderr,
``torchprox COMMAND: error: ...``, naming the flag to change; never a traceback. An invalid value is refused
before the model is loaded (the loader is patched to fail the test when called).
"""
import contextlib
import io
import math
import re
import tempfile
from pathlib import Path
from unittest import mock

import pytest

pytest.importorskip("transformers")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from torchprox.cli import main  # noqa: E402

from ..llm.tiny import save_tiny_model, tiny_texts  # noqa: E402

ERROR = re.compile(r"torchprox (sparsify|eval|check|demo): error: \S")
POSITIONS = 128  # the tiny model's max_position_embeddings


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-fuzz")
    model = save_tiny_model(root / "tiny")
    data = root / "data"
    data.mkdir()
    for i, text in enumerate(tiny_texts()):  # 10 documents of 300 tokens: 2100 for calibration
        (data / f"doc{i}.txt").write_text(text)
    binary = root / "data.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    return {"model": model, "data": data, "binary": binary, "root": root, "missing": root / "does-not-exist"}


def run(argv):
    """(exit status, stderr, whether the model was loaded) of ``torchprox argv``."""
    from torchprox.llm import models

    loaded = []
    real = models.load_model

    def spy(*args, **kwargs):
        loaded.append(args)
        return real(*args, **kwargs)

    err = io.StringIO()
    with mock.patch.object(models, "load_model", spy), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue(), bool(loaded)


def number_text(values):
    """Numbers as a user types them: ints, floats, exponents, nan/inf spellings and non-numbers."""
    return st.one_of(values.map(str), st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "", "x", "1,5", "0x10"]))


def bad_int(low):
    return st.one_of(st.integers(max_value=low - 1).map(str), st.floats(allow_nan=True).map(repr),
                     st.sampled_from(["nan", "inf", "", "x", "1.5", "1e3"]))


def bad_float(low, high, low_open=False, high_open=False):
    below = st.floats(max_value=low, exclude_max=not low_open)
    above = st.floats(min_value=high, exclude_min=not high_open) if high < math.inf else st.nothing()
    return st.one_of(below.map(repr), above.map(repr), st.sampled_from(["nan", "-nan", "inf", "-inf", "x", ""]))


# flag: (valid values, invalid values); valid ranges fit the tiny model and corpus, learning stays a few steps
SPARSIFY_FLAGS = {
    "--lam": (st.floats(0, 1e6), bad_float(0, math.inf)),
    "--lr": (st.floats(1e-6, 1e-2), bad_float(0, math.inf, low_open=True)),
    "--steps": (st.integers(1, 3), bad_int(1)),
    "--batch-size": (st.integers(1, 2), bad_int(1)),
    "--calib-blocks": (st.integers(1, 8), bad_int(1)),
    "--warmup": (st.floats(0, 1, exclude_max=True), bad_float(0, 1, high_open=True)),
    "--lam-ramp": (st.floats(0, 1), bad_float(0, 1)),
    "--seqlen": (st.integers(2, 16), st.one_of(bad_int(2), st.integers(POSITIONS + 1, 10**30).map(str))),
    "--seed": (st.integers(0, 2**63 - 1), st.one_of(bad_int(0), st.integers(min_value=2**63).map(str))),
    "--checkpoint-every": (st.integers(0, 3), bad_int(0)),
    "--pattern": (st.sampled_from(["2:4", "1:4", "3:4"]),
                  st.sampled_from(["4:2", "2:2", "0:4", "2:5", "1:64", "2:3", "a:b", "2:4:8", "", "2", "-1:4"])),
    "--targets": (st.lists(st.sampled_from(["q_proj", "mlp.down_proj", "self_attn.v_proj"]), min_size=1,
                           max_size=2),
                  st.lists(st.text("abcxyz_.", min_size=1, max_size=8).filter(lambda t: t.strip(".")), min_size=1,
                           max_size=2)),
}
SPARSIFY_PATHS = ("model", "--data")


@st.composite
def sparsify_invocation(draw):
    """(argv, the flag drawn invalid or None, method)."""
    method = draw(st.sampled_from(["magnitude", "wanda", "proxsparse"]))
    flags = draw(st.lists(st.sampled_from(sorted(SPARSIFY_FLAGS)), unique=True, max_size=5))
    bad = draw(st.sampled_from([None, *flags, *SPARSIFY_PATHS]))
    if method == "magnitude" and bad == "--seqlen":  # magnitude reads no data: only --seqlen's type is checked
        return None
    argv = []
    for flag in flags:
        valid, invalid = SPARSIFY_FLAGS[flag]
        value = draw(invalid if flag == bad else valid)
        argv += [flag, *value] if isinstance(value, list) else [f"{flag}={value}"]
    return argv, bad, method


def check_outcome(rc, err, loaded, bad, expect_flag):
    assert "Traceback" not in err
    if bad is None:
        assert rc == 0, err
        return
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and ERROR.match(lines[0]), err
    assert not loaded, f"the model was loaded before refusing {bad}: {lines[0]}"
    assert expect_flag in lines[0], (expect_flag, lines[0])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_sparsify_flags(files, data):
    """Any mix of valid flags succeeds; one invalid flag (or model / --data path) exits 2 with one line naming
    it, before the model is loaded."""
    drawn = data.draw(sparsify_invocation())
    if drawn is None:
        return
    argv, bad, method = drawn
    model, source = files["model"], files["data"]
    if bad == "model":
        model = data.draw(st.sampled_from([files["missing"], files["data"], files["model"] / "config.json"]))
    if bad == "--data":
        source = data.draw(st.sampled_from([files["missing"], files["binary"]] if method != "magnitude"
                                           else [files["missing"]]))
    out = Path(tempfile.mkdtemp(dir=files["root"])) / "out"  # a fresh output location every example
    rc, err, loaded = run(["sparsify", model, "--method", method, "--data", source, "--out", out,
                           "--seqlen", "16", "--steps", "2", *argv])
    expect = {"model": "model", "--data": "data", "--targets": "--targets"}.get(bad, bad)
    check_outcome(rc, err, loaded, bad, expect)
    assert out.exists() == (bad is None)


EVAL_FLAGS = {
    "--seqlen": (st.integers(2, 16), st.one_of(bad_int(2), st.integers(POSITIONS + 1, 10**30).map(str))),
    "--max-tokens": (st.integers(16, 10**12), bad_int(1)),
    "--batch-size": (st.integers(1, 10**12), bad_int(1)),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_eval_flags(files, data):
    flags = data.draw(st.lists(st.sampled_from(sorted(EVAL_FLAGS)), unique=True, max_size=3))
    bad = data.draw(st.sampled_from([None, *flags, "model", "--data"]))
    values = {f: data.draw(EVAL_FLAGS[f][1] if f == bad else EVAL_FLAGS[f][0]) for f in flags}
    values.setdefault("--seqlen", 16)
    if bad != "--max-tokens" and "--max-tokens" in values and bad != "--seqlen":
        values["--max-tokens"] = max(int(values["--max-tokens"]), int(values["--seqlen"]))
    if bad is None:  # a few windows only: the tiny corpus's evaluation part has 900 tokens
        values["--max-tokens"] = min(int(values.get("--max-tokens", 64)), 64)
    model = files["missing"] if bad == "model" else files["model"]
    source = data.draw(st.sampled_from([files["missing"], files["binary"]])) if bad == "--data" else files["data"]
    rc, err, loaded = run(["eval", model, "--data", source, *(f"{k}={v}" for k, v in values.items())])
    check_outcome(rc, err, loaded, bad, {"model": "model", "--data": "data"}.get(bad, bad))


def test_check_paths(files, tmp_path):
    """``check`` on anything that is not a torchprox output: one line, exit 2."""
    for path in (files["missing"], files["model"], files["model"] / "config.json", files["data"], tmp_path):
        rc, err, _ = run(["check", path])
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("torchprox check: error: "), err
