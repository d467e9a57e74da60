"""The GPU check: what only a CUDA machine can show, in one command of a few minutes (scripts/gpu_check.sh).

    python scripts/gpu_check.py            # on a machine with one CUDA GPU
    python scripts/gpu_check.py --cpu      # everything but the CUDA parts, small shapes (the test suite runs it)

Needs only torch, transformers, safetensors, numpy, tiktoken, sentencepiece, pytest and tqdm: the
model is a random Llama 3.2 1B-shaped checkpoint written on the spot (bench/make_checkpoint.py).

Checks: the CUDA tests pass; the 1B shape's captured activations in bf16 on the GPU against float32 on
the CPU (relative error); 300 SAE training steps (train.py) on the GPU against the CPU from the same init
and data, in float32 and, where train.py has --autocast, bf16 (validation FVU); NCCL with one process.
Times: the SAE step at d_in 4096, d_sae 65536, k 64, batch 4096 against a naive dense SAE and the encoder
matmul alone; capture and decode tokens/s of the 1B shape in bf16 against transformers on the same weights.

Full figures go to gpu_check.json in --out (default: $OUT, else runs/gpu_check); a short table is printed
last. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cli  # noqa: E402
import make_checkpoint  # noqa: E402
import train  # noqa: E402
from llama import ModelArgs, generate, load_model  # noqa: E402
from sae.config import SAEConfig  # noqa: E402
from sae.io import load_sae  # noqa: E402
from sae.model import SparseAutoencoder  # noqa: E402
from sae.sparse import SPARSE  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.objective import SAEObjective  # noqa: E402

# Shapes of the full run (one H100) and of --cpu (seconds on a small CPU).
FULL = SimpleNamespace(model=make_checkpoint.llama3_args("1b"), seqlen=512, batch=4, new_tokens=64,
                       sae_step=(4096, 65536, 64, 4096), train=(512, 4096, 32, 1024), steps=300, repeats=5)
SMALL = SimpleNamespace(model=ModelArgs.debug(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, vocab_size=2048,
                                              hidden_dim=768, rope_theta=500000.0),
                        seqlen=128, batch=2, new_tokens=8, sae_step=(128, 1024, 16, 256), train=(32, 256, 8, 128),
                        steps=300, repeats=2)
CAPTURE_REL_BOUND = 5e-2  # bf16 keeps 8 bits (0.4% per rounding); a few roundoffs per layer over 16 layers
FVU_TOLERANCE = 0.02  # validation FVU after the same steps: within 2% (relative) + 0.005 of the reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="skip the CUDA parts; small shapes")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_check"))
    opts = parser.parse_args()
    if not opts.cpu and not torch.cuda.is_available():
        print("error: no CUDA device is visible; run with --cpu for the CPU parts", file=sys.stderr)
        return 2
    device = torch.device("cpu" if opts.cpu else "cuda")
    if opts.cpu:  # small shapes: many tiny ops, where worker threads cost more than they give on a shared CPU
        torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")  # train.py's progress bar: the table is the output
    shapes = SMALL if opts.cpu else FULL
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "shapes": "small (--cpu)" if opts.cpu else "full", "checks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        checks = [("cuda tests", lambda: check_cuda_tests(opts.cpu)),
                  ("capture", lambda: check_capture(device, shapes, Path(tmp))),
                  ("sae training", lambda: check_training(device, shapes, Path(tmp))),
                  ("sae step", lambda: time_sae_step(device, shapes)),
                  ("process group", lambda: check_process_group(device))]
        for name, check in checks:
            started = time.perf_counter()
            try:
                figures = check()
            except Exception as err:  # a failed check must not hide the others
                figures = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            figures["seconds"] = round(time.perf_counter() - started, 1)
            results["checks"][name] = figures
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json.tmp").write_text(json.dumps(results, indent=2))
    os.replace(out / "gpu_check.json.tmp", out / "gpu_check.json")
    print_table(results, out / "gpu_check.json")
    return 0 if all(c.get("ok") is not False for c in results["checks"].values()) else 1


def check_cuda_tests(cpu_only: bool) -> dict:
    """`pytest -m cuda` over the files that hold CUDA tests, and the sparse kernels' CUDA cases."""
    if cpu_only:
        return {"ok": None, "skipped": "--cpu"}
    files = [str(p) for p in sorted((ROOT / "tests").glob("test_*.py")) if "mark.cuda" in p.read_text()]
    runs = {"-m cuda": [*files, "-m", "cuda"], "sparse kernels": ["tests/test_sae_sparse.py", "-k", "cuda"]}
    out = {}
    for label, argv in runs.items():
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *argv], cwd=ROOT,
                              capture_output=True, text=True)
        out[label] = {"rc": proc.returncode, "summary": (proc.stdout.strip().splitlines() or [""])[-1]}
    out["ok"] = all(r["rc"] == 0 for r in out.values())
    return out


