"""Autoregressive rollout: chunk by chunk with a KV cache, sliding window beyond the training length."""
