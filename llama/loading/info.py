"""What a checkpoint is, read from its header or config alone (no weights): its hyperparameters, the
files that make it up, and the identity `load_model` reports as `LoadedModel.source`."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from llama.model import ModelArgs


class CheckpointInfo(NamedTuple):
    args: ModelArgs
    kind: str           # "gguf", "meta" or "hf"
    files: list[Path]   # the files whose bytes are the model
    source: str         # "name (kind, fingerprint)", as LoadedModel.source


def checkpoint_files(path: Path, kind: str) -> list[Path]:
    """The files a checkpoint of format `kind` at `path` consists of (what its fingerprint covers)."""
    if kind == "gguf":
        return [path]
    if kind == "meta":
        return [path / "params.json", *sorted(path.glob("consolidated.*.pth"))]
    return [path / "config.json", *sorted(path.glob("*.safetensors"))]


def checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Hyperparameters and identity of the checkpoint at `path` (one-line errors naming the path)."""
    from llama.loading import detect_format, hf, meta
    from llama.loading.common import fingerprint

    path = Path(path)
    kind = detect_format(path)
    if kind == "gguf":
        from llama.loading.gguf import model_args
        from llama.loading.gguf_reader import read_gguf
        args = model_args(read_gguf(path))
    else:
        args = (meta if kind == "meta" else hf).model_args(path)
    files = checkpoint_files(path, kind)
    return CheckpointInfo(args, kind, files, f"{path.name} ({kind}, {fingerprint(files)})")
