"""A run's records: one JSON object per line in ``log.jsonl``, and a PNG of the loss curves.

Records have a ``kind``: ``step`` (``step``, ``epoch``, ``loss``, ``parts``, ``lr``,
``grad_norm``, ``scene``, ``chunk`` = [first, last] region of the step's last chunk, ``scenes``,
``chunks``, ``seconds``), ``validation`` (``step`` and the validator's scores), ``checkpoint``,
``start`` / ``resume`` / ``end``. A resumed run first drops the records of steps after its
checkpoint: they are trained again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xtstream._runtime.atomic import replacing


class RunLog:
    """Append-only JSONL records (flushed per record: a killed run keeps what it wrote)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_plain) + "\n")

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a kill mid-write
                continue
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
        return out

    def truncate_after(self, step: int) -> None:
        """Drop step and validation records past ``step`` (they will be trained again)."""
        keep = [r for r in self.records() if r.get("kind") not in ("step", "validation") or r["step"] <= step]
        with replacing(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def plot(self, png: str | Path) -> Path | None:
        """Loss (and its parts, and validation scores when there are any) against the step."""
        steps = self.records("step")
        if not steps:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        vals = self.records("validation")
        fig, axes = plt.subplots(1, 2 if vals else 1, figsize=(11 if vals else 7, 4), squeeze=False)
        ax = axes[0][0]
        x = [r["step"] for r in steps]
        ax.plot(x, [r["loss"] for r in steps], lw=0.6, alpha=0.4, label="loss")
        ax.plot(x, _smooth([r["loss"] for r in steps]), lw=1.5, label="loss (moving mean)")
        for name in sorted({k for r in steps for k in r.get("parts", {})}):
            pts = [(r["step"], r["parts"][name]) for r in steps if name in r.get("parts", {})]
            ax.plot([p[0] for p in pts], _smooth([p[1] for p in pts]), lw=1, ls="--", label=name)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("loss")
        if all(r["loss"] > 0 for r in steps):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.set_title("training loss")
        if vals:
            ax = axes[0][1]
            for name in sorted({k for r in vals for k, v in r.items() if isinstance(v, (int, float))
                                and k not in ("step", "epoch", "seconds")}):
                pts = [(r["step"], r[name]) for r in vals if isinstance(r.get(name), (int, float))]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            ax.set_xlabel("optimiser step")
            ax.set_title("validation")
            ax.legend(fontsize=7)
        fig.tight_layout()
        png = Path(png)
        try:
            with replacing(png, ".tmp.png") as tmp:
                fig.savefig(tmp, dpi=100)
        finally:
            plt.close(fig)
        return png


def _smooth(values: list[float], window: int | None = None) -> list[float]:
    """Trailing moving mean over ``window`` values (default: ~2% of the run, at least 1)."""
    window = window or max(1, len(values) // 50)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)
