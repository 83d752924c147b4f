"""Which components of a loaded model break the hypotheses of the non-surjectivity theorems?

The theorems of arXiv 2604.09839 (and the injectivity results of arXiv 2510.15511 they build on)
need every component to be real-analytic (no ReLU, no hard top-k routing), real-valued weights
with a density for the "almost surely over θ" statements (quantised weights lie on a finite grid),
and exact arithmetic. Each check returns ``{"component", "breaks", "detail"}``.
"""

from __future__ import annotations

from torch import nn

from steerscope.models.builtin import BUILTIN_MODELS
from steerscope.models.loading import LoadedModel

_NON_ANALYTIC = {"relu", "relu2", "relu6", "leaky_relu", "hardtanh", "hardswish", "hardsigmoid"}
_ACT_KEYS = ("hidden_act", "hidden_activation", "activation_function", "hidden_activation_fn")
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _config_value(config: object, keys: tuple[str, ...]) -> object:
    return next((getattr(config, k) for k in keys if getattr(config, k, None) is not None), None)


def check_assumptions(lm: LoadedModel) -> list[dict]:
    """Activation functions, ReLU modules, quantised weights, MoE routing and arithmetic of ``lm``."""
    config = getattr(lm.model, "config", None)
    act = _config_value(config, _ACT_KEYS)
    relu_modules = sorted({type(m).__name__ for m in lm.model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh))})
    act_breaks = (str(act).lower() in _NON_ANALYTIC) or bool(relu_modules)
    checks = [{
        "component": "activation", "breaks": act_breaks,
        "detail": f"config activation {act!r}" + (f"; modules {', '.join(relu_modules)}" if relu_modules else "")
                  + ("" if act_breaks else " (real-analytic)"),
    }]
    quant = getattr(config, "quantization_config", None)
    non_float = sorted({str(p.dtype) for p in lm.model.parameters() if not p.dtype.is_floating_point})
    gguf = lm.name in BUILTIN_MODELS or str(lm.source).endswith(".gguf")
    detail = []
    if quant is not None:
        detail.append(f"quantization_config {type(quant).__name__ if not isinstance(quant, dict) else quant.get('quant_method')}")
    if non_float:
        detail.append(f"non-float parameters ({', '.join(non_float)})")
    if gguf:
        detail.append("weights dequantised from a quantised GGUF file: the quantised tensors lie on a finite grid, so statements "
                      "'almost surely over θ' (Thm 4.4, 4.5) do not formally apply; Thm 4.2 (over a random v) still does")
    checks.append({"component": "quantised weights", "breaks": bool(detail), "detail": "; ".join(detail) or "float weights"})
    experts = _config_value(config, _MOE_KEYS)
    top_k = _config_value(config, ("num_experts_per_tok", "moe_top_k"))
    moe = isinstance(experts, int) and experts > 1
    checks.append({"component": "top-k routing (MoE)", "breaks": moe,
                   "detail": f"{experts} experts, top-{top_k} routing" if moe else "dense (no routing)"})
    checks.append({"component": "arithmetic", "breaks": True,
                   "detail": f"{str(lm.dtype).removeprefix('torch.')} floating point, not exact arithmetic: distances below the "
                             "calibrated noise floor are indistinguishable from zero"})
    return checks
