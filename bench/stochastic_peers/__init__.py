"""The benchopt bilevel benchmark's own solvers (SOBA, AmIGO, F2SA) side by side with ours through the Engine.

Their code runs from a checkout outside this repository (``git clone`` of benchopt/benchmark_bilevel), never copied
here; it needs the ``benchopt`` extra (benchopt, jax). Modules: :mod:`.settings` (one set of steps for both sides),
:mod:`.theirs` (their solvers on JAX oracles over our data), :mod:`.ours` (the Engine on the batches their sampler
draws), :mod:`.lockstep` (our SOBA core in their loop order: equal iterates), :mod:`.report` (table, targets, plot).

    python -m bench.stochastic_peers --checkout /tmp/benchmark_bilevel --threads 1
"""
