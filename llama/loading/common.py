"""What every checkpoint format shares: building the model from a state dict, and file identity."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import torch

from llama.model import ModelArgs, Transformer


def build_model(args: ModelArgs, state_dict: dict[str, torch.Tensor], *, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> Transformer:
    """A Transformer holding `state_dict` (Meta key names), in eval mode.

    Built on the meta device (no memory, no random init), then the tensors are assigned, not copied:
    the weights exist once in memory, never twice.
    """
    with torch.device("meta"):
        model = Transformer(args)
    state_dict = {name: t.to(device=device, dtype=dtype) for name, t in state_dict.items()}
    if args.tie_word_embeddings:
        state_dict.setdefault("output.weight", state_dict.get("tok_embeddings.weight"))
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, tensor in model.state_dict().items():
        if state_dict[name].shape != tensor.shape:
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(state_dict[name].shape)}, "
                             f"the model expects {tuple(tensor.shape)}")
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.tie_weights()  # assign=True replaced the shared parameter with two tensors
    return model.eval()


def fingerprint(files: Iterable[Path]) -> str:
    """A cheap identity for checkpoint files: names, sizes and a sha256 of sampled chunks
    (the first and last MiB and 16 chunks between), so that multi-GB checkpoints need no full read."""
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size};".encode())
        with path.open("rb") as fh:
            for offset in [0, *(size * i // 17 for i in range(1, 17)), max(size - (1 << 20), 0)]:
                fh.seek(offset)
                digest.update(fh.read(1 << 20 if offset in (0, max(size - (1 << 20), 0)) else 1 << 16))
    return digest.hexdigest()[:16]
