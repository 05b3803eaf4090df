"""Interchange formats: safetensors import and export, DeepSeek checkpoint import (copy or
link) and export, and the checks of a linked table's shard files; ``registry`` names each
format once (what the CLI's ``import`` and ``export`` dispatch through).
"""
