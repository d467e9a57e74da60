"""The interpretation's outputs on disk: one JSON file per latent, the meaning index, summaries;
written here, and read back here by generate.py and serve.py.

    <out>/latents/<latent>.json       evidence + explanations (offline, llm) + detection score
    <out>/latent_index_meaning.json   {"<latent>": {"common_semantic", "certainty", "source"}}
                                      (the LLM explanation where there is one, else the offline one)
"""

from __future__ import annotations

import json
from pathlib import Path

from atomic import write_json_atomic
from latents.pages import page_name
from latents.text import shorten
from llama.jsonfile import read_json


def write_json(path: Path, data) -> None:
    """JSON of interpret.py's outputs (numbers of any kind as floats; NaN refused), written atomically."""
    write_json_atomic(path, data, allow_nan=False, default=_plain)


def _plain(value):
    return float(value) if hasattr(value, "__float__") else str(value)


def _no_nan(data):
    """NaN / inf -> None so the JSON stays standard (browsers and jq reject NaN)."""
    if isinstance(data, float):
        return data if data == data and abs(data) != float("inf") else None
    if isinstance(data, dict):
        return {k: _no_nan(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_no_nan(v) for v in data]
    return data


def assemble(evidence: dict[int, dict], offline: dict[int, dict], llm: dict[int, dict],
             detection: dict[int, float]) -> list[dict]:
    """One record per latent: its evidence plus explanations {"offline", "llm"} and detection score."""
    records = []
    for j in sorted(evidence):
        explanations = {"offline": offline[j]} if j in offline else {}
        if j in llm:
            explanations["llm"] = {**llm[j], "source": "llm"}
        records.append(_no_nan({**evidence[j], "explanations": explanations, "detection": detection.get(j)}))
    return records


def meaning(record: dict) -> dict:
    """The explanation a reader should see first: the LLM's if there is one, else the offline one."""
    ex = record["explanations"].get("llm") or record["explanations"].get("offline")
    if not ex:
        return {"common_semantic": "", "certainty": None, "source": None}
    return {"common_semantic": ex["common_semantic"], "certainty": ex.get("certainty"), "source": ex.get("source")}


def write_records(out: Path, records: list[dict]) -> None:
    """The per-latent JSON files and latent_index_meaning.json."""
    folder = Path(out) / "latents"
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        write_json(folder / f"{record['latent']}.json", record)
    write_json(Path(out) / "latent_index_meaning.json", {str(r["latent"]): meaning(r) for r in records})


def remove_unlisted(out: Path, latents: set[int]) -> None:
    """Remove latents/<latent>.json and pages/<latent>.html of latents this run did not write (an earlier
    run's, of another SAE or other settings), so that nothing in `out` describes another run."""
    for folder, suffix in ((Path(out) / "latents", ".json"), (Path(out) / "pages", ".html")):
        for path in folder.glob(f"*{suffix}"):
            if path.stem.isdigit() and int(path.stem) not in latents:
                path.unlink()


def summaries(records: list[dict]) -> list[dict]:
    """Index rows for the HTML pages."""
    rows = []
    for r in records:
        m = meaning(r)
        score = r["explanations"].get("offline", {}).get("score") or {}
        llm = r.get("detection")
        rows.append({"latent": r["latent"], "explanation": m["common_semantic"], "certainty": m["certainty"],
                     "density": r["density"], "mean_active": r["mean_active"], "max": r["max"],
                     "labels": r["labels"], "precision": score.get("precision"), "recall": score.get("recall"),
                     # the LLM's balanced accuracy where it was scored, else the offline explanation's F1
                     "detection": llm if llm is not None else score.get("f1"),
                     "detection_source": "llm" if llm is not None else "offline" if score else None,
                     "page": f"pages/{page_name(r['latent'])}"})
    return rows


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
            record = read_json(Path(folder) / "latents" / f"{j}.json", expect=dict)
            labels = {str(lab["label"]): lab["auroc"] for lab in record.get("labels") or []
                      if isinstance(lab.get("auroc"), (int, float))}
            top = record.get("max")
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
        facts[int(j)] = {"max": top if isinstance(top, (int, float)) else None, "labels": labels,
                         "page": (Path(folder) / "pages" / f"{j}.html").is_file()}
    return facts
