"""Every registered optimizer trains, resumes exactly, and sees each parameter once, in its role."""

import signal
import subprocess
import sys

import pytest
import torch

from gptkit import load_recipe, train
from gptkit.errors import Interrupted, UserError
from gptkit.model import build_model
from gptkit.optim import AdamW, Muon, orthogonalise
from gptkit.registry import registry
from gptkit.training.checkpoint import load_checkpoint
from gptkit.training.optim_setup import param_groups
from gptkit.training.trainer import Trainer
from conftest import trainer_for

OPTIMIZERS = registry("optimizer").names()


def roles(model) -> dict[str, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["role"]: {names[id(p)] for p in g["params"]} for g in param_groups(model, 0.1)}


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_parameter_roles(write_recipe, tie):
    recipe = load_recipe(write_recipe(model={"positional": "learned", "tie_embeddings": tie}))
    model = build_model(recipe.model, vocab_size=30)
    r = roles(model)
    every = [n for g in param_groups(model, 0.1) for n in g["params"]]
    assert len(every) == len({id(p) for p in model.parameters()})  # each parameter exactly once
    tables = {"transformer.wte.weight", "transformer.pos.wpe.weight"}
    assert r["embedding"] == (tables if tie else tables | {"lm_head.weight"})
    assert r["matrix"] and all(n.startswith("transformer.h.") and n.endswith("weight") for n in r["matrix"])
    assert r["vector"] == {n for n, p in model.named_parameters() if p.dim() == 1}
    decay = {g["role"]: g["weight_decay"] for g in param_groups(model, 0.1)}
    assert decay == {"matrix": 0.1, "embedding": 0.1, "vector": 0.0}


def test_muon_takes_the_matrices_and_adamw_the_rest(write_recipe):
    recipe = load_recipe(write_recipe(train={"optimizer": {"name": "muon", "lr_scale": 2.0}, "lr": 1e-3}))
    model = build_model(recipe.model, vocab_size=30)
    opt = recipe.train.optimizer.build().build(param_groups(model, 0.1), 1e-3)
    muon, adamw = opt.optimizers["muon"], opt.optimizers["adamw"]
    assert isinstance(muon, Muon) and isinstance(adamw, AdamW)
    matrices = next(g["params"] for g in param_groups(model, 0.1) if g["role"] == "matrix")
    assert {id(p) for g in muon.param_groups for p in g["params"]} == {id(p) for p in matrices}
    assert all(g["lr"] == 2e-3 for g in muon.param_groups) and all(g["lr"] == 1e-3 for g in adamw.param_groups)


def test_each_step_gives_muons_matrices_their_lr_scale_times_the_scheduled_rate(write_recipe):
    trainer, starts = trainer_for(write_recipe(), "train.optimizer={name: muon, lr_scale: 2.0}", "train.lr=1e-3")
    trainer.train_step(starts, 0, 0.01)  # the schedule's rate for this step: not train.lr
    muon, adamw = trainer.optimizer.optimizers["muon"], trainer.optimizer.optimizers["adamw"]
    assert [g["lr"] for g in muon.param_groups] == [0.02] * len(muon.param_groups)
    assert [g["lr"] for g in adamw.param_groups] == [0.01] * len(adamw.param_groups)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_learns(write_recipe, tmp_path, name):
    path = write_recipe(train={"optimizer": name, "max_steps": 40, "lr": 1e-2})
    result = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    uniform = torch.tensor(float(result.dataset.vocab_size)).log().item()
    assert result.summary["final_val_loss"] < 0.75 * uniform


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_resumes_bit_for_bit(write_recipe, tmp_path, monkeypatch, name):
    path = write_recipe(train={"optimizer": name, "max_steps": 8, "checkpoint_every": 2})
    reference = train(load_recipe(path), runs_dir=tmp_path / "reference", quiet=True).run_dir
    original = Trainer.train_step

    def stop_after_five(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.state.step + 1 == 5:
            self.stop_signal = signal.SIGTERM
        return out

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", stop_after_five)
        with pytest.raises(Interrupted) as e:
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=e.value.run_dir)
    a, b = load_checkpoint(reference)["model"], load_checkpoint(e.value.run_dir)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def muon_against_torchs(nesterov: bool, adjust_lr: str, ns_dtype: torch.dtype, atol: float) -> None:
    """Three steps of ours and of torch.optim.Muon on the same matrices and gradients, compared to `atol`."""
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 48), (48, 16), (32, 32)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=0.02, momentum=0.9, nesterov=nesterov, ns_steps=5, weight_decay=0.1)
    a = Muon(ours, adjust_lr=adjust_lr, ns_dtype=ns_dtype, **kw)
    b = torch.optim.Muon(theirs, adjust_lr_fn=adjust_lr, **kw)
    for _ in range(3):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, atol=atol, rtol=0)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_follows_torch_muon(nesterov):
    """Same steps as torch.optim.Muon when both orthogonalise in bf16 (torch's precision)."""
    muon_against_torchs(nesterov, "match_rms_adamw", torch.bfloat16, atol=2e-3)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust_lr", ["match_rms_adamw", "original"])
