"""Merging a LoRA adapter into a deployable 16-bit model, verified.

``plan`` (files only: what will happen, refusals), ``core`` (the merge), ``verify`` + ``probe``
(proof), ``pipeline`` (temp dir -> verify -> medtui.json -> rename), ``job`` (the detached process),
``events`` (its events and reducer), ``serve`` (the vLLM command), ``gguf_export`` (GGUF files and an Ollama Modelfile). Nothing heavy at import time.
"""
