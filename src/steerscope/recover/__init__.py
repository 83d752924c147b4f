"""Structural constraints that can make a steering direction identifiable, and what each achieves.

Every method returns a :class:`Recovery`: a unit direction *and* an identifiability report — whether
the constraint pins the direction down, the dimension of what remains of the equivalence class
where that is defined, and (when requested) its stability over bootstrap resamples.

* :func:`recover_ica` — independent components of activations, matched to the trait by labels;
* :func:`recover_sparse` — sparse code over a dictionary, with coherence / Welch-bound checks;
* :func:`recover_multienv` — equivalence classes intersected across environments;
* :func:`recover_crosslayer` — directions tied together by layer-to-layer maps.
"""

from steerscope.recover.crosslayer import recover_crosslayer
from steerscope.recover.ica import recover_ica
from steerscope.recover.multienv import recover_multienv
from steerscope.recover.result import Recovery
from steerscope.recover.sparse import recover_sparse
from steerscope.recover.stability import bootstrap_stability

METHODS = {"ica": recover_ica, "sparse": recover_sparse, "multienv": recover_multienv, "crosslayer": recover_crosslayer}

__all__ = ["METHODS", "Recovery", "bootstrap_stability", "recover_crosslayer", "recover_ica", "recover_multienv", "recover_sparse"]
