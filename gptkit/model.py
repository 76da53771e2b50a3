"""A GPT assembled from registered components.

The classes here know no component by name: a block receives already-built norm, attention and
feedforward modules, and the model receives the positional module (which attention shares).
Axis letters: B batch, T time, C channels (n_embd), V vocabulary.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .components.attention import KVCache, caches
from .components.base import GPTConfig, dropout_layer
from .device import keep_random_state
from .errors import UserError, out_of_memory


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, ln_1: nn.Module, attn: nn.Module, ln_2: nn.Module, mlp: nn.Module):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(self, x, cache: KVCache | None = None):
        h = self.ln_1(x)
        x = x + (self.attn(h) if cache is None else self.attn(h, cache))  # attention may not cache
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, pos: nn.Module, blocks: list[Block], ln_f: nn.Module,
                 tie_embeddings: bool = True):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            pos=pos,
            drop=dropout_layer(config.dropout),
            h=nn.ModuleList(blocks),
            ln_f=ln_f,
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections, scaled as in GPT-2
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward), PaLM's estimate (arXiv:2204.02311, App. B):
        6 per weight of every matmul, plus 12 * n_layer * n_embd * block_size for attention scores.
        Embedding lookups are not matmuls, so a tied embedding counts once, as the LM head."""
        c = self.config
        matmul_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul_weights + 12 * c.n_layer * c.n_embd * c.block_size

    @property
    def supports_kv_cache(self) -> bool:
        return all(caches(block.attn) for block in self.transformer.h)

    def new_cache(self) -> list[KVCache]:
        """An empty key/value cache for `forward`, one per block (needs `supports_kv_cache`)."""
        return [KVCache() for _ in self.transformer.h]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: list[KVCache] | None = None):
        """With a `cache`, `idx` continues the positions it holds, and is added to it."""
        B, T = idx.size()
        start = len(cache[0]) if cache else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        x = self.transformer.drop(self.transformer.pos.embed(x, start))
        for block, layer_cache in zip(self.transformer.h, cache or [None] * len(self.transformer.h)):
            x = block(x, layer_cache)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss


def build_model(model, vocab_size: int) -> GPT:
    """The GPT described by a recipe's `model` section (a ModelSection)."""
    if not all(hasattr(model, k) for k in ("config", "positional", "attention")):  # a Recipe, a GPTConfig
        raise TypeError(f"build_model takes a recipe's model section, got {type(model).__name__}: "
                        "build_model(recipe.model, vocab_size)")
    config = model.config(vocab_size)
    pos = model.positional.build(config)
    blocks = [
        Block(
            ln_1=model.norm.build(config),
            attn=model.attention.build(config, pos),
            ln_2=model.norm.build(config),
            mlp=model.feedforward.build(config),
        )
        for _ in range(config.n_layer)
    ]
    return GPT(config, pos, blocks, ln_f=model.norm.build(config), tie_embeddings=model.tie_embeddings)


def state_dict_mismatch(e: RuntimeError) -> str:
    """What does not fit, from load_state_dict's error (its first line is only a heading)."""
    return next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))[:300]


def build_model_on(model, vocab_size: int, device: torch.device) -> GPT:
    """build_model on `device`; a model too large for its memory is one error saying how large."""
    try:
        return build_model(model, vocab_size).to(device)
    except Exception as e:
        if not out_of_memory(e):  # a component's own error is its own (see ComponentSpec.build)
            raise
    try:
        with torch.device("meta"):  # counted without memory
            size = f"{build_model(model, vocab_size).num_params():,} parameters"
    except Exception:  # a component that cannot be built on the meta device
        size = "its sizes"
    error = UserError(f"the model does not fit in memory on {device}: {size} (model.n_layer {model.n_layer}, "
                      f"n_embd {model.n_embd}); make it smaller")
    error.every_rank = True
    raise error


def component_specs(gpt: GPT, model) -> dict[nn.Module, "ComponentSpec"]:  # noqa: F821 (a recipe-side type)
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
