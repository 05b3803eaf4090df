"""Training the reference model: the loop (``loop``), a run's options and result (``run``),
``engramctl train`` as one call (``start``), its inputs, the trainable table rows (one protocol,
in memory or out of core: ``rows``, ``out_of_core``), a run's checkpoints (``finish``), resume
and held-out losses.
"""
