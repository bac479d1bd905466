"""A picture of a dense task's held-out predictions (``OUT/predictions.png``).

Three rows of the first held-out tiles: the input drawn as ``eofm-shard preview`` draws it
(display bands chosen by name, the manifest's p2..p98 stretch, nodata magenta), the target and
the prediction: segmentation classes in a fixed 20-colour palette (pixels without a label
black), regression values in grey on one shared scale (the targets' 2nd..98th percentile).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from eofm.data_shards.manifest import ModalityInfo
from eofm.data_shards.png import write_png
from eofm.data_shards.preview import choose_display, compose, fit_stretches, render

# matplotlib's tab20, so class k has the same colour in every picture
PALETTE = np.array([
    (31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44),
    (152, 223, 138), (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213),
    (140, 86, 75), (196, 156, 148), (227, 119, 194), (247, 182, 210), (127, 127, 127),
    (199, 199, 199), (188, 189, 34), (219, 219, 141), (23, 190, 207), (158, 218, 229)],
    np.uint8)
MIN_SIZE = 64

if TYPE_CHECKING:  # pragma: no cover
    from .finetuner import Finetuner


def class_colours(labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) palette colours; invalid pixels black."""
    img = PALETTE[np.mod(labels.astype(np.int64), len(PALETTE))]
    img[~valid] = 0
    return img


def grey(values: np.ndarray, valid: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) values -> (H, W, 3) grey over ``low..high``; invalid pixels black."""
    t = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    g = np.floor(255.0 * np.nan_to_num(t) + 0.5).astype(np.uint8)
    img = np.repeat(g[..., None], 3, axis=-1)
    img[~valid] = 0
    return img


def prediction_sheet(path: str | Path, inputs: Sequence[np.ndarray], sensor: str,
                     bands: Sequence[str], stats: dict[str, dict],
                     nodata: Sequence[float | None], targets: Sequence[np.ndarray],
                     predictions: Sequence[np.ndarray], valid: Sequence[np.ndarray],
                     task: str) -> Path:
    """Write the picture: ``inputs`` (C, H, W) raw tiles in ``bands`` order; ``targets`` and
    ``predictions`` (H, W) class indices or values; ``valid`` (H, W) pixels that have a
    target. Returns ``path``."""
    info = ModalityInfo(sensor, list(bands), "float32", [], list(nodata), 0.0, stats)
    display = choose_display("input", info)
    samples = [{"input": x, "input_valid": np.ones(x.shape[1:], bool)} for x in inputs]
    fit_stretches(display, info, samples)
    rows = {"input": [render(s, display, info) for s in samples]}
    if task == "segmentation":
        rows["target"] = [class_colours(t, v) for t, v in zip(targets, valid, strict=True)]
        rows["prediction"] = [class_colours(p, np.ones_like(v))
                              for p, v in zip(predictions, valid, strict=True)]
    else:
        known = np.concatenate([t[v] for t, v in zip(targets, valid, strict=True)])
        low, high = (np.percentile(known, [2, 98]) if known.size else (0.0, 1.0))
        rows["target"] = [grey(t, v, low, high) for t, v in zip(targets, valid, strict=True)]
        rows["prediction"] = [grey(p, np.ones_like(v), low, high)
                              for p, v in zip(predictions, valid, strict=True)]
    sheet, _ = compose(rows, cols=len(inputs), min_size=MIN_SIZE)
    write_png(path, sheet)
    return Path(path)


@torch.no_grad()
def draw_predictions(ft: Finetuner, samples: int = 8, write: bool = True) -> Path | None:
    """``OUT/predictions.png`` of a dense fine-tuning run: its first held-out tiles, their
    targets and the predictions (every rank runs the forward: FSDP2 gathers weights in it;
    ``write`` on one rank)."""
    from .tasks import IGNORE_INDEX

    model = ft.eval_model()
    model.eval()
    idx = list(ft.test_idx[:samples])
    x, y, valid = ft.batch(ft.test_data, ft.test_pre, idx)
    out = ft.infer(model, x, tuple(y.shape[-2:])).float()
    model.train()
    if not write:
        return None
    task = ft.cfg.task.kind
    if task == "segmentation":
        pred, truth, known = out.argmax(1), y, y != IGNORE_INDEX
    else:
        mean, std = ft.target_norm
        values = out[:, 0] if out.ndim == 4 else out  # (B, H, W) like the targets
        pred, truth = values * std + mean, y * std + mean
        known = valid if valid is not None else torch.ones_like(truth, dtype=torch.bool)
    d = ft.test_data
    return prediction_sheet(ft.out / "predictions.png", [d.pixels(i) for i in idx], d.sensor,
                            d.bands, d.stats, d.nodata, list(truth.cpu().numpy()),
                            list(pred.cpu().numpy()), list(known.cpu().numpy()), task)
