"""Steering-vector extraction from contrastive activations, with a registry of methods.

A method is a function ``(pos, neg) -> v`` with ``pos``, ``neg``: ``[N, d]`` float tensors of
paired activations (row i of each comes from pair i) and ``v``: ``[d]``. Built-in methods return
vectors in activation units: a unit direction scaled by the mean difference's projection onto it,
so ``α = 1`` moves the mean negative state to the mean positive state along the direction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from steerscope.capture import capture
from steerscope.data.pairs import ContrastivePair, dataset_hash
from steerscope.errors import SteerscopeError
from steerscope.models.loading import LoadedModel
from steerscope.registry import Registry

Method = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS: Registry[Method] = Registry("unknown extraction method {name}; available: {known}")
#: Decorator adding an extraction method under a name (replacing one registered before).
register_method = METHODS.register


def _scaled(direction: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Unit ``direction`` oriented and scaled by the mean difference's projection onto it."""
    unit = direction / direction.norm()
    return unit * torch.dot((pos - neg).mean(dim=0), unit)


@register_method("mean_diff")
def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean of the paired differences ``pos_i − neg_i``."""
    return (pos - neg).mean(dim=0)


@register_method("pca")
def pca(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal direction of the paired differences (uncentred: the top right-singular
    vector of the difference matrix), sign aligned with the mean difference."""
    diffs = (pos - neg).double()
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    return _scaled(vh[0].float(), pos, neg)


@register_method("probe")
def probe(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Weight vector of an L2 logistic-regression probe separating positive from negative states
    (features standardised for fitting, weights mapped back to activation space)."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([pos, neg]).double().numpy()
    y = [1] * len(pos) + [0] * len(neg)
    scale = x.std(axis=0) + 1e-8
    clf = LogisticRegression(C=1.0, max_iter=2000).fit((x - x.mean(axis=0)) / scale, y)
    weights = torch.from_numpy(clf.coef_[0] / scale).float()
    return _scaled(weights, pos, neg)


def get_method(name: str) -> Method:
    return METHODS.lookup(name)


def extract(
    lm: LoadedModel,
    pairs: Sequence[ContrastivePair],
    layers: Sequence[int],
    method: str = "mean_diff",
    position: Literal["last", "mean"] = "mean",
    batch_size: int = 16,
    trait: str | None = None,
    progress: bool = False,
):
    """Extract a :class:`steerscope.vectors.SteeringVector` at ``layers`` from contrastive pairs.

    Activations are read at each item's completion span (``position="mean"``: mean over it;
    ``"last"``: its last token) in one batched pass over all layers. The mean residual norm at each
    layer is recorded (``h_norms``) so that strengths can be reported as relative doses.
    """
    from steerscope.vectors.file import SteeringVector, vector_metadata

    if len(pairs) < 2:
        raise SteerscopeError(f"extraction needs at least 2 contrastive pairs, got {len(pairs)}")
    fn = get_method(method)
    layer_ids = sorted({lm.check_layer(layer) for layer in layers})
    items = [p.positive for p in pairs] + [p.negative for p in pairs]
    norms: dict[int, float] = {}
    acts = capture(lm, items, layer_ids, position=position, batch_size=batch_size, progress=progress, norms_out=norms)
    n = len(pairs)
    directions = {}
    for layer in layer_ids:
        vec = fn(acts[layer][:n].float(), acts[layer][n:].float()).float()
        if vec.shape != (lm.d_model,) or not torch.isfinite(vec).all():
            raise SteerscopeError(f"method {method!r} returned an invalid vector at layer {layer}")
        directions[layer] = vec
    meta = vector_metadata(
        lm, method=method, layers=layer_ids, dataset_hash=dataset_hash(pairs), trait=trait or _common_trait(pairs),
        position=position, h_norms=norms, n_pairs=n,
    )
    return SteeringVector(directions, meta)


def _common_trait(pairs: Sequence[ContrastivePair]) -> str:
    traits = {p.trait for p in pairs if p.trait}
    return traits.pop() if len(traits) == 1 else ""
