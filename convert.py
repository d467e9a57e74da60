"""Convert SAEs between this project's folder format and the formats other tools use.

    python convert.py --from saelens --to ours path/to/saelens_sae runs/imported/sae
    python convert.py --from ours --to sparsify runs/train/sae runs/export/sparsify
    python convert.py --from openai --to ours --model none 8.pt runs/openai-8

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

import cli
import paths
import run_folder
from llama.loading import open_checkpoint
from sae.formats import Converted, hook_names
from sae.formats.registry import READERS, WRITERS, check_fits_model

log = logging.getLogger("convert")
OUTPUT_KINDS = {"ours": run_folder.SAE, "saelens": run_folder.SAELENS, "sparsify": run_folder.SPARSIFY}


def check_for_model(conv: Converted, model: str, explicit: bool) -> str | None:
    """Refuse an SAE whose d_in or hook does not fit the model at `model` ("default", "none" or a
    path); returns the model's identity, or None when nothing was checked."""
    if model == "none":
        return None
    try:
        path = paths.default_model_path() if model == "default" else Path(model)
    except FileNotFoundError:
        if explicit:
            raise
        log.info("the default model is not installed; d_in and hook are not checked")
        return None
    info = open_checkpoint(path)  # headers only
    check_fits_model(conv, info.args.dim, info.args.n_layers, path.name)
    return info.source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="convert.py", description=__doc__.split("\n\n")[0])
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


@run_folder.releases_locks
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.target_format not in WRITERS:
        raise cli.UsageError(f"--to {args.target_format}: that format is read here, not written; "
                             f"write one of {', '.join(sorted(WRITERS))}")
    if args.hook:
        hook_names.parse_hook(args.hook)
    if args.dst.exists() and any(args.dst.iterdir()) and not args.overwrite:
        raise cli.UsageError(f"{args.dst}: already exists and is not empty; pass --overwrite to replace its files")
    if not args.src.exists():
        raise FileNotFoundError(f"{args.src}: no such file or folder")
    run_folder.check_apart(args.dst, "DST", {"SRC": args.src})
    run_folder.claim(args.dst, OUTPUT_KINDS[args.target_format], "DST")  # --overwrite replaces only an SAE's files
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
