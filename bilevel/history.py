"""A record of metrics per step, kept in memory and optionally mirrored to TensorBoard."""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Tuple


class MetricsHistory:
    """Rows of ``{"step": s, name: value, ...}``; ``series(name)`` gives ``[(step, value), ...]``."""

    def __init__(self, tensorboard_dir: Optional[str] = None):
        self.rows: List[Dict[str, float]] = []
        self._writer = None
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(tensorboard_dir)

    def log(self, step: int, **metrics: float) -> None:
        self.rows.append({"step": step, **metrics})
        if self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(name, value, step)

    def series(self, name: str) -> List[Tuple[int, float]]:
        return [(row["step"], row[name]) for row in self.rows if name in row]

    def last(self, name: str) -> Optional[float]:
        values = self.series(name)
        return values[-1][1] if values else None

    def to_json(self) -> str:
        return json.dumps(self.rows)

    def state_dict(self) -> Dict:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: Dict) -> None:
        self.rows = [dict(row) for row in state["rows"]]
