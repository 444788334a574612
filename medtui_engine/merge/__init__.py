"""Merging a LoRA adapter into a deployable 16-bit model, verified.

``plan`` (files only: what will happen, refusals), ``core`` (the merge), ``verify`` + ``probe``
(proof), ``pipeline`` (temp dir -> verify -> medtui.json -> rename), ``job`` (the detached process),
``events`` (its events and reducer), ``serve`` (vLLM command, GGUF). Nothing heavy at import time.
"""
