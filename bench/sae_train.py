"""Training-step throughput of our TopK SAE against SAELens and a naive dense PyTorch SAE, in one run.

    python bench/sae_train.py                      # d_in 576, d_sae 16384, k 32, batch 4096, fp32
    python bench/sae_train.py --rounds 3 --rss false
    python bench/sae_train.py --d-in 4096 --d-sae 65536 --k 64 --batch 1024 --warmup 1 --rounds 2 \
        --contenders ours ours-bf16 saelens matmul     # a seed-sized SAE (about 8 GiB per contender)
    python bench/sae_train.py --phases             # where ours' step goes, phase by phase, against the matmul

Targets: ours at least 3x SAELens' default (`saelens`), a step of ours at most 1.5x the encoder matmul,
and the prebatched reader (`data.batches.BatchDataset` over a folder this script writes, read cold and
warm from the page cache) faster in MB/s than the trainer consumes activations.

A step is what a trainer does per batch: forward, loss, backward, gradient clipping (norm 1), the Adam
step, and the decoder upkeep each design needs. The contenders run round-robin, one step each per round,
so a busy machine slows them alike; the reported figure is the median step. Also timed in the same
rounds: one encoder matmul [batch x d_in] @ [d_in x d_sae], the floor of a step. Peak RSS is measured
per contender in a fresh subprocess (`--only NAME`), since a process's peak only grows.

Contenders:
  ours             SparseAutoencoder with the sparse kernels, sae_loss, fused Adam, decoder projection
                   and renormalisation
  ours-eager       the same through the SAE's plain eager formula (sae.sparse.EAGER) and default Adam
  ours-bf16        ours as `train.py --autocast bf16` runs it: the forward under torch.autocast(bfloat16),
                   float32 weights and Adam states; the eager path, since torch's sparse CSR products
                   take float32/float64 only on a CPU (a default contender only where the CPU has bf16
                   instructions)
  saelens          SAELens TopKTrainingSAE, default config, its training_forward_pass + the steps of
                   its SAETrainer._train_step (firing statistics, backward, clip, Adam, zero_grad)
  saelens-sparse   the same with use_sparse_activations=True and rescale_acts_by_decoder_norm=False
                   (its fastest TopK configuration; sparse activations fail in backward with rescaling)
  naive            a dense PyTorch TopK SAE: scatter the k values into (B, d_sae), dense decode, Adam
  matmul           the encoder matmul alone (the floor)
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import cli  # noqa: E402
from data.batches import BatchDataset, ChunkWriter, write_meta, write_remainder  # noqa: E402
from llama.cpu_16bit import cpu_emulates  # noqa: E402
from sae import SAEConfig, SparseAutoencoder  # noqa: E402
from sae.loss import sae_loss  # noqa: E402
from sae.sparse import EAGER, kernels_for  # noqa: E402
from training.allocator import keep_freed_memory  # noqa: E402

CONTENDERS = ("ours", "ours-eager", "ours-bf16", "saelens", "saelens-sparse", "naive", "matmul")


@dataclass
class BenchConfig:
    d_in: int = field(default=576, metadata={"help": "input width (SmolLM2-135M's residual stream)"})
    d_sae: int = field(default=16384, metadata={"help": "number of latents"})
    k: int = field(default=32, metadata={"help": "active latents per row"})
    batch: int = field(default=4096, metadata={"help": "rows per training step"})
    warmup: int = field(default=2, metadata={"help": "untimed steps per contender"})
    rounds: int = field(default=8, metadata={"help": "timed steps per contender (round-robin)"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    contenders: list[str] = field(default_factory=lambda: default_contenders(),
                                  metadata={"help": "which to run", "choices": list(CONTENDERS)})
    rss: bool = field(default=True, metadata={"help": "also measure each contender's peak RSS in a subprocess"})
    separate: bool = field(default=False, metadata={"help": "time each contender alone in its own process, one "
                                                            "after another (shapes too big to hold them all)"})
    only: str = field(default="", metadata={"help": "internal: run one contender and print its peak RSS",
                                            "choices": ["", *CONTENDERS]})
    reader_batches: int = field(default=8, metadata={"help": "batches the reader benchmark writes and reads "
                                                             "(0: skip it)"})
    output: str = field(default="", metadata={"help": "also write the results as JSON to this file"})
    phases: bool = field(default=False, metadata={"help": "instead: time each phase of ours' step against the "
                                                          "encoder matmul, round-robin"})
    keep_freed_memory: bool = field(default=True, metadata={
        "help": "glibc keeps freed large blocks for reuse, as train.py sets on a CPU (training/allocator.py); "
                "process-wide, so every contender and the matmul get it"})


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (the project's one probe); where torch emulates bf16
    matmuls, ours-bf16 is left out of the default contenders."""
    return not cpu_emulates(torch.bfloat16)


