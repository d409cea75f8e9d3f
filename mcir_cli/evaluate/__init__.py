"""Scoring models, restored folders or the bicubic baseline on benchmark folders
(`benchmarks`); several checkpoints with one set of conventions (`checkpoints`)."""