def test_muon_steps_as_torch_muon_does_around_the_orthogonalisation(monkeypatch, nesterov, adjust_lr):
    """Momentum, Nesterov, decay and the adjusted learning rate as torch.optim.Muon's, to float32 rounding:
    both orthogonalise with ours in float32 (bf16's rounding above would hide a misplaced decay)."""
    from torch.optim import _muon

    def ours_in_fp32(grad, coefficients, steps, eps):
        assert coefficients == (3.4445, -4.7750, 2.0315) and eps == 1e-7  # what orthogonalise uses
        return orthogonalise(grad[None], steps, torch.float32)[0]

    monkeypatch.setattr(_muon, "_zeropower_via_newtonschulz", ours_in_fp32)
    muon_against_torchs(nesterov, adjust_lr, torch.float32, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
def test_adamw_follows_torch_adamw(fused):
    """Same steps as torch.optim.AdamW, across groups with and without decay and a learning rate that
    changes between steps, and after a state dict round trip."""
    torch.manual_seed(0)
    shapes = [(8, 4), (4,), (3, 5)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]

    def groups(ps):
        return [{"params": ps[:1] + ps[2:], "weight_decay": 0.1}, {"params": ps[1:2], "weight_decay": 0.0}]

    a = AdamW(groups(ours), lr=1e-2, betas=(0.9, 0.95), fused=fused)
    b = torch.optim.AdamW(groups(theirs), lr=1e-2, betas=(0.9, 0.95), fused=fused, foreach=not fused or None)
    for step in range(6):
        if step == 3:  # continue from a copy of the state, as a resumed run does
            saved = a.state_dict()
            a = AdamW(groups(ours), lr=1.0, fused=fused)
            a.load_state_dict(saved)
        for o in (a, b):
            for g in o.param_groups:
                g["lr"] = 1e-2 * (step + 1)
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    assert a.state_dict()["param_groups"][0]["betas"] == (0.9, 0.95)


def test_adamw_resumes_from_torch_adamw_state():
    """A checkpoint written while gptkit used torch.optim.AdamW resumes exactly, and loading copies
    the state instead of sharing the caller's tensors."""
    torch.manual_seed(0)
    theirs = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)]
    b = torch.optim.AdamW([{"params": theirs, "weight_decay": 0.1, "role": "matrix"}], lr=1e-2, fused=True)
    for _ in range(3):
        for q in theirs:
            q.grad = torch.randn(4, 3)
        b.step()
    ours = [torch.nn.Parameter(q.detach().clone()) for q in theirs]
    a = AdamW([{"params": ours, "weight_decay": 0.1, "role": "matrix"}], lr=1.0, fused=True)
    a.load_state_dict(b.state_dict())  # the live dict: nothing may be shared with it
    for p, q in zip(ours, theirs):
        q.grad = torch.randn(4, 3)
        p.grad = q.grad.clone()
    a.step()
    b.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))


