"""What the latents of a sparse autoencoder mean, and how good the SAE is.

Reading order: source.py (captured activations as chunks of sentences), stats.py + topn.py +
histogram.py (the streaming statistics), collect.py (the pass, resumable), logit_lens.py, evidence.py
(statistics -> readable evidence; text.py keeps characters split across tokens whole), llm.py
(LLM clients, resumable requests), explain.py (explanations: offline, and by an LLM), heldout.py +
scoring.py (explanations scored: on held-out tokens, and by LLM detection), probes.py (label probes),
evaluate.py (FVU, CE loss recovered), report.py + pages.py (JSON files, read back by generate.py and
serve.py, and HTML pages).
interpret.py runs them in that order. judge.py + steer.py + sweep.py measure steering (generate.py --sweep).
"""
