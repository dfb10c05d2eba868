"""Moondream's text decoder: dense / MoE blocks, the KV cache pytree, jitted prefill and decode, sampling."""
