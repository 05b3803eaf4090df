"""Table rows as torch tensors, without a copy: :func:`to_torch`.

A table's :meth:`~engramctl.table.Table.gather` gives rows in their raw storage dtype (numpy);
this views them as torch tensors for a model that reads them directly (torch lives in
``model/``; the table stays torch-free).
"""

from __future__ import annotations

import numpy as np
import torch

from ..table.core.dtypes import parse_dtype


def to_torch(raw: np.ndarray, dtype: str, dim: int):
    """View gathered rows as torch tensors without copying.

    Returns one tensor ``[n, dim]`` of ``torch.float32``/``float16``/``bfloat16``, or for
    float8_e4m3fn a pair ``(values [n, dim] torch.float8_e4m3fn, scales [n, dim/32] uint8)``,
    both views into ``raw`` (strided: a row's values and scales sit side by side).
    """
    dtype = parse_dtype(dtype)
    tensor = torch.from_numpy(np.asarray(raw))
    if dtype == "bfloat16":
        return tensor.view(torch.bfloat16)
    if dtype == "float8_e4m3fn":
        return tensor[:, :dim].view(torch.float8_e4m3fn), tensor[:, dim:]
    return tensor
