"""This library against higher, TorchOpt and betty-ml on the same hypergradients: time, peak memory, error.

Workloads:
  mlp      an MLP (10-32-3, tanh, float64) with one learned weight decay exp(x_i) per parameter entry, inner solved
           by L-BFGS, so the exact hypergradient (dense Hessian solve, method ``exact``) is the reference;
  autolora a BERT-style encoder from config (``--size``: hidden/layers), gated LoRA (k = 8) on query/value through
           ``autolora.injection``, batch 32 x length 64, float32; LoRA weights and head inner, selection logits
           outer. The inner level is not at an optimum, so there is no exact reference: each peer is compared with
           this library's value for the same mathematics.

Groups of the same mathematics (each peer as its documentation and source say):
  unroll:K     K differentiable SGD steps: ours ``Unroll``; higher ``innerloop_ctx``; TorchOpt ``MetaSGD`` (mlp) or
               its functional ``sgd`` + ``apply_updates`` (autolora: MetaSGD steps every parameter of a module, and
               the LoRA weights and the logits share modules).
  cg:K         K CG iterations on H q = grad_w f: ours ``ConjugateGradient(K, tol=1e-30)``; TorchOpt ``custom_root``
               with ``linear_solve.solve_cg(maxiter=K)``; betty ``type="cg"`` with ``cg_iterations=K``.
  neumann:K    alpha * sum_{i<=K} (I - alpha H)^i b with a fixed alpha = 0.5 / lambda_max (K products): ours
               ``Neumann(K, step=alpha)``;
               TorchOpt ``solve_inv(ns=True, maxiter=K, alpha=alpha)``; betty ``type="neumann"``.
  darts        betty ``type="darts"`` against ours ``identity_implicit`` (the same formula) and ``finite_difference``
               (the one-step unroll that DARTS approximates).

Protocol: one process; per group the contenders run in alternation (A B C A B C ...) after one warm-up each, so
machine noise cancels in the ratios; the median time is reported. Peak memory: ``bilevel.compare.memory`` (CPU:
peak bytes of tensor storages created during the call and alive together; CUDA: max_memory_allocated).
A second part checks betty's defects with numbers (``--no-claims`` skips it).

    python bench/peers.py [--workloads mlp autolora] [--repeats 7] [--size small|base] [--threads 2] [--device cuda]
    python bench/peers.py --profile --repeats 30   # backward calls per hypergradient, autograd engine's share
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

import bilevel
from bilevel import params as P
from bilevel.autodiff import InnerHessian
from bilevel.compare import BilevelProblem, cosine, relative_error
from bilevel.compare.memory import peak_memory
from bilevel.solvers import largest_eigenvalue
from torch.utils._pytree import tree_map

SIZES = {"small": dict(hidden=32, layers=2, heads=2, vocab=1000), "base": dict(hidden=256, layers=4, heads=4, vocab=4000)}


@dataclass
class Workload(BilevelProblem):
    """A bilevel problem (the snapshot ``compare`` uses) with the module behind it, for the peers that need one."""

    model: Optional[torch.nn.Module] = None
    forward: Optional[Callable] = None  # forward(batch, params dict) -> loss without regularisation
    device: torch.device = torch.device("cpu")

    def to(self, device: str) -> "Workload":
        """Move the module, parameters and batches (built on CPU) to ``device``."""
        move = lambda tree: tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tree)
        self.model.to(device)
        self.inner_params, self.outer_params, self.inner_batch, self.outer_batch = map(
            move, (self.inner_params, self.outer_params, self.inner_batch, self.outer_batch))
        self.device = torch.device(device)
        return self

    def ours(self, method) -> Dict[str, torch.Tensor]:
        return bilevel.hypergradient(self.inner_loss, self.outer_loss, self.inner_params, self.outer_params,
                                     self.inner_batch, self.outer_batch, method)


def mlp_workload(seed: int = 0) -> Workload:
    torch.manual_seed(seed)
    dtype = torch.float64
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).to(dtype)
    teacher = torch.randn(10, 3, dtype=dtype)
    make = lambda n: (lambda x: (x, (x @ teacher + 0.5 * torch.randn(n, 3, dtype=dtype)).argmax(-1)))(
        torch.randn(n, 10, dtype=dtype))
    train, val = make(256), make(256)
    inner = {k: v.detach().clone() for k, v in model.named_parameters()}
    outer = {k: torch.full_like(v, -4.0) for k, v in inner.items()}  # log weight decay per entry

    def forward(batch, params):  # the Sequential written as a function of the parameter dict
        hidden = torch.tanh(batch[0] @ params["0.weight"].T + params["0.bias"])
        return F.cross_entropy(hidden @ params["2.weight"].T + params["2.bias"], batch[1])

    def inner_loss(w, x, batch):
        return forward(batch, w) + 0.5 * sum((torch.exp(x[k]) * w[k] ** 2).sum() for k in w)

    def outer_loss(w, x, batch):
        return forward(batch, w)

    leaves = {k: v.clone().requires_grad_(True) for k, v in inner.items()}
    optimizer = torch.optim.LBFGS(list(leaves.values()), lr=1, max_iter=2000, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = inner_loss(leaves, outer, train)
        loss.backward()
        return loss

    optimizer.step(closure)
    inner = {k: v.detach() for k, v in leaves.items()}
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(inner[k])
    return Workload(inner_loss, outer_loss, inner, outer, train, val, inner_lr=0.1, name="mlp", model=model,
                    forward=forward)


def autolora_workload(size: str, seed: int = 0) -> Workload:
    import transformers
    from autolora.config import AutoLoraConfig
    from autolora.injection import inject_gated_lora, lower_parameters, upper_parameters

    torch.manual_seed(seed)
    s = SIZES[size]
    config = transformers.BertConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                                     num_attention_heads=s["heads"], intermediate_size=4 * s["hidden"],
                                     max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0, initializer_range=0.2,
                                     attention_probs_dropout_prob=0.0, attn_implementation="eager")
    model = transformers.BertForSequenceClassification(config).eval()
    inject_gated_lora(model, AutoLoraConfig(k=8, target_modules=["query", "value"], lora_dropout=0.0))
    model.eval()  # the injected layers are new modules in training mode
    with torch.no_grad():  # B = 0 at initialisation makes the logits' gradient vanish; start from trained-looking B
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)
    g = torch.Generator().manual_seed(seed)
    make = lambda: {"input_ids": torch.randint(0, s["vocab"], (32, 64), generator=g),
                    "labels": torch.randint(0, 2, (32,), generator=g)}
    train, val = make(), make()
    inner = {k: v.detach() for k, v in lower_parameters(model).items()}
    outer = {k: v.detach() for k, v in upper_parameters(model).items()}

    def forward(batch, params):
        return torch.func.functional_call(model, params, kwargs=batch).loss

    def loss(w, x, batch):
        return forward(batch, {**w, **x})

    return Workload(loss, loss, inner, outer, train, val, inner_lr=1e-2, name="autolora", model=model, forward=forward)


# ---- peers: each returns a function () -> dict of outer gradients ----------------------------------------------

def higher_unroll(work: Workload, steps: int) -> Callable:
    import higher

    names = list(work.inner_params)
    params = {k: p for k, p in work.model.named_parameters()}
    outer_leaves = {k: v.clone().requires_grad_(True) for k, v in work.outer_params.items()}
    regularised = work.name == "mlp"

    def run():
        for k in names:
            params[k].requires_grad_(True)
        # for the MLP the outer parameters are separate tensors; for AutoLoRA they are module parameters
        outer_tensors = outer_leaves if regularised else {k: params[k] for k in work.outer_params}
        optimizer = torch.optim.SGD([params[k] for k in names], lr=work.inner_lr)
        with higher.innerloop_ctx(work.model, optimizer, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(steps):
                fast = dict(zip([k for k, _ in work.model.named_parameters()], fmodel.parameters()))
                loss = _module_loss(work, fmodel, work.inner_batch)
                if regularised:
                    loss = loss + 0.5 * sum((torch.exp(outer_tensors[k]) * fast[k] ** 2).sum() for k in names)
                diffopt.step(loss)
            outer = _module_loss(work, fmodel, work.outer_batch)
            grads = torch.autograd.grad(outer, list(outer_tensors.values()), allow_unused=True)
        return P.fill_missing_grads(grads, outer_tensors)

    return run


def _module_loss(work, module, batch):
    if work.name == "mlp":
        return F.cross_entropy(module(batch[0]), batch[1])
    return module(**batch).loss


def torchopt_unroll(work: Workload, steps: int) -> Callable:
    import torchopt

    if work.name == "mlp":
        outer_leaves = {k: v.clone().requires_grad_(True) for k, v in work.outer_params.items()}
        model = work.model

        def run():
            saved = torchopt.extract_state_dict(model)
            optimizer = torchopt.MetaSGD(model, lr=work.inner_lr)
            for _ in range(steps):
                fast = dict(model.named_parameters())
                loss = _module_loss(work, model, work.inner_batch) + 0.5 * sum(
                    (torch.exp(outer_leaves[k]) * fast[k] ** 2).sum() for k in fast)
                optimizer.step(loss)
            grads = torch.autograd.grad(_module_loss(work, model, work.outer_batch), list(outer_leaves.values()))
            torchopt.recover_state_dict(model, saved)
            return dict(zip(outer_leaves, grads))

        return run
    sgd = torchopt.sgd(lr=work.inner_lr)

    def run_functional():
        w = {k: v.clone().requires_grad_(True) for k, v in work.inner_params.items()}
        x = {k: v.clone().requires_grad_(True) for k, v in work.outer_params.items()}
        state, fast = sgd.init(w), w
        for _ in range(steps):
            grads = torch.autograd.grad(work.inner_loss(fast, x, work.inner_batch), list(fast.values()), create_graph=True)
            updates, state = sgd.update(dict(zip(fast, grads)), state, inplace=False)
            fast = torchopt.apply_updates(fast, updates, inplace=False)
        return dict(zip(x, torch.autograd.grad(work.outer_loss(fast, x, work.outer_batch), list(x.values()))))

    return run_functional


def torchopt_implicit(work: Workload, solve) -> Callable:
    import torchopt

    names = list(work.inner_params)

    outer_names = list(work.outer_params)

    def optimality(w, x, batch):  # grad_w g(w, x): zero at the inner optimum
        return torch.func.grad(lambda ww: work.inner_loss(dict(zip(names, ww)), dict(zip(outer_names, x)), batch))(w)

    @torchopt.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
    def solution(w, x, batch):
        return w  # the inner parameters are given (at the optimum for the MLP)

    def run():
        x = {k: v.clone().requires_grad_(True) for k, v in work.outer_params.items()}
        w = solution(tuple(work.inner_params[k] for k in names), tuple(x.values()), work.inner_batch)
        loss = work.outer_loss(dict(zip(names, w)), x, work.outer_batch)
        return P.fill_missing_grads(torch.autograd.grad(loss, list(x.values()), allow_unused=True), x)

    return run


class BettyLevels:
    """Two betty ``ImplicitProblem`` levels over our parameter dicts, driven through betty's own backward."""

    def __init__(self, work: Workload, **config):
        from betty.configs import Config
        from betty.problems import ImplicitProblem

        class Level(ImplicitProblem):
            def __init__(self, name, params, loss):
                super().__init__(name=name, config=Config(retain_graph=True, **config))
                self._params, self._loss = params, loss

            def parameters(self):
                return list(self._params.values())

            def trainable_parameters(self):
                return list(self._params.values())

            def training_step(self, batch):
                return self._loss(batch)

        self.work = work
        self.w = {k: v.clone().requires_grad_(True) for k, v in work.inner_params.items()}
        self.x = {k: v.clone().requires_grad_(True) for k, v in work.outer_params.items()}
        self.inner = Level("inner", self.w, lambda batch: work.inner_loss(self.w, self.x, batch))
        self.outer = Level("outer", self.x, lambda batch: work.outer_loss(self.w, self.x, batch))
        self.inner.cur_batch = work.inner_batch

    def __call__(self) -> Dict[str, torch.Tensor]:
        for p in self.x.values():
            p.grad = None
        loss = self.outer.training_step(self.work.outer_batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.outer.backward(loss, self.outer.trainable_parameters(), [[self.outer, self.inner, self.outer]],
                                create_graph=False, retain_graph=True, allow_unused=True)
        return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone() for k, p in self.x.items()}

    def reset(self) -> None:
        """Put the inner weights back (betty's darts leaves them moved)."""
        with torch.no_grad():
            for k, p in self.w.items():
                p.copy_(self.work.inner_params[k])


