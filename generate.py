"""Generate text with the model, optionally with an SAE spliced in and its latents steered.

    python generate.py "Today I went to the park and"            # plain completion, streamed
    python generate.py --chat "Tell me about your day."          # the model's chat format
    python generate.py --steer 896:20 "Today I went to the park and"   # steer latent 896 by +20
    python generate.py --steer 896:20 --compare --show-features  # unsteered vs steered, latents per token
    python generate.py --prompt-file prompts.txt                 # one prompt per line, as a batch ("-": stdin)
    python generate.py --sweep 896:0:20:5 --label negative       # steer at 0, 5, ..., 20 and measure each

The SAE (default: the one the pipeline trained, runs/train/sae) decides how prompts are tokenized (BOS,
chat format), so it sees the distribution it was trained on. Steering modes are described in
sae/steering.py; "direction" is the default (see docs/generate.md for why).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import torch

import cli
import paths
import startup
from atomic import write_text_atomic
from latents.report import read_explanations
from latents.judge import cached_judge
from latents.steer_range import far_beyond_note, largest_activation, nonfinite_problem, push_is_finite
from latents.sweep import (MAX_SWEEP_STEPS, NEUTRAL_PROMPTS, SweepSettings, best_row, evenly_spaced, rows_json,
                           sweep_latent, sweep_table)
from latents.text import pieces, token_bytes_of
from llama import generate
from llama.tokenizers import StreamDecoder
from llama.tokenizers.chat import encode_prompt
from sae.io import load_config
from sae.steering import Steer, Steering, check_mode, check_steers, parse_steer, unsteered
from settings import SettingError, check_int, check_number, check_seed

DEFAULT_PROMPT = "Today I went to the park and"
# Below this, sampling almost always picks the top token, as greedy does; near 1e-38, logits / temperature
# overflow float32 and the draw fails.
MIN_TEMPERATURE = 1e-3


@dataclass
class GenerateConfig:
    prompts: list[str] = field(default_factory=list, metadata={"cli": False})  # positional arguments
    steer: list[str] = field(default_factory=list, metadata={"cli": False})    # --steer, repeatable
    prompt_file: str = field(default="", metadata={"help": "file of prompts, one per line, run as a batch "
                                                           "('-' reads standard input)"})
    model: str = field(default="", metadata={"help": "GGUF file, Meta or HF folder (default: SmolLM2-135M-Instruct)"})
    sae: str = field(default="", metadata={"help": f"SAE folder whose latents are steered or shown (default: "
                                                   f"{paths.DEFAULT_SAE_DIR} when needed)"})
    mode: str = field(default="direction", metadata={"help": "steering mode: direction (add VALUE x the latent's "
                                                     "decoder direction), sae (the SAE's reconstruction replaces "
                                                     "the activation, VALUE added through h_bias), clamp (hold "
                                                     "the latent at VALUE)"})
    chat: bool = field(default=False, metadata={"help": "wrap prompts in the model's chat format (on by itself "
                                                        "when the SAE was trained on chat-formatted text)"})
    max_new_tokens: int = field(default=48, metadata={"help": "tokens to generate per prompt"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy; otherwise sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (with --temperature > 0)"})
    seed: int = field(default=0, metadata={"help": "random seed for sampling"})
    compare: bool = field(default=False, metadata={"help": "print the unsteered and the steered completion "
                                                           "(same seed) side by side"})
    show_features: bool = field(default=False, metadata={"help": "list the strongest SAE latents at each "
                                                                 "generated token"})
    top_features: int = field(default=4, metadata={"help": "latents listed per token with --show-features"})
    explanations: str = field(default=str(paths.DEFAULT_INTERPRET_DIR / "latent_index_meaning.json"),
                              metadata={"help": "latent explanations written by interpret.py"})
    sweep: str = field(default="", metadata={"help": "IDX:LO:HI[:STEPS]: complete the same prompts (default: five "
                                                      "neutral ones) with latent IDX pushed to each of STEPS "
                                                      "(default 5) values from LO to HI, and print the latent's "
                                                      "activation, the judge's shift toward --label, perplexity "
                                                      "and repetition per value"})
    label: str = field(default="negative", metadata={"help": "--sweep: the label the judge's shift is measured toward"})
    judge_corpus: str = field(default="", metadata={"help": "--sweep: labelled corpus the judge is trained on "
                                                            "(default: the embedded sentiment corpus)"})
    max_ppl_ratio: float = field(default=3.0, metadata={"help": "--sweep: a value is in range while the steered "
                                                                "text's perplexity is at most this multiple of "
                                                                "the unsteered text's"})
    sweep_json: str = field(default="", metadata={"help": "--sweep: also write the table as JSON to this file"})
    device: str = startup.device_field()
    model_dtype: str = startup.model_dtype_field()

    def __post_init__(self):
        for text in self.steer:
            parse_steer(text)
        if self.sweep:
            parse_sweep(self.sweep)
        check_mode(self.mode)
        check_int("max_new_tokens", self.max_new_tokens, 1)
        check_number("temperature", self.temperature)
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise SettingError("temperature", self.temperature, f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g} "
                                                                f"(smaller ones sample almost exactly as greedy does)")
        check_seed("seed", self.seed)
        if not 0 < self.top_p <= 1:  # also catches NaN
            raise SettingError("top_p", self.top_p, "must be in (0, 1]")
        check_int("top_features", self.top_features, 1)
        if not self.max_ppl_ratio > 0:
            raise SettingError("max_ppl_ratio", self.max_ppl_ratio, "must be > 0")

    @property
    def steers(self) -> list[Steer]:
        """--steer as Steers (each was checked when the config was built)."""
        return [parse_steer(text) for text in self.steer]


def parse_args(argv: list[str] | None = None) -> GenerateConfig:
    def extend(parser: argparse.ArgumentParser) -> None:
        # SUPPRESS: no positional prompt leaves --config's prompts in place (nargs="*" would give [])
        parser.add_argument("prompts", nargs="*", default=argparse.SUPPRESS,
                            help=f"prompts (default: {DEFAULT_PROMPT!r})")
        parser.add_argument("--steer", action="append", default=None, metavar="IDX:VALUE",
                            help="steer latent IDX by VALUE; repeatable")

    cfg, _ = cli.parse_config(GenerateConfig, __doc__.split("\n\n")[0], argv, extend=extend)
    return cfg


def main(cfg: GenerateConfig) -> int:
    """Validate what the config could not (the SAE's latents), load the model (and SAE), generate and
    print. Returns the exit code."""
    if cfg.sweep:
        return sweep_main(cfg)
    steers = cfg.steers
    sae_dir = resolve_sae(cfg, needed=bool(steers) or cfg.show_features or cfg.compare)
    if sae_dir:
        with cli.settings_as_flags():  # the latent indices, before the model loads
            check_steers(steers, load_config(sae_dir).d_sae)
        for steer in steers:
            note = far_beyond_note(steer, largest_activation(interpret_dir(cfg), sae_dir, steer.latent))
            if note:
                print(note, file=sys.stderr)
    prompts = read_prompts(cfg)
    device = startup.resolve_device(cfg.device)
    loaded = startup.load_model(cfg.model, device=device, model_dtype=cfg.model_dtype)
    sae = startup.load_sae_for(sae_dir, loaded, device=device) if sae_dir else None
    chat = cfg.chat or bool(sae and sae.cfg.chat)
    bos = sae.cfg.prepend_bos if sae else loaded.tokenizer.add_bos
    token_prompts = [encode_prompt(loaded.tokenizer, p, chat=chat, bos=bos) for p in prompts]
    check_context(cfg, loaded.args.max_seq_len, token_prompts)
    runs = plan_runs(cfg, sae, steers)
    for steering in runs.values():
        if steering is not None and steering.steers:
            check_push(cfg, loaded, sae_dir, token_prompts[0], steering)
    # One completion to show: stream it token by token (the prompt echoed first, unless in chat form).
    stream = len(runs) == 1 and len(prompts) == 1 and not cfg.show_features
    results = {label: run_generation(cfg, loaded, token_prompts, steering, stream=stream,
                                     echo="" if chat else prompts[0])
               for label, steering in runs.items()}
    print_results(cfg, loaded, prompts, token_prompts, runs, results, streamed=stream)
    warn_empty(runs, results, prompts)
    return 0


def interpret_dir(cfg: GenerateConfig) -> Path:
    """interpret.py's output folder: the one that holds --explanations."""
    return Path(cfg.explanations).parent


def check_push(cfg: GenerateConfig, loaded, sae_dir: Path, prompt: list[int], steering: Steering) -> None:
    """One line, before any text, for a push that overflows the model (its completion would be empty)."""
    if push_is_finite(loaded.model, prompt, steering.sae.cfg.hook_name, steering):
        return
    steer = max(steering.steers, key=lambda s: abs(s.value))
    top = largest_activation(interpret_dir(cfg), sae_dir, steer.latent)
    raise cli.UsageError(f"--steer {steer.shown}: {nonfinite_problem(steer, top)}")


def warn_empty(runs: dict, results: dict, prompts: list[str]) -> None:
    """A line on stderr for each steered completion the model ended at once (printed, it looks like nothing)."""
    for label, steering in runs.items():
        empty = [i for i, out in enumerate(results[label]) if not out]
        if steering is not None and steering.steers and empty:
            which = "the prompt" if len(prompts) == 1 else f"prompt(s) {', '.join(map(str, empty))}"
            print(f"warning: {label}: the completion of {which} is empty (the model ended it at once); a "
                  f"smaller value may give text", file=sys.stderr)


def check_context(cfg: GenerateConfig, context: int, token_prompts: list[list[int]]) -> None:
    """One line when a prompt and --max-new-tokens do not fit in the model's context (rather than running
    past the positions it was trained on, or allocating a cache for them)."""
    longest = max(len(p) for p in token_prompts)
    if longest + cfg.max_new_tokens > context:
        what = "--prompt-file" if cfg.prompt_file else "the prompt"
        raise cli.UsageError(f"{what} ({longest} tokens) + --max-new-tokens {cfg.max_new_tokens} exceed the "
                             f"model's context of {context} tokens; shorten the prompt or lower --max-new-tokens")


def parse_sweep(text: str) -> tuple[int, list[float]]:
    """"IDX:LO:HI[:STEPS]" -> (latent, STEPS values evenly spaced from LO to HI); SettingError("sweep", ...)."""
    parts = str(text).split(":")
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        latent, lo, hi = int(parts[0]), float(parts[1]), float(parts[2])
        steps = int(parts[3]) if len(parts) == 4 else 5
    except ValueError:
        raise SettingError("sweep", text, "expected IDX:LO:HI[:STEPS], e.g. 896:0:20:5") from None
    if latent < 0 or not 1 <= steps <= MAX_SWEEP_STEPS or not (math.isfinite(lo) and math.isfinite(hi)):
        raise SettingError("sweep", text, f"IDX >= 0, finite LO and HI, STEPS from 1 to {MAX_SWEEP_STEPS}")
    return latent, evenly_spaced(lo, hi, steps)


def sweep_main(cfg: GenerateConfig) -> int:
    """--sweep: the sweep's table (latents/sweep.py) on the prompts, the range marked."""
    latent, values = parse_sweep(cfg.sweep)
    sae_dir = resolve_sae(cfg, needed=True)
    try:
        check_steers([Steer(latent, 0.0)], load_config(sae_dir).d_sae)
    except SettingError as err:  # the swept latent, as --sweep gave it
        raise cli.UsageError(f"--sweep {cfg.sweep}: {err.problem}") from None
    prompts = read_prompts(cfg) if cfg.prompts or cfg.prompt_file else list(NEUTRAL_PROMPTS)
    judge = cached_judge(cfg.judge_corpus or paths.default_corpus_path(), paths.RUNS / "judge")
    with cli.settings_as_flags():
        judge.index(cfg.label)
    print(f"judge: bag-of-words classifier, held-out accuracy {judge.accuracy:.3f} "
          f"(always guessing the commonest label: {judge.majority:.3f})")
    device = startup.resolve_device(cfg.device)
    loaded = startup.load_model(cfg.model, device=device, model_dtype=cfg.model_dtype)
    sae = startup.load_sae_for(sae_dir, loaded, device=device)
    bos = sae.cfg.prepend_bos
    chat = cfg.chat or sae.cfg.chat
    token_prompts = [encode_prompt(loaded.tokenizer, p, chat=chat, bos=bos) for p in prompts]
    check_context(cfg, loaded.args.max_seq_len, token_prompts)
    settings = SweepSettings(mode=cfg.mode, max_new_tokens=cfg.max_new_tokens, max_ppl_ratio=cfg.max_ppl_ratio)
    rows = sweep_latent(loaded, sae, token_prompts, latent, values, judge, cfg.label, settings)
    print(sweep_table(rows, latent, cfg.label))
    best = best_row(rows)
    print(f"in range (* : judge moved >= {settings.min_shift} toward {cfg.label!r}, perplexity <= "
          f"{cfg.max_ppl_ratio:g}x, distinct-2 >= {settings.min_distinct2_ratio:g}x the unsteered): "
          + (f"try --steer {latent}:{best.value:.3g}" if best else "no value"))
    if cfg.sweep_json:
        write_text_atomic(Path(cfg.sweep_json), json.dumps({"latent": latent, "label": cfg.label, "prompts": prompts,
                                                            "rows": rows_json(rows)}, indent=1) + "\n")
    return 0


def resolve_sae(cfg: GenerateConfig, needed: bool) -> Path | None:
    """The SAE folder to use, None when no SAE is wanted; a one-line hint when one is needed but absent."""
    if cfg.sae:
        return Path(cfg.sae)
    if not needed:
        return None
    if not (paths.DEFAULT_SAE_DIR / "config.json").is_file():
        flags = "--steer" if cfg.steer else "--show-features" if cfg.show_features else "--compare"
        raise cli.UsageError(f"{flags} needs a trained SAE and there is none at {paths.DEFAULT_SAE_DIR}: run "
                             f"`python pipeline.py` (or capture.py then train.py), or pass --sae FOLDER")
    return paths.DEFAULT_SAE_DIR


def read_prompts(cfg: GenerateConfig) -> list[str]:
    prompts = list(cfg.prompts)
    if cfg.prompt_file:
        try:
            text = sys.stdin.read() if cfg.prompt_file == "-" else Path(cfg.prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"--prompt-file {cfg.prompt_file}: no such file") from None
        except UnicodeDecodeError:
            raise ValueError(f"--prompt-file {cfg.prompt_file}: not UTF-8 text") from None
        prompts += [line for line in text.splitlines() if line.strip()]
        if not prompts:
            raise cli.UsageError(f"--prompt-file {cfg.prompt_file}: no prompts in it (one per line)")
    if any(not p.strip() for p in prompts):
        raise cli.UsageError("empty prompt: give some text to continue")
    return prompts or [DEFAULT_PROMPT]


def plan_runs(cfg: GenerateConfig, sae, steers) -> dict:
    """label -> Steering (None: the plain model, no SAE). The unsteered run of --compare is the SAE
    spliced with no steering in "sae" mode, and the plain model (the SAE only reading) otherwise
    (sae.steering.unsteered)."""
    if sae is None:
        return {"plain model": None}
    base_label = "unsteered (SAE spliced)" if cfg.mode == "sae" else "unsteered"
    base = {base_label: unsteered(sae, cfg.mode)}
    if not steers:
        return base
    label = "steered " + ", ".join(f"{s.latent}:{s.value:+g}" for s in steers) + f" ({cfg.mode})"
    return {**(base if cfg.compare else {}), label: Steering(sae, steers, cfg.mode)}


def run_generation(cfg: GenerateConfig, loaded, prompts: list[list[int]], steering, *, stream: bool,
                   echo: str) -> list[list[int]]:
    injections = {steering.sae.cfg.hook_name: steering} if steering is not None else None
    on_token = None
    if stream:
        decoder = StreamDecoder(loaded.tokenizer)
        print(echo, end="", flush=True)

        def on_token(step, tokens):
            if int(tokens[0]) >= 0:
                print(decoder.feed(int(tokens[0])), end="", flush=True)

    out = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                   temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, injections=injections,
                   on_token=on_token)
    if stream:
        print(decoder.flush())
    return out


