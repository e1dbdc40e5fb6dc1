"""The autodiff room: how batches reach the losses (:mod:`.batches`), first derivatives averaged over micro-batches
and ranks (:mod:`.gradients`), second-derivative products, exact or by finite differences (:mod:`.products`), and
both compiled (:mod:`.compiled`)."""
from .batches import MicroBatches, StepBatches, mean_over_parts, parts, per_step_batches
from .gradients import loss_gradients
from .compiled import compile_gradients, compiled_matvec, compiled_products
from .products import InnerHessian, finite_difference_mixed_product, finite_difference_products

__all__ = ["MicroBatches", "StepBatches", "mean_over_parts", "parts", "per_step_batches", "loss_gradients",
           "InnerHessian", "finite_difference_mixed_product", "finite_difference_products", "compiled_matvec",
           "compiled_products", "compile_gradients"]