# ---- measurement ----------------------------------------------------------------------------------------------

def step_size(work: Workload) -> float:
    w, x = P.detached(work.inner_params, True), P.detached(work.outer_params, True)
    top, _ = largest_eigenvalue(InnerHessian(work.inner_loss, w, x, work.inner_batch).matvec,
                                P.grad(work.inner_loss(w, x, work.inner_batch), w), 30)
    return 0.5 / top


def groups(work: Workload, have: Dict[str, bool], k_cg: int, k_neumann: int, steps: int):
    """(group name, [(library, callable, reset or None)], note) for every group of the same mathematics."""
    alpha = step_size(work)
    result = []
    unroll = [("bilevel", lambda: work.ours(bilevel.methods.Unroll(steps=steps, lr=work.inner_lr)), None)]
    if have["higher"]:
        unroll.append(("higher", higher_unroll(work, steps), None))
    if have["torchopt"]:
        unroll.append(("torchopt", torchopt_unroll(work, steps), None))
    result.append((f"unroll:{steps}", unroll))
    cg = [("bilevel", lambda: work.ours(bilevel.methods.ConjugateGradient(k_cg, tol=1e-30)), None)]
    neumann = [("bilevel", lambda: work.ours(bilevel.methods.Neumann(k_neumann, step=alpha)), None)]
    if have["torchopt"]:
        import torchopt
        cg.append(("torchopt", torchopt_implicit(work, torchopt.linear_solve.solve_cg(maxiter=k_cg, rtol=1e-30)), None))
        neumann.append(("torchopt", torchopt_implicit(
            work, torchopt.linear_solve.solve_inv(ns=True, maxiter=k_neumann, alpha=alpha)), None))
    if have["betty"]:
        betty_cg = BettyLevels(work, type="cg", cg_iterations=k_cg, cg_alpha=1.0)
        betty_neumann = BettyLevels(work, type="neumann", neumann_iterations=k_neumann, neumann_alpha=alpha)
        cg.append(("betty", betty_cg, None))
        neumann.append(("betty", betty_neumann, None))
    result += [(f"cg:{k_cg}", cg), (f"neumann:{k_neumann} (alpha {alpha:.3g})", neumann)]
    darts = [("bilevel identity_implicit", lambda: work.ours(bilevel.methods.IdentityImplicit(epsilon=0.01)), None),
             ("bilevel finite_difference", lambda: work.ours(bilevel.methods.FiniteDifference(lr=work.inner_lr)), None)]
    if have["betty"]:
        betty_darts = BettyLevels(work, type="darts", darts_alpha=0.01)
        darts.append(("betty darts", betty_darts, betty_darts.reset))
    result.append(("darts", darts))
    return result


