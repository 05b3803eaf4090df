"""Serving a trained model: the row pager, opening a checkpoint with its table, evaluation
(``engramctl eval`` as one call: ``eval_run``), generation and the lm-evaluation-harness adapter.
"""