def print_results(cfg, loaded, prompts, token_prompts, runs, results, *, streamed: bool) -> None:
    tokenizer = loaded.tokenizer
    explanations = read_explanations(Path(cfg.explanations), missing_ok=True) if cfg.show_features else {}
    for i, prompt in enumerate(prompts):
        texts = {label: tokenizer.decode(out[i]) for label, out in results.items()}
        if len(runs) > 1:
            print(f"prompt: {prompt}")
            print_side_by_side(texts)
        elif not streamed:
            text = next(iter(texts.values()))
            print(f"{prompt}{text}" if len(prompts) == 1 else f"[{i}] {prompt} -> {text.strip()}")
        if cfg.show_features:
            for label, steering in runs.items():
                if steering is not None:
                    print(f"-- strongest latents at each generated token, {label} --")
                    print_features(loaded, steering, token_prompts[i], results[label][i], cfg.top_features,
                                   explanations)


def print_side_by_side(texts: dict[str, str]) -> None:
    width = shutil.get_terminal_size((100, 20)).columns
    column = (width - 3) // len(texts)
    if column < 30:  # too narrow for columns: one block after the other
        for label, text in texts.items():
            print(f"--- {label} ---\n{text.strip()}\n")
        return
    wrapped = [[label[:column], "-" * min(column, len(label))] + textwrap.wrap(text.strip(), column)
               for label, text in texts.items()]
    for row in range(max(map(len, wrapped))):
        print(" | ".join((lines[row] if row < len(lines) else "").ljust(column) for lines in wrapped).rstrip())
    print()


