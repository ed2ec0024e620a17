"""Per-example clipping in one backward pass for models built from ``Linear`` and ``Conv2d`` layers.

Book-keeping DP-SGD (Bu, Wang, Zha & Karypis, "Differentially Private Optimization on Large Model at
Small Cost", ICML 2023): one forward pass records every trained layer's input ``a``; one backward pass of
the summed per-example losses, asked only for the gradients of the layers' outputs ``g`` (no parameter
gradient is formed), gives each example's gradient of every layer from ``a`` and ``g``:

- ``Linear`` on ``(B, d_in)`` inputs: example i's weight gradient is the outer product ``g_i a_iᵀ``, whose
  squared norm is ``|g_i|² |a_i|²`` (Goodfellow, arXiv 1510.01799); the clipped sum is one matrix product
  ``(c ⊙ g)ᵀ a``, the per-example gradients are never formed;
- ``Linear`` on ``(B, ..., d_in)`` inputs and ``Conv2d`` (via ``unfold``, as Opacus): the per-example
  gradients ``Σ_t g_it a_itᵀ`` are formed with one batched product, their norms taken and the clipped sum is
  ``Σ_i c_i G_i``.

Example i's norm is the square root of the sum of its squared norms over all layers, its clip factor
``c_i = min(1, C / (norm_i + 1e-6))`` (Opacus' formula), so each example's clipped gradient has norm at most C
exactly as with Opacus' per-sample gradients; only float summation order differs. Against ghost clipping
(Li et al., ICLR 2022) this saves the second backward pass, and the first computes no parameter gradients.

Exact only when every trained parameter is used through its layer's ``forward``; a layer called several
times in one forward pass (weights reused) has its calls' per-example gradients summed before the norm.
Layers without a rule here (LayerNorm, Embedding, grouped or 'same'-padded convolutions) are not covered:
:func:`bookkeeping_supported` says whether a model is.

Non-finite gradients. An example whose gradient norm is not a finite float (NaN or infinite values, or a norm that
overflows) contributes nothing to the clipped sum, as if it had not been sampled: the sum keeps its sensitivity C and
stays finite. A server can send a model whose forward pass overflows only on examples with some property (an audit of
2026-12-07 made it NaN for one example's pixel block above a threshold); before, that example turned the whole update
into NaN, or made the client decline, whether it was sampled being then readable beside the noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

#: Opacus' stabiliser in ``C / (norm + 1e-6)`` (opacus.optimizers.optimizer.DPOptimizer.clip_and_accumulate).
CLIP_EPSILON = 1e-6


def select_rows(keep: Tensor, rows: Tensor, other: Tensor | float = 0.0) -> Tensor:
    """``rows`` where ``keep`` (one flag per leading row) holds, else ``other``: selected, not multiplied (a NaN row times 0
    stays NaN). How every DP-SGD mode leaves out an example whose gradient norm is not finite."""
    return torch.where(keep.view(-1, *(1,) * (rows.dim() - 1)), rows, other)


def _trainable(layer: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in layer.named_parameters(recurse=False) if p.requires_grad]


class _PerExample:
    """Materialized per-example gradients ``(B, *param.shape)`` of one layer's trained parameters."""

    def __init__(self, grads: dict[nn.Parameter, Tensor]) -> None:
        self.grads = grads

    def squared_norms(self) -> Tensor:
        return sum(g.flatten(1).square().sum(1) for g in self.grads.values())  # type: ignore[return-value]

    def clipped_sums(self, factors: Tensor) -> Iterator[tuple[nn.Parameter, Tensor]]:
        for p, g in self.grads.items():
            yield p, torch.tensordot(factors, g, dims=([0], [0]))

    def merged(self, other: _PerExample) -> _PerExample:
        return _PerExample({p: self.grads[p] + other.grads[p] for p in self.grads})

    def per_example(self) -> _PerExample:
        return self

    def keep_only(self, keep: Tensor) -> None:
        """Zero the rows of the examples not in ``keep`` (selected, not multiplied: a NaN row times 0 stays NaN)."""
        self.grads = {p: select_rows(keep, g) for p, g in self.grads.items()}


