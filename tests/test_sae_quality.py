"""bench/sae_quality.py on tiny data: the harness end to end (ours against SAELens, the one-line result,
the frontier), and its contenders are the trainers they claim to be: ours equals `train.py` bit for bit,
SAELens equals its own `SAETrainer.fit` fed the same batches through its data_provider."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import startup
import train
from data.batches import BatchDataset
from data.shuffle import PrebatchConfig, prebatch
from llama.loading import LoadedModel
from llama.model import ModelArgs, Transformer
from sae.io import load_sae
from synthetic_capture import random_corpus, write_captured
from training.config import TrainConfig
from training.data import RankShare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sae_quality  # noqa: E402

pytest.importorskip("sae_lens")

HOOK = "blocks.1.hook_resid_post"
DIM, VOCAB = 16, 40


class StubTokenizer:
    pad_id = 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A two-layer model, its activations at HOOK over random labelled sentences, prebatched in 64s."""
    root = tmp_path_factory.mktemp("quality")
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=DIM, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB,
                                  multiple_of=16, max_seq_len=64)).eval()
    tokens, index, records = random_corpus(np.random.default_rng(0), 240, vocab=VOCAB, min_len=4, max_len=10)
    acts, start = [], 0
    for record in records:
        ids = torch.tensor([record["tokens"]])
        with torch.no_grad():
            acts.append(model(ids, taps=(HOOK,), return_logits=False).taps[HOOK][0].numpy())
    write_captured(root / "capture", np.concatenate(acts), tokens, index, records,
                   label_names=["negative", "positive"], hook=HOOK, shard_rows=400)
    prebatch(root / "capture", root / "batches", PrebatchConfig(batch_size=64, val_fraction=0.2, window_shards=2))
    return root, LoadedModel(model, StubTokenizer(), model.args, "stub")


def config(root: Path, **changes) -> sae_quality.QualityConfig:
    values = dict(batches=str(root / "batches"), capture=str(root / "capture"), out=str(root / "out"),
                  expansion=4, k=4, epochs=2.0, contenders=["ours", "saelens"], eval_every=4,
                  dead_after_tokens=256, eval_sentences=24, frontier_ks=[2, 8], frontier_epochs=1.0,
                  figures=False)
    return sae_quality.QualityConfig(**{**values, **changes})


def test_end_to_end_on_tiny_data(tiny, monkeypatch, capsys):
    root, loaded = tiny
    monkeypatch.setattr(startup, "load_checkpoint", lambda *a, **k: loaded)
    result = sae_quality.main(config(root))
    rows = result["main"]["rows"]
    assert set(rows) == {"ours", "saelens"}
    n_batches = len(BatchDataset(root / "batches", "train"))
    assert result["main"]["tokens"] == 2 * n_batches * 64  # the same tokens for both
    for row in rows.values():
        assert 0 < row["fvu"] < 1.5 and 0 < row["l0"] <= 4
        assert 0 <= row["dead_train"] <= 1 and 0 <= row["dead_heldout"] <= 1
        assert np.isfinite(row["ce_loss_recovered"]) and np.isfinite(row["delta_lm_loss"])
        assert 0 <= row["probe_k1_auroc"] <= 1 and 0 <= row["probe_k20_auroc"] <= 1
        assert row["seconds"] > 0 and row["step_s_median"] > 0
    curves = result["main"]["curves"]
    assert [p["step"] for p in curves["ours"]] == [p["step"] for p in curves["saelens"]]
    assert curves["ours"][-1]["fvu"] == pytest.approx(rows["ours"]["fvu"])  # the curve ends at the table's figure
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"quality: ours fvu [\d.]+, best peer fvu [\d.]+ \(saelens\), ratio [\d.]+; time to "
                        r"[\d.]+: ours ([\d.]+ s|not reached), saelens [\d.]+ s, speedup ([\d.]+|n/a)", line), line
    frontier = result["frontier"]["points"]
    assert [p["k"] for p in frontier["ours"]] == [2, 8] == [p["k"] for p in frontier["saelens"]]
    assert frontier["ours"][0]["l0"] <= 2 < frontier["ours"][1]["l0"]
    assert (root / "out" / "results.json").is_file()


