"""A local steering page: type a prompt, pick SAE latents by their explanation, set their values, and
read the unsteered and the steered completion side by side.

    python serve.py                       # the pipeline's SAE; open http://127.0.0.1:8765
    python serve.py --sae runs/my-sae --port 8000 --mode sae

The page calls JSON endpoints a script can use too: GET /latents (each explained latent's index,
explanation, largest activation "max", label AUROCs "labels" and "page"), POST /generate with {"prompt":
str, "steers": [[latent, value], ...], "mode": str, "max_new_tokens": int}, which returns {"unsteered":
str, "steered": str}, and POST /sweep with {"latent": int, "lo": num, "hi": num, "steps": int, "label": str,
"mode", "max_new_tokens", "prompts", "max_ppl_ratio", "min_distinct2_ratio"} (all but latent and hi
optional), which returns generate.py --sweep's table as {"rows": [...], "best", ...}. Every refusal is
one line of JSON, {"error": "..."}, with its HTTP status. Steering means what it means in generate.py
(see docs/generate.md): the same modes, the same VALUE. The page opens with a latent and a range from
its query string (/?latent=J&lo=A&hi=B&steps=N&value=V, as interpret.py's latent pages link to it), and
interpret.py's index.html and pages/<latent>.html are served beside it.

This file is the script (its config, the checks before loading, main); the server is steering_page/
(jobs.py: requests checked; session.py: the model answering them; page.py: the HTML; server.py: HTTP,
with the limits and the Host and Origin checks that keep it to this machine's own page).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cli
import paths
import startup
from latents.report import read_explanations, read_latent_facts
from latents.judge import cached_judge
from sae.steering import check_mode
from settings import check_int
from steering_page.server import SteeringServer
from steering_page.session import SteeringSession


@dataclass
class ServeConfig:
    sae: str = field(default=str(paths.DEFAULT_SAE_DIR), metadata={"help": "SAE folder whose latents are steered"})
    model: str = field(default="", metadata={"help": "GGUF file, Meta or HF folder (default: SmolLM2-135M-Instruct)"})
    explanations: str = field(default="", metadata={
        "help": "interpret.py's latent_index_meaning.json, the latents to pick from (default: the pipeline's "
                f"{paths.DEFAULT_INTERPRET_DIR / 'latent_index_meaning.json'} when it exists)"})
    mode: str = field(default="direction", metadata={"help": "steering mode preselected on the page: "
                                                             "direction, sae or clamp"})
    judge_corpus: str = field(default="", metadata={"help": "labelled corpus the sweep's judge is trained on "
                                                            "(default: the embedded corpus)"})
    port: int = field(default=paths.SERVE_PORT, metadata={"help": "port on 127.0.0.1 (0: any free one)"})
    device: str = startup.device_field()
    model_dtype: str = startup.model_dtype_field()

    def __post_init__(self):
        check_mode(self.mode)
        check_int("port", self.port, 0, 65535)


class Checked(NamedTuple):
    """What check_flags found."""

    sae_dir: Path
    explanations: dict[int, str]
    device: object              # torch.device
    corpus: Path | None         # the judge's corpus; None: sweeps are refused


def check_flags(cfg: ServeConfig) -> Checked:
    """What the config could not check and can be before the model is loaded: SAE folder, explanations,
    device, corpus."""
    sae_dir = Path(cfg.sae)
    if not (sae_dir / "config.json").is_file():
        raise cli.UsageError(f"--sae {sae_dir}: no trained SAE there; run `python pipeline.py` (or capture.py "
                             f"then train.py), or pass --sae FOLDER")
    try:  # the pipeline's table when there is one; a file named with --explanations must exist
        explanations = (read_explanations(Path(cfg.explanations)) if cfg.explanations else
                        read_explanations(paths.DEFAULT_INTERPRET_DIR / "latent_index_meaning.json", missing_ok=True))
    except (FileNotFoundError, ValueError) as err:
        raise cli.UsageError(f"--explanations {err}") from None
    if cfg.judge_corpus and not Path(cfg.judge_corpus).exists():
        raise cli.UsageError(f"--judge-corpus {cfg.judge_corpus}: no such file or folder; name a labelled corpus")
    try:
        corpus = Path(cfg.judge_corpus) if cfg.judge_corpus else paths.default_corpus_path()
    except FileNotFoundError:  # the embedded corpus is not installed: steering works, sweeps say why not
        corpus = None
    return Checked(sae_dir, explanations, startup.resolve_device(cfg.device), corpus)


def load_session(cfg: ServeConfig) -> SteeringSession:
    checked = check_flags(cfg)
    loaded = startup.load_model(cfg.model, device=checked.device, model_dtype=cfg.model_dtype)
    sae = startup.load_sae_for(checked.sae_dir, loaded, device=checked.device)
    folder = Path(cfg.explanations).parent if cfg.explanations else paths.DEFAULT_INTERPRET_DIR
    judge = (lambda: cached_judge(checked.corpus, paths.RUNS / "judge")) if checked.corpus else None
    return SteeringSession(loaded, sae, checked.explanations, cfg.mode, judge=judge,
                           facts=read_latent_facts(folder, checked.explanations),
                           pages=folder if (folder / "pages").is_dir() else None)


def main() -> None:
    cfg, _ = cli.parse_config(ServeConfig, __doc__.split("\n\n")[0])
    check_flags(cfg)
    try:  # the port before the model: a taken port is said at once, not after loading
        server = SteeringServer(None, cfg.port)
    except OSError as err:
        raise cli.UsageError(f"--port {cfg.port}: cannot listen there ({err.strerror}); choose another") from None
    try:
        server.session = session = load_session(cfg)
        print(f"steering page at {server.origins[0]}/ ({len(session.explanations)} explained latents of "
              f"{session.sae.cfg.d_sae}); Ctrl-C stops it", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.server_close()


if __name__ == "__main__":
    cli.run_main(main)
