"""Every tutorial script under examples/ runs in its --quick mode (tiny models built from configs, one thread,
offline) and ends with what it claims (exit status 0, the final check printed).
examples/trainer_proxsparse.py is run by tests/llm/test_trainer.py."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDS_LLM = pytest.mark.skipif(importlib.util.find_spec("transformers") is None
                               or importlib.util.find_spec("peft") is None,
                               reason="needs the llm extra (transformers, peft)")

CASES = [
    pytest.param("proxadam_plain.py", "exactly 2:4: True", id="proxadam_plain"),
    pytest.param("prune_api.py", "every linear exactly 2:4 after remove: True", id="prune_api"),
    pytest.param("custom_prox.py", "true support recovered: True", id="custom_prox"),
    pytest.param("llm_end_to_end.py", "14/14 layers exactly 2:4", id="llm_end_to_end", marks=NEEDS_LLM),
    pytest.param("trainer_lora.py", "exactly 2:4 after the merge: True", id="trainer_lora", marks=NEEDS_LLM),
]


@pytest.mark.parametrize("script, expected", CASES)
def test_example_quick(script, expected, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert expected in proc.stdout, proc.stdout[-4000:]
