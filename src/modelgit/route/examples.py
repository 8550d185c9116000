"""The ``examples`` router: a few texts per adapter, embedded (see :mod:`.embed`); an input goes
to the adapter whose examples it is closest to (cosine), by nearest centroid or k nearest
neighbours, or to the class a linear probe fit on the examples gives the highest probability
(``linear``: multinomial logistic regression, see :mod:`.probe`).

Embeddings are centred on the mean of all examples before the cosine: hidden states of a
language model share a large common direction (every text looks alike to a raw cosine), and
removing it leaves what tells domains apart. Examples of a class named ``base`` (texts no
adapter should take) send similar inputs to the base model.

The threshold under which an input goes to the base is calibrated on the examples themselves:
each example's confidence is computed leaving it out (its class centroid or neighbours without
it), and the threshold is a low quantile of those confidences (default 5%), so that inputs less
like any adapter's examples than nearly all of them are left to the base.

``linear`` scores are log-probabilities (a target's is the log of its classes' summed
probability; soft weights at the default temperature 1 are the probe's probabilities of the
top-k, renormalised), and ``auto`` gives it no threshold: a probe's low probability marks an
input *between* adapters (a shell script full of usage text, between shell and manpages: soft
routing mixes the two), not one outside all of them, which the probe cannot tell without having
seen such texts. Examples of the class ``base`` teach it what the base should take; a number
sets a threshold (a log-probability). Measured on SmolLM2's layer-1 states, a 5% quantile of the
examples' cross-validated confidences sent 4-17% of held-out in-domain texts to the base. The
router records the probe's 5-fold cross-validated accuracy on the examples
(``settings.cross_validation``): how well they separate.

Tensors of ``router.safetensors``: ``center`` (dim,), and ``centroids`` (classes, dim) or
``examples`` (n, dim) with ``example_class`` (n,) int64, or (``linear``) ``scale`` (dim,),
``weight`` (classes, dim) and ``bias`` (classes,).
"""

from __future__ import annotations

from ..errors import UsageError
from .embed import DEFAULT_EMBEDDER, embed, parse_embedder
from .library import BASE
from .probe import DEFAULT_L2, FOLDS, cross_validated_log_probs, fit_probe, probe_log_probs
from .router import BuildRequest, Router, RouterSpec, calibrate_threshold, check_settings

__all__ = ["build", "scores", "build_classes", "class_similarity", "METHODS"]

METHODS = ("centroid", "knn", "linear")
#: softmax temperature of soft routing over cosine similarities
DEFAULT_TEMPERATURE = 0.05
#: ... and over the linear probe's log-probabilities (1: the probe's own probabilities)
LINEAR_TEMPERATURE = 1.0
MIN_EXAMPLES = 2


def _normalize(vectors, center):
    import torch

    return torch.nn.functional.normalize(vectors - center, dim=-1)


def build_classes(runtime, classes: dict[str, list[str]], targets: dict[str, str],
                  request: BuildRequest, kind: str) -> Router:
    """A router over ``classes`` (name -> example texts), each sending its inputs to
    ``targets[name]`` (an adapter name or ``base``)."""
    import torch

    if request.method not in METHODS:
        raise UsageError(f"unknown method {str(request.method)[:20]!r}: use centroid, knn or "
                         "linear")
    embedder = request.embedder or DEFAULT_EMBEDDER
    parse_embedder(embedder)
    names = list(classes)
    thin = [n for n in names if len(classes[n]) < MIN_EXAMPLES]
    if thin:
        raise UsageError(f"class(es) {', '.join(thin)} have fewer than {MIN_EXAMPLES} example "
                         "texts: give a few (5-50) per adapter")
    texts = [t for n in names for t in classes[n]]
    labels = torch.tensor([i for i, n in enumerate(names) for _ in classes[n]])  # (n,)
    vectors = embed(embedder, runtime, texts, request.route_tokens)  # (n, dim)
    center = vectors.mean(0)  # (dim,)
    unit = _normalize(vectors, center)
    tensors = {"center": center.contiguous()}
    settings = {"method": request.method, "k": request.k, "route_tokens": request.route_tokens}
    if request.method == "centroid":
        tensors["centroids"] = torch.stack([unit[labels == i].mean(0) for i in range(len(names))])
    elif request.method == "knn":
        tensors.update(examples=unit.contiguous(), example_class=labels.to(torch.int64))
    else:
        settings["l2"] = _l2(request.l2)
        tensors = fit_probe(vectors, labels, len(names), settings["l2"])
    default_temperature = LINEAR_TEMPERATURE if request.method == "linear" else DEFAULT_TEMPERATURE
    spec = RouterSpec(kind=kind, mode=request.mode, top_k=request.top_k, threshold=None,
                      temperature=request.temperature or default_temperature, embedder=embedder,
                      base_fingerprint=runtime.library.base_fingerprint,
                      adapters=tuple((a.name, a.adapter_id) for a in runtime.library.adapters),
                      classes=tuple((n, targets[n]) for n in names), settings=settings)
    check_settings(spec.mode, spec.top_k, spec.temperature, len(spec.adapters))
    threshold = request.threshold
    if request.method == "linear":
        held = cross_validated_log_probs(vectors, labels, len(names), settings["l2"])
        settings["cross_validation"] = {"folds": FOLDS, "accuracy": round(
            float((held.argmax(1) == labels).float().mean()), 4)}
        if threshold == "auto":  # see the module docstring
            return Router(spec.with_overrides(threshold=None), tensors)
    if threshold == "auto":
        own = _leave_one_out(unit, labels, spec)
        keep = torch.tensor([targets[names[int(i)]] != BASE for i in labels])
        threshold = calibrate_threshold(own[keep], request.calibration_quantile) \
            if bool(keep.any()) else None
        spec.settings["calibration"] = {"quantile": request.calibration_quantile,
                                        "examples": int(keep.sum())}
    return Router(spec.with_overrides(threshold=threshold), tensors)


