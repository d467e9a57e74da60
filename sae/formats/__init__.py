"""Other tools' SAE file formats, read into (and written from) our SAEConfig + state dict.

Each format module (`saelens`, `sparsify`, `llamascope`, `openai`) has pure functions between that
tool's (config dict, tensor dict) and a `Converted` (our config, our state dict, notes on what was
folded or assumed), plus `read(path)` and, where we export, `write(converted, folder)`.

Folds that keep outputs identical (each one is listed in `Converted.notes` when applied):
  - dataset_scale (x_n = s x) into the weights: W_enc * s, W_dec / s, b_pre / s; the latents are unchanged
    (SAELens' `fold_activation_norm_scaling_factor` does the same);
  - h_bias (steering) into b_enc, since both are added to the pre-activations before the activation;
  - a decoder bias that the other tool does not subtract from the input into b_enc: b_enc + b_dec @ W_enc.
Weights are handled as float32 (an SAE of 131072 x 4096 latents is 2 GiB a matrix); the vector-matrix
products of the bias folds accumulate in float64. Files are safetensors + JSON only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from atomic import atomic_path, write_json_atomic
from llama import jsonfile
from sae.config import SAEConfig
from sae.model import SparseAutoencoder

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Converted(NamedTuple):
    """An SAE in our terms, on its way in or out of another tool's format."""

    cfg: SAEConfig
    state: dict[str, Tensor]
    """Our state dict (float32): W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_pre (d_in,),
    h_bias (d_sae,), plus threshold (d_sae,) for JumpReLU and the normalisation's fitted statistics
    (`normalization.scale` / `.unscale` () for dataset_scale, `normalization.mean` (d_in,))."""
    notes: list[str]
    """What the conversion folded, dropped or assumed, in words for the person converting."""


def from_sae(sae: SparseAutoencoder) -> Converted:
    """Our loaded SAE as a Converted (copies of its config and of its weights, as float32 on the CPU)."""
    state = {name: t.detach().to("cpu", torch.float32).clone() for name, t in sae.state_dict().items()}
    return Converted(SAEConfig.from_dict(sae.cfg.to_dict()), state, [])


def to_sae(conv: Converted, *, device: torch.device | str = "cpu") -> SparseAutoencoder:
    """Build our SparseAutoencoder from a Converted (strict: every tensor must be present)."""
    sae = SparseAutoencoder(conv.cfg, device="meta")
    sae.load_state_dict({n: t.to(device, torch.float32) for n, t in conv.state.items()}, assign=True)
    return sae


def make_state(cfg: SAEConfig, *, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_pre: Tensor,
               threshold: Tensor | None = None, norm_scale: float = 1.0) -> dict[str, Tensor]:
    """Our state dict from float tensors (stored as contiguous float32 that shares no memory with the
    inputs; h_bias zero); `norm_scale` is dataset_scale's factor (x_n = x * norm_scale)."""
    state = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_pre": b_pre,
             "h_bias": torch.zeros(cfg.d_sae)}
    if cfg.normalization == "dataset_scale":
        state["normalization.scale"] = torch.tensor(norm_scale)
        state["normalization.unscale"] = torch.tensor(1.0 / norm_scale)
    if cfg.activation == "jumprelu":
        if threshold is None:
            raise ValueError("a JumpReLU SAE needs a threshold tensor")
        state["threshold"] = threshold.expand(cfg.d_sae)
    out = {}
    for name, t in state.items():
        f = t.detach().to(torch.float32)
        shared = f.data_ptr() == t.data_ptr()  # .to() returned its input: copy, but only once
        out[name] = f.clone(memory_format=torch.contiguous_format) if shared or not f.is_contiguous() else f
    return out


# ---- folds -------------------------------------------------------------------------------------

def bias_through(v: Tensor, W: Tensor, chunk: int = 8192) -> Tensor:
    """v (d_in,) @ W (d_in, d_sae) accumulated in float64, a block of columns at a time (bounded memory)."""
    v64 = v.to(torch.float64)
    return torch.cat([v64 @ W[:, i:i + chunk].to(torch.float64)
                      for i in range(0, W.shape[1], chunk)]).to(torch.float32)


def row_norms(W: Tensor, chunk: int = 8192) -> Tensor:
    """L2 norm of every row of W (rows, cols) in float64 -> (rows,), a block of rows at a time (W may be
    a transposed view, for which one strided float64 reduction is slow)."""
    return torch.cat([W[i:i + chunk].to(torch.float64).norm(dim=-1) for i in range(0, W.shape[0], chunk)])

def fold_for_export(conv: Converted) -> tuple[dict[str, Tensor], list[str]]:
    """Our weights (float32) for a tool with no h_bias and no dataset scaling: h_bias is folded into
    b_enc and dataset_scale into W_enc, W_dec and b_pre. Per-token normalisations are left to the caller."""
    cfg, notes = conv.cfg, []
    w = {name: t.to(torch.float32) for name, t in conv.state.items()}
    if bool(w["h_bias"].ne(0).any()):
        w["b_enc"] = w["b_enc"] + w["h_bias"]
        notes.append("h_bias (steering) was non-zero and is folded into b_enc")
    w["h_bias"] = torch.zeros_like(w["h_bias"])
    if cfg.normalization == "dataset_scale":
        s = float(w["normalization.scale"])
        w["W_enc"], w["W_dec"], w["b_pre"] = w["W_enc"] * s, w["W_dec"] / s, w["b_pre"] / s
        notes.append(f"dataset_scale normalisation (x * {s:.6g}) is folded into the weights "
                     f"(W_enc * s, W_dec / s, b_dec / s); latent values are unchanged")
    return w, notes