def test_ours_is_train_py(tiny, tmp_path):
    """The harness's `ours` after 6 steps equals `python train.py` run for 6 steps on the same data."""
    root, _ = tiny
    cfg = config(root)
    data = sae_quality.open_data(cfg)
    shape = sae_quality.Shape(d_in=DIM, d_sae=4 * DIM, k=4, total_steps=6, seed=0)
    ours = sae_quality.make_ours(shape, cfg, data)
    share = RankShare(data.train, 0, 1, 0)
    for step in range(6):
        ours.step(data.train[share.index(step)], share.index(step))
    folder = train.main(TrainConfig.of(data=str(root / "batches"), out=str(tmp_path / "run"), d_sae=4 * DIM, k=4,
                                       max_steps=6, dead_after_tokens=256, device="cpu"))
    reference, harness = load_sae(folder).state_dict(), ours.export(tmp_path).state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(harness[name], tensor, rtol=0, atol=0, msg=name)


def test_ours_config_changes_ours_only_and_never_the_shared_settings(tiny, tmp_path):
    """--ours-config: an ablation is train.py with that field changed (equal to `train.py --lr 0.01`
    bit for bit); fields every contender shares are refused in one line."""
    root, _ = tiny
    (tmp_path / "ablation.json").write_text('{"lr": 0.01}')
    cfg = config(root, ours_config=str(tmp_path / "ablation.json"))
    data = sae_quality.open_data(cfg)
    shape = sae_quality.Shape(d_in=DIM, d_sae=4 * DIM, k=4, total_steps=4, seed=0)
    ours = sae_quality.make_ours(shape, cfg, data)
    assert "changed: {'lr': 0.01}" in ours.recipe
    share = RankShare(data.train, 0, 1, 0)
    for step in range(4):
        ours.step(data.train[share.index(step)], share.index(step))
    folder = train.main(TrainConfig.of(data=str(root / "batches"), out=str(tmp_path / "run"), d_sae=4 * DIM, k=4,
                                       max_steps=4, dead_after_tokens=256, device="cpu", lr=0.01))
    reference, harness = load_sae(folder).state_dict(), ours.export(tmp_path).state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(harness[name], tensor, rtol=0, atol=0, msg=name)
    (tmp_path / "bad.json").write_text('{"k": 3, "seed": 1}')
    with pytest.raises(sae_quality.cli.UsageError, match=r"--ours-config .*bad.json: sets k, seed"):
        sae_quality.make_ours(shape, config(root, ours_config=str(tmp_path / "bad.json")), data)


def test_saelens_is_its_own_trainer(tiny, tmp_path):
    """The harness's `saelens` after 6 steps equals SAELens' SAETrainer.fit() over the same batches."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    root, _ = tiny
    cfg = config(root)
    data = sae_quality.open_data(cfg)
    shape = sae_quality.Shape(d_in=DIM, d_sae=4 * DIM, k=4, total_steps=6, seed=0)
    contender = sae_quality.make_saelens(shape, cfg, data, our_lr=False)
    share = RankShare(data.train, 0, 1, 0)
    for step in range(6):
        contender.step(data.train[share.index(step)], share.index(step))
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=DIM, d_sae=4 * DIM, k=4, dtype="float32", device="cpu"))
    batches = iter([data.train[share.index(s)] for s in range(6)])
    fitted = SAETrainer(SAETrainerConfig(total_training_samples=6 * 64, train_batch_size_samples=64,
                                         device="cpu", lr_end=3e-5), sae, batches).fit()
    ours = contender.export(tmp_path / "harness")
    fitted.save_inference_model(tmp_path / "fit")
    reference = sae_quality.to_sae(sae_quality.READERS["saelens"](tmp_path / "fit", None))
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_seconds_to_interpolates_between_curve_points():
    curve = [{"seconds": 1.0, "fvu": 1.0}, {"seconds": 3.0, "fvu": 0.5}, {"seconds": 5.0, "fvu": 0.2}]
    assert sae_quality.seconds_to(curve, 0.5) == 3.0
    assert sae_quality.seconds_to(curve, 0.35) == pytest.approx(4.0)
    assert sae_quality.seconds_to(curve, 2.0) == 1.0
    assert sae_quality.seconds_to(curve, 0.1) is None


def test_the_line_holds_when_an_export_rounds_the_peers_last_point():
    """A schedule-free peer's exported weights differ from the evaluated ones by rounding: its curve may end
    a hair above its own final FVU, which still counts as reached."""
    rows = {"ours": {"fvu": 0.15}, "sparsify": {"fvu": 0.2}}
    curves = {"ours": [{"seconds": 1.0, "fvu": 0.5}, {"seconds": 2.0, "fvu": 0.15}],
              "sparsify": [{"seconds": 1.0, "fvu": 0.5}, {"seconds": 6.0, "fvu": 0.2 * (1 + 1e-7)}]}
    line = sae_quality.summary_line({"rows": rows, "curves": curves})
    assert line.endswith("time to 0.2000: ours 1.9 s, sparsify 6.0 s, speedup 3.23"), line
