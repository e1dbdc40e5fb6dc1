"""Settings of the Engine's outer loop."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class EngineConfig:
    """How :class:`bilevel.Engine` loops; every field is validated on creation."""

    outer_steps: int = field(default=100, metadata={"help": "Number of outer (upper-level) updates."})
    inner_steps: int = field(default=1, metadata={"help": "Real inner optimizer steps before each outer update."})
    warmup_inner_steps: int = field(default=0, metadata={"help": "Inner steps run once before the first outer update."})
    validate_every: int = field(default=0, metadata={"help": "Call on_validate every N outer steps (0: only at the end)."})
    log_every: int = field(default=10, metadata={"help": "Record losses and diagnostics every N outer steps."})
    seed: Optional[int] = field(default=None, metadata={"help": "Seed torch's generators before running (None: leave them)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (tqdm, when installed)."})
    tensorboard_dir: Optional[str] = field(default=None, metadata={"help": "Also write metrics to TensorBoard here."})
    check_finite: bool = field(default=True, metadata={"help": "Stop with an error on a NaN/inf loss or hypergradient."})

    def __post_init__(self):
        for name in ("outer_steps", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EngineConfig: {name} must be an integer >= 1, got {value!r}")
        for name in ("inner_steps", "warmup_inner_steps", "validate_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"EngineConfig: {name} must be an integer >= 0, got {value!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EngineConfig":
        return cls(**json.loads(text))
