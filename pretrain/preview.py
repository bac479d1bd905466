"""Reconstruction pictures during pretraining (``logging.preview_every``).

The first ``logging.preview_samples`` samples this process trains on are kept (normalised, as
the objective gets them, before radiometric jitter; checkpoints carry them, so a resumed run
pictures the same samples, :meth:`ReconstructionPreview.state_dict`); every ``preview_every`` steps the
objective's ``reconstruct`` hook runs on them in eval mode with a fixed seed (the same mask
each time, so pictures compare across steps; eager even when ``runtime.compile`` compiled the
blocks, see :func:`eager`) and rank 0 writes
``OUT/previews/step_NNNNNNNNN.png``: three rows of the same samples, the input the encoder
saw, the same with the hidden pixels grey, and the reconstruction (prediction where hidden,
input elsewhere; grey where the objective predicts nothing, as SelectiveMAE outside its
reconstruction set). A contrastive objective (SoftCon) shows the input and its two augmented
views instead, the tokens view 1 drops in grey: what the augmentations make of the data.

Pixels are drawn as ``eofm-shard preview`` draws the dataset (:mod:`eofm.data_shards.preview`):
display bands chosen by name among the trained bands (true colour, SAR false colour,
hyperspectral nearest 650/560/470 nm, else the first band in grey), values taken back to the
dataset's units and stretched by the manifest's p2..p98, invalid pixels magenta. So a picture
from pretraining and one of its shards look alike, and a wrong band order shows in both.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eofm.data_shards.manifest import ModalityInfo
from eofm.data_shards.png import write_png
from eofm.data_shards.preview import choose_display, compose, fit_stretches, render

from .data import BandInfo

HIDDEN = (96, 96, 96)  # pixels the encoder did not see
MIN_SIZE = 64  # tiles smaller than this are enlarged (nearest) to it


def eager() -> contextlib.AbstractContextManager[Any]:
    """Within it, ``torch.compile``d modules run eagerly (``torch.compiler.set_stance
    ("force_eager")``, torch >= 2.6; nothing on older torch).

    A preview runs under ``no_grad``: a compiled block called there fails its grad-mode guard
    and would compile again (for every block shape), using up dynamo's recompile budget
    (``recompile_limit``, 8) that partial batches and shapes also draw on; eager, its
    compiled graphs are neither run nor guarded.
    """
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


class ReconstructionPreview:
    """Keeps a fixed set of samples and writes the objective's reconstructions of them."""

    def __init__(self, folder: str | Path, info: BandInfo, stored: ModalityInfo, samples: int,
                 seed: int, write: bool = True) -> None:
        self.folder, self.samples, self.seed, self.write_files = Path(folder), samples, seed, write
        self.info = info
        idx = [stored.bands.index(b) for b in info.bands]
        self.modality = replace(stored, bands=list(info.bands),
                                nodata=[stored.nodata[i] for i in idx] if stored.nodata else [],
                                stats={b: stored.stats.get(b, {}) for b in info.bands})
        self.display = choose_display(info.modality, self.modality)
        self.kept: tuple[Tensor, Tensor, dict[str, Any]] | None = None

    def keep(self, x: Tensor, valid: Tensor, inputs: dict[str, Any]) -> None:
        """Keep the first ``samples`` samples of the first batch offered (later ones are
        ignored); ``inputs`` are the tokenizer's keyword arguments for that batch."""
        if self.kept is not None:
            return
        n, b = min(self.samples, x.shape[0]), x.shape[0]
        kw = {k: v[:n] if isinstance(v, Tensor) and v.ndim and v.shape[0] == b else v
              for k, v in inputs.items()}
        self.kept = (x[:n].detach().clone(), valid[:n].clone(), kw)

    def state_dict(self) -> dict[str, Any] | None:
        """The kept samples and their tokenizer inputs on the CPU, for a checkpoint (so a
        resumed run pictures the same samples); None before any are kept."""
        if self.kept is None:
            return None
        x, valid, kw = self.kept
        return {"x": x.detach().cpu(), "valid": valid.cpu(),
                "inputs": {k: v.detach().cpu() if isinstance(v, Tensor) else v
                           for k, v in kw.items()}}

    def load_state_dict(self, state: dict[str, Any] | None, device: torch.device) -> None:
        """Keep the samples a checkpoint recorded (:meth:`state_dict`) on ``device``; nothing
        for a checkpoint without them (an older one, or one saved before the first step): the
        first batch trained is kept then, as in a fresh run."""
        if not state:
            return
        self.kept = (state["x"].to(device), state["valid"].to(device),
                     {k: v.to(device) if isinstance(v, Tensor) else v
                      for k, v in state["inputs"].items()})

    def _raw(self, x: Tensor) -> np.ndarray:
        """Normalised (B, C, H, W) -> the dataset's units, as float64 numpy."""
        shift = self.info.shift.to(x.device, torch.float32)[:, None, None]
        scale = self.info.scale.to(x.device, torch.float32)[:, None, None]
        return (x.float() * scale + shift).cpu().numpy().astype(np.float64)

    def _tiles(self, x: np.ndarray, valid: np.ndarray, hidden: np.ndarray | None = None
               ) -> list[np.ndarray]:
        mod = self.info.modality
        out = []
        for i in range(x.shape[0]):
            img = render({mod: x[i], f"{mod}_valid": valid[i]}, self.display, self.modality)
            if hidden is not None:
                img[hidden[i]] = HIDDEN
            out.append(img)
        return out

    def write(self, objective: nn.Module, step: int) -> Path | None:
        """Reconstruct the kept samples (every rank must call this: sharded models gather
        their weights in the forward) and, on the writing rank, save the picture."""
        if self.kept is None:
            return None
        x, valid, kw = self.kept
        was_training = objective.training
        objective.eval()
        try:
            with torch.no_grad(), eager():
                gen = torch.Generator(device=x.device).manual_seed(self.seed)
                if callable(getattr(objective, "reconstruct", None)):
                    out = objective.reconstruct(x, valid, generator=gen, **kw)
                else:
                    out = objective.views(x, valid, generator=gen, **kw)
        finally:
            objective.train(was_training)
        if not self.write_files:
            return None
        rows = self._rows(out) if "reconstruction" in out else self._view_rows(x, valid, out)
        sheet, _ = compose(rows, cols=len(rows["input"]), min_size=MIN_SIZE)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step_{step:09d}.png"
        write_png(path, sheet)
        return path

    def _fit(self, seen: np.ndarray, v: np.ndarray) -> None:
        """Stretches from the manifest; shown pixels for what it lacks (first picture only)."""
        if not self.display.stretches:
            mod = self.info.modality
            fit_stretches(self.display, self.modality,
                          [{mod: s, f"{mod}_valid": m} for s, m in zip(seen, v, strict=True)])

    def _shown(self, mask: Tensor) -> np.ndarray:
        """(B, C, h, w) per-band mask -> (B, h, w): any displayed band masked."""
        idx = [self.info.bands.index(b) for ch in self.display.channels
               for b in (ch.plus, ch.minus) if b is not None]
        return mask[:, idx].any(1).cpu().numpy()

    def _view_rows(self, x: Tensor, valid: Tensor, out: dict[str, Tensor]
                   ) -> dict[str, list[np.ndarray]]:
        """Contrastive objectives: the input, view 1 (dropped tokens grey), view 2."""
        seen = self._raw(x)
        v = valid.cpu().numpy().astype(bool)
        self._fit(seen, v)
        return {"input": self._tiles(seen, v),
                "view1": self._tiles(self._raw(out["view1"]),
                                     out["valid1"].cpu().numpy().astype(bool),
                                     self._shown(out["dropped1"])),
                "view2": self._tiles(self._raw(out["view2"]),
                                     out["valid2"].cpu().numpy().astype(bool))}

    def _rows(self, out: dict[str, Tensor]) -> dict[str, list[np.ndarray]]:
        """Masked-image objectives: the input, the hidden pixels grey, the reconstruction."""
        seen = self._raw(out["input"])
        v = out["valid"].cpu().numpy().astype(bool)
        self._fit(seen, v)
        hidden = self._shown(out["masked"])
        predicted = out.get("predicted")
        unpredicted = hidden & self._shown(~predicted) if predicted is not None else None
        return {"input": self._tiles(seen, v),
                "masked": self._tiles(seen, v, hidden),
                "reconstruction": self._tiles(self._raw(out["reconstruction"]), v, unpredicted)}
