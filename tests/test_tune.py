"""Random hyper-parameter search: distributions, spaces, the search (reproducible, ranked, blind
to the test split) and the `fastnet tune` command with its best recipe."""
import json
import math

import numpy as np
import pytest

import fastnet as fn
import fastnet.tune as tune
from fastnet import cli
from fastnet.tune import Choice, IntUniform, LogUniform, Uniform


@pytest.fixture(scope="module")
def digits():
    return fn.load_digits()


@pytest.fixture
def commands(monkeypatch):
    monkeypatch.setattr(cli, "EXTRA_COMMANDS", {**cli.EXTRA_COMMANDS, "tune": "fastnet.tune",
                                                "distill": "fastnet.distill"})


class Forbidden:
    """Stands in for the test split: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was used ({name})")

    def __len__(self):
        raise AssertionError("the test split was used (len)")

    def __iter__(self):
        raise AssertionError("the test split was used (iter)")

    def __array__(self, *args, **kwargs):
        raise AssertionError("the test split was used (array)")


class BlindSplits(fn.Splits):
    """Splits whose test split cannot even be looked up."""

    @property
    def test(self):
        raise AssertionError("the test split was looked up")


def blind(splits):
    return BlindSplits(splits.train, splits.val, Forbidden())


def test_blind_splits_catch_a_look_at_the_test_split(digits):
    splits = blind(digits)
    with pytest.raises(AssertionError, match="looked up"):
        splits.test
    with pytest.raises(AssertionError, match="was used"):
        len(splits[2])
    assert splits.train is digits.train and splits.val is digits.val


SPACE = "lr=loguniform:1e-4:1e-1,batch_size=choice:32/64/128,weight_decay=loguniform:1e-6:1e-2," \
        "hidden=choice:64,64/128,128"


# ---------------------------------------------------------------------- distributions


def test_distributions_draw_in_their_ranges():
    rng = np.random.default_rng(0)
    logs = np.array([LogUniform(1e-4, 1e-1).sample(rng) for _ in range(4000)])
    assert logs.min() >= 1e-4 and logs.max() <= 1e-1
    # Uniform in the logarithm: each decade gets about a third of the draws.
    decades = np.histogram(np.log10(logs), bins=[-4, -3, -2, -1])[0] / len(logs)
    assert np.all(np.abs(decades - 1 / 3) < 0.03), decades
    uniform = np.array([Uniform(-1.0, 3.0).sample(rng) for _ in range(4000)])
    assert -1 <= uniform.min() and uniform.max() <= 3 and abs(uniform.mean() - 1.0) < 0.1
    ints = [IntUniform(2, 5).sample(rng) for _ in range(400)]
    assert set(ints) == {2, 3, 4, 5} and all(type(i) is int for i in ints)
    log_ints = [IntUniform(1, 1000, log=True).sample(rng) for _ in range(3000)]
    assert 1 <= min(log_ints) and max(log_ints) <= 1000
    assert 0.2 < np.mean(np.array(log_ints) < 10) < 0.45  # a third below 10, not 1%
    choices = [Choice([[64], [128, 128], "x"]).sample(rng) for _ in range(300)]
    assert {json.dumps(c) for c in choices} == {"[64]", "[128, 128]", '"x"'}


def test_choice_returns_copies():
    choice = Choice([[64, 64]])
    value = choice.sample(np.random.default_rng(0))
    value.append(1)
    assert choice.options == [[64, 64]]


@pytest.mark.parametrize("make, message", [
    (lambda: LogUniform(0, 1), "0 < lo < hi, got lo=0"),
    (lambda: LogUniform(1e-2, 1e-3), "lo=0.01, hi=0.001"),
    (lambda: LogUniform(float("nan"), 1), "finite number, got nan"),
    (lambda: Uniform(2, 2), "lo < hi, got lo=2, hi=2"),
    (lambda: IntUniform(1.5, 3), "lo must be an integer, got 1.5"),
    (lambda: IntUniform(5, 3), "lo <= hi, got lo=5, hi=3"),
    (lambda: IntUniform(0, 3, log=True), "lo >= 1, got lo=0"),
    (lambda: Choice([]), "at least one option"),
    (lambda: Choice("abc"), "list of options, got 'abc'"),
])
def test_bad_distributions_name_the_value(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


# ---------------------------------------------------------------------- spaces


def test_parse_space_text_form():
    space = tune.parse_space(SPACE)
    assert space == {"lr": LogUniform(1e-4, 1e-1), "batch_size": Choice([32, 64, 128]),
                     "weight_decay": LogUniform(1e-6, 1e-2),
                     "hidden": Choice([[64, 64], [128, 128]])}
    assert tune.parse_space("lr=uniform:0.1:0.2; hidden=choice:64/32,32; size=logint:8:64; "
                            "n=int:1:3; momentum=choice:0.8/0.9; schedule=choice:constant/cosine") \
        == {"lr": Uniform(0.1, 0.2), "hidden": Choice([64, [32, 32]]),
            "size": IntUniform(8, 64, log=True), "n": IntUniform(1, 3),
            "momentum": Choice([0.8, 0.9]), "schedule": Choice(["constant", "cosine"])}
    assert tune.parse_space("batch-size=choice:32") == {"batch_size": Choice([32])}
    assert IntUniform(8, 64, log=True) != IntUniform(8, 64)


@pytest.mark.parametrize("text, message", [
    ("lr=normal:0:1", r"lr='normal:0:1': expected KIND:ARGS"),
    ("lr=loguniform:1e-4", r"loguniform takes two bounds"),
    ("lr=uniform:a:b", r"bounds must be numbers"),
    ("lr=choice:1,lr=choice:2", r"lr is given twice"),
    ("lr", r"expected NAME=KIND:ARGS, got 'lr'"),
    ("", r"expected NAME=KIND:ARGS items, got ''"),
])
def test_parse_space_errors_name_the_item(text, message):
    with pytest.raises(ValueError, match=message):
        tune.parse_space(text)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_space_files(tmp_path, suffix):
    path = tmp_path / f"space{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"lr": "loguniform:1e-4:1e-1",
                                    "weight_decay": {"loguniform": [1e-6, 1e-2]},
                                    "batch_size": {"choice": [32, 64, 128]},
                                    "hidden": {"choice": [[64, 64], [128, 128]]}}))
    else:
        path.write_text('lr = "loguniform:1e-4:1e-1"\n'
                        "weight_decay = {loguniform = [1e-6, 1e-2]}\n"
                        "batch_size = {choice = [32, 64, 128]}\n"
                        "hidden = {choice = [[64, 64], [128, 128]]}\n")
    assert tune.load_space(path) == tune.parse_space(SPACE)
    # The saved form reads back.
    again = tmp_path / "again.json"
    again.write_text(json.dumps(tune.space_to_dict(tune.load_space(path))))
    assert tune.load_space(again) == tune.parse_space(SPACE)


def test_bad_space_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"lr": {"gaussian": [0, 1]}}))
    with pytest.raises(ValueError, match="lr must be a distribution"):
        tune.load_space(path)


def test_each_trial_depends_only_on_seed_and_number():
    space = tune.parse_space(SPACE)
    first = [tune.sample_config(space, 7, k) for k in range(6)]
    assert first == [tune.sample_config(space, 7, k) for k in range(6)]
    # Trial k uses default_rng([seed, k]), drawing the names in sorted order.
    rng = np.random.default_rng([7, 4])
    expected = {name: space[name].sample(rng) for name in sorted(space)}
    assert first[4] == expected
    assert first != [tune.sample_config(space, 8, k) for k in range(6)]
    assert len({json.dumps(c, sort_keys=True) for c in first}) == 6


# ---------------------------------------------------------------------- the search


def test_train_function_gets_train_and_val_only(digits):
    seen = []

    def train_fn(config, *data):
        seen.append(data)
        return {"val_accuracy": config["x"], "val_loss": config["x"]}

    result = tune.random_search(train_fn, {"x": Uniform(0, 1)}, blind(digits), trials=5, seed=3,
                                progress=False)
    assert len(seen) == 5
    assert all(len(d) == 2 and d[0] is digits.train and d[1] is digits.val for d in seen)
    scores = [t["score"] for t in result.ranked]
    assert scores == sorted(scores, reverse=True)
    assert result.best == {"x": scores[0]}
    assert result.best_trial["trial"] == max(result.trials, key=lambda t: t["score"])["trial"]
    by_loss = tune.random_search(train_fn, {"x": Uniform(0, 1)}, (digits.train, digits.val),
                                 trials=5, seed=3, metric="val_loss", progress=False)
    assert [t["trial"] for t in by_loss.ranked] == [t["trial"] for t in result.ranked[::-1]]


def test_a_search_needs_a_validation_split(digits):
    with pytest.raises(ValueError, match="validation split"):
        tune.random_search({}, {"lr": LogUniform(1e-3, 1e-2)},
                           fn.Splits(digits.train, None, Forbidden()), progress=False)


def test_configuration_search_is_reproducible_and_trials_independent(digits):
    space = tune.parse_space("lr=loguniform:1e-3:3e-2,hidden=choice:16/32,"
                             "batch_size=int:32:128,optimizer=choice:adam/sgd")
    base = {"epochs": 30, "weight_decay": 1e-4}

    def run(trials, seed=0):
        return tune.random_search(base, space, blind(digits), trials=trials, seed=seed, epochs=2,
                                  progress=False)

    a, b, shorter = run(4), run(4), run(2)
    assert [t["params"] for t in a.trials] == [t["params"] for t in b.trials]
    assert [t["metrics"] for t in a.trials] == [t["metrics"] for t in b.trials]  # bitwise
    assert [t["history"] for t in a.trials] == [t["history"] for t in b.trials]
    assert [t["metrics"] for t in a.trials[:2]] == [t["metrics"] for t in shorter.trials]
    assert [t["params"] for t in run(4, seed=1).trials] != [t["params"] for t in a.trials]
    for trial in a.trials:
        assert trial["status"] == "ok" and len(trial["history"]) == 2  # the trial epochs
        assert trial["score"] == trial["metrics"]["val_accuracy"] == trial["history"][-1][
            "val_accuracy"]
        assert isinstance(trial["params"]["batch_size"], int)
    best = a.best
    assert best["epochs"] == 30 and best["weight_decay"] == 1e-4  # the base, for the full run
    assert {k: best[k] for k in space} == a.best_trial["params"]


def test_a_trial_trains_what_the_command_line_would(digits, tmp_path):
    """train_config builds the same model, optimizer and data as `fastnet train`: the same
    validation losses after the same epochs as the command line's metrics."""
    config = {"hidden": [24], "optimizer": "sgd", "lr": 0.05, "batch_size": 50,
              "schedule": "cosine", "warmup": 1, "scale": "standard", "seed": 3, "epochs": 3}
    _, history = tune.train_config(config, digits.train, digits.val)
    args = tune.make_args(config)
    args.quiet, args.out = True, str(tmp_path)
    assert cli.command_train(args) == 0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in lines if "epoch" in r] == history.metric("val_loss")


