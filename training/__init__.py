"""What `train.py` needs besides its training loop.

- `training.config`: `TrainConfig` (every field a command-line flag) and the named presets.
- `training.distributed`: process-group setup from torchrun's environment, device and backend choice,
  all-reduce helpers that are no-ops on one process.
- `training.data`: each rank's share of the prebatched batches, epoch by epoch, in a resumable order.
- `training.objective`: the SAE and its loss as one module, so DDP sees every call.
- `training.state`: `TrainState`, the loop's checkpointed state (step, dead-latent counters, RNG states).
- `training.checkpoint`: atomic checkpoints, keep the latest few, resume from the newest complete one.
- `training.metrics`: JSONL metrics, optional Weights & Biases / TensorBoard mirrors.
- `training.curves`: a self-contained HTML page of the training curves (inline SVG).
"""