def print_features(loaded, steering, prompt: list[int], new: list[int], n: int, explanations: dict) -> None:
    """One line per generated token: the strongest latents on it (on what flows on after steering)."""
    hook = steering.sae.cfg.hook_name
    tokens = torch.tensor([prompt + new], device=steering.sae.W_dec.device)
    with torch.no_grad():  # the tap is the activation arriving at the hook, before steering
        arriving = loaded.model(tokens, injections={hook: steering}, taps=(hook,), return_logits=False).taps[hook]
    steered = steering.steer(arriving, latents=True)
    values, indices = top_latents(steered.values, steered.indices, n)
    shown = pieces([token_bytes_of(loaded.tokenizer)(int(t)) for t in tokens[0].tolist()])
    for pos in range(len(prompt), len(prompt) + len(new)):
        token = shown[pos] or "\u2026"  # "": the first bytes of a character the next token completes
        parts = [f"{int(j)}:{float(v):.1f}" + (f" ({explanations[int(j)]})" if int(j) in explanations else "")
                 for v, j in zip(values[0, pos].tolist(), indices[0, pos].tolist()) if v > 0]
        print(f"{token!r:>16}  " + "  ".join(parts))


def top_latents(values: torch.Tensor, indices: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n strongest of the active latents (values, indices) (..., k) per position: (..., n) each."""
    n = min(n, values.shape[-1])
    top, order = values.topk(n, dim=-1)
    return top, indices.gather(-1, order)


def cli_main(argv: list[str] | None = None) -> int:
    return main(parse_args(argv))


if __name__ == "__main__":
    cli.run_main(cli_main)
