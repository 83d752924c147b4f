"""The registry of recovery methods that :func:`steerscope.recover.trait.recover_trait` dispatches to.

A method is a function ``(inputs: TraitInputs) -> Recovery`` registered under a name with
:func:`register_recovery`; the built-in ones register themselves in their own modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from steerscope.recover.result import Recovery
from steerscope.registry import Registry


@dataclass(frozen=True)
class TraitInputs:
    """What a recovery method gets for one trait at one layer.

    ``acts``: per layer ``(pos [N, d], neg [N, d])`` activations of the pairs' completions (the
    base ``layer`` and every layer of ``maps``). ``grams``: environment → per-prompt Gram matrices
    at ``layer``. ``maps``: later layer → per-prompt maps from ``layer``. ``env_acts``: environment
    → ``(pos, neg)`` activations at ``layer`` of the pairs written in that environment.
    ``audited``: the vector the audit asks about (``[d]``; default: the mean difference), described
    by ``audited_name``. The
    remaining fields are the options of :func:`~steerscope.recover.trait.recover_trait`.
    """

    layer: int
    acts: Mapping[int, tuple[np.ndarray, np.ndarray]]
    grams: Mapping[str, Sequence[np.ndarray]] | None = None
    maps: Mapping[int, Sequence[np.ndarray]] | None = None
    n_boot: int = 30
    seed: int = 0
    tol: float = 1e-3
    n_components: int | None = None
    dictionary: str = "neurons"
    k: int = 8
    observe: str = "activations"
    env_acts: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
    audited: np.ndarray | None = None
    audited_name: str = "the mean difference of the pairs"

    @property
    def reference(self) -> np.ndarray:
        """The audited vector (``[d]``): ``audited``, or the mean difference."""
        return np.asarray(self.audited, dtype=np.float64) if self.audited is not None else self.mean_diff

    @property
    def pos(self) -> np.ndarray:
        return self.acts[self.layer][0]

    @property
    def neg(self) -> np.ndarray:
        return self.acts[self.layer][1]

    @property
    def contrasts(self) -> np.ndarray:
        """Per-pair differences ``pos − neg`` at ``layer`` (``[N, d]``)."""
        return self.pos - self.neg

    @property
    def mean_diff(self) -> np.ndarray:
        """Mean of :attr:`contrasts` (``[d]``): the reference direction."""
        return self.contrasts.mean(axis=0)

    def total_gram(self) -> np.ndarray:
        """Sum of every Gram matrix over environments and prompts (``[d, d]``)."""
        return np.sum([g for gs in (self.grams or {}).values() for g in gs], axis=0)


RecoveryMethod = Callable[[TraitInputs], Recovery]
METHODS: Registry[RecoveryMethod] = Registry("unknown recovery method {name}; available: {known}")
#: Decorator adding a recovery method under a name (replacing one registered before).
register_recovery = METHODS.register
#: The recovery method registered under a name (SteerscopeError naming the known ones otherwise).
get_recovery = METHODS.lookup