def test_diverging_trials_are_ranked_last(digits):
    result = tune.random_search({"optimizer": "sgd", "hidden": [16]},
                                {"lr": Choice([0.05, 1e30])}, digits, trials=6, seed=0, epochs=1,
                                progress=False)
    statuses = {t["params"]["lr"]: t["status"] for t in result.trials}
    assert statuses == {0.05: "ok", 1e30: "failed"}
    assert [t["status"] for t in result.ranked] == sorted(t["status"] for t in result.trials)[
        ::-1]  # every "ok" before every "failed"
    failed = next(t for t in result.trials if t["status"] == "failed")
    assert failed["score"] is None and failed["error"]
    assert "failed: " in result.table()
    assert result.best["lr"] == 0.05


def test_other_errors_stop_the_search(digits):
    def train_fn(config, train, val):
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        tune.random_search(train_fn, {"x": Uniform(0, 1)}, digits, trials=2, progress=False)


def test_every_trial_failing_leaves_no_best(digits):
    def train_fn(config, train, val):
        return {"val_accuracy": math.nan}

    result = tune.random_search(train_fn, {"x": Uniform(0, 1)}, digits, trials=2, progress=False)
    with pytest.raises(RuntimeError, match="every trial failed"):
        result.best
    assert json.loads(result.to_json())["best"] is None


