"""AutoLoRA (Zhang et al., NAACL 2024, arXiv 2403.09113) on the `bilevel` engine.

Learns a LoRA rank per weight matrix: every adapted matrix gets k gated rank-1 components, the LoRA weights are
trained on one split and the gates (selection logits) on another through a hypergradient; components whose
softmax weight passes a threshold are kept, and a fresh PEFT LoRA with those ranks is retrained.

    autolora demo                      # the whole pipeline offline on MiniLM
    autolora run --model-name-or-path PATH --train-file train.jsonl --validation-file dev.jsonl --output-dir out

Python API: `autolora.pipeline` (run/search/retrain/report: files in an output folder), the in-memory steps under
it (`search_ranks`, `retrain_lora`), the task kinds (`autolora.tasks`) and the building blocks re-exported here.
"""
from .config import AutoLoraConfig, DataConfig, RetrainConfig, RunConfig, SearchConfig
from .export import build_peft_model, peft_config_dict
from .injection import gated_layers, inject_gated_lora, lower_parameters, upper_parameters
from .layers import GatedLoraLinear
from .ranks import RankResult, compute_ranks, load_ranks, save_ranks
from .retrain import retrain_lora
from .search import SearchResult, build_search_engine, search_ranks

__all__ = ["AutoLoraConfig", "SearchConfig", "RetrainConfig", "RunConfig", "DataConfig", "GatedLoraLinear",
           "inject_gated_lora", "gated_layers", "lower_parameters", "upper_parameters", "RankResult", "compute_ranks",
           "save_ranks", "load_ranks", "peft_config_dict", "build_peft_model", "SearchResult", "search_ranks",
           "build_search_engine", "retrain_lora"]
