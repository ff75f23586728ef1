"""Bypass mode: an adapter runs in the forward pass of its layer instead of being merged into the weight.

``y = layer(x) + m·(ΔW ⋆ x + Δb)`` where ``⋆`` is the layer's own operation (``F.linear``, or ``F.convNd`` with its
stride, padding and dilation). The base weight is never copied or dequantised by us, so quantised or fp8 weights
stay as they are; the adapter's factors are cast to the activations' dtype and device per call.

Only W-independent (additive) methods can be bypassed: LoRA/LoCon (incl. Tucker), LoHa, LoKr and full diffs, on
Linear and Conv1d/2d/3d layers with ``groups = 1``. LoRA runs as two (Tucker: three) thin products and LoKr as two
small ones without forming ``kron(W1, W2)``; LoHa and full diffs form ΔW in the activations' dtype for the call.
W-dependent methods (OFT, BOFT, DoRA, GLoRA, IA3) need the merged weight and are refused by ``check``.

``check`` reads the geometry from the layer itself (our loaders' bypass option); ``hook_call`` builds the same
LayerCall from the geometry a host's own bypass hook describes (ComfyUI 0.33's ``BypassForwardHook`` sets it on the
patch and hands only ``x`` and the base output), with the same refusals.
Reference: docs/methods.md, Bypass mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass(frozen=True)
class LayerCall:
    """How a layer applies its weight: ``linear``, or an N-d convolution with its geometry."""

    weight_shape: tuple[int, ...]
    conv_dims: int = 0  # 0 = linear
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight_shape[2:])

    def apply(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``weight ⋆ x`` with the layer's geometry (no bias)."""
        if not self.conv_dims:
            return F.linear(x, weight)
        return _CONV[self.conv_dims](x, weight, None, self.stride, self.padding, self.dilation)

    def pointwise(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """A 1×1 convolution with ``matrix (out, in)`` (channel mixing, stride 1, no padding)."""
        return _CONV[self.conv_dims](x, matrix.reshape(*matrix.shape[:2], *[1] * self.conv_dims))

    def channels(self, vector: torch.Tensor) -> torch.Tensor:
        """A per-output-channel vector shaped to broadcast against the layer's output."""
        return vector if not self.conv_dims else vector.reshape(-1, *[1] * self.conv_dims)


def layer_call(layer: torch.nn.Module, weight_shape: tuple[int, ...] | None = None) -> LayerCall | None:
    """The LayerCall of a torch Linear or ConvNd (groups 1), or None for any other layer."""
    shape = tuple(weight_shape or layer.weight.shape)
    if isinstance(layer, torch.nn.Linear):
        return LayerCall(shape)
    if isinstance(layer, torch.nn.modules.conv._ConvNd) and layer.groups == 1 and not layer.transposed:
        if layer.padding_mode != "zeros":
            return None
        return LayerCall(shape, len(layer.kernel_size), tuple(layer.stride), layer.padding, tuple(layer.dilation))
    return None


def _require_bypassable(module) -> None:
    if not module.bypassable():
        what = module.algo + ("+DoRA" if module.dora else "")
        raise module.fail(
            f"{what} cannot run in bypass mode: its result depends on the base weight, which bypass never reads",
            expected="LoRA/LoCon, LoHa, LoKr or full diffs for bypass; turn bypass off to merge this adapter",
        )


def check(module, layer: torch.nn.Module, weight_shape: tuple[int, ...] | None = None) -> LayerCall:
    """The LayerCall for bypassing ``module`` on ``layer``, or AdapterError saying why it cannot be done."""
    _require_bypassable(module)
    call = layer_call(layer, weight_shape)
    if call is None:
        raise module.fail(
            f"bypass runs on Linear and Conv layers (groups 1, zero padding), not on {type(layer).__name__}",
            expected="turn bypass off for this adapter",
        )
    return call


def hook_call(
    module,
    x: torch.Tensor,
    out: torch.Tensor,
    conv_dims: int = 0,
    kw: dict | None = None,
    kernel: tuple[int, ...] = (),
    in_channels: int | None = None,
    out_channels: int | None = None,
) -> LayerCall:
    """The LayerCall for a host bypass hook that describes its layer by geometry only, never handing the layer or
    its weight: ``conv_dims`` (0 = linear), the convolution's ``kw`` (stride, padding, dilation, groups),
    ``kernel`` and channel counts; ``x`` and the base output ``out`` give the linear sizes (and any missing
    channel count). AdapterError if ``module`` cannot be bypassed exactly (W-dependent method, grouped
    convolution) or does not fit that weight shape."""
    _require_bypassable(module)
    kw = kw or {}
    if not conv_dims:
        shape = (out.shape[-1], x.shape[-1])
        call = LayerCall(shape)
    else:
        if kw.get("groups", 1) != 1:
            raise module.fail(
                f"bypass runs on convolutions with groups 1, not {kw.get('groups')}",
                expected="a merging loader for this adapter",
            )
        ones = (1,) * conv_dims
        shape = (out_channels or out.shape[1], in_channels or x.shape[1], *(tuple(kernel) or ones))
        padding = kw.get("padding", (0,) * conv_dims)
        call = LayerCall(
            shape,
            conv_dims,
            tuple(kw.get("stride", ones)),
            padding if isinstance(padding, str) else tuple(padding),
            tuple(kw.get("dilation", ones)),
        )
    module.fits(torch.Size(shape), True)
    return call
