"""Serving a trained model: the row pager, opening a checkpoint with its table, evaluation,
generation and the lm-evaluation-harness adapter.
"""
