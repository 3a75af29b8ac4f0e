"""Writing a sparsified model: ``save_pretrained`` plus a ``torchprox.json`` manifest, atomically."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "save_sparse"]

MANIFEST = "torchprox.json"


def save_sparse(model, tokenizer, out: Path, manifest: dict[str, Any], overwrite: bool = False) -> None:
    """``save_pretrained`` + manifest into ``out``, atomically (a temporary sibling renamed into place)."""
    out = out.expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            if not overwrite:
                raise FileExistsError(f"output directory {out} already exists; pass --overwrite to replace it")
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
