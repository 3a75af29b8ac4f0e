"""Hostile IO through the ``torchprox sparsify`` command: the output contract (the inputs are never touched),
``kill -9`` during the save and during learning, corrupt checkpoints, checkpoint fingerprints, concurrent
writers. Tiny models built from a config; the killed runs are subprocesses that SIGKILL themselves from a hook."""
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchprox.cli import main  # noqa: E402
from torchprox.llm import check_sparse  # noqa: E402

from ..llm.tiny import save_tiny_model, tiny_texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# One Python process imports torch and the CLI once, then forks a child per job: argv[1] is a JSON list of
# [point, stderr file, CLI arguments], argv[2] "parallel" or "serial". Each child installs hooks that SIGKILL it at
# its point, runs the CLI; the parent prints the children's statuses (exit code, or -signal) as JSON.
KILLER = r"""
import json, os, signal, sys, time
import torch, transformers.models.llama.modeling_llama, safetensors.torch
import torchprox.llm.export as export
import torchprox.llm.proxsparse, torchprox.llm.data, torchprox.llm.sparsify
from torchprox.cli import main

def child(point, argv):
    kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real_replace, real_fsync_tree, real_save = os.replace, export.fsync_tree, torch.save
    saves = []

    def replace(src, dst):
        real_replace(src, dst)
        if (point == "aside" and ".old-" in str(dst)) or (point == "renamed" and ".tmp-" in str(src)):
            kill()

    def fsync_tree(path):
        if point == "written":
            kill()
        if point == "slow":
            time.sleep(1.0)
        real_fsync_tree(path)

    def save(obj, f, *a, **k):  # the third checkpoint: half written, then killed
        saves.append(f)
        if point == "checkpoint" and len(saves) == 3:
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half a checkpoint")
            kill()
        real_save(obj, f, *a, **k)

    os.replace, export.fsync_tree, torch.save = replace, fsync_tree, save
    return main(argv)

jobs, parallel = json.loads(sys.argv[1]), sys.argv[2] == "parallel"
pids, status = [], []
for point, err, argv in jobs:
    pid = os.fork()
    if pid == 0:
        fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        code = 1
        try:
            code = child(point, argv)
        finally:
            sys.stderr.flush()
            os._exit(code)
    pids.append(pid)
    if not parallel:
        status.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
if parallel:
    status = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
print(json.dumps(status))
"""


