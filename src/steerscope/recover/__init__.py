"""Structural constraints that can make a steering direction identifiable, and what each achieves.

Every method returns a :class:`Recovery`: a unit direction *and* an identifiability report — whether
the constraint pins the direction down, the dimension of what remains of the equivalence class
where that is defined, and (when requested) its stability over bootstrap resamples.

* :func:`recover_ica` — independent components of activations, matched to the trait by labels;
* :func:`recover_sparse` — sparse code over a dictionary, with coherence / Welch-bound checks;
* :func:`recover_multienv` — equivalence classes intersected across environments;
* :func:`recover_crosslayer` — directions tied together by layer-to-layer maps.

Each registers its trait-level form (:class:`TraitInputs` → :class:`Recovery`) in :data:`METHODS`
with :func:`register_recovery`; :func:`steerscope.recover.trait.recover_trait` dispatches by name.
"""

from steerscope.recover.ica import recover_ica
from steerscope.recover.sparse import recover_sparse
from steerscope.recover.multienv import recover_multienv
from steerscope.recover.crosslayer import recover_crosslayer
from steerscope.recover.registry import METHODS, TraitInputs, get_recovery, register_recovery
from steerscope.recover.result import Recovery
from steerscope.recover.stability import bootstrap_stability

__all__ = [
    "METHODS", "Recovery", "TraitInputs", "bootstrap_stability", "get_recovery", "recover_crosslayer", "recover_ica",
    "recover_multienv", "recover_sparse", "register_recovery",
]
