"""A linear probe: multinomial logistic regression over example embeddings (the ``linear``
method of the ``examples`` and ``reviews`` routers).

A nearest centroid weighs every direction of the embedding alike; the hidden states of a base
model's first layers vary most along directions that do not tell domains apart (token
frequency, length, formatting), so a centroid confuses domains a linear classifier separates.
The probe learns which directions matter from the same few labelled examples.

The fit is scikit-learn's ``LogisticRegression(C=1/l2)`` (multinomial, L2 on the weights, the
intercept unpenalised) on standardised features, written here over torch because scikit-learn
is not a dependency of modelgit and the fit is a few lines of L-BFGS; a test pins the result
against scikit-learn's. The objective, over ``n`` examples::

    mean cross-entropy(softmax(W z + b), y) + l2 / (2 n) * ||W||^2,   z = (x - center) / scale

It is convex and minimised in float64 from zeros, so a fit is deterministic. The router stores
``center``, ``scale``, ``weight`` and ``bias`` (float32) in ``router.safetensors``.
"""

from __future__ import annotations

__all__ = ["fit_probe", "probe_log_probs", "cross_validated_log_probs", "DEFAULT_L2", "FOLDS"]

#: the L2 strength: 1/C with scikit-learn's default C = 1 (not tuned to any benchmark)
DEFAULT_L2 = 1.0
#: folds of the cross-validation that calibrates the threshold
FOLDS = 5
_MAX_ITER = 500


def fit_probe(vectors, labels, classes: int, l2: float = DEFAULT_L2) -> dict:
    """Fit the probe.

    Args:
        vectors: (n, dim) float embeddings of the examples.
        labels: (n,) int class index of each example, in ``0..classes-1``.
        classes: the number of classes (a class without examples gets a low score).
        l2: the weights' L2 strength (> 0).
    Returns:
        ``{"center": (dim,), "scale": (dim,), "weight": (classes, dim), "bias": (classes,)}``,
        float32.
    """
    import torch

    x = vectors.double()  # (n, dim)
    labels = torch.as_tensor(labels, dtype=torch.int64)
    center = x.mean(0)  # (dim,)
    scale = x.std(0, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))  # constant feature: as is
    z = (x - center) / scale  # (n, dim)
    weight = torch.zeros(classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=_MAX_ITER, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20,
                                  line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight.T + bias, labels) \
            + l2 / (2 * len(labels)) * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return {"center": center.float(), "scale": scale.float(),
            "weight": weight.detach().float().contiguous(), "bias": bias.detach().float()}


def probe_log_probs(tensors: dict, vectors):
    """(inputs, classes) log-probabilities of each class under the probe ``tensors``."""
    import torch

    z = (vectors.float() - tensors["center"]) / tensors["scale"]  # (b, dim)
    return torch.log_softmax(z @ tensors["weight"].T + tensors["bias"], dim=-1)  # (b, classes)


def cross_validated_log_probs(vectors, labels, classes: int, l2: float = DEFAULT_L2,
                              folds: int = FOLDS):
    """(n, classes) log-probabilities of each example under a probe fit without it: the
    examples are split into ``folds`` folds (every ``folds``-th example of each class), and
    each fold is scored by a probe of the others. What an input the probe never saw looks like,
    to calibrate the threshold on."""
    import torch

    labels = torch.as_tensor(labels, dtype=torch.int64)
    fold = torch.empty_like(labels)
    for cls in range(classes):
        members = (labels == cls).nonzero().flatten()
        fold[members] = torch.arange(len(members)) % folds
    out = torch.empty(len(labels), classes)
    for index in range(min(folds, int(fold.max()) + 1 if len(fold) else 0)):
        held = fold == index
        tensors = fit_probe(vectors[~held], labels[~held], classes, l2)
        out[held] = probe_log_probs(tensors, vectors[held])
    return out
