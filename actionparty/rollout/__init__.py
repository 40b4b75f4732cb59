"""Autoregressive rollout: chunk by chunk with a KV cache, sliding window beyond the training length.

    sampler.py      rollout(): Euler steps per chunk, KV cache, state-first or joint states
    generate.py     a checkpoint -> model; test windows -> frames and predicted states
    rollout_io.py   the rollout file format (write_rollout/read_rollout), window and swap choice
    commands.py     CLI: rollout
"""
