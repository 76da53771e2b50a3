"""Which component is at fault: a bug in a third-party component is reported as one error naming it,
not as a traceback from deep inside the model or torch.

`check_forward` runs before training; `culprit` and `backward_culprit` name the component behind an
exception met in a training step.
"""

import torch
from torch import nn

from .components.base import GPTConfig
from .device import keep_random_state
from .errors import UserError
from .model import GPT


def component_specs(gpt: GPT, model) -> dict:
    """{module: the spec in `model` (a ModelSection) it was built from}, for every component of `gpt`."""
    t = gpt.transformer
    specs = {t.pos: model.positional, t.ln_f: model.norm}
    for block in t.h:
        specs |= {block.ln_1: model.norm, block.attn: model.attention, block.ln_2: model.norm,
                  block.mlp: model.feedforward}
    return specs


def check_forward(gpt: GPT, model) -> None:
    """One tiny forward pass of `gpt`, which `model` (a ModelSection) described, before training: a
    component whose forward raises, or returns anything but a tensor of its input's shape and dtype, is
    named as the culprit, instead of a traceback from the training step or from whichever later
    layer trips over its output. Batch 1, two tokens, without gradients, in evaluation mode, and with
    the random state put back, so that the run that follows is the same as without it."""
    t = gpt.transformer
    specs = component_specs(gpt, model)

    def same_as_input(module, args, output):
        x = args[0]
        if not (isinstance(output, torch.Tensor) and output.shape == x.shape and output.dtype == x.dtype):
            raise specs[module].error(f"its forward returned {_what(output)} for an input of {tuple(x.shape)} {x.dtype}; it "
                                      "must return a tensor of its input's shape and dtype")

    def embedded(module, args):  # `t.drop` receives what the positional module's embed(x, start) returned
        x, (B, T) = args[0], idx.shape
        if not (isinstance(x, torch.Tensor) and x.shape == (B, T, gpt.config.n_embd) and x.dtype == t.wte.weight.dtype):
            raise model.positional.error(f"its embed(x, start) returned {_what(x)}; it must return a tensor of x's shape "
                                         f"and dtype, {(B, T, gpt.config.n_embd)} {t.wte.weight.dtype}")

    idx = torch.zeros(1, min(2, gpt.config.block_size), dtype=torch.long, device=gpt.lm_head.weight.device)
    hooks = [t.drop.register_forward_pre_hook(embedded)]
    hooks += [module.register_forward_hook(same_as_input) for module in specs if module is not t.pos]
    training = gpt.training
    try:
        with torch.no_grad(), keep_random_state(idx.device):
            gpt.eval()(idx)
    except UserError:
        raise
    except Exception as e:
        module, method = culprit(e, specs)
        if module is None:
            raise
        raise specs[module].error(f"its {method}() raised", e) from e
    finally:
        for hook in hooks:
            hook.remove()
        gpt.train(training)


def exercise(kind: str, module: nn.Module, x: torch.Tensor, n_head: int) -> torch.Tensor:
    """A model component's output for x (B, T, C), of x's shape. A positional module has all three of its
    hooks run, as the model and attention would run them."""
    if kind != "positional":
        return module(x)
    q = k = x.view(*x.shape[:2], n_head, -1).transpose(1, 2)  # (B, nh, T, hs)
    q, k = module.rotate(q, k)
    bias = module.score_bias(x.size(1), x.size(1))
    out = module.embed(x) + (q + k).transpose(1, 2).reshape(x.shape)
    return out if bias is None else out + bias.sum()


def backward_culprit(e: BaseException, specs: dict, config: GPTConfig, device: torch.device) -> nn.Module | None:
    """Which plugin component of `specs` ({module: its ComponentSpec}) raised `e` in a backward pass: a
    backward's traceback holds no frame of the forward that built the graph, so each plugin component
    (one module per spec) runs forward and backward alone on a random input, and the first whose backward
    raises the same type of error is the one. None if `e` was not raised in a backward, or if no plugin
    component's backward fails alone (a bug of gptkit's or torch's, which wants its traceback)."""
    tb, in_backward = e.__traceback__, False
    while tb is not None:
        in_backward |= tb.tb_frame.f_code is torch.autograd.backward.__code__
        tb = tb.tb_next
    if not in_backward:
        return None
    checked = set()
    for module, spec in specs.items():
        if spec.built_in or not isinstance(module, nn.Module) or id(spec) in checked:
            continue
        checked.add(id(spec))
        weights = [p for p in module.parameters() if p.requires_grad]
        dtype = weights[0].dtype if weights else torch.get_default_dtype()
        x = torch.randn(2, config.block_size, config.n_embd, device=device, dtype=dtype, requires_grad=True)
        with keep_random_state(device), torch.enable_grad():
            try:
                y = exercise(spec.kind, module, x, config.n_head)
            except Exception:  # fails alone in its forward: not the failure met in training
                continue
            try:  # gradients returned, not accumulated: the parameters' .grad stay as they are
                torch.autograd.grad(y.float().sum(), [x, *weights], allow_unused=True)
            except type(e):
                return module
            except Exception:
                continue
    return None


def _what(value) -> str:
    """'(1, 2, 32) torch.float32' for a tensor, else its type's name: what a component returned."""
    return f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__


def culprit(e: BaseException, specs: dict) -> tuple[object | None, str | None]:
    """Which component of `specs` ({module or optimizer: its ComponentSpec}) raised `e`, and in which of
    its methods: the innermost frame of the traceback that is a method of one of them (their submodules,
    torch's own layers, are passed by). A plugin's frame beats a built-in's: a plugin attention that
    calls a built-in positional's rotate() wrongly is the one to blame."""
    calling = nn.Module.__call__.__code__.co_filename  # torch's machinery around every forward
    frames = []
    tb = e.__traceback__
    while tb is not None:
        owner, code = tb.tb_frame.f_locals.get("self"), tb.tb_frame.f_code
        spec = next((s for m, s in specs.items() if owner is m), None)
        if spec is not None:
            frames.append((not spec.built_in, owner, "forward" if code.co_filename == calling else code.co_name))
        tb = tb.tb_next
    if not frames:
        return None, None
    _, owner, method = max(reversed(frames), key=lambda f: f[0])  # the innermost plugin frame, else the innermost
    return owner, method
