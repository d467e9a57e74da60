"""Text in, activations out: corpus readers, sentence splitting, activation shards, prebatching.

Reading order:
- `data.text`: documents from text, JSONL, CSV, Parquet files or folders, with labels and metadata.
- `data.sentences`: Punkt sentence splitting trained on the corpus itself.
- `data.prepare`: sentences to capped token records (`sentences.jsonl`), BOS and chat prefixes.
- `data.chunks`: fixed chunks of records, length-sorted padded batches, running a chunk through the model.
- `data.shards`: the captured-activation format: background writer and `CapturedDataset` reader.
- `data.manifest`: committed shards across hook folders and ranks (resuming).
- `data.shuffle` + `data.running_stats`: shuffled fixed-size batches and Welford statistics in one pass
  (its command line is the top-level `prebatch.py`).
- `data.batches`: the prebatched format and its reader, `BatchDataset`.
- `data.fileio`: JSON reads, raw appends, sampled checksums, one-line folder and disk-full errors
  (every write goes through the atomic writer, `atomic.py`).
"""
