"""Soft routing: each input of a batch gets its own weighted mix of adapters' updates.

PEFT runs one adapter per input (``adapter_names``, used for hard routing) or a fixed weighted
combination for every input (``add_weighted_adapter``, a new adapter); it has no per-input mixing
weights. :class:`SoftMixer` adds them: while it is active, PEFT's own LoRA path is switched off
(as ``disable_adapter`` does) and each LoRA target layer's base output gets

    Σ_k w[b, k] · scale_k · B_k(A_k x[b])

from the same PEFT ``lora_A`` / ``lora_B`` modules and ``scaling`` PEFT would use, so one-hot
weights give exactly PEFT's single-adapter output. Adapters whose weight is zero for the whole
batch are not computed.
"""

from __future__ import annotations

import contextlib

__all__ = ["SoftMixer"]


class SoftMixer:
    """Per-input adapter mixing over a PEFT model holding the adapters ``names``."""

    def __init__(self, runtime, names: tuple[str, ...]):
        self.runtime, self.names = runtime, tuple(names)
        self.layers = [module for _, module, _ in runtime.lora_layers()]

    @contextlib.contextmanager
    def mixing(self, weights):
        """Run the model with ``weights`` (batch, len(names)) applied per input.

        Rows must follow the batch's rows (generation keeps them: no beam search).
        """
        import torch

        weights = torch.as_tensor(weights, dtype=torch.float32)  # (b, E)
        active = [e for e in range(len(self.names)) if bool((weights[:, e] != 0).any())]
        handles = []
        for layer in self.layers:
            present = [(e, self.names[e]) for e in active if self.names[e] in layer.lora_A]
            if present:
                handles.append(layer.base_layer.register_forward_hook(
                    self._hook(layer, present, weights)))
        try:
            with self.runtime.base_only():
                yield
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _hook(layer, present, weights):
        def add(_module, inputs, output):
            x = inputs[0]
            shape = (-1,) + (1,) * (x.dim() - 1)  # per-row weight broadcast over tokens
            for e, name in present:
                a, b = layer.lora_A[name], layer.lora_B[name]
                update = b(a(x.to(a.weight.dtype))) * layer.scaling[name]  # (b, t, out)
                output = output + (weights[:, e].view(shape) * update).to(output.dtype)
            return output
        return add
