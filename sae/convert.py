"""Convert SAEs between this project's folder format and the formats other tools use.

    python -m sae.convert --from saelens --to ours path/to/saelens_sae runs/imported/sae
    python -m sae.convert --from ours --to sparsify runs/train/sae runs/export/sparsify
    python -m sae.convert --from openai --to ours --model none 8.pt runs/openai-8

Read: ours, saelens, sparsify, llamascope, openai. Written: ours, saelens, sparsify. Every conversion goes
through our SparseAutoencoder, so `--from saelens --to sparsify` works too. Whatever is folded or assumed
on the way is printed. An SAE written in our format is checked against the model it will be used with
(`--model`, default: the project's default model): its d_in must be the model's width and its hook one
the model has.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable

import cli
from sae.formats import Converted, from_sae, hooks, llamascope, openai, saelens, sparsify, to_sae
from sae.io import load_sae, save_sae

log = logging.getLogger("sae.convert")


def _read_ours(path: Path, hook: str | None) -> Converted:
    return from_sae(load_sae(path))


def _write_ours(conv: Converted, folder: Path) -> tuple[Path, list[str]]:
    return save_sae(to_sae(conv), folder), []


READERS: dict[str, Callable[[Path, str | None], Converted]] = {
    "ours": _read_ours,
    "saelens": lambda path, hook: saelens.read(path),
    "sparsify": sparsify.read,
    "llamascope": lambda path, hook: llamascope.read(path),
    "openai": openai.read,
}
WRITERS: dict[str, Callable[[Converted, Path], tuple[Path, list[str]]]] = {
    "ours": _write_ours,
    "saelens": saelens.write,
    "sparsify": sparsify.write,
}


def model_info(path: Path) -> tuple[int, int, str]:
    """(width, number of layers, identity) of a model checkpoint, from its header or config only. The
    identity is the one `llama.load_model` reports as `source` (name, format, file fingerprint)."""
    from llama.loading import detect_format, hf, meta
    from llama.loading.common import fingerprint

    kind = detect_format(path)
    if kind == "gguf":
        from llama.loading.gguf import model_args
        from llama.loading.gguf_reader import read_gguf
        args, files = model_args(read_gguf(path)), [path]
    elif kind == "meta":
        args, files = meta.model_args(path), [path / "params.json", *path.glob("consolidated.*.pth")]
    else:
        args, files = hf.model_args(path), [path / "config.json", *path.glob("*.safetensors")]
    return args.dim, args.n_layers, f"{path.name} ({kind}, {fingerprint(files)})"


def check_for_model(conv: Converted, model: str, explicit: bool) -> str | None:
    """Refuse an SAE whose d_in or hook does not fit the model at `model` ("default", "none" or a
    path); returns the model's identity, or None when nothing was checked."""
    if model == "none":
        return None
    import paths

    try:
        path = paths.default_model_path() if model == "default" else Path(model)
    except FileNotFoundError:
        if explicit:
            raise
        log.info("the default model is not installed; d_in and hook are not checked")
        return None
    width, n_layers, identity = model_info(path)
    if conv.cfg.d_in != width:
        raise cli.UsageError(f"the SAE reads activations of width {conv.cfg.d_in}, but {path.name} has width "
                             f"{width}; pass --model with the model it was trained on, or --model none")
    if conv.cfg.hook_name:
        hooks.check_hook_for_model(conv.cfg.hook_name, n_layers)
    return identity


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sae.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source_format", required=True, choices=sorted(READERS),
                        help="format of SRC")
    parser.add_argument("--to", dest="target_format", required=True, choices=sorted(READERS),
                        help=f"format to write DST in ({', '.join(sorted(WRITERS))})")
    parser.add_argument("src", metavar="SRC", type=Path, help="SAE folder (a .pt/.safetensors file for openai)")
    parser.add_argument("dst", metavar="DST", type=Path, help="folder to write (sparsify: a run folder, "
                        "the SAE goes into DST/<hookpoint>/ unless DST is named so)")
    parser.add_argument("--hook", help="TransformerLens hook name of the SAE, where SRC does not say it "
                        "(sparsify folders named otherwise, openai files) or says it wrongly")
    parser.add_argument("--model", default=None, help="model to check d_in and hook against: a GGUF file, "
                        "a Meta or HF folder, 'default', or 'none' (default: 'default' when writing ours)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing DST")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.target_format not in WRITERS:
        raise cli.UsageError(f"--to {args.target_format}: that format is read here, not written; "
                             f"write one of {', '.join(sorted(WRITERS))}")
    if args.hook:
        hooks.parse_hook(args.hook)
    if args.dst.exists() and any(args.dst.iterdir()) and not args.overwrite:
        raise cli.UsageError(f"{args.dst}: already exists and is not empty; pass --overwrite to replace its files")
    if not args.src.exists():
        raise FileNotFoundError(f"{args.src}: no such file or folder")
    conv = READERS[args.source_format](args.src, args.hook)
    if args.hook and conv.cfg.hook_name != args.hook:
        conv.notes.append(f"hook set to {args.hook} (the source said {conv.cfg.hook_name or 'nothing'})")
        conv.cfg.hook_name = args.hook
    model = args.model or ("default" if args.target_format == "ours" else "none")
    identity = check_for_model(conv, model, explicit=args.model is not None)
    if identity and args.target_format == "ours" and conv.cfg.model != identity:
        # generate.py and interpret.py refuse an SAE whose model identity differs from the loaded one
        conv.notes.append(f"model recorded as {identity} (the source named {conv.cfg.model or 'none'})")
        conv.cfg.model = identity
    folder, notes = WRITERS[args.target_format](conv, args.dst)
    for note in conv.notes + notes:
        log.info("note: %s", note)
    cfg = conv.cfg
    log.info("wrote %s (%s): d_in %d, d_sae %d, %s%s, normalisation %s, hook %s", folder, args.target_format,
             cfg.d_in, cfg.d_sae, cfg.activation, f" k={cfg.k}" if "topk" in cfg.activation else "",
             cfg.normalization, cfg.hook_name or "-")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
