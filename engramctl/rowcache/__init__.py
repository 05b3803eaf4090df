"""The row cache, torch-free: the pager's slot map and cache policy, shared by the pager
(:mod:`engramctl.model.serve.paging`) and ``cache-plan``.
"""
