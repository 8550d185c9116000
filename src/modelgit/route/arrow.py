"""The ``arrow`` router: data-free, from the adapters' own weights (after Arrow, Ostapenko et
al. 2024, https://arxiv.org/abs/2405.11157).

For each LoRA target layer of the first ``layers`` transformer layers, each adapter's update
``ΔW = scale·B·A`` is summarised by its top ``directions`` right singular vectors ``v_j`` and
singular values ``σ_j``, computed exactly from the rank-r factors (a QR of each factor and an
SVD of an r×r matrix; ΔW itself, out×in, is never formed). An input's token states ``h`` at
those layers (the layers' inputs, from a base forward pass that stops after the last layer
read) are scored per adapter as the share of the update that acts on them,

    fit(h) = ||ΔW ĥ|| / ||ΔW||_F = sqrt(Σ_j σ_j² (v_j·ĥ)²) / sqrt(Σ_j σ_j²)   (ĥ = h/||h||),

averaged over the text's tokens and the layers: one score per adapter and input. The input goes
to the adapter of the largest score. The scores a decision compares are relative: each
adapter's fit divided by the mean fit of all adapters, minus one, so ``confidence`` (the largest)
is 0 when no adapter stands out.

Token states are far from isotropic (a few dimensions carry most of their norm), so an adapter
whose directions happen to lie along them fits every input better than the others: on
SmolLM2-135M with 40-step LoRAs, the first 3 layers sent debian text to the python adapter
(measured: 0 of 16 debian texts reached debian; 6 layers route 47 of 48 texts right but cost
twice as much). When texts are given at build time (``--examples``; their labels are never
read: all texts are pooled, so any unlabelled sample of the inputs to expect works), each
adapter's mean relative score over them is stored as its ``offset`` and subtracted from its
scores, which removes that bias; they also calibrate the threshold. Without texts the router
stays data-free, with no offset.

Why not PEFT's ``ArrowConfig`` / ``create_arrow_model``: PEFT's Arrow routes every token in
every layer separately (a token-level mixture inside the LoRA layers), with only the top singular
vector (by power iteration), and requires every adapter to have the same rank and targets. A
router here makes one decision per input (so that the input can be served by one adapter, sent
to the base, or mixed with per-input weights, and so that ``route which`` can show it), reads
only the first layers (its cost must stay a small part of a forward pass), and works with any
mix of ranks and targets.

Tensors of ``router.safetensors``, per scored layer ``i`` (``settings.modules[i]`` names it):
``directions.i`` (adapters, directions, in) and ``sigma.i`` (adapters, directions); an adapter
without that layer has zero σ there; ``offset`` (adapters,) when calibrated on texts.
"""

from __future__ import annotations

from ..errors import UsageError
from .router import BuildRequest, Router, RouterSpec, calibrate_threshold, check_settings

__all__ = ["build", "scores", "top_directions", "DEFAULT_LAYERS"]

#: layers read by default: a tenth of the model's (at least 1): the cost stays ~10% of a forward
DEFAULT_LAYERS = 0.1
DEFAULT_TEMPERATURE = 0.02


def top_directions(a, b, scale: float, count: int):
    """The top ``count`` right singular vectors and values of ``scale·B·A``, exactly.

    Args:
        a: (r, in) LoRA A; b: (out, r) LoRA B.
    Returns:
        ``(directions (count', in), sigma (count',))`` with ``count' = min(count, r)``, in
        float32, largest first.
    """
    import torch

    a64, b64 = a.detach().double(), b.detach().double()
    q_a, r_a = torch.linalg.qr(a64.T)  # A^T = Q_a R_a: (in, r), (r, r)
    q_b, r_b = torch.linalg.qr(b64)  # B = Q_b R_b: (out, r), (r, r)
    _, s, vh = torch.linalg.svd(r_b @ r_a.T)  # ΔW = scale·Q_b (R_b R_a^T) Q_a^T
    keep = min(count, s.numel())
    directions = vh[:keep] @ q_a.T  # (keep, in): rows are right singular vectors of ΔW
    return directions.float(), (abs(scale) * s[:keep]).float()


def _layer_count(request: BuildRequest, runtime) -> int:
    total = len(runtime.layers)
    if request.layers is None:
        return max(1, round(DEFAULT_LAYERS * total))
    if not 1 <= request.layers <= total:
        raise UsageError(f"--layers {request.layers}: the base has {total} layers (use 1..{total})")
    return request.layers


