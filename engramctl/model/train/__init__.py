"""Training the reference model: the loop, its inputs, the trainable table rows (in memory
or out of core), periodic checkpoints, resume and held-out losses.
"""
