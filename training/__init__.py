"""What `train.py` needs besides its training loop.

- `training.config`: `TrainConfig` (every field a command-line flag) and the named presets.
- `training.distributed`: all-reduce and broadcast helpers that are no-ops on one process (the process
  group itself is joined by `startup.init_distributed`).
- `training.data`: each rank's share of the prebatched batches, epoch by epoch, in a resumable order,
  and the data's identity (fingerprint, d_in, batch size, count) that a checkpoint records.
- `training.objective`: the SAE and its loss as one module, so DDP sees every call.
- `training.step`: `Trainer`, `get_lr` and `train_step`, one optimiser step in nanoGPT's order.
- `training.allocator`: on a CPU, glibc keeps freed large blocks, so each step reuses the last one's pages.
- `training.precision`: the --autocast region and fp16's loss scaler.
- `training.nonfinite`: stopping on a NaN/Inf loss or gradient, with the reason.
- `training.state`: `TrainState`, the loop's checkpointed state (step, dead-latent counters, RNG states).
- `training.checkpoint`: atomic checkpoints, keep the newest few that load, resume from the newest one
  that loads.
- `training.metrics`: JSONL metrics, optional Weights & Biases / TensorBoard mirrors.
- `training.curves`: a self-contained HTML page of the training curves (inline SVG).
"""