def test_training_does_not_import_torch_dynamo(write_recipe, tmp_path):
    """torch.optim's first optimizer imports torch._dynamo (about 70 MB, over a second); gptkit's do not."""
    code = ("import sys; from gptkit import load_recipe, train; "
            f"train(load_recipe({str(write_recipe(train={'optimizer': 'muon'}))!r}), "
            f"runs_dir={str(tmp_path / 'runs')!r}, quiet=True); "
            "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_muon_orthogonalises():
    G = torch.randn(3, 64, 16, dtype=torch.float64)
    s = torch.linalg.svdvals(orthogonalise(G, steps=5, dtype=torch.float32).double())
    assert s.shape == (3, 16) and s.min() > 0.5 and s.max() < 1.3  # Jordan's iteration: roughly 1, not exactly


def test_resuming_with_an_optimizer_state_that_does_not_fit_is_a_clear_error(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(train={"max_steps": 2}))
    result = train(recipe, runs_dir=tmp_path / "runs", quiet=True)
    saved = load_checkpoint(result.run_dir)["trainer"]
    groups = saved["optimizer"]["param_groups"]
    groups[0]["params"] += groups.pop(1)["params"]  # fewer groups, as an older gptkit wrote them
    trainer = Trainer(recipe, result.model, result.dataset, torch.device("cpu"), quiet=True)
    with pytest.raises(UserError, match=r"optimizer state does not fit train.optimizer \(adamw\).*start a new run"):
        trainer.load_state_dict(saved)


def by_shape(model) -> dict[str, str]:
    """{name: role} by the rule roles followed before the owning module decided: the built-ins' groups."""
    tables = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    tables.add(id(model.lm_head.weight))
    return {n: "vector" if p.dim() < 2 else "embedding" if id(p) in tables or p.dim() > 2 else "matrix"
            for n, p in model.named_parameters()}


def test_the_built_in_components_keep_their_roles():
    from itertools import product

    from gptkit.conformance import tiny_model
    from gptkit.recipe.components import MODEL_KINDS

    built_in = [[n for n in registry(kind).names() if registry(kind).entry(n).source == "built-in"]
                for kind in MODEL_KINDS]
    for names in product(*built_in):
        parts = dict(zip(MODEL_KINDS, names))
        parts["attention"] = {"name": parts["attention"], "bias": True}  # with biases too
        model = tiny_model(**parts)
        assert {n: role for role, ns in roles(model).items() for n in ns} == by_shape(model), names


def test_roles_follow_the_owning_component_not_the_shape(temporary_component):
    import torch.nn.functional as F
    from torch import nn

    from gptkit.components.feedforward import MLP
    from gptkit.components.norm import Norm
    from gptkit.components.positional import Positional
    from gptkit.conformance import tiny_model

    class GroupGain(Norm):  # a 2-D gain, one row per group of channels: still a norm's, never decayed
        def __init__(self, config, params):
            super().__init__(config, params)
            self.weight = nn.Parameter(torch.ones(4, config.n_embd // 4))

        def forward(self, x):
            return F.rms_norm(x, (x.size(-1),)) * self.weight.flatten()

    class RawTable(Positional):  # a table of positions as a bare nn.Parameter, and a scalar gain
        def __init__(self, config, params):
            super().__init__(config, params)
            self.table = nn.Parameter(torch.zeros(config.block_size, config.n_embd))
            self.scale = nn.Parameter(torch.ones(()))

        def embed(self, x, start=0):
            return x + self.scale * self.table[start : start + x.size(1)]

    class HeadNormed(MLP):  # holds a torch norm with a 2-D gain and bias
        def __init__(self, config, params):
            super().__init__(config, params)
            self.ln = nn.LayerNorm((4, config.n_embd // 4))

        def forward(self, x):
            return super().forward(self.ln(x.unflatten(-1, (4, -1))).flatten(-2))

    for kind, cls in (("norm", GroupGain), ("positional", RawTable), ("feedforward", HeadNormed)):
        temporary_component(kind, cls.__name__.lower(), cls)
    model = tiny_model(norm="groupgain", positional="rawtable", feedforward="headnormed")
    r = roles(model)
    norms = {n for n in r["vector"] if ".ln_" in n or ".mlp.ln." in n}
    assert norms == {n for n, _ in model.named_parameters() if ".ln_" in n or ".mlp.ln." in n}  # ln_f's too
    assert "transformer.pos.scale" in r["vector"]
    assert r["embedding"] == {"transformer.wte.weight", "transformer.pos.table"}
    assert r["matrix"] == {n for n, p in model.named_parameters() if p.dim() == 2} - norms - r["embedding"]
    decay = {g["role"]: g["weight_decay"] for g in param_groups(model, 0.1)}
    assert decay == {"matrix": 0.1, "embedding": 0.1, "vector": 0.0}


def test_a_plugin_optimizer_that_does_not_resume_exactly_or_ignores_weight_decay_is_warned_of(tmp_path, write_recipe,
                                                                                      temporary_component):
    from gptkit import GptkitWarning
    from gptkit.components import Optimizer

    class Forgets(torch.optim.AdamW):  # its state never reaches the checkpoint
        def load_state_dict(self, state_dict):
            pass

    temporary_component("optimizer", "forgets", type("ForgetsOpt", (Optimizer,), {
        "build": lambda self, groups, lr: Forgets(groups, lr=lr)}))
    path = write_recipe(train={"optimizer": "forgets", "max_steps": 2})
    with pytest.warns(GptkitWarning, match=r"^train\.optimizer \(forgets\) does not resume exactly \(AssertionError: "
                                           r"after loading the state_dict, the next step gives other values of .*\): "
                                           r"a resumed run will not take the steps an uninterrupted one takes"):
        result = train(load_recipe(path), runs_dir=tmp_path, quiet=True)
    assert result.summary["status"] == "finished"  # trained all the same

    class NoDecay(torch.optim.SGD):  # builds its groups anew, without their weight_decay
        def __init__(self, groups, lr):
            super().__init__([{"params": g["params"]} for g in groups], lr=lr)

    temporary_component("optimizer", "nodecay", type("NoDecayOpt", (Optimizer,), {
        "build": lambda self, groups, lr: NoDecay(groups, lr)}))
    with pytest.warns(GptkitWarning, match=r"^train\.optimizer \(nodecay\) does not honour weight_decay "
                                           r"\(AssertionError: .*\): it trains as if train.weight_decay were 0, not "
                                           r"0.1, and an ablation against an optimizer that applies it compares "
                                           r"unequal terms; apply each param group's weight_decay in step\(\)"):
        train(load_recipe(write_recipe(train={"optimizer": "nodecay", "max_steps": 2, "weight_decay": 0.1})),
              runs_dir=tmp_path, quiet=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", GptkitWarning)  # the built-in optimizers: nothing said
        train(load_recipe(write_recipe(train={"max_steps": 2})), runs_dir=tmp_path, quiet=True)
        # nor of one that ignores a weight decay of 0
        train(load_recipe(write_recipe(train={"optimizer": "nodecay", "max_steps": 2, "weight_decay": 0})),
              runs_dir=tmp_path, quiet=True)
