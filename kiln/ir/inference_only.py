"""What Kiln refuses because it compiles inference: what eager PyTorch computes differently on
every call (random numbers), or only in training (the batch's statistics, with running ones
updated in place). Refused by name, where they come from, with what to do instead: the numbers
a compiled module gives must be the ones eager gives.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from kiln.errors import FrontendError
from kiln.ir.source import where


def refuse_training_mode(model: torch.nn.Module) -> None:
    """A submodule left in training mode that computes something else there than in eval mode
    (batch norm: the batch's statistics, and it updates its running ones; dropout: random) is
    refused by name. Kiln compiles inference, which is eval mode; eager PyTorch would run the
    model in the mode it was left in, and the numbers would differ."""
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.dropout import _DropoutNd
    from torch.nn.modules.instancenorm import _InstanceNorm

    differing = []
    for name, module in model.named_modules():
        if not module.training:
            continue
        if isinstance(module, (_BatchNorm, _InstanceNorm)) and module.track_running_stats:
            differing.append(f"{name or type(model).__name__} ({type(module).__name__}: the batch's statistics)")
        elif isinstance(module, (_DropoutNd, torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)) and module.p > 0 or \
                isinstance(module, torch.nn.RNNBase) and module.dropout > 0 and module.num_layers > 1:
            differing.append(f"{name or type(model).__name__} ({type(module).__name__}: random)")
    if differing:
        more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
        raise FrontendError(
            f"{type(model).__name__} is in training mode, where {', '.join(differing[:3])}{more} compute other numbers "
            "than in inference; Kiln compiles inference: call model.eval() before kiln.compile")


def refuse_training_ops(module: fx.GraphModule) -> None:
    """An op that draws random numbers (dropout in training mode, `randn_like`, `bernoulli`)
    gives other numbers on every eager call: a compiled module could only freeze one draw or make
    its own. A batch or instance norm that updates running statistics is training. Each is
    refused by name, where it came from."""
    for node in module.graph.nodes:
        if node.op == "call_function" and _draws_random_numbers(node):
            raise FrontendError(
                f"{node.target} (node '{node.name}') draws random numbers: eager PyTorch gives other numbers on "
                "every call, which a compiled module cannot reproduce. For inference, call model.eval() (dropout) "
                f"or pass the random tensor in as an input{where(node)}")
        if node.op == "call_function" and _updates_running_statistics(node):
            raise FrontendError(
                f"{node.target} (node '{node.name}') normalizes by the batch's statistics and updates the running "
                "statistics it is given in place: that is training. Kiln compiles inference: call model.eval() (or "
                f"pass training=False / use_input_stats=False){where(node)}")


def _updates_running_statistics(node: fx.Node) -> bool:
    """Batch norm in training, or instance norm from the input's statistics, given running
    statistics: eager updates them in place (training's bookkeeping)."""
    aten = torch.ops.aten
    if node.target not in (aten.batch_norm.default, aten.instance_norm.default, aten.native_batch_norm.default,
                           aten._native_batch_norm_legit.default, aten._native_batch_norm_legit_functional.default):
        return False
    training = node.args[5] if len(node.args) > 5 else node.kwargs.get("training", node.kwargs.get("use_input_stats"))
    return bool(training) and any(statistic is not None for statistic in node.args[3:5])


def _draws_random_numbers(node: fx.Node) -> bool:
    """An op torch tags as seeded-random, unless its own arguments switch the randomness off:
    dropout (and the recurrent layers' and attention's dropout) outside training or at p = 0."""
    if torch.Tag.nondeterministic_seeded not in getattr(node.target, "tags", ()):
        return False
    arguments = {argument.name: argument.default_value for argument in node.target._schema.arguments}
    arguments.update(zip(list(arguments), node.args))
    arguments.update(node.kwargs)
    training = next((arguments[name] for name in ("train", "training") if name in arguments), True)
    probability = next((arguments[name] for name in ("p", "dropout", "dropout_p") if name in arguments), 1.0)
    return training is not False and probability != 0