def timed(fn, repeats: int, device: torch.device) -> float:
    """Best wall time of `repeats` calls after one warm-up, the device synchronised."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm())


def check_capture(device: torch.device, shapes, tmp: Path) -> dict:
    """The 1B shape: bf16 taps on `device` vs float32 on the CPU; capture and decode speed vs transformers."""
    import transformers  # here: a heavy import, needed by this check only

    args = shapes.model
    folder = make_checkpoint.write_hf(tmp / "model", args, tokenizer=False)
    hook, layer = f"blocks.{args.n_layers // 2}.hook_resid_post", args.n_layers // 2
    tokens = torch.randint(0, args.vocab_size, (shapes.batch, shapes.seqlen), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = load_model(folder, dtype="float32", tokenizer=False).model(tokens, taps=(hook,), return_logits=False)
    exact = exact.taps[hook]
    ours = load_model(folder, device=device, dtype="bfloat16", tokenizer=False).model
    theirs = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).to(device).eval()
    on_device = tokens.to(device)
    with torch.no_grad():
        ours_act = ours(on_device, taps=(hook,), return_logits=False).taps[hook]
        theirs_act = theirs.model(input_ids=on_device, output_hidden_states=True).hidden_states[layer + 1]
        capture_ours = timed(lambda: ours(on_device, taps=(hook,), return_logits=False), shapes.repeats, device)
        capture_theirs = timed(lambda: theirs.model(input_ids=on_device, output_hidden_states=True),
                               shapes.repeats, device)
    prompt = tokens[:1, :16]
    stub = SimpleNamespace(pad_id=None, stop_ids=set())
    decode_ours = timed(lambda: generate(ours, stub, prompt.tolist(), max_new_tokens=shapes.new_tokens),
                        1, device)
    with torch.no_grad():
        decode_theirs = timed(lambda: theirs.generate(prompt.to(device), max_new_tokens=shapes.new_tokens,
                                                      min_new_tokens=shapes.new_tokens, do_sample=False), 1, device)
    n_tokens = tokens.numel()
    err = rel(ours_act, exact)
    return {"ok": err < CAPTURE_REL_BOUND and bool(torch.isfinite(ours_act).all()), "hook": hook,
            "rel_error_bf16_vs_cpu_float32": err, "bound": CAPTURE_REL_BOUND,
            "rel_error_transformers_bf16_vs_cpu_float32": rel(theirs_act, exact),
            "capture_tok_s": n_tokens / capture_ours, "capture_tok_s_transformers": n_tokens / capture_theirs,
            "capture_ratio": capture_theirs / capture_ours,
            "decode_tok_s": shapes.new_tokens / decode_ours,
            "decode_tok_s_transformers": shapes.new_tokens / decode_theirs,
            "decode_ratio": decode_theirs / decode_ours}


def synthetic_activations(d_in: int, n_rows: int, seed: int = 0) -> torch.Tensor:
    """Sparse sums of 4 of 8 * d_in random unit directions plus noise: data an SAE can learn."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(8 * d_in, d_in, generator=gen), dim=-1)
    chosen = torch.randint(0, len(atoms), (n_rows, 4), generator=gen)
    weights = torch.rand(n_rows, 4, generator=gen) * 3
    return (weights[..., None] * atoms[chosen]).sum(1) + 0.05 * torch.randn(n_rows, d_in, generator=gen)


def check_training(device: torch.device, shapes, tmp: Path) -> dict:
    """train.py for `steps` steps on the CPU and on `device` from the same init and data; validation FVU."""
    d_in, d_sae, k, batch = shapes.train
    data = synthetic_activations(d_in, batch * (shapes.steps + 8))
    train_batches, val = list(data[:batch * shapes.steps].split(batch)), data[batch * shapes.steps:]
    runs = [("cpu float32", "cpu", None)]
    if device.type == "cuda":
        runs.append(("cuda float32", "cuda", None))
    has_autocast = "autocast" in TrainConfig.__dataclass_fields__
    if has_autocast:
        runs.append((f"{device.type} bf16 autocast", device.type, "bf16"))
    out = {"autocast_available": has_autocast}
    for label, dev, autocast in runs:
        argv = ["--out", str(tmp / label.replace(" ", "-")), "--device", dev, "--d-sae", str(d_sae), "--k", str(k),
                "--max-steps", str(shapes.steps), "--epochs", "1", "--val-every", "0", "--checkpoint-every", "0",
                "--log-every", "100", "--seed", "0"] + (["--autocast", autocast] if autocast else [])
        cfg, _ = cli.parse_config(TrainConfig, "gpu check", argv=argv)
        started = time.perf_counter()
        folder = train.main(cfg, train_data=train_batches)
        seconds = time.perf_counter() - started
        out[label] = {"fvu": validation_fvu(folder, val), "seconds": round(seconds, 2)}
    reference = out["cpu float32"]["fvu"]
    for label, figures in out.items():
        if isinstance(figures, dict):
            figures["ok"] = abs(figures["fvu"] - reference) <= FVU_TOLERANCE * reference + 0.005
    out["ok"] = all(f["ok"] for f in out.values() if isinstance(f, dict))
    return out


