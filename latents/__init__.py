"""What the latents of a sparse autoencoder mean, and how good the SAE is.

Reading order: source.py (captured activations as chunks of sentences), stats.py + topn.py +
histogram.py (the streaming statistics), collect.py (the pass, resumable), logit_lens.py, evidence.py
(statistics -> readable evidence; text.py keeps characters split across tokens whole), explain.py
(offline explanations), prompts.py + llm.py + autointerp.py (LLM explanations), scoring.py (detection
scores), heldout.py + explanation_score.py + probes.py (explanations scored on held-out tokens, label
probes), evaluate.py (FVU, CE loss recovered), report.py + pages.py (JSON files and HTML pages).
interpret.py runs them in that order. judge.py + steer.py + sweep.py measure steering (generate.py --sweep).
"""
