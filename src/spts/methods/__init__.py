"""Methods: what a run compares. The unmodified model, SPTS schedules and their variants, config files, and peer
methods (:mod:`spts.methods.peers`), each a :class:`Method` named by a short spec (:func:`resolve_methods`).

The evaluation, the benchmark and the tuner all build on this room, so a method means the same thing in each.
"""

from spts.methods.method import Method
from spts.methods.specs import resolve_method, resolve_methods, scale_budgets

__all__ = ["Method", "resolve_method", "resolve_methods", "scale_budgets"]