def default_contenders() -> list[str]:
    return [c for c in CONTENDERS if c != "ours-bf16" or native_bf16()]


def clip(params: list[torch.Tensor]) -> None:
    torch.nn.utils.clip_grad_norm_(params, 1.0)


def make_ours(cfg: BenchConfig, eager: bool, bf16: bool = False,
              mark: Callable[[str], None] = lambda phase: None) -> Callable[[torch.Tensor], None]:
    """ours' step; `mark(phase)` is called as each phase ends (`--phases`)."""
    sae = SparseAutoencoder(SAEConfig(d_in=cfg.d_in, d_sae=cfg.d_sae, k=cfg.k, normalization="none"))
    kernels = EAGER if eager else kernels_for(sae, autocast=bf16)
    params = list(sae.parameters())
    # fused Adam: one kernel over all 19M parameters instead of ~10 passes (CPU and CUDA, torch >= 2.4)
    opt = torch.optim.Adam(params, lr=1e-4, fused=not eager)

    def step(x: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sae_loss(sae, x, kernels=kernels).loss
        mark("forward and loss")
        loss.backward()
        mark("backward")
        sae.project_decoder_grads()
        mark("decoder gradient projection")
        clip(params)
        mark("gradient clipping")
        opt.step()
        mark("Adam")
        opt.zero_grad(set_to_none=True)
        mark("zero_grad (frees the gradients)")
        sae.set_decoder_norm_to_unit_norm()
        mark("decoder renormalisation")
    return step


def make_saelens(cfg: BenchConfig, sparse_acts: bool) -> Callable[[torch.Tensor], None]:
    # sae-lens is an optional contender: imported only when it runs
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    # Its sparse activations fail in backward with the default rescale_acts_by_decoder_norm=True
    # (aten::view on a sparse tensor, sae-lens 6.54), so the fastest working configuration turns it off.
    extra = {"use_sparse_activations": True, "rescale_acts_by_decoder_norm": False} if sparse_acts else {}
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=cfg.d_in, d_sae=cfg.d_sae, k=cfg.k, dtype="float32",
                                                device="cpu", **extra))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.9, 0.999))  # as SAETrainer builds it
    params = list(sae.parameters())
    dead = torch.zeros(cfg.d_sae, dtype=torch.bool)
    since_fired = torch.zeros(cfg.d_sae)

    def step(x: torch.Tensor) -> None:  # SAETrainer._train_step, minus logging and schedulers
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead,
                                                       n_training_steps=0, is_logging_step=False))
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            did_fire = did_fire.to_dense() if did_fire.is_sparse else did_fire
            since_fired.add_(1)[did_fire] = 0
        out.loss.backward()
        clip(params)
        opt.step()
        opt.zero_grad()
    return step


def make_naive(cfg: BenchConfig) -> Callable[[torch.Tensor], None]:
    W_enc = torch.nn.Parameter(torch.randn(cfg.d_in, cfg.d_sae) / cfg.d_in ** 0.5)
    W_dec = torch.nn.Parameter(W_enc.detach().t().clone())
    b_enc, b_pre = torch.nn.Parameter(torch.zeros(cfg.d_sae)), torch.nn.Parameter(torch.zeros(cfg.d_in))
    params = [W_enc, b_enc, W_dec, b_pre]
    opt = torch.optim.Adam(params, lr=1e-4)

    def step(x: torch.Tensor) -> None:
        pre = (x - b_pre) @ W_enc + b_enc
        top = pre.topk(cfg.k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())  # dense (B, d_sae)
        loss = (acts @ W_dec + b_pre - x).pow(2).mean()
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        clip(params)
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
    return step


def make_matmul(cfg: BenchConfig) -> Callable[[torch.Tensor], None]:
    W_enc = torch.randn(cfg.d_in, cfg.d_sae)
    return lambda x: x @ W_enc