class _LinearOuter:
    """A ``Linear`` layer on ``(B, d_in)`` inputs: norms and clipped sums without forming per-example gradients."""

    def __init__(self, layer: nn.Linear, a: Tensor, g: Tensor) -> None:
        self.layer, self.a, self.g = layer, a, g

    def squared_norms(self) -> Tensor:
        gg = self.g.square().sum(1)
        total = torch.zeros_like(gg)
        if self.layer.weight.requires_grad:
            total = total + gg * self.a.square().sum(1)
        if self.layer.bias is not None and self.layer.bias.requires_grad:
            total = total + gg
        return total

    def clipped_sums(self, factors: Tensor) -> Iterator[tuple[nn.Parameter, Tensor]]:
        scaled = self.g * factors[:, None]
        if self.layer.weight.requires_grad:
            yield self.layer.weight, scaled.T @ self.a
        if self.layer.bias is not None and self.layer.bias.requires_grad:
            yield self.layer.bias, scaled.sum(0)

    def keep_only(self, keep: Tensor) -> None:
        """Zero the inputs and output gradients of the examples not in ``keep`` (see :meth:`_PerExample.keep_only`)."""
        self.a, self.g = select_rows(keep, self.a), select_rows(keep, self.g)

    def per_example(self) -> _PerExample:
        grads = {}
        if self.layer.weight.requires_grad:
            grads[self.layer.weight] = self.g[:, :, None] * self.a[:, None, :]
        if self.layer.bias is not None and self.layer.bias.requires_grad:
            grads[self.layer.bias] = self.g
        return _PerExample(grads)


def _linear(layer: nn.Linear, a: Tensor, g: Tensor) -> _LinearOuter | _PerExample:
    if a.dim() == 2:
        return _LinearOuter(layer, a, g)
    a3, g3 = a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])
    grads = {}
    if layer.weight.requires_grad:
        grads[layer.weight] = torch.bmm(g3.transpose(1, 2), a3)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = g3.sum(1)
    return _PerExample(grads)


#: From this many input channels on, a ``Conv2d``'s per-example weight gradients come from one grouped
#: convolution backward (the batch folded into the groups); below, from a strided copy of its patches and a
#: batched product (2.8 ms against 1.8 ms for 16 channels, 0.6 ms against 1.5 ms for 1 channel: SmallCNN's
#: layers at batch 64 on one CPU thread).
GROUPED_CONV_MIN_CHANNELS = 4


def _padding(layer: nn.Conv2d) -> tuple[int, int]:
    return (0, 0) if layer.padding == "valid" else layer.padding  # type: ignore[return-value]


def _conv2d_patches(layer: nn.Conv2d, a: Tensor, g: Tensor) -> Tensor:
    """Per-example weight gradients ``(B, C_out, C_in k k)``: im2col as a strided view of the padded input, copied once."""
    (ph, pw), (kh, kw), (sh, sw), (dh, dw) = _padding(layer), layer.kernel_size, layer.stride, layer.dilation
    padded = F.pad(a, (pw, pw, ph, ph))
    batch, channels, out_h, out_w = a.shape[0], a.shape[1], *g.shape[2:]
    sb, sc, sy, sx = padded.stride()
    patches = padded.as_strided((batch, channels, kh, kw, out_h, out_w), (sb, sc, sy * dh, sx * dw, sy * sh, sx * sw))
    patches = patches.reshape(batch, channels * kh * kw, out_h * out_w)
    if g.dim() == 4 and not g.is_contiguous() and g.is_contiguous(memory_format=torch.channels_last):
        # a channels-last output gradient is (B, H W, C_out) in memory: one product with that view gives each example's
        # transposed gradient (the NCHW view's product ran off torch's fast path: 2.3 ms against 0.6 ms for SmallCNN's
        # conv1 at batch 64, one thread)
        return torch.bmm(patches, g.permute(0, 2, 3, 1).reshape(batch, out_h * out_w, -1)).transpose(1, 2)
    return torch.bmm(g.flatten(2), patches.transpose(1, 2))


