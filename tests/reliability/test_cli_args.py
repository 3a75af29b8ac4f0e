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
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
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
    import torchprox.llm as llm
    from torchprox.llm import models

    loaded = []
    real = models.load_model

    def spy(*args, **kwargs):
        loaded.append(args)
        return real(*args, **kwargs)

    err = io.StringIO()
    with mock.patch.object(models, "load_model", spy), mock.patch.object(llm, "load_model", spy), \
            contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue(), bool(loaded)


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
def sparsify_flags(draw, bad=None, method="proxsparse"):
    """argv of up to 4 valid flags, plus ``bad`` (a flag) with an invalid value."""
    flags = draw(st.lists(st.sampled_from(sorted(set(SPARSIFY_FLAGS) - {bad})), unique=True, max_size=4))
    argv = []
    for flag in flags + ([bad] if bad in SPARSIFY_FLAGS else []):
        valid, invalid = SPARSIFY_FLAGS[flag]
        if flag == bad and method == "magnitude" and flag == "--seqlen":
            invalid = bad_int(2)  # magnitude reads no data: only --seqlen's type is checked, not the positions
        value = draw(invalid if flag == bad else valid)
        argv += [flag, *value] if isinstance(value, list) else [f"{flag}={value}"]
    return argv


def check_outcome(rc, err, loaded, bad, expect_flag):
    event("valid: ran" if bad is None else f"invalid {expect_flag}: refused")  # --hypothesis-show-statistics
    assert "Traceback" not in err
    if bad is None:
        assert rc == 0, err
        return
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and ERROR.match(lines[0]), err
    assert not loaded, f"the model was loaded before refusing {bad}: {lines[0]}"
    assert expect_flag in lines[0], (expect_flag, lines[0])


def sparsify(files, method, argv, model=None, data=None):
    """``torchprox sparsify`` on the tiny model (small blocks, 2 steps unless argv says otherwise) into a
    fresh output location: (exit status, stderr, whether the model was loaded, the output path)."""
    out = Path(tempfile.mkdtemp(dir=files["root"])) / "out"
    rc, err, loaded = run(["sparsify", model or files["model"], "--method", method, "--data", data or files["data"],
                           "--out", out, "--seqlen", "16", "--calib-blocks", "4", "--steps", "2", *argv])
    return rc, err, loaded, out


METHODS = st.sampled_from(["magnitude", "wanda", "sparsegpt", "proxsparse"])


@pytest.mark.parametrize("bad", [*SPARSIFY_FLAGS, *SPARSIFY_PATHS])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_sparsify_one_invalid_flag(files, bad, data):
    """One invalid flag (or model / --data path) among valid ones: exit 2, one line naming it, and the model
    is never loaded."""
    method = data.draw(METHODS)
    argv = data.draw(sparsify_flags(bad, method))
    model, source = files["model"], files["data"]
    if bad == "model":
        model = data.draw(st.sampled_from([files["missing"], files["data"], files["model"] / "config.json"]))
    if bad == "--data":
        source = data.draw(st.sampled_from([files["missing"], files["binary"]] if method != "magnitude"
                                           else [files["missing"]]))
    rc, err, loaded, out = sparsify(files, method, argv, model, source)
    check_outcome(rc, err, loaded, bad, {"model": "model", "--data": "data"}.get(bad, bad))
    assert not out.parent.joinpath("out.checkpoint").exists() and not out.exists()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=METHODS, data=st.data())
def test_sparsify_valid_flags(files, method, data):
    """Any mix of valid flag values runs to the end (exit 0) and writes the output."""
    rc, err, loaded, out = sparsify(files, method, data.draw(sparsify_flags(None, method)))
    check_outcome(rc, err, loaded, None, None)
    assert loaded and (out / "torchprox.json").is_file()


EVAL_FLAGS = {
    "--seqlen": (st.integers(2, 16), st.one_of(bad_int(2), st.integers(POSITIONS + 1, 10**30).map(str))),
    "--max-tokens": (st.integers(16, 10**12), bad_int(1)),
    "--batch-size": (st.integers(1, 10**12), bad_int(1)),
}


def eval_argv(data, files, bad):
    """``torchprox eval`` argv: valid flags (a few 16-token windows), plus ``bad`` with an invalid value."""
    flags = set(data.draw(st.lists(st.sampled_from(sorted(EVAL_FLAGS)), unique=True, max_size=3)))
    values = {f: data.draw(EVAL_FLAGS[f][1] if f == bad else EVAL_FLAGS[f][0]) for f in flags | {bad} - {None}
              if f in EVAL_FLAGS}
    values.setdefault("--seqlen", 16)
    if bad not in ("--max-tokens", "--seqlen"):  # at least one window, at most 4 (the corpus's eval part has 900)
        values["--max-tokens"] = min(max(int(values.get("--max-tokens", 64)), int(values["--seqlen"])), 64)
    model = files["missing"] if bad == "model" else files["model"]
    source = data.draw(st.sampled_from([files["missing"], files["binary"]])) if bad == "--data" else files["data"]
    return ["eval", model, "--data", source, *(f"{k}={v}" for k, v in values.items())]


@pytest.mark.parametrize("bad", [*EVAL_FLAGS, "model", "--data"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_eval_one_invalid_flag(files, bad, data):
    rc, err, loaded = run(eval_argv(data, files, bad))
    check_outcome(rc, err, loaded, bad, {"model": "model", "--data": "data"}.get(bad, bad))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_eval_valid_flags(files, data):
    rc, err, loaded = run(eval_argv(data, files, None))
    check_outcome(rc, err, loaded, None, None)
    assert loaded


def test_check_paths(files, tmp_path):
    """``check`` on anything that is not a torchprox output: one line, exit 2."""
    for path in (files["missing"], files["model"], files["model"] / "config.json", files["data"], tmp_path):
        rc, err, _ = run(["check", path])
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("torchprox check: error: "), err