def run_killed(tmp_path, jobs, parallel=False):
    """Run CLI ``jobs`` [(point, args)] in forked children of one Python process: [(status, stderr)], status
    the exit code or -signal number."""
    spec = [[point, str(tmp_path / f"stderr-{i}.txt"), list(map(str, args))] for i, (point, args) in enumerate(jobs)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(spec), "parallel" if parallel else "serial"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    errs = []
    for _, err, _ in spec:
        errs.append(Path(err).read_text())
        os.unlink(err)
    return list(zip(status, errs))


def tree_hash(path: Path) -> str:
    """sha256 over every file's relative path and bytes (a file: its bytes)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def hidden(parent: Path):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.replace("\r", "\n").strip().splitlines()
             if line and not line.startswith("WARNING") and "%|" not in line]  # logged warnings, progress bars
    assert len(lines) == 1 and lines[0].startswith("torchprox sparsify: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def proj(tmp_path):
    """proj/model (a tiny Llama + tokenizer) and proj/data (a few text files)."""
    proj = tmp_path / "proj"
    save_tiny_model(proj / "model")
    (proj / "data").mkdir()
    for i, text in enumerate(tiny_texts()):
        (proj / "data" / f"doc{i}.txt").write_text(text)
    return proj


@pytest.fixture
def no_work(monkeypatch):
    """Any attempt to load a model fails the test: errors must come before any work."""
    from torchprox import cli

    def refuse(_model):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(cli, "_load", refuse)


def sparsify(proj, out, *extra):
    return ["sparsify", str(proj / "model"), "--data", str(proj / "data"), "--out", str(out), "--seqlen", "16",
            *extra]


LEARN = ("--method", "proxsparse", "--steps", "6", "--checkpoint-every", "2", "--calib-blocks", "4", "--lr", "1e-2")

# ------------------------------------------------------------------------------------------------ output contract


@pytest.mark.parametrize("where", ["proj", "proj/model", "proj/model/sub", "proj/data", "proj/data/sub",
                                   "link-to-model", "link-to-model/sub", "link-to-proj"])
def test_out_never_is_contains_or_lies_inside_an_input(where, proj, tmp_path, no_work, capsys):
    (tmp_path / "link-to-model").symlink_to(proj / "model")
    (tmp_path / "link-to-proj").symlink_to(proj)
    before = tree_hash(proj)
    assert main(sparsify(proj, tmp_path / where, "--overwrite", "--method", "magnitude")) == 2
    one_line_error(capsys.readouterr().err, "never overwritten")
    assert tree_hash(proj) == before


def test_the_checkpoint_folder_never_is_an_input(tmp_path, no_work, capsys):
    model = save_tiny_model(tmp_path / "m.checkpoint")  # --out m would checkpoint into m.checkpoint
    before = tree_hash(model)
    args = ["sparsify", str(model), "--out", str(tmp_path / "m"), "--checkpoint-every", "1", "--resume",
            "--seqlen", "16"]
    assert main(args) == 2
    one_line_error(capsys.readouterr().err, "checkpoint folder", "never overwritten")
    assert tree_hash(model) == before


def test_overwrite_never_replaces_what_torchprox_did_not_write(proj, tmp_path, no_work, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert main(sparsify(proj, mine, "--overwrite", "--method", "magnitude")) == 2
    one_line_error(capsys.readouterr().err, "not a torchprox output")
    assert (mine / "thesis.tex").read_text() == "precious" and hidden(tmp_path) == []


@pytest.mark.parametrize("where", ["/sys/torchprox-out", "missing/out", "a-file/out"])
def test_unwritable_or_missing_location_fails_before_any_work(where, proj, tmp_path, no_work, capsys):
    (tmp_path / "a-file").write_text("x")
    out = Path(where) if where.startswith("/") else tmp_path / where
    assert main(sparsify(proj, out, "--method", "magnitude")) == 2
    one_line_error(capsys.readouterr().err, "--out", "does not exist" if "/sys" not in where else "cannot write")


def test_a_locked_output_fails_before_any_work(proj, tmp_path, no_work, capsys):
    import fcntl

    fd = os.open(tmp_path / ".out.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(sparsify(proj, tmp_path / "out", "--method", "magnitude")) == 2
    finally:
        os.close(fd)
    one_line_error(capsys.readouterr().err, "another process is writing")


# ------------------------------------------------------------------------------------------------ kill -9


def test_kill_during_save_never_loses_the_previous_output(proj, tmp_path):
    import shutil

    from torchprox.llm.export import remove_stale_temporaries

    before = tree_hash(proj)
    out = tmp_path / "out"
    assert main(sparsify(proj, out, "--method", "magnitude")) == 0  # a 2:4 output, replaced by 1:4 runs killed
    points = ("written", "aside", "renamed")  # temporary complete; old moved aside; new renamed into place
    for point in points:
        shutil.copytree(out, tmp_path / point)
    results = run_killed(tmp_path, [(point, sparsify(proj, tmp_path / point, "--method", "magnitude", "--pattern",
                                                     "1:4", "--overwrite")) for point in points])
    for point, (status, err) in zip(points, results):
        assert status == -signal.SIGKILL, (point, err)
        target = tmp_path / point
        assert target.exists() == (point != "aside"), point  # the kill hit where it should
        remove_stale_temporaries(target)  # what the next run does first
        assert target.is_dir(), point  # never only in a hidden folder
        if point == "renamed":  # the new output was complete and in place
            assert json.loads((target / "torchprox.json").read_text())["pattern"] == "1:4"
        else:  # the previous output, bit for bit
            assert _same_files(out, target), point
        assert check_sparse(target)["ok"], point
    assert hidden(tmp_path) == [f".{point}.lock" for point in sorted(points)]  # released by the kill, reused:
    for point in points:
        assert main(sparsify(proj, tmp_path / point, "--method", "magnitude", "--overwrite")) == 0
    assert hidden(tmp_path) == [] and tree_hash(proj) == before


def _same_files(a: Path, b: Path) -> bool:
    fa = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b): p.read_bytes() for p in b.rglob("*") if p.is_file()}
    return fa == fb


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model.safetensors")


def test_kill_during_learning_then_resume_equals_an_uninterrupted_run(proj, tmp_path, capsys):
    before = tree_hash(proj)
    full, out = tmp_path / "full", tmp_path / "out"
    assert main(sparsify(proj, full, *LEARN)) == 0
    [(status, err)] = run_killed(tmp_path, [("checkpoint", sparsify(proj, out, *LEARN))])  # killed writing step 6's
    assert status == -signal.SIGKILL, err
    ckpt = tmp_path / "out.checkpoint"
    assert [p.name for p in ckpt.iterdir() if p.name.startswith(".checkpoint.pt.tmp-")]  # the half-written one
    capsys.readouterr()
    assert main(sparsify(proj, out, *LEARN)) == 2  # a checkpoint exists: never silently restarted
    one_line_error(capsys.readouterr().err, "--resume", "--overwrite")
    assert main(sparsify(proj, out, *LEARN, "--resume")) == 0
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint.pt"]  # the stale temporary removed
    a, b = _weights(full), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert check_sparse(out)["ok"] and tree_hash(proj) == before


def test_resume_refuses_a_checkpoint_of_other_inputs(proj, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(sparsify(proj, out, *LEARN)) == 0  # a finished checkpoint of model A on data A
    save_tiny_model(tmp_path / "modelB", seed=1)  # same architecture, other weights
    other_data = tmp_path / "dataB"
    other_data.mkdir()
    for i, text in enumerate(tiny_texts(seed=1)):
        (other_data / f"doc{i}.txt").write_text(text)
    result = tree_hash(out)
    cases = [
        (["sparsify", str(tmp_path / "modelB"), "--data", str(proj / "data"), "--out", str(out), "--seqlen", "16"],
         "the model's weights"),
        (["sparsify", str(proj / "model"), "--data", str(other_data), "--out", str(out), "--seqlen", "16"],
         "the calibration tokens"),
        (["sparsify", str(proj / "model"), "--data", str(proj / "data"), "--out", str(out), "--seqlen", "12"],
         "seqlen (16 there, 12 here)"),
        (sparsify(proj, out) + ["--pattern", "1:4"], "the N:M pattern"),
        (sparsify(proj, out) + ["--targets", "q_proj"], "the target layers"),
    ]
    for args, what in cases:
        capsys.readouterr()
        assert main(args + [*LEARN, "--resume", "--overwrite"]) == 2, what
        one_line_error(capsys.readouterr().err, "other settings or inputs", what)
    assert tree_hash(out) == result  # the output of the finished run is untouched


def test_a_corrupt_checkpoint_is_a_clear_error(proj, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(sparsify(proj, out, *LEARN)) == 0
    ckpt = tmp_path / "out.checkpoint" / "checkpoint.pt"
    data = ckpt.read_bytes()
    for damage in ("truncated", "garbage", "empty", "other-object"):
        if damage == "other-object":
            torch.save({"step": 3}, ckpt)
        else:
            ckpt.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
        capsys.readouterr()
        assert main(sparsify(proj, out, *LEARN, "--resume", "--overwrite")) == 2, damage
        one_line_error(capsys.readouterr().err, str(ckpt))


def test_resume_without_a_checkpoint_is_a_clear_error(proj, tmp_path, no_work, capsys):
    assert main(sparsify(proj, tmp_path / "out", *LEARN, "--resume")) == 2
    one_line_error(capsys.readouterr().err, "--resume", "no checkpoint")


# ------------------------------------------------------------------------------------------------ concurrency


def test_concurrent_writers_one_wins_the_other_fails_cleanly(proj, tmp_path):
    out = tmp_path / "out"
    results = run_killed(tmp_path, [("slow", sparsify(proj, out, "--method", "magnitude"))] * 2, parallel=True)
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    one_line_error(loser)
    assert "another process is writing" in loser or "already exists" in loser
    assert check_sparse(out)["ok"] and hidden(tmp_path) == []