def timed(call: Callable, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    call()
    sync()
    return time.perf_counter() - start


def run_group(name, contenders, reference, repeats, device):
    values = {}
    for library, call, reset in contenders:  # warm-up; the values reported
        values[library] = call()
        if reset:
            reset()
    times = {library: [] for library, _, _ in contenders}
    for r in range(repeats):  # A B C, B C A, ...: alternation with a rotating start
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for library, call, reset in order:
            times[library].append(timed(call, device))
            if reset:
                reset()
    rows = []
    ours = values[contenders[0][0]]
    for library, call, reset in contenders:
        memory, _ = peak_memory(call, device)
        if reset:
            reset()
        error = relative_error(values[library], reference) if reference is not None else float("nan")
        rows.append(dict(group=name, library=library, ms=1e3 * statistics.median(times[library]), mem=memory,
                         error=error, vs_ours=relative_error(values[library], ours),
                         cos=cosine(values[library], reference if reference is not None else ours)))
    return rows


def print_rows(work_name, rows, reference_name):
    print(f"\n### {work_name} (error against: {reference_name})\n")
    print("| group | library | time (ms) | peak memory (MiB) | rel. error | cosine | rel. diff to ours (1st row) | "
          "time / fastest peer | memory / peer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group]
        peers = [r for r in members if not r["library"].startswith("bilevel")]
        fastest = min(peers, key=lambda r: r["ms"]) if peers else None
        for r in members:
            ratio = f"{r['ms'] / fastest['ms']:.2f}" if fastest and r["library"].startswith("bilevel") else ""
            mem_ratio = f"{r['mem'] / fastest['mem']:.2f}" if fastest and r["library"].startswith("bilevel") else ""
            print(f"| {group} | {r['library']} | {r['ms']:.1f} | {r['mem'] / 2**20:.2f} | {r['error']:.2e} | "
                  f"{r['cos']:+.4f} | {r['vs_ours']:.2e} | {ratio} | {mem_ratio} |")


# ---- betty's defects, with numbers ----------------------------------------------------------------------------

def betty_claims(work: Workload, reference) -> None:
    print(f"\n### betty-ml defects, measured on {work.name}\n")
    lr = work.inner_lr
    levels = BettyLevels(work, type="darts", darts_alpha=0.01)
    before = {k: v.detach().clone() for k, v in levels.w.items()}
    darts = levels()
    drift = float(P.norm(P.sub(P.detached(levels.w), before)))
    identity = work.ours(bilevel.methods.IdentityImplicit(epsilon=0.01))
    one_step = work.ours(bilevel.methods.Unroll(steps=1, lr=lr))
    direct = work.ours(bilevel.methods.FirstOrder())
    print(f"- darts vs identity_implicit (same formula): rel. diff {relative_error(darts, identity):.2e}")
    print(f"- darts vs the exact one-step unroll at inner lr {lr}: rel. diff {relative_error(darts, one_step):.2e}, "
          f"cosine {cosine(darts, one_step):+.3f}; second-order term ratio ||darts - direct|| / ||unroll - direct|| = "
          f"{float(P.norm(P.sub(darts, direct)) / P.norm(P.sub(one_step, direct))):.1f} (1/lr = {1 / lr:.0f})")
    print(f"- darts leaves the inner weights moved by ||dw|| = {drift:.3e} after one hypergradient "
          f"(||w|| = {float(P.norm(before)):.3e}); ours moves them by 0")
    if reference is not None:
        for k in (10, 50, 200):
            ours = work.ours(bilevel.methods.ConjugateGradient(k, tol=1e-30))
            line = [f"- cg, {k} iterations: ours rel. error {relative_error(ours, reference):.2e}"]
            for alpha in (1.0, 0.5):
                value = BettyLevels(work, type="cg", cg_iterations=k, cg_alpha=alpha)()
                line.append(f"betty (cg_alpha={alpha}) {relative_error(value, reference):.2e}")
            print("; ".join(line))
    alpha = 6 * step_size(work)  # 3 / lambda_max: outside the convergence region (0, 2 / lambda_max)
    value = BettyLevels(work, type="neumann", neumann_iterations=50, neumann_alpha=alpha)()
    norm = float(P.norm(value))
    try:
        work.ours(bilevel.methods.Neumann(51, step=alpha))
        ours = "returned a value"
    except bilevel.solvers.SolverDivergedError as error:
        ours = f"raises SolverDivergedError ({str(error)[:70]}...)"
    print(f"- neumann with alpha = 3 / lambda_max = {alpha:.3g}, 50 terms: betty returns a hypergradient of norm "
          f"{norm:.3e} without a warning" + (f" (reference norm {float(P.norm(reference)):.3e})" if reference
                                             is not None else "") + f"; ours {ours}")


def autograd_profile(call: Callable, repeats: int) -> tuple:
    """(backward calls per hypergradient, share of the wall time inside PyTorch's autograd engine), by cProfile."""
    import cProfile
    import pstats

    call()
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for _ in range(repeats):
        call()
    profile.disable()
    wall = time.perf_counter() - start
    engine = [(stats[1], stats[3]) for key, stats in pstats.Stats(profile).stats.items()
              if key[2] == "<method 'run_backward' of 'torch._C._EngineBase' objects>"]
    calls, seconds = engine[0] if engine else (0, 0.0)
    return calls / repeats, seconds / wall


def print_profile(work: Workload, have: Dict[str, bool], k_cg: int, k_neumann: int, steps: int, repeats: int):
    """Where the time goes: the same autograd passes for the same mathematics, and how much of it is the engine."""
    print(f"\n### {work.name}: autograd passes per hypergradient (cProfile, {repeats} calls)\n")
    print("| group | library | backward calls | share of time in the autograd engine |\n|---|---|---|---|")
    for name, contenders in groups(work, have, k_cg, k_neumann, steps):
        for library, call, reset in contenders:
            calls, share = autograd_profile(call, repeats)
            if reset is not None:
                reset()
            print(f"| {name} | {library} | {calls:.0f} | {share:.2f} |")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["mlp", "autolora"], choices=["mlp", "autolora"])
    parser.add_argument("--size", default="small", choices=list(SIZES), help="AutoLoRA encoder size")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (memory: max_memory_allocated on cuda)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-claims", action="store_true", help="skip the betty defect checks")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: backward calls per hypergradient and the autograd engine's share")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    have = {}
    for name, module in (("higher", "higher"), ("torchopt", "torchopt"), ("betty", "betty")):
        try:
            __import__(module)
            have[name] = True
        except Exception as error:  # an import failure of a peer is reported, not fatal
            print(f"{name}: not usable ({type(error).__name__}: {error})")
            have[name] = False
    import importlib.metadata as md
    versions = {n: (md.version(d) if have[n] else "-") for n, d in
                (("higher", "higher"), ("torchopt", "torchopt"), ("betty", "betty-ml"))}
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads; " +
          ", ".join(f"{k} {v}" for k, v in versions.items()))
    for workload in args.workloads:
        work = (mlp_workload() if workload == "mlp" else autolora_workload(args.size)).to(args.device)
        if workload == "mlp":
            reference = work.ours(bilevel.methods.Exact())
            reference_name = f"exact dense solve ({sum(v.numel() for v in work.inner_params.values())} inner parameters)"
            k_cg, k_neumann, steps = 10, 10, 5
        else:
            reference, reference_name = None, "none (inner not at an optimum); rel. diff to ours is the check"
            k_cg, k_neumann, steps = 5, 5, 1
        if args.profile:
            print_profile(work, have, k_cg, k_neumann, steps, args.repeats)
            continue
        rows = []
        for name, contenders in groups(work, have, k_cg, k_neumann, steps):
            try:
                rows += run_group(name, contenders, reference, args.repeats, work.device)
            except Exception as error:
                print(f"{workload} {name}: failed: {type(error).__name__}: {error}")
        print_rows(f"{workload}" + (f" ({args.size})" if workload == "autolora" else ""), rows, reference_name)
        if have["betty"] and not args.no_claims:
            betty_claims(work, reference)


if __name__ == "__main__":
    main()