def test_table_and_json(digits):
    def train_fn(config, train, val):
        return {"val_accuracy": round(config["lr"] * 10, 6), "val_loss": 1.0}

    result = tune.random_search(train_fn, {"lr": LogUniform(1e-3, 1e-1),
                                           "hidden": Choice([[64, 64], [8]])}, digits, trials=4,
                                progress=False)
    lines = result.table().splitlines()
    assert lines[0].split() == ["rank", "trial", "hidden", "lr", "val_accuracy", "val_loss"]
    assert len({len(line) for line in lines}) == 1  # aligned: the last column is right-aligned
    end = lines[0].index("val_accuracy") + len("val_accuracy")
    for rank, (line, trial) in enumerate(zip(lines[1:], result.ranked), 1):
        assert line.split()[:2] == [str(rank), str(trial["trial"])]
        assert line[:end].endswith(f"{trial['score']:.4f}")
        assert ",".join(map(str, trial["params"]["hidden"])) in line.split()
    content = json.loads(result.to_json())
    assert content["ranking"] == [t["trial"] for t in result.ranked]
    assert content["best"] == result.best
    assert content["space"] == {"lr": {"loguniform": [1e-3, 1e-1]},
                                "hidden": {"choice": [[64, 64], [8]]}}
    assert [t["params"] for t in content["trials"]] == [t["params"] for t in result.trials]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"trials": 0}, ValueError, "trials must be a positive integer, got 0"),
    ({"seed": -1}, ValueError, "seed must be a non-negative integer, got -1"),
    ({"metric": "val_f1"}, ValueError, "mode must be given"),
    ({"mode": "up"}, ValueError, "mode must be 'max' or 'min', got 'up'"),
    ({"epochs": 0}, ValueError, "epochs must be a positive integer, got 0"),
    ({"space": {"epochs": IntUniform(1, 3)}}, ValueError, "'epochs' cannot be searched"),
    ({"space": {"bogus": Uniform(0, 1)}}, ValueError, "'bogus' cannot be searched"),
    ({"space": {"batch_size": LogUniform(8, 256)}}, ValueError, "option batch_size: expected an "
                                                                "integer"),
    ({"space": {"lr": Uniform(-1, -0.5)}}, ValueError, "option lr: expected a positive number"),
    ({"space": {"optimizer": Choice(["adam", "lbfgs"])}}, ValueError,
     "option optimizer: expected one of"),
    ({"space": {"lr": [1e-3, 1e-2]}}, ValueError, "lr must be a distribution"),
    ({"base": {"hiden": [3]}}, ValueError, "unknown option 'hiden'"),
])
def test_search_argument_errors(digits, kwargs, error, message):
    space = kwargs.pop("space", {"lr": LogUniform(1e-3, 1e-2)})
    base = kwargs.pop("base", {})
    with pytest.raises(error, match=message):
        tune.random_search(base, space, digits, progress=False, **{"trials": 3, **kwargs})


