"""Kiln's schedules for NVIDIA GPUs (beside DLight's rules, which schedule the rest)."""
