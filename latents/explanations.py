"""Reading interpret.py's `latent_index_meaning.json`: latent index -> a short explanation."""

from __future__ import annotations

import json
from pathlib import Path

from latents.text import shorten


def read_explanations(path: Path, *, missing_ok: bool = False, width: int = 40) -> dict[int, str]:
    """latent -> explanation (shortened to `width` characters at a word) of every explained latent.

    A missing file is a one-line FileNotFoundError, or {} with `missing_ok`; a file that is not such a
    table is a one-line ValueError."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return {}
        raise FileNotFoundError(f"{path}: no latent explanation table there; run interpret.py (it writes "
                                f"latent_index_meaning.json) or pass the file it wrote")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
        return {int(k): shorten(str(v.get("common_semantic", "")), width) for k, v in table.items()
                if isinstance(v, dict) and v.get("common_semantic")}
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        raise ValueError(f"{path}: not a latent explanation table; rerun interpret.py") from None


def read_latent_facts(folder: Path, latents) -> dict[int, dict]:
    """latent -> {"max": largest activation, "labels": {label: AUROC}, "page": has an HTML page} from
    interpret.py's per-latent records in `folder` (latents/<j>.json, pages/<j>.html); a latent whose
    record is missing or unreadable is left out (the page lists it without numbers)."""
    facts = {}
    for j in latents:
        try:
            record = json.loads((Path(folder) / "latents" / f"{j}.json").read_text(encoding="utf-8"))
            labels = {str(lab["label"]): lab["auroc"] for lab in record.get("labels") or []
                      if isinstance(lab.get("auroc"), (int, float))}
            top = record.get("max")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, AttributeError):
            continue
        facts[int(j)] = {"max": top if isinstance(top, (int, float)) else None, "labels": labels,
                         "page": (Path(folder) / "pages" / f"{j}.html").is_file()}
    return facts