def test_train_function_result_forms(digits):
    history = fn.History()
    history.append({"epoch": 1, "val_accuracy": 0.5, "val_loss": 2.0, "seconds": 1.0})
    for outcome in (0.5, {"val_accuracy": 0.5}, history):
        result = tune.random_search(lambda c, t, v, o=outcome: o, {"x": Uniform(0, 1)}, digits,
                                    trials=1, progress=False)
        assert result.trials[0]["score"] == 0.5
        assert "seconds" not in result.trials[0]["metrics"]
    with pytest.raises(ValueError, match="must return a number, a History or a dict"):
        tune.random_search(lambda c, t, v: {"loss": 1}, {"x": Uniform(0, 1)}, digits, trials=1,
                           progress=False)
    with pytest.raises(ValueError, match="epochs applies to a configuration search"):
        tune.random_search(lambda c, t, v: 1.0, {"x": Uniform(0, 1)}, digits, epochs=3,
                           progress=False)


# ---------------------------------------------------------------------- fastnet tune


def test_cli_tune_writes_results_and_a_best_recipe_that_trains(tmp_path, commands, monkeypatch,
                                                                capsys, digits):
    monkeypatch.setattr(fn, "load_data", lambda *a, **k: blind(digits))
    out = tmp_path / "search"
    code = cli.main(["tune", "--quiet", "--trials", "4", "--trial-epochs", "2", "--epochs", "3",
                     "--optimizer", "sgd", "--space", SPACE, "--seed", "2", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    content = json.loads((out / "tune.json").read_text())
    assert len(content["trials"]) == 4 and content["trial_epochs"] == 2
    assert content["base"]["optimizer"] == "sgd" and content["seed"] == 2
    assert all(len(t["history"]) == 2 for t in content["trials"])
    best = content["trials"][content["best_trial"]]
    assert best["score"] == max(t["score"] for t in content["trials"])
    assert f"best: trial {best['trial']}, val_accuracy {best['score']:.4f}" in text
    assert text.splitlines()[0].split() == ["rank", "trial", "batch_size", "hidden", "lr",
                                            "weight_decay", "val_accuracy", "val_loss"]
    recipe = json.loads((out / "best_recipe.json").read_text())
    assert recipe == {"epochs": 3, "optimizer": "sgd", "seed": 2, **best["params"]}

    # fastnet train takes the recipe as it is.
    monkeypatch.undo()
    run = tmp_path / "full"
    assert cli.main(["train", "--quiet", "--recipe", str(out / "best_recipe.json"),
                     "--out", str(run)]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines if "epoch" in line] == [1, 2, 3]
    assert [line["lr"] for line in lines if "epoch" in line] == [best["params"]["lr"]] * 3
    model = fn.load(run / "model.safetensors")
    assert [layer.out_features for layer in model.layers[:-1:2]] == best["params"]["hidden"]


def test_cli_tune_is_reproducible_and_reads_space_files(tmp_path, commands, capsys):
    space = tmp_path / "space.toml"
    space.write_text('lr = "loguniform:1e-4:1e-1"\nhidden = {choice = [[16], [32]]}\n')
    runs = []
    for name, spec in (("a", str(space)), ("b", "lr=loguniform:1e-4:1e-1,hidden=choice:16/32")):
        assert cli.main(["tune", "--quiet", "--trials", "3", "--trial-epochs", "1", "--space",
                         spec, "--search-seed", "5", "--out", str(tmp_path / name)]) == 0
        runs.append(json.loads((tmp_path / name / "tune.json").read_text()))
    for key in ("params", "metrics", "history", "score"):
        assert [t[key] for t in runs[0]["trials"]] == [t[key] for t in runs[1]["trials"]]
    assert runs[0]["seed"] == 5
    capsys.readouterr()


def test_cli_tune_several_space_options_and_val_loss(tmp_path, commands, capsys):
    assert cli.main(["tune", "--quiet", "--trials", "3", "--trial-epochs", "1", "--space",
                     "lr=loguniform:1e-3:1e-2", "--space", "hidden=choice:8/16",
                     "--metric", "val_loss", "--out", str(tmp_path)]) == 0
    content = json.loads((tmp_path / "tune.json").read_text())
    assert content["mode"] == "min" and set(content["space"]) == {"lr", "hidden"}
    losses = [content["trials"][i]["score"] for i in content["ranking"]]
    assert losses == sorted(losses)
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--space", "lr=gauss:1:2"], "--space: lr='gauss:1:2': expected KIND:ARGS"),
    (["--space", "lr=loguniform:1e-3:1e-2", "--space", "lr=choice:1"], "lr is given twice"),
    (["--space", "batch_size=uniform:8:64"], "option batch_size: expected an integer"),
    (["--space", "epochs=int:1:3"], "'epochs' cannot be searched"),
    (["--space", "lr=loguniform:1e-3:1e-2", "--data", "/nonexistent.npz"], "nonexistent.npz"),
])
def test_cli_tune_errors(commands, capsys, argv, message):
    assert cli.main(["tune", "--quiet", "--trials", "2", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_tune_needs_a_space(commands, capsys):
    with pytest.raises(SystemExit):
        cli.main(["tune"])
    assert "--space" in capsys.readouterr().err


def test_cli_tune_takes_a_recipe_as_its_base(tmp_path, commands, capsys):
    recipe = tmp_path / "base.json"
    recipe.write_text(json.dumps({"optimizer": "sgd", "hidden": [8], "epochs": 7}))
    assert cli.main(["tune", "--quiet", "--recipe", str(recipe), "--trials", "2",
                     "--trial-epochs", "1", "--space", "lr=loguniform:1e-2:1e-1",
                     "--out", str(tmp_path / "o")]) == 0
    best = json.loads((tmp_path / "o" / "best_recipe.json").read_text())
    assert best["optimizer"] == "sgd" and best["hidden"] == [8] and best["epochs"] == 7
    capsys.readouterr()
    # A recipe setting an option that trials do not honour is refused, not ignored.
    recipe.write_text(json.dumps({"resume": True}))
    assert cli.main(["tune", "--quiet", "--recipe", str(recipe), "--trials", "2",
                     "--space", "lr=loguniform:1e-2:1e-1"]) == 2
    assert "does not support the option 'resume'" in capsys.readouterr().err


def test_tune_and_distill_are_listed(commands, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "tune    random hyper-parameter search" in text
    assert "distill train a student" in text
    with pytest.raises(SystemExit):
        cli.main(["tune", "--help"])
    text = capsys.readouterr().out
    for option in ("--space", "--trials", "--trial-epochs", "--metric", "--out", "--lr",
                   "--hidden", "--data", "loguniform:LO:HI"):
        assert option in text