def make(name: str, cfg: BenchConfig) -> Callable[[torch.Tensor], None]:
    if name.startswith("ours"):
        return make_ours(cfg, eager=name == "ours-eager", bf16=name == "ours-bf16")
    if name.startswith("saelens"):
        return make_saelens(cfg, sparse_acts=name == "saelens-sparse")
    return make_naive(cfg) if name == "naive" else make_matmul(cfg)


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space, so unlike ru_maxrss it
    does not carry over the peak of the parent that forked this process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_alone(name: str, cfg: BenchConfig, rounds: int) -> dict:
    """Run one contender in a fresh process: its `warmup` untimed and `rounds` timed steps, and its peak RSS."""
    cmd = [sys.executable, __file__, "--only", name, "--d-in", str(cfg.d_in), "--d-sae", str(cfg.d_sae),
           "--k", str(cfg.k), "--batch", str(cfg.batch), "--warmup", str(cfg.warmup), "--rounds", str(rounds),
           "--threads", str(cfg.threads), "--keep-freed-memory", str(cfg.keep_freed_memory).lower()]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_separately(cfg: BenchConfig) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Contenders one after another, each in its own process (for shapes where they do not fit in memory
    together); less fair than round-robin on a busy machine."""
    times, rss = {}, {}
    for name in cfg.contenders:
        try:
            result = run_alone(name, cfg, cfg.rounds)
        except subprocess.CalledProcessError as err:  # killed for memory, most likely
            print(f"{name}: failed with exit code {err.returncode} (out of memory?)", file=sys.stderr, flush=True)
            continue
        times[name], rss[name] = result["steps_s"], result["peak_rss_mib"]
        print(f"{name}: steps {', '.join(f'{t:.2f}s' for t in times[name])}, peak RSS {rss[name]:.0f} MiB",
              file=sys.stderr, flush=True)
    return times, rss


def run_rounds(cfg: BenchConfig, steps: dict[str, Callable], x: torch.Tensor,
               quiet: bool = False) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    for name, step in steps.items():
        for _ in range(cfg.warmup):
            step(x)
    for r in range(cfg.rounds):
        for name, step in steps.items():
            gc.collect()
            start = time.perf_counter()
            step(x)
            times[name].append(time.perf_counter() - start)
        if not quiet:
            print(f"round {r + 1}/{cfg.rounds}: " + "  ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()),
                  file=sys.stderr, flush=True)
    return times


def report(cfg: BenchConfig, times: dict[str, list[float]], rss: dict[str, float]) -> dict:
    med = {name: statistics.median(t) for name, t in times.items()}
    rate = {name: cfg.batch / m for name, m in med.items()}
    print(f"\nd_in {cfg.d_in}, d_sae {cfg.d_sae}, k {cfg.k}, batch {cfg.batch}, fp32, "
          f"{torch.get_num_threads()} threads, median of {cfg.rounds} steps")
    print(f"{'contender':16s} {'step s':>8s} {'act/s':>9s} {'min s':>7s} {'peak RSS MiB':>13s}")
    for name in times:
        print(f"{name:16s} {med[name]:8.3f} {rate[name]:9.0f} {min(times[name]):7.3f} "
              f"{rss.get(name, float('nan')):13.0f}")
    if "ours" in rate:
        print()
        for other in ("saelens", "saelens-sparse", "naive", "ours-eager", "ours-bf16"):
            if other in rate:
                target = "  (target >= 3)" if other == "saelens" else ""
                print(f"ours / {other:15s} {rate['ours'] / rate[other]:6.2f}x{target}")
        if "matmul" in med:
            print(f"ours step / encoder matmul {med['ours'] / med['matmul']:6.2f}x  (target <= 1.5)")
    ratios = matmul_ratios(times)
    if ratios:
        print(f"ours step / encoder matmul of the same round: median {statistics.median(ratios):.2f}x, "
              f"range {min(ratios):.2f}x-{max(ratios):.2f}x over {len(ratios)} rounds")
    return {"config": vars(cfg), "median_step_s": med, "activations_per_s": rate, "steps_s": times,
            "peak_rss_mib": rss, "threads": torch.get_num_threads(), "ours_over_matmul_per_round": ratios}


def matmul_ratios(times: dict[str, list[float]]) -> list[float]:
    """ours / matmul round by round: the two ran back to back, so a load that comes and goes on a shared
    machine slows both (empty when either is missing)."""
    if "ours" not in times or "matmul" not in times:
        return []
    return [ours / matmul for ours, matmul in zip(times["ours"], times["matmul"])]


def time_phases(cfg: BenchConfig, x: torch.Tensor) -> dict[str, list[float]]:
    """Seconds of each phase of ours' step and of the encoder matmul, `rounds` times after `warmup` steps."""
    times: dict[str, list[float]] = {"encoder matmul": []}
    clock = [0.0]

    def mark(phase: str) -> None:
        now = time.perf_counter()
        times.setdefault(phase, []).append(now - clock[0])
        clock[0] = now
    step, matmul = make_ours(cfg, eager=False, mark=mark), make_matmul(cfg)
    for r in range(cfg.warmup + cfg.rounds):
        if r == cfg.warmup:
            times = {"encoder matmul": []}
        gc.collect()
        start = time.perf_counter()
        matmul(x)
        times["encoder matmul"].append(time.perf_counter() - start)
        clock[0] = time.perf_counter()
        step(x)
    return times


