"""AutoLoRA (Zhang et al., NAACL 2024, arXiv 2403.09113) on the `bilevel` engine.

Learns a LoRA rank per weight matrix: every adapted matrix gets k gated rank-1 components, the LoRA weights are
trained on one split and the gates (selection logits) on another through a hypergradient; components whose
softmax weight passes a threshold are kept, and a fresh PEFT LoRA with those ranks is retrained.

    autolora demo                      # the whole pipeline offline on MiniLM
    autolora run --model-name-or-path PATH --train-file train.jsonl --validation-file dev.jsonl --output-dir out

Python API: `autolora.pipeline` (run/search/retrain/report) and the building blocks re-exported here.
"""
from .config import AutoLoraConfig, RetrainConfig, RunConfig, SearchConfig
from .export import build_peft_model, peft_config_dict
from .injection import gated_layers, inject_gated_lora, lower_parameters, upper_parameters
from .layers import GatedLoraLinear
from .ranks import RankResult, compute_ranks, load_ranks, save_ranks
from .search import SearchResult

__all__ = ["AutoLoraConfig", "SearchConfig", "RetrainConfig", "RunConfig", "GatedLoraLinear", "inject_gated_lora",
           "gated_layers", "lower_parameters", "upper_parameters", "RankResult", "compute_ranks", "save_ranks",
           "load_ranks", "peft_config_dict", "build_peft_model", "SearchResult"]
