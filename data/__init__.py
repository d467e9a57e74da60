"""Text in, activations out: corpus readers, sentence splitting, activation shards, prebatching.

- `data.text`: read documents (text, JSONL, CSV, Parquet, folders) with their metadata.
- `data.sentences`: Punkt sentence splitting trained on the corpus itself.
- `data.shards`: the captured-activation format (writer on a background thread, reader).
- `data.prebatch`: shuffled fixed-size training batches plus Welford statistics.
- `data.batches`: the prebatched format and its reader, `BatchDataset`.
"""