def report_phases(cfg: BenchConfig, times: dict[str, list[float]]) -> None:
    floor = statistics.median(times["encoder matmul"])
    print(f"d_in {cfg.d_in}, d_sae {cfg.d_sae}, k {cfg.k}, batch {cfg.batch}, fp32, {torch.get_num_threads()} "
          f"threads, {torch.backends.cpu.get_cpu_capability()}, median of {cfg.rounds} rounds")
    for phase, seconds in times.items():
        print(f"{phase:32s} {statistics.median(seconds):8.3f} s {statistics.median(seconds) / floor:6.2f}x")
    total = sum(statistics.median(s) for phase, s in times.items() if phase != "encoder matmul")
    print(f"{'ours step (sum of the phases)':32s} {total:8.3f} s {total / floor:6.2f}x")


def write_batches(folder: Path, cfg: BenchConfig) -> None:
    """A batches folder in `data.batches`' format: `reader_batches` random (batch, d_in) training batches."""
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", cfg.reader_batches), ("val", 0)):
        writer = ChunkWriter(folder, split, batch_size=cfg.batch, d_model=cfg.d_in, batches_per_file=4)
        for _ in range(n):
            writer.write(rng.standard_normal((cfg.batch, cfg.d_in), dtype=np.float32))
        files[split] = writer.close()
    remainders = {s: write_remainder(folder, s, np.zeros((0, cfg.d_in), np.float32)) for s in ("train", "val")}
    stats = {"count": 1, "mean": [0.0] * cfg.d_in, "var": [1.0] * cfg.d_in, "mean_sq_norm": float(cfg.d_in)}
    write_meta(folder, {"batch_size": cfg.batch, "d_model": cfg.d_in, "hook": "", "model": "", "files": files,
                        "n_train": cfg.reader_batches, "n_val": 0, "remainders": remainders},
               {s: stats for s in ("train", "val", "all")})


def reader_rates(cfg: BenchConfig) -> dict[str, float]:
    """MB/s of `BatchDataset` reading every batch of a folder it has never read, from disk (the files
    dropped from the page cache first) and again from the page cache."""
    with tempfile.TemporaryDirectory(prefix="sae-train-bench-") as tmp:
        write_batches(Path(tmp), cfg)
        for path in Path(tmp).glob("train-*.bin"):
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages leave the cache
            os.close(fd)
        rates = {}
        for label in ("cold", "warm"):
            data = BatchDataset(tmp, "train")
            start = time.perf_counter()
            nbytes = sum(data[i].numel() * 4 for i in range(len(data)))
            rates[label] = nbytes / 1e6 / (time.perf_counter() - start)
    return rates


def report_reader(cfg: BenchConfig, rates: dict[str, float], med: dict[str, float]) -> None:
    trained = {name: cfg.batch * cfg.d_in * 4 / 1e6 / med[name] for name in med if name.startswith("ours")}
    print(f"\nprebatched reader at d_in {cfg.d_in}: {rates['cold']:.0f} MB/s from disk, "
          f"{rates['warm']:.0f} MB/s from the page cache")
    for name, rate in trained.items():
        print(f"{name} trains on {rate:.1f} MB/s: reader (disk) / trainer {rates['cold'] / rate:.0f}x  "
              f"(target >= 1)")


def main() -> None:
    cfg, _ = cli.parse_config(BenchConfig, __doc__.split("\n\n")[0])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    torch.manual_seed(0)
    x = torch.randn(cfg.batch, cfg.d_in)
    if cfg.phases:
        report_phases(cfg, time_phases(cfg, x))
        return
    if cfg.only:
        times = run_rounds(cfg, {cfg.only: make(cfg.only, cfg)}, x, quiet=True)
        print(json.dumps({"steps_s": times[cfg.only], "peak_rss_mib": peak_rss_mib()}))
        return
    if cfg.separate:
        times, rss = run_separately(cfg)
    else:
        rss = {name: run_alone(name, cfg, 1)["peak_rss_mib"] for name in cfg.contenders} if cfg.rss else {}
        times = run_rounds(cfg, {name: make(name, cfg) for name in cfg.contenders}, x)
    results = report(cfg, times, rss)
    if cfg.reader_batches:
        results["reader_mb_s"] = reader_rates(cfg)
        report_reader(cfg, results["reader_mb_s"], results["median_step_s"])
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    cli.run_main(main)