def validation_fvu(folder: Path, val: torch.Tensor) -> float:
    """Fraction of variance unexplained by the saved SAE on held-out activations (in float32 on the CPU)."""
    sae = load_sae(folder)
    with torch.no_grad():
        x_hat = sae(val).x_hat
    return float((val - x_hat).pow(2).sum() / (val - val.mean(0)).pow(2).sum())


def time_sae_step(device: torch.device, shapes) -> dict:
    """One training step (forward, backward, Adam) of ours, of a naive dense TopK SAE, and the encoder matmul."""
    d_in, d_sae, k, batch = shapes.sae_step
    torch.manual_seed(0)
    x = synthetic_activations(d_in, batch).to(device)
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, k=k), device=device)
    objective = SAEObjective(sae, aux_gate=False, kernels=SPARSE)  # aux-k weights from the SAE's config
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def ours():
        loss = objective(x).losses.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    dense = [torch.nn.Parameter(t) for t in (sae.W_enc.detach().clone(), sae.b_enc.detach().clone(),
                                             sae.W_dec.detach().clone(), sae.b_pre.detach().clone())]
    dense_optimizer = torch.optim.Adam(dense, lr=1e-4)

    def naive():
        W_enc, b_enc, W_dec, b_pre = dense
        pre = (x - b_pre) @ W_enc + b_enc  # (batch, d_sae)
        top = pre.topk(k, dim=-1)
        latents = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        loss = (latents @ W_dec + b_pre - x).pow(2).sum(-1).mean()
        dense_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dense_optimizer.step()

    with torch.no_grad():
        matmul = timed(lambda: x @ sae.W_enc, shapes.repeats, device)
    step, naive_step = timed(ours, shapes.repeats, device), timed(naive, shapes.repeats, device)
    return {"ok": None, "shape": dict(zip(("d_in", "d_sae", "k", "batch"), shapes.sae_step)),
            "step_ms": step * 1e3, "naive_dense_step_ms": naive_step * 1e3, "encoder_matmul_ms": matmul * 1e3,
            "speedup_vs_naive": naive_step / step, "step_over_matmul": step / matmul}


def check_process_group(device: torch.device) -> dict:
    """NCCL (Gloo with --cpu) with one process: join, all_reduce, leave."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        value = torch.full((4,), 3.0, device=device)
        dist.all_reduce(value)
        return {"ok": bool((value == 3.0).all()), "backend": backend}
    finally:
        dist.destroy_process_group()


def print_table(results: dict, path: Path) -> None:
    c = results["checks"]
    cap, step, tr = c["capture"], c["sae step"], c["sae training"]

    def status(check: dict) -> str:
        return {True: "ok", False: "FAIL", None: "-"}[check.get("ok")]

    rows = [("cuda tests", status(c["cuda tests"]),
             "; ".join(f"{k}: {v['summary']}" for k, v in c["cuda tests"].items() if isinstance(v, dict))
             or c["cuda tests"].get("skipped", "")),
            ("capture bf16 vs cpu fp32", status(cap), f"rel err {cap['rel_error_bf16_vs_cpu_float32']:.4f}"
             if "rel_error_bf16_vs_cpu_float32" in cap else cap.get("error", "")),
            ("capture tok/s (x transformers)", "", f"{cap['capture_tok_s']:.0f} ({cap['capture_ratio']:.2f}x)"
             if "capture_tok_s" in cap else ""),
            ("decode tok/s (x transformers)", "", f"{cap['decode_tok_s']:.1f} ({cap['decode_ratio']:.2f}x)"
             if "decode_tok_s" in cap else ""),
            ("sae training fvu", status(tr), ", ".join(f"{k} {v['fvu']:.4f}" for k, v in tr.items()
                                                       if isinstance(v, dict) and "fvu" in v) or tr.get("error", "")),
            ("sae step ms (naive, matmul)", status(step), f"{step['step_ms']:.2f} ({step['naive_dense_step_ms']:.2f}, "
             f"{step['encoder_matmul_ms']:.2f})" if "step_ms" in step else step.get("error", "")),
            ("process group", status(c["process group"]), c["process group"].get("backend", "")
             or c["process group"].get("error", ""))]
    print(f"\ngpu check on {results['device']} ({results['shapes']} shapes); full figures: {path}")
    for name, ok, figures in rows:
        print(f"  {name:<32} {ok:<5} {figures}")


if __name__ == "__main__":
    sys.exit(main())
