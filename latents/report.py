"""The interpretation's outputs on disk: one JSON file per latent, the meaning index, summaries.

    <out>/latents/<latent>.json       evidence + explanations (offline, llm) + detection score
    <out>/latent_index_meaning.json   {"<latent>": {"common_semantic", "certainty", "source"}}
                                      (the LLM explanation where there is one, else the offline one)
"""

from __future__ import annotations

from pathlib import Path

from atomic import write_json_atomic
from latents.pages import page_name


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
