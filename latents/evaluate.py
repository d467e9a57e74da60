"""How good an SAE is on held-out text: reconstruction and the language model's loss with it spliced in.

Per batch of sentences (each after the capture's context prefix, if any), three forward passes:
  clean    the model as it is (and the activation at the SAE's hook is recorded);
  spliced  the activation at the hook replaced by the SAE's reconstruction;
  zero     the activation at the hook replaced by zeros (zero-ablation).
Only the sentence tokens are spliced, measured and predicted; the prefix (BOS, chat template) is left
as it is, as in the capture the SAE was trained on.
Reported (next-token cross-entropy, mean over predicted tokens):
  ce_loss_recovered = (L_zero - L_spliced) / (L_zero - L_clean)     1 = perfect, 0 = as bad as ablation
  delta_lm_loss     = L_spliced - L_clean
and on the recorded activations, in the SAE's normalised space (where it was trained):
  fvu = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (mean over all evaluated tokens),
  explained_variance = 1 - fvu, l0 = mean number of active latents per token, unfired_fraction_held_out = share
  of latents that never fire on this text.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

# tokens (bsz, seqlen) int64; mask (bsz, seqlen) bool, True = real token; scored (bsz, seqlen) bool,
# True = a sentence token (spliced, measured and predicted), False = padding or the context prefix.
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def left_padded_batches(sequences: list[list[int]], *, batch_size: int, prefix: list[int] = (),
                        pad_id: int = 0, device: torch.device | str = "cpu") -> Iterator[Batch]:
    """Sentences (token lists) as LEFT-padded batches, each after the context `prefix` the capture
    fed before every sentence (BOS, chat template); only the sentence tokens are scored."""
    for start in range(0, len(sequences), batch_size):
        group = [list(prefix) + list(s) for s in sequences[start:start + batch_size]]
        width = max(len(s) for s in group)
        tokens = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.bool)
        scored = torch.zeros((len(group), width), dtype=torch.bool)
        for i, seq in enumerate(group):
            tokens[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq):] = True
            scored[i, width - len(seq) + len(prefix):] = True
        yield tokens.to(device), mask.to(device), scored.to(device)


class _Totals:
    """Running sums over batches (float64)."""

    def __init__(self, d_sae: int, device):
        self.ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
        self.predicted = 0
        self.tokens = 0
        self.sq_err = 0.0
        self.sum_x = None
        self.sum_sq = 0.0
        self.active = 0
        self.fired = torch.zeros(d_sae, dtype=torch.bool, device=device)


def _predicted(mask: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """(bsz, seqlen - 1): positions that predict a scored token from a real one."""
    return mask[:, :-1] & scored[:, 1:]


def _ce_sum(logits: torch.Tensor, tokens: torch.Tensor, predicted: torch.Tensor) -> float:
    """Summed next-token cross-entropy over the `predicted` positions."""
    losses = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return float(losses[predicted.flatten()].sum(dtype=torch.float64))


@torch.no_grad()
def evaluate_sae(model, sae, hook: str, batches: Iterable[Batch], *,
                 progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict:
    """Reconstruction and spliced-LM-loss figures of `sae` at `hook` of `model` (see module docstring)."""
    totals = _Totals(sae.cfg.d_sae, next(sae.parameters()).device)
    for tokens, mask, scored in progress(batches):
        clean = model(tokens, attention_mask=mask, taps=(hook,))
        act = clean.taps[hook]                                                      # (bsz, seqlen, d)
        out = sae(act.to(sae.W_dec.dtype))
        x_n, x_hat_n = out.x_n[scored].double(), out.x_hat_n[scored].double()      # (tokens, d_in)
        _add_reconstruction(totals, x_n, x_hat_n, out.values[scored], out.indices[scored])
        keep = scored[..., None]                                                     # splice sentence tokens only
        spliced = model(tokens, attention_mask=mask,
                        injections={hook: lambda a: torch.where(keep, out.x_hat.to(a.dtype), a)})
        zero = model(tokens, attention_mask=mask, injections={hook: lambda a: torch.where(keep, 0.0, a)})
        predicted = _predicted(mask, scored)
        for name, result in (("clean", clean), ("spliced", spliced), ("zero", zero)):
            totals.ce[name] += _ce_sum(result.logits, tokens, predicted)
        totals.predicted += int(predicted.sum())
    return _report(totals, sae.cfg.d_sae)


def _add_reconstruction(totals: _Totals, x_n, x_hat_n, values, indices) -> None:
    totals.tokens += len(x_n)
    totals.sq_err += float(((x_n - x_hat_n) ** 2).sum())
    totals.sum_x = x_n.sum(0) if totals.sum_x is None else totals.sum_x + x_n.sum(0)
    totals.sum_sq += float((x_n ** 2).sum())
    active = values > 0
    totals.active += int(active.sum())
    totals.fired[indices[active]] = True


def _report(totals: _Totals, d_sae: int) -> dict:
    if totals.predicted == 0:
        raise ValueError("evaluation text has no token to predict (sentences need at least 2 tokens)")
    n = totals.tokens
    # sum ||x - mean||^2 = sum ||x||^2 - n ||mean||^2
    variance = totals.sum_sq - float((totals.sum_x ** 2).sum()) / n
    loss = {name: value / totals.predicted for name, value in totals.ce.items()}
    gap = loss["zero"] - loss["clean"]
    fvu = totals.sq_err / variance if variance > 0 else float("nan")
    return {"tokens": n, "predicted_tokens": totals.predicted,
            "fvu": fvu, "explained_variance": 1 - fvu, "mse": totals.sq_err / (n * totals.sum_x.numel()),
            "l0": totals.active / n, "unfired_fraction_held_out": 1 - float(totals.fired.float().mean()),
            "loss_clean": loss["clean"], "loss_spliced": loss["spliced"], "loss_zero": loss["zero"],
            "ce_loss_recovered": (loss["zero"] - loss["spliced"]) / gap if gap != 0 else float("nan"),
            "delta_lm_loss": loss["spliced"] - loss["clean"]}
