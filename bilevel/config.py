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
    checkpoint_dir: Optional[str] = field(default=None, metadata={"help": "Save the full bilevel state here."})
    checkpoint_every: int = field(default=0, metadata={"help": "Save a checkpoint every N outer steps (0: only at the end)."})
    resume: bool = field(default=False, metadata={"help": "Continue from the checkpoint in checkpoint_dir if there is one."})
    reuse_inner_gradient: bool = field(default=False, metadata={
        "help": "DARTS' order: each outer step first computes the hypergradient at the current inner parameters, "
                "then takes the first inner step with the inner gradient the method computed anyway (finite "
                "difference, unroll), saving one forward and backward pass per outer step."})
    accumulation_steps: int = field(default=1, metadata={
        "help": "Micro-batches per step for both levels: gradients, Hessian-vector products and finite-difference "
                "passes are averaged over them, one micro-batch in memory at a time."})
    inner_grad_clip: Optional[float] = field(default=None, metadata={"help": "Clip the inner gradient norm to this."})
    outer_grad_clip: Optional[float] = field(default=None, metadata={"help": "Clip the hypergradient norm to this."})
    autocast_dtype: Optional[str] = field(default=None, metadata={
        "help": "Run forward passes under torch.autocast with 'bfloat16' or 'float16' (None: full precision)."})
    compile_gradients: bool = field(default=False, metadata={
        "help": "Take the inner steps' and the methods' gradients from one torch.compile'd torch.func gradient per "
                "loss (bilevel.autodiff.compile_gradients): the same numbers up to rounding, faster on large "
                "parameters after seconds of compilation; for losses without dropout or BatchNorm statistics that "
                "torch.compile can trace."})

    def __post_init__(self):
        for name in ("outer_steps", "log_every", "accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EngineConfig: {name} must be an integer >= 1, got {value!r}")
        for name in ("inner_steps", "warmup_inner_steps", "validate_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"EngineConfig: {name} must be an integer >= 0, got {value!r}")
        for name in ("inner_grad_clip", "outer_grad_clip"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"EngineConfig: {name} must be > 0 or None, got {value!r}")
        if self.autocast_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"EngineConfig: autocast_dtype must be None, 'bfloat16' or 'float16', "
                             f"got {self.autocast_dtype!r}")
        if not isinstance(self.compile_gradients, bool):
            raise ValueError(f"EngineConfig: compile_gradients must be True or False, got {self.compile_gradients!r}")
        if self.compile_gradients and self.autocast_dtype == "float16":
            raise ValueError("EngineConfig: compile_gradients takes no float16 loss scaling; use autocast_dtype="
                             "'bfloat16' or None, or compile_gradients=False")
        if (self.resume or self.checkpoint_every) and not self.checkpoint_dir:
            raise ValueError("EngineConfig: resume and checkpoint_every need checkpoint_dir; set checkpoint_dir")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EngineConfig":
        return cls(**json.loads(text))