def build(runtime, request: BuildRequest) -> Router:
    """A data-free router from the LoRA weights of the library's adapters (no texts needed;
    ``request.examples``, when given, calibrate each adapter's offset and the threshold; their
    labels are not used)."""
    import torch

    library = runtime.library
    depth = _layer_count(request, runtime)
    names = library.names
    tensors, modules = {}, []
    for module_name, layer, index in runtime.lora_layers():
        if not 0 <= index < depth or not any(n in layer.lora_A for n in names):
            continue
        in_features = next(layer.lora_A[n].weight.shape[1] for n in names if n in layer.lora_A)
        dirs = torch.zeros((len(names), request.directions, in_features))  # (E, d, in)
        sigma = torch.zeros((len(names), request.directions))  # (E, d)
        for e, name in enumerate(names):
            if name in layer.lora_A:
                d, s = top_directions(layer.lora_A[name].weight, layer.lora_B[name].weight,
                                      float(layer.scaling[name]), request.directions)
                dirs[e, :len(s)], sigma[e, :len(s)] = d, s
        tensors[f"directions.{len(modules)}"] = dirs.contiguous()
        tensors[f"sigma.{len(modules)}"] = sigma.contiguous()
        modules.append(module_name)
    if not modules:
        raise UsageError(f"no adapter of the library has a LoRA layer in the first {depth} "
                         "layers of the base: give --layers with more layers")
    spec = RouterSpec(kind="arrow", mode=request.mode, top_k=request.top_k, threshold=None,
                      temperature=request.temperature or DEFAULT_TEMPERATURE, embedder=None,
                      base_fingerprint=library.base_fingerprint,
                      adapters=tuple((a.name, a.adapter_id) for a in library.adapters),
                      settings={"layers": depth, "directions": request.directions,
                                "modules": modules, "route_tokens": request.route_tokens})
    check_settings(spec.mode, spec.top_k, spec.temperature, len(names))
    router = Router(spec, tensors)
    threshold = None if request.threshold == "auto" else request.threshold
    texts = [t for group in (request.examples or {}).values() for t in group]
    if texts:
        relative, _ = raw_scores(router, runtime, texts)
        tensors["offset"] = relative.mean(0).contiguous()  # (E,): each adapter's bias
        spec.settings["offset_texts"] = len(texts)
        router = Router(spec, tensors)
    adapters_texts = [t for name, group in (request.examples or {}).items() if name != "base"
                      for t in group]
    if request.threshold == "auto" and adapters_texts:
        _, confidence = raw_scores(router, runtime, adapters_texts)
        threshold = calibrate_threshold(confidence, request.calibration_quantile)
        spec.settings["calibration"] = {"quantile": request.calibration_quantile,
                                        "examples": len(adapters_texts)}
    return Router(spec.with_overrides(threshold=threshold), tensors)


def _fits(router: Router, runtime, batch):
    """(inputs, adapters) mean fit over tokens and scored layers."""
    import torch

    modules = router.spec.settings["modules"]
    layers = dict((name, module) for name, module, _ in runtime.lora_layers())
    missing = [m for m in modules if m not in layers]
    if missing:
        raise UsageError(f"the router scores layer {missing[0]!r}, which no adapter of the "
                         "library adapts: was it built for another library?")
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
    totals = torch.zeros((batch["input_ids"].shape[0], len(router.spec.adapters)))
    counts = torch.zeros(len(router.spec.adapters))

    def scorer(index):
        dirs, sigma = router.tensors[f"directions.{index}"], router.tensors[f"sigma.{index}"]
        energy = (sigma ** 2).sum(-1).clamp(min=1e-30)  # (E,)
        present = (sigma > 0).any(-1)  # (E,)

        def hook(_module, args):
            h = torch.nn.functional.normalize(args[0].float(), dim=-1)  # (b, t, in)
            proj = torch.einsum("bti,edi->bted", h, dirs)  # (b, t, E, d)
            fit = ((proj ** 2 * sigma ** 2).sum(-1) / energy).sqrt()  # (b, t, E)
            mean = (fit * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (b, E)
            totals.add_(mean * present)
            counts.add_(present.float())
        return hook

    handles = [layers[m].register_forward_pre_hook(scorer(i)) for i, m in enumerate(modules)]
    try:
        runtime.run_until(batch, int(router.spec.settings["layers"]))
    finally:
        for handle in handles:
            handle.remove()
    return totals / counts.clamp(min=1.0)


def raw_scores(router: Router, runtime, texts: list[str]):
    """(fits (inputs, adapters), confidence (inputs,)): see the module docstring."""
    import torch

    fits = []
    for start in range(0, len(texts), 16):
        batch = runtime.encode(texts[start:start + 16],
                               int(router.spec.settings.get("route_tokens", 128)), count=False).batch
        fits.append(_fits(router, runtime, batch))
    fits = torch.cat(fits) if fits else torch.zeros((0, len(router.spec.adapters)))
    relative = fits / fits.mean(1, keepdim=True).clamp(min=1e-12) - 1.0  # (b, E)
    offset = router.tensors.get("offset")
    if offset is not None:
        relative = relative - offset
    return relative, relative.max(1).values


def scores(router: Router, runtime, texts: list[str]):
    """See :mod:`.router`: per-adapter relative fit (the base column is -inf: a data-free
    router reaches the base only through its threshold)."""
    import torch

    relative, _ = raw_scores(router, runtime, texts)
    base = torch.full((relative.shape[0], 1), float("-inf"))
    return torch.cat([relative, base], dim=1)
