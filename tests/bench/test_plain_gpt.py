"""The framework-tax yardstick is only fair if it is the same model: same weights, same outputs."""

import torch
from plain_gpt import PlainGPT

from gptkit.model import build_model
from gptkit.recipe import load_recipe


def test_plain_gpt_loads_gptkits_weights_and_computes_the_same_loss_and_gradients(write_recipe):
    recipe = load_recipe(write_recipe())  # flash, swiglu, rmsnorm, sinusoidal: the defaults
    m = recipe.model
    model = build_model(m, vocab_size=30)
    plain = PlainGPT(30, m.block_size, m.n_layer, m.n_head, m.n_embd, m.dropout)
    plain.load_state_dict(model.state_dict())  # strict: every name matches
    x, y = torch.randint(30, (4, m.block_size)), torch.randint(30, (4, m.block_size))
    logits, loss = model(x, y)
    plain_logits, plain_loss = plain(x, y)
    torch.testing.assert_close(plain_logits, logits)
    loss.backward()
    plain_loss.backward()
    grads = dict(plain.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad)


def test_framework_tax_refuses_a_recipe_of_another_architecture(write_recipe, capsys):
    """Else it times two different models (rope against the plain model's sinusoids) and gives a verdict."""
    from framework_tax import main

    for model, said in [({"positional": "rope"}, "model.positional: rope"),
                        ({"norm": {"name": "rmsnorm", "eps": 1e-3}}, "model.norm: rmsnorm {'eps': 0.001}")]:
        assert main([str(write_recipe(model=model)), "--rounds", "1", "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and "give a recipe of that architecture" in err, err
    assert main([str(write_recipe(data={"path": "nowhere.txt"})), "--rounds", "1"]) == 2
    assert "nowhere.txt not found" in capsys.readouterr().err
