"""Activation ranges for INT8: one streaming pass over the calibration data, three ways to pick the clip.

`RangeCollector` keeps, per tensor, the exact max |x| and a histogram of |x| with a fixed number of bins
whose width doubles (adjacent bins merged pairwise) whenever a batch exceeds the covered range — so one
pass over any amount of data uses O(tensors × bins) memory and the histogram stays exact at its
resolution. From these, `amax(method)` gives the symmetric clip value per tensor:

- ``max``: the largest |x| seen (no clipping);
- ``percentile``: the |x| below which `percentile` % of the values lie (default 99.99);
- ``entropy``: the clip whose 127-level quantised distribution is closest to the observed one in
  Kullback-Leibler divergence (the TensorRT entropy calibration recipe, written from its description);
- ``mse``: the clip with the least expected squared quantisation error (clipping + rounding).

Activations are quantised symmetric (TensorRT's INT8 has zero point 0): scale = amax / 127.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import RtmwEdgeError

METHODS = ("entropy", "percentile", "max", "mse")
DEFAULT_BINS = 2048
INT8_LEVELS = 128  # |x| is mapped to 0..127


class AbsHistogram:
    """Histogram of |x| over [0, bins·width) with a doubling width, plus the exact max."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins < 2 * INT8_LEVELS or bins % 2:
            raise ValueError(f"bins must be an even number ≥ {2 * INT8_LEVELS}")
        self.bins = bins
        self.width = 0.0
        self.counts = np.zeros(bins, np.int64)
        self.max = 0.0
        self.count = 0

    def add(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, np.float32)).ravel()
        a = a[np.isfinite(a)]
        if a.size == 0:
            return
        top = float(a.max())
        self.max = max(self.max, top)
        self.count += int(a.size)
        if self.width == 0.0:
            if top == 0.0:
                self.counts[0] += a.size
                return
            self.width = top / (self.bins - 1)
        while top >= self.width * self.bins:  # grow: merge bin pairs, double the width
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([merged, np.zeros(self.bins - merged.size, np.int64)])
            self.width *= 2.0
        idx = np.minimum((a / self.width).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(idx, minlength=self.bins)

    # -- clip values
    def amax(self, method: str, percentile: float = 99.99) -> float:
        if method not in METHODS:
            raise RtmwEdgeError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
        if self.count == 0 or self.max == 0.0 or self.width == 0.0:
            return 0.0
        if method == "max":
            return self.max
        if method == "percentile":
            cum = np.cumsum(self.counts) / self.count
            i = int(np.searchsorted(cum, percentile / 100.0))
            return min(self.max, (i + 1) * self.width)
        if method == "mse":
            return min(self.max, self._mse_amax())
        return min(self.max, self._entropy_amax())

    def _mse_amax(self) -> float:
        """The clip with the least expected squared error: clipped values lose (|x| − clip)², the others
        the uniform rounding error step²/12 with step = clip/127 (bin centres stand for their values)."""
        used = int(np.flatnonzero(self.counts).max()) + 1
        hist = self.counts[:used].astype(np.float64)
        centres = (np.arange(used) + 0.5) * self.width
        step = max(1, used // 512)
        best, best_clip = np.inf, used * self.width
        for end in range(max(1, used // 64), used + 1, step):
            clip = end * self.width
            inside = hist[:end].sum()
            clipped = float(np.sum(hist[end:] * (centres[end:] - clip) ** 2))
            err = clipped + inside * (clip / (INT8_LEVELS - 1)) ** 2 / 12.0
            if err < best:
                best, best_clip = err, clip
        return best_clip

    def _entropy_amax(self) -> float:
        used = int(np.flatnonzero(self.counts).max()) + 1  # bins up to the last non-empty one
        hist = self.counts[:used].astype(np.float64)
        if used <= INT8_LEVELS:
            return used * self.width
        total = hist.sum()
        best_kl, best_end = np.inf, used
        # candidate clips: every bin end from 128 bins on (at most ~512 candidates)
        step = max(1, (used - INT8_LEVELS) // 512)
        for end in range(INT8_LEVELS, used + 1, step):
            p = hist[:end].copy()
            p[-1] += total - p.sum()  # the clipped values land in the last bin
            q = _quantize_expand(hist[:end], INT8_LEVELS)
            kl = _kl(p, q)
            if kl < best_kl:
                best_kl, best_end = kl, end
        return best_end * self.width

    # -- persistence
    def state(self) -> dict:
        return {"bins": self.bins, "width": self.width, "max": self.max, "count": self.count,
                "counts": self.counts.copy()}

    @classmethod
    def from_state(cls, state: dict) -> AbsHistogram:
        h = cls(int(state["bins"]))
        h.width, h.max, h.count = float(state["width"]), float(state["max"]), int(state["count"])
        h.counts = np.asarray(state["counts"], np.int64).copy()
        return h


def _quantize_expand(hist: np.ndarray, levels: int) -> np.ndarray:
    """Merge `hist` into `levels` groups of consecutive bins, then spread each group's total evenly over
    its non-empty bins (empty bins stay empty): the distribution INT8 can represent with this clip."""
    n = hist.size
    group = (np.arange(n) * levels) // n
    nonzero = hist > 0
    sums = np.bincount(group, weights=hist, minlength=levels)
    sizes = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
    per_bin = np.divide(sums, sizes, out=np.zeros_like(sums), where=sizes > 0)
    return np.where(nonzero, per_bin[group], 0.0)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of two unnormalised histograms; bins where p > 0 but q = 0 get a tiny q."""
    p = p / p.sum()
    qs = q.sum()
    if qs <= 0:
        return np.inf
    q = q / qs
    mask = p > 0
    qm = np.maximum(q[mask], 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / qm)))


class RangeCollector:
    """`AbsHistogram`s for a set of named tensors, updated batch by batch."""

    def __init__(self, names: Iterable[str], bins: int = DEFAULT_BINS) -> None:
        self.hists = {n: AbsHistogram(bins) for n in names}
        self.batches = 0

    def update(self, tensors: dict[str, np.ndarray]) -> None:
        for name, value in tensors.items():
            if name in self.hists:
                self.hists[name].add(value)
        self.batches += 1

    def amax(self, method: str, percentile: float = 99.99) -> dict[str, float]:
        return {n: h.amax(method, percentile) for n, h in self.hists.items()}

    def save(self, path) -> None:
        """One .npz: per tensor its histogram state (for re-choosing the method without the data)."""
        arrays = {}
        for i, h in enumerate(self.hists.values()):
            s = h.state()
            arrays[f"t{i}_counts"] = s["counts"]
            arrays[f"t{i}_meta"] = np.array([s["bins"], s["width"], s["max"], s["count"]], np.float64)
        names = np.array(list(self.hists), dtype=str)
        np.savez(path, names=names, batches=np.array(self.batches), **arrays)

    @classmethod
    def load(cls, path) -> RangeCollector:
        with np.load(path, allow_pickle=False) as z:
            names = list(z["names"])
            out = cls([], DEFAULT_BINS)
            for i, name in enumerate(names):
                meta = z[f"t{i}_meta"]
                out.hists[str(name)] = AbsHistogram.from_state(
                    {"bins": int(meta[0]), "width": meta[1], "max": meta[2], "count": int(meta[3]),
                     "counts": z[f"t{i}_counts"]})
            out.batches = int(z["batches"])
        return out
