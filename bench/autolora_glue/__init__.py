"""AutoLoRA against uniform LoRA, AdaLoRA and full fine-tuning on SST-2, CoLA and STS-B (real data, real MiniLM).

Every method trains its final model for the same number of optimizer steps at the same batch size on the same
training data, and is scored on the task's evaluation file, which nothing here ever tunes on. Per task and seed:

- ``autolora``: AutoLoRA search (k = 8, default method) then PEFT LoRA retrained with the learned ranks;
- ``autolora_identity``: the same with the original code's identity-inverse-Hessian hypergradient;
- ``autolora_nometa``: the paper's ablation without meta learning (selection logits trained jointly with the
  LoRA weights on the training data), then the same retraining;
- ``autolora_budget``: the search with k = 16, its ranks read by the ``budget`` rule at uniform r = 8's parameter
  count (a total rank of 8 per matrix when all targets have one shape, else 8 x the sum of in + out), then the
  same retraining: AutoLoRA's placement at r = 8's budget;
- ``lora_r1`` ... ``lora_r8``: uniform PEFT LoRA on the same targets, the grid AutoLoRA replaces;
- ``lora_shuffled``: the control for the search itself: PEFT LoRA with this seed's AutoLoRA ranks randomly
  permuted across the target matrices (same rank budget, same parameter count, placement not searched);
- ``lora_shuffled_budget``: the same control for ``autolora_budget``, its ranks permuted only among matrices of
  the same shape, so the parameter count stays exactly the same;
- ``adalora``: PEFT AdaLoRA with init_r = k and target_r = the mean rank AutoLoRA found for this task and seed;
- ``full``: full fine-tuning.

Learning rates are chosen first, on the training data alone (``calibration``): LoRA r = 8, AdaLoRA and full
fine-tuning are trained on 85% of the training rows at each learning rate of the setting's grid and scored on the
other 15%; the best LoRA rate serves every LoRA-family method (grid, AutoLoRA search and retraining), the others
their own family. With ``--lr-per-method`` every uniform rank and AutoLoRA's retraining (after a search on the
same 85%) get their own rate the same way; the search keeps r = 8's rate, since its k = 8 components train at r = 8's
scaling. The search's gate learning rate and length are fixed by the setting, never tuned.

The targets are query and value (``--targets qv``, the default) or every linear layer but the head
(``--targets all-linear``, results in their own folder). Each searched run also records what the search left in
every matrix (gates, component contributions, singular values of the gated update, shape), so that another rank
rule can be applied to it later. ``--model-dir`` (or ``$AUTOLORA_GLUE_MODEL_DIR``) and ``--data-dir`` point the
benchmark at a copied model and data (bench/gpu_equal_budget.py does, on a GPU machine).

The package: `settings` (what a setting is, the methods), `training` (one run of one method), `calibration`
(learning rates), `probes` (--find-budget, --search-probe), `table` (statistics and table.md), `main` (the driver
and the command line). It runs as ``python bench/autolora_glue.py`` or ``python -m bench.autolora_glue``.

Results go to ``<out>/runs.jsonl`` (one line per finished run, so a stopped run keeps what finished and a rerun
skips it) and ``<out>/table.md`` (rewritten after every run): mean +- std over seeds of the metric, trainable
parameters, wall time, each difference to AutoLoRA against the seed noise, and the cost of the rank grid against
one AutoLoRA run.

    python bench/autolora_glue.py --setting smoke      # minutes: the test suite runs this on SST-2
    python bench/autolora_glue.py --setting cpu        # about 2 hours on 2 CPU cores
    python bench/autolora_glue.py --setting cpu_long --methods autolora autolora_nometa lora_r2 lora_r4 lora_r8 \
        lora_shuffled                                  # STS-B with a 90-step search: about 2 hours
    python bench/autolora_glue.py --setting cpu_long --lr-per-method --methods autolora lora_r8 lora_shuffled \
        lora_r4 lora_r2                                # the same, every method at its own calibrated rate
    python bench/autolora_glue.py --setting cpu_long --methods autolora_budget lora_r8 lora_shuffled_budget \
        [--targets all-linear]                         # the equal-budget comparison
    python bench/autolora_glue.py --setting gpu        # full training sets, longer training, on a GPU
"""
from .calibration import calibrate
from .main import default_out, load_records, main, quiet_libraries, reusable_records, run
from .probes import find_budget, search_probe
from .settings import (BUDGET_K, BUDGET_RANK, DATA_DIR, GRID_RANKS, K, METHODS, MODEL_DIR_ENV, NEEDS, SETTINGS,
                       TARGETS, TASKS, Setting, check_definition, definition)
from .table import difference_to, render_table, seed_agreement
from .training import (FAMILIES, equal_budget, families_for, family_of, final_rate, fresh_model, load_task,
                       lora_config, model_dir, retrain_config, run_one, run_search, shuffled_ranks,
                       shuffled_within_shapes, target_names, target_shapes, train_adalora, train_family, train_full,
                       train_lora)

__all__ = ["main", "run", "default_out", "load_records", "reusable_records", "quiet_libraries", "calibrate",
           "find_budget", "search_probe", "Setting", "SETTINGS", "definition", "check_definition", "METHODS",
           "NEEDS", "TASKS", "TARGETS", "GRID_RANKS", "K", "BUDGET_K", "BUDGET_RANK", "DATA_DIR", "MODEL_DIR_ENV",
           "render_table", "difference_to", "seed_agreement", "FAMILIES", "family_of", "families_for", "final_rate",
           "load_task", "model_dir", "fresh_model", "lora_config", "target_names", "target_shapes", "equal_budget",
           "retrain_config", "train_lora", "train_full", "train_adalora", "train_family", "run_search", "run_one",
           "shuffled_ranks", "shuffled_within_shapes"]
