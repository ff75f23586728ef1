"""Plot Loss: the loss curve of a training run as an image, raw (light) and smoothed (dark), shown in the node.

Smoothing is the bias-corrected exponential moving average ``m_t = β·m_{t−1} + (1−β)·l_t``, ``s_t = m_t/(1−β^t)``.
Drawn with PIL (ComfyUI ships it); takes ComfyUI's ``LOSS_MAP`` (``{"loss": [...]}``), which both our trainer and
ComfyUI's TrainLoraNode output.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from comfy_api.latest import io, ui

WIDTH, HEIGHT, MARGIN = 720, 400, 56
RAW, SMOOTH, AXIS, GRID = (170, 190, 230), (20, 60, 160), (40, 40, 40), (225, 225, 225)


def smoothed(values: list[float], beta: float) -> list[float]:
    """Bias-corrected EMA of ``values`` (``beta`` 0 = the raw values)."""
    out, mean = [], 0.0
    for t, value in enumerate(values, start=1):
        mean = beta * mean + (1 - beta) * value
        out.append(mean / (1 - beta**t))
    return out


def draw(values: list[float], beta: float) -> Image.Image:
    """The plot: axes with min/max loss and first/last step, raw and smoothed curves, the last smoothed value."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    pen = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN, 20, WIDTH - 20, HEIGHT - MARGIN
    for i in range(5):
        y = top + (bottom - top) * i / 4
        pen.line([(left, y), (right, y)], fill=GRID)
    pen.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS, width=2)
    if not values:
        pen.text((left + 10, top + 10), "no loss values", fill=AXIS)
        return image
    low, high = min(values), max(values)
    span = (high - low) or 1.0

    def point(i: int, value: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(len(values) - 1, 1))
        return x, bottom - (bottom - top) * (value - low) / span

    for series, color, width in ((values, RAW, 1), (smoothed(values, beta), SMOOTH, 2)):
        points = [point(i, v) for i, v in enumerate(series)]
        if len(points) == 1:
            pen.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=color)
        else:
            pen.line(points, fill=color, width=width)
    pen.text((4, top - 6), f"{high:.4g}", fill=AXIS)
    pen.text((4, bottom - 6), f"{low:.4g}", fill=AXIS)
    pen.text((left, bottom + 8), "step 1", fill=AXIS)
    pen.text((right - 70, bottom + 8), f"step {len(values)}", fill=AXIS)
    pen.text(
        (left + 8, HEIGHT - 22),
        f"loss (raw light, EMA β={beta:g} dark) · last smoothed {smoothed(values, beta)[-1]:.5g}",
        fill=AXIS,
    )
    return image


def to_image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as ComfyUI's IMAGE: ``(1, H, W, 3)`` float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


class LossPlot(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LyCOLossPlot",
            display_name="Plot Loss",
            category="training/LyCORIS",
            is_output_node=True,
            description="The loss curve of a training run, raw and smoothed.",
            inputs=[
                io.Custom("LOSS_MAP").Input(
                    "loss", tooltip="Loss history from Train LyCORIS Adapter (or ComfyUI's Train LoRA)."
                ),
                io.Float.Input(
                    "smoothing",
                    default=0.9,
                    min=0.0,
                    max=0.999,
                    step=0.01,
                    tooltip="EMA factor β of the dark curve (0 = raw).",
                ),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, loss, smoothing):
        values = [float(v) for v in loss.get("loss", [])]
        image = to_image_tensor(draw(values, smoothing))
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))
