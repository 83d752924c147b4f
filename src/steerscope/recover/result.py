"""The common result of every recovery method."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Recovery:
    """A recovered direction and its identifiability report.

    ``direction``: unit ``[d]`` float64. ``identifiable``: True when the method's condition is
    certified, False when it provably fails (a witness or a non-trivial remaining class), None
    when the direction was recovered but uniqueness could not be certified. ``class_dim``:
    dimension of the remaining equivalence class (0 = unique up to the stated symmetry; None =
    not defined for this method/situation). ``stability``: bootstrap cosines (see
    :func:`steerscope.recover.bootstrap_stability`) or None. ``assumption``: whether the method's
    assumption holds on the data (:mod:`steerscope.recover.assumptions`); ``agreement``: the
    cosine of the direction with the audited vector and its interval; ``identifies``/``why``: whether
    the method identifies the audited vector, and which part failed (see
    :func:`~steerscope.recover.assumptions.identifies_audited`).
    """

    method: str
    direction: np.ndarray
    identifiable: bool | None
    class_dim: int | None
    reason: str
    symmetry: str = "scale"
    stability: dict | None = None
    details: dict = field(default_factory=dict)
    assumption: dict | None = None
    agreement: dict | None = None
    identifies: bool | None = None
    why: str = ""

    def to_dict(self) -> dict:
        """JSON-serialisable form (the direction as a list)."""
        return {"method": self.method, "identifiable": self.identifiable, "class_dim": self.class_dim,
                "reason": self.reason, "symmetry": self.symmetry, "stability": self.stability,
                "assumption": self.assumption, "agreement": self.agreement, "identifies": self.identifies, "why": self.why,
                "details": self.details, "direction": [float(x) for x in self.direction]}


def unit(x: np.ndarray) -> np.ndarray:
    """``x / ‖x‖`` in float64 (zero stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x)
    return x / n if n > 0 else x


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between ``a`` and ``b`` (float64), clipped to [−1, 1] against rounding (0 if either is zero)."""
    return float(np.clip(unit(a) @ unit(b), -1.0, 1.0))


def null_dim(matrix: np.ndarray, tol: float) -> tuple[int, np.ndarray, np.ndarray]:
    """``(k, eigenvalues, eigenvectors)`` of a PSD ``matrix``: k = directions with gain ≤ tol × max gain.

    Gains are square roots of eigenvalues (a Gram matrix ``JᵀJ`` has eigenvalues σ²).
    """
    lam, vecs = np.linalg.eigh(np.asarray(matrix, dtype=np.float64))
    sigma = np.sqrt(np.clip(lam, 0.0, None))
    k = int((sigma <= tol * sigma.max()).sum()) if sigma.max() > 0 else len(sigma)
    return k, lam, vecs