def _conv2d_grouped(layer: nn.Conv2d, a: Tensor, g: Tensor) -> Tensor:
    """Per-example weight gradients ``(B, C_out, C_in k k)``: the weight gradient of a convolution with the batch
    folded into ``B`` groups (one example per group), which is each example's own weight gradient."""
    batch, out_channels = g.shape[:2]
    folded_weight = a.new_zeros(batch * out_channels, *layer.weight.shape[1:])  # only its shape is read
    _, weight, _ = torch.ops.aten.convolution_backward(
        g.reshape(1, batch * out_channels, *g.shape[2:]),
        a.reshape(1, batch * a.shape[1], *a.shape[2:]),
        folded_weight,
        None,
        list(layer.stride),
        list(_padding(layer)),
        list(layer.dilation),
        False,
        [0, 0],
        batch,
        [False, True, False],
    )
    return weight.view(batch, out_channels, -1)


def _conv2d(layer: nn.Conv2d, a: Tensor, g: Tensor) -> _PerExample:
    if a.dim() != 4:
        raise ValueError(f"book-keeping clips Conv2d layers on batched (B, C, H, W) inputs, got shape {tuple(a.shape)}")
    batch = a.shape[0]
    grads = {}
    if layer.weight.requires_grad:
        per_example = _conv2d_grouped if layer.in_channels >= GROUPED_CONV_MIN_CHANNELS else _conv2d_patches
        grads[layer.weight] = per_example(layer, a, g).reshape(batch, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = g.flatten(2).sum(2)
    return _PerExample(grads)


def _conv2d_supported(layer: nn.Module) -> bool:
    assert isinstance(layer, nn.Conv2d)
    return layer.groups == 1 and layer.padding_mode == "zeros" and layer.padding != "same"


@dataclass(frozen=True)
class LayerRule:
    """How to get a layer's per-example gradient norms and clipped sum from its input and output gradient."""

    contribution: Callable[[Any, Tensor, Tensor], _LinearOuter | _PerExample]
    supports: Callable[[nn.Module], bool] = lambda layer: True


#: Layer types book-keeping clips exactly (the exact type: a subclass may change ``forward``).
LAYER_RULES: dict[type, LayerRule] = {
    nn.Linear: LayerRule(_linear),
    nn.Conv2d: LayerRule(_conv2d, _conv2d_supported),
}


def unsupported_layer(module: nn.Module) -> str | None:
    """The name of the first layer with a trained parameter that :data:`LAYER_RULES` does not cover, else None."""
    for name, layer in module.named_modules():
        if not _trainable(layer):
            continue
        rule = LAYER_RULES.get(type(layer))
        if rule is None or not rule.supports(layer):
            return name or type(layer).__name__
    return None


def bookkeeping_supported(module: nn.Module) -> bool:
    """True when every layer owning a trained parameter has a rule in :data:`LAYER_RULES` and no trained parameter is
    owned by two layers (tied weights are used outside one layer's forward)."""
    from secure_ffm.privacy.dp_sgd import shared_trainable_parameters

    return unsupported_layer(module) is None and not shared_trainable_parameters(module)


class BookkeepingClipper:
    """Records the trained layers' inputs in forward passes and turns one backward pass into clipped gradient sums.

    ``clip_and_accumulate(outputs, per_example_loss)`` adds Σ_i clip_C(∇ loss_i) to :attr:`summed`
    (one tensor per parameter of ``params``, summed over calls until :meth:`reset`); ``close()`` removes the hooks.
    """

    def __init__(self, module: nn.Module, params: list[nn.Parameter], *, max_grad_norm: float) -> None:
        if (bad := unsupported_layer(module)) is not None:
            raise ValueError(f"book-keeping clipping has no rule for layer {bad}: use hooks or ghost")
        self.params = params
        self.max_grad_norm = max_grad_norm
        self.records: list[tuple[nn.Module, Tensor, GradientEdge]] = []
        self.summed: dict[nn.Parameter, Tensor] = {}
        self.handles = [layer.register_forward_hook(self._record) for layer in module.modules() if _trainable(layer)]

    def _record(self, layer: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        if torch.is_grad_enabled() and output.requires_grad:
            # the edge, not the tensor: an in-place op after the layer (ReLU(inplace=True)) would move the tensor's
            self.records.append((layer, args[0].detach(), get_gradient_edge(output)))  # grad_fn past the layer

    def _contributions(self, per_example_loss: Tensor) -> dict[nn.Module, Any]:
        """Each trained layer's part of the per-example gradients of ``per_example_loss`` (shape ``(B,)``, from the
        last forward pass), from one backward pass to the layers' outputs; the records are consumed."""
        records, self.records = self.records, []
        if not records:
            raise RuntimeError("no trained layer ran in the forward pass")
        grads = torch.autograd.grad(per_example_loss.sum(), [edge for _, _, edge in records], allow_unused=True)
        by_layer: dict[nn.Module, Any] = {}
        for (layer, a, _), g in zip(records, grads, strict=True):
            if g is None:  # the layer's output did not reach the loss
                continue
            part = LAYER_RULES[type(layer)].contribution(layer, a, g)
            if layer in by_layer:  # a layer called twice: its calls' gradients add up before the norm
                part = by_layer[layer].per_example().merged(part.per_example())
            by_layer[layer] = part
        return by_layer

    def per_example_gradients(self, per_example_loss: Tensor) -> dict[nn.Parameter, Tensor]:
        """Each example's unclipped gradient of ``per_example_loss`` (shape ``(B,)``, from the last forward pass) for
        every trained parameter it reached, shaped ``(B, *param.shape)``: what Opacus' hooks leave in ``grad_sample``,
        from one backward pass to the layers' outputs instead of hooks on every layer (distributed DP-SGD rounds each
        example's gradient on its own, so it needs them materialized; 8.4 against 12.3 ms for 51 examples of the
        ``tanh-cnn``, one thread, 2026-12-06)."""
        batch = per_example_loss.shape[0]
        out: dict[nn.Parameter, Tensor] = {}
        for part in self._contributions(per_example_loss).values():
            for p, g in part.per_example().grads.items():
                out[p] = g.reshape(batch, *p.shape)
        return out

    def clip_and_accumulate(self, per_example_loss: Tensor) -> Tensor:
        """Clip each example's gradient of ``per_example_loss`` (shape ``(B,)``, from the last forward pass) to
        ``max_grad_norm``, add the sums to :attr:`summed`; returns the clip factors."""
        by_layer = self._contributions(per_example_loss)
        batch = per_example_loss.shape[0]
        squared = torch.zeros(batch, dtype=per_example_loss.dtype, device=per_example_loss.device)
        for part in by_layer.values():
            squared = squared + part.squared_norms()
        finite = torch.isfinite(squared)
        if not bool(finite.all()):
            # an example whose gradient norm is not a finite number contributes nothing (as an example absent from the
            # batch): otherwise a NaN in one example's gradient, which a crafted model can make depend on that example's
            # values, would turn the whole update into NaN, a signal outside the noise (module docstring)
            for part in by_layer.values():
                part.keep_only(finite)
            squared = torch.where(finite, squared, 0.0)
        factors = (self.max_grad_norm / (squared.sqrt() + CLIP_EPSILON)).clamp(max=1.0)
        for part in by_layer.values():
            for p, total in part.clipped_sums(factors):
                if p in self.summed:
                    self.summed[p].add_(total)
                else:
                    self.summed[p] = total
        return factors

    def clipped_sum(self, p: nn.Parameter) -> Tensor:
        """Σ of the clipped per-example gradients of ``p`` since :meth:`reset` (zeros if no example reached it)."""
        total = self.summed.get(p)
        return torch.zeros_like(p) if total is None else total.view_as(p)

    def reset(self) -> None:
        self.records.clear()
        self.summed = {}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.reset()