def _l2(value) -> float:
    value = DEFAULT_L2 if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1e6:
        raise UsageError(f"l2 is {value!r}: the linear probe's L2 strength must be a positive "
                         "number (default 1, scikit-learn's C = 1)")
    return float(value)


def _leave_one_out(unit, labels, spec: RouterSpec):
    """Each example's confidence (best class similarity) with itself left out."""
    import torch

    sims = unit @ unit.T  # (n, n)
    sims.fill_diagonal_(float("-inf"))
    count = len(spec.classes)
    out = torch.empty(len(labels))
    for row in range(len(labels)):
        best = float("-inf")
        for cls in range(count):
            others = sims[row, labels == cls]
            others = others[torch.isfinite(others)]
            if others.numel() == 0:
                continue
            if spec.settings["method"] == "knn":
                value = torch.topk(others, min(spec.settings["k"], others.numel())).values.mean()
            else:  # similarity to the centroid of the others: mean of unit vectors, normalised
                members = unit[(labels == cls) & (torch.arange(len(labels)) != row)]
                value = unit[row] @ torch.nn.functional.normalize(members.mean(0), dim=0)
            best = max(best, float(value))
        out[row] = best
    return out


def class_similarity(router: Router, vectors):
    """(inputs, classes) cosine similarities of embeddings to each class (``linear``: the
    probe's log-probabilities)."""
    import torch

    spec = router.spec
    if spec.settings.get("method") == "linear":
        return probe_log_probs(router.tensors, vectors)
    unit = _normalize(vectors, router.tensors["center"])  # (b, dim)
    if spec.settings.get("method", "centroid") == "centroid":
        centroids = torch.nn.functional.normalize(router.tensors["centroids"], dim=-1)
        return unit @ centroids.T  # (b, classes)
    sims = unit @ router.tensors["examples"].T  # (b, n)
    owner = router.tensors["example_class"]
    out = torch.full((unit.shape[0], len(spec.classes)), float("-inf"))
    for cls in range(len(spec.classes)):
        members = sims[:, owner == cls]
        if members.shape[1]:
            k = min(int(spec.settings.get("k", 5)), members.shape[1])
            out[:, cls] = torch.topk(members, k, dim=1).values.mean(1)
    return out


def target_scores(router: Router, class_sims):
    """(inputs, targets) scores: each target's best class similarity (``linear``: the log of
    its classes' summed probability); -inf: no class."""
    import torch

    targets = router.spec.targets
    combine = torch.logaddexp if router.spec.settings.get("method") == "linear" else torch.maximum
    out = torch.full((class_sims.shape[0], len(targets)), float("-inf"))
    for cls, (_, target) in enumerate(router.spec.classes):
        column = targets.index(target)
        out[:, column] = combine(out[:, column], class_sims[:, cls])
    return out


def scores(router: Router, runtime, texts: list[str]):
    """See :mod:`.router`: per-target cosine similarity of each text."""
    vectors = embed(router.spec.embedder, runtime, texts,
                    int(router.spec.settings.get("route_tokens", 128)))
    return target_scores(router, class_similarity(router, vectors))


def build(runtime, request: BuildRequest) -> Router:
    """An examples router: ``request.examples`` maps each adapter name (or ``base``) to texts.

    Raises:
        UsageError: no examples, an example class that names no adapter of the library (with
            the closest name), an adapter without examples, too few texts.
    """
    library = runtime.library
    if not request.examples:
        raise UsageError("the examples router needs example texts: --examples NAME=FILE for "
                         "each adapter (a text per line, or JSONL with a \"text\" field)")
    for name in request.examples:
        if name != BASE:
            library.get(name)  # UsageError naming the closest adapter
    missing = [a for a in library.names if a not in request.examples]
    if missing:
        raise UsageError(f"no examples for adapter(s) {', '.join(missing)}: every adapter needs "
                         "a few (--examples NAME=FILE), or leave it out of the library")
    targets = {name: name for name in request.examples}
    return build_classes(runtime, dict(request.examples), targets, request, "examples")