def fold_decoder_norms(w: dict[str, Tensor]) -> Tensor:
    """Make decoder rows unit norm without changing the reconstruction: W_enc columns and b_enc are
    multiplied by each row's norm, so every latent's value is multiplied by it. Returns the norms."""
    norms = row_norms(w["W_dec"]).clamp_min(1e-12).to(w["W_dec"].dtype)  # (d_sae,)
    w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * norms, w["b_enc"] * norms, w["W_dec"] / norms[:, None]
    return norms


def unfold_uniform_decoder_norm(w: dict[str, Tensor], bias: str) -> float | None:
    """Undo a folded dataset scale: if every decoder row has the same norm c != 1, rescale to unit rows
    with dataset_scale s = 1 / c (W_enc / s, W_dec * s, w[bias] * s; same latents and outputs).
    Returns s, or None when the rows are already unit norm or differ in norm."""
    norms = row_norms(w["W_dec"])
    c = float(norms.mean()) if norms.numel() else 1.0
    if not c > 0 or abs(c - 1) < 1e-5 or float((norms - c).abs().max()) > 1e-5 * c:
        return None
    s = 1.0 / c
    w["W_enc"], w["W_dec"], w[bias] = w["W_enc"] / s, w["W_dec"] * s, w[bias] * s
    return s


def decoder_row_norm_note(W_dec: Tensor) -> list[str]:
    """A note when decoder rows are not unit norm (our trainer keeps them so; imports keep them as is)."""
    norms = row_norms(W_dec)
    if norms.numel() and float((norms - 1).abs().max()) > 1e-4:
        return [f"decoder rows are not unit norm (min {float(norms.min()):.4g}, max {float(norms.max()):.4g}); "
                f"kept as they are so that latent values match the source"]
    return []


# ---- files -------------------------------------------------------------------------------------

def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; one-line errors naming the file. `what` says what the file is for."""
    return jsonfile.read_json(path, what, expect=dict)


def read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of a safetensors file and its string metadata; one-line errors if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable safetensors file ({reason}); the file is damaged or "
                         f"truncated, fetch or export it again") from None
    return tensors, metadata


def write_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        save_file({n: t.detach().to(torch.float32).contiguous().cpu() for n, t in tensors.items()},
                  str(tmp), metadata=metadata)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Another tool's JSON config, indented as those tools write theirs, atomically."""
    write_json_atomic(path, data, indent=2)


class Source:
    """The config dict and tensors of one file set, with one-line errors naming the file at fault."""

    def __init__(self, config: dict[str, Any], config_path: Path, tensors: dict[str, Tensor],
                 tensors_path: Path):
        self.config, self.config_path = config, Path(config_path)
        self.tensors, self.tensors_path = tensors, Path(tensors_path)

    def field(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        """Config field `name` of type `kind` (default if absent and a default is given)."""
        if name not in self.config or self.config[name] is None:
            if default is ...:
                raise ValueError(f"{self.config_path}: missing field {name!r}; the file is incomplete")
            return default
        value = self.config[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"{self.config_path}: field {name!r} must be {names}, got {value!r}")
        return value

    def positive_int(self, name: str, default: Any = ...) -> int:
        value = self.field(name, int, default)
        if value < 1:
            raise ValueError(f"{self.config_path}: field {name!r} must be a positive integer, got {value}")
        return value

    def has(self, name: str) -> bool:
        return name in self.tensors

    def tensor(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """Tensor `name` as float32 of `shape`; a matrix stored transposed is turned (orientation is
        judged by shape, never by name alone)."""
        if name not in self.tensors:
            found = ", ".join(sorted(self.tensors)) or "none"
            raise ValueError(f"{self.tensors_path}: missing tensor {name!r} (found: {found})")
        t = self.tensors[name]
        if t.dtype not in _FLOATS:
            raise ValueError(f"{self.tensors_path}: tensor {name!r} has dtype {str(t.dtype).replace('torch.', '')}; "
                             f"expected a floating-point dtype (float32, float16, bfloat16)")
        if tuple(t.shape) != shape:
            if len(shape) == 2 and tuple(t.shape) == shape[::-1]:
                t = t.t()
            else:
                raise ValueError(f"{self.tensors_path}: tensor {name!r} has shape {tuple(t.shape)}, "
                                 f"expected {shape}")
        t = t.to(torch.float32)
        if t.numel() and not bool(torch.isfinite(torch.stack(t.aminmax())).all()):  # NaN and inf reach min/max
            raise ValueError(f"{self.tensors_path}: tensor {name!r} holds NaN or infinite values")
        return t

    def vector_length(self, name: str) -> int:
        """Length of 1-D tensor `name` (used to learn d_in / d_sae from the weights themselves)."""
        if name not in self.tensors:
            found = ", ".join(sorted(self.tensors)) or "none"
            raise ValueError(f"{self.tensors_path}: missing tensor {name!r} (found: {found})")
        t = self.tensors[name]
        if t.dim() != 1:
            raise ValueError(f"{self.tensors_path}: tensor {name!r} has shape {tuple(t.shape)}, expected a vector")
        return t.shape[0]


def check_finite_scalar(value: Any, what: str, path: Path) -> float:
    """A positive finite float from a config value, or a one-line error naming the file."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{path}: {what} must be a positive number, got {value!r}")
    return float(value)
