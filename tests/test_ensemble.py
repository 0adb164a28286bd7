"""Model averaging: an Ensemble's probabilities are the mean of its members' softmax, it is saved
as a directory replaced atomically, and K models trained from different seeds on the digits
average to a classifier at least as good as the mean member."""
import json
import os

import numpy as np
import pytest

import fastnet as fn
from fastnet import ensemble, zoo
from fastnet.ensemble import Ensemble, train_ensemble


@pytest.fixture(scope="module")
def digits():
    return fn.load_digits()


def reference_proba(models, x):
    """The mean of the members' softmax, in numpy float64, each model in eval mode."""
    probs = []
    for model in models:
        with model.mode(training=False):
            z = model(x).astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs.append(e / e.sum(axis=1, keepdims=True))
    return np.mean(probs, axis=0)


def random_members(k=3, seed=0):
    # Dropout and batch norm: the ensemble must predict in eval mode.
    return [fn.Sequential(fn.Linear(64, 32), fn.BatchNorm1d(32), fn.ReLU(), fn.Dropout(0.5),
                          fn.Linear(32, 10), seed=seed + i) for i in range(k)]


def test_probabilities_are_the_mean_of_the_members_softmax(digits):
    models = random_members()
    x = digits.test.x
    ens = Ensemble(models)
    proba = ens.predict_proba(x)
    np.testing.assert_allclose(proba, reference_proba(models, x), rtol=1e-12, atol=1e-15)
    # In batches of 100 (the last one partial) the float32 logits round differently.
    np.testing.assert_allclose(ens.predict_proba(x, batch_size=100), proba, rtol=1e-5)
    assert proba.dtype == np.float64 and proba.shape == (len(x), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert np.array_equal(ens.predict(x), proba.argmax(axis=1))
    assert all(m.training for m in models)  # modes restored
    np.testing.assert_array_equal(ens.predict_proba(x), proba)  # deterministic: no dropout


def test_softmax_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5e4, -5e4, -5e4]])
    p = ensemble.softmax(logits)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])


def test_evaluate(digits):
    models = random_members()
    ens = Ensemble(models)
    test = digits.test
    result = ens.evaluate(test.x, test.y)
    proba = reference_proba(models, test.x)
    assert result["accuracy"] == np.mean(proba.argmax(axis=1) == test.y)
    assert result["loss"] == pytest.approx(-np.mean(np.log(proba[np.arange(len(test)), test.y])))
    assert result["member_accuracy"] == [float(np.mean(m.predict(test.x) == test.y))
                                         for m in models]
    assert result["mean_member_accuracy"] == pytest.approx(np.mean(result["member_accuracy"]))
    assert ens.evaluate(test) == result  # a Dataset


@pytest.mark.parametrize("call, error, message", [
    (lambda e, x, y: e.evaluate(x, y[:-1]), ValueError, "x has 269 samples and y has 268"),
    (lambda e, x, y: e.evaluate(x, y + 10), ValueError, r"labels must be in \[0, 10\)"),
    (lambda e, x, y: e.evaluate(x, y.astype(float)), ValueError, "integer labels"),
    (lambda e, x, y: e.evaluate(x), ValueError, "needs the labels"),
    (lambda e, x, y: e.predict(x[:, :10]), ValueError, r"x must have shape \(N, 64\), got "
                                                       r"\(269, 10\)"),
    (lambda e, x, y: e.predict(x[:0]), ValueError, "empty"),
    (lambda e, x, y: e.predict(x, batch_size=0), ValueError, "batch_size must be a positive"),
])
def test_bad_inputs_are_clear_errors(digits, call, error, message):
    ens = Ensemble(random_members(2))
    with pytest.raises(error, match=message):
        call(ens, digits.test.x, digits.test.y)


def test_members_must_agree():
    with pytest.raises(ValueError, match="at least one model"):
        Ensemble([])
    with pytest.raises(TypeError, match=r"models\[1\] is not a fastnet model"):
        Ensemble([fn.Sequential(fn.Linear(4, 3)), "model"])
    with pytest.raises(ValueError, match=r"models\[1\] takes input \(5,\), models\[0\] takes "
                                         r"\(4,\)"):
        Ensemble([fn.Sequential(fn.Linear(4, 3)), fn.Sequential(fn.Linear(5, 3))])
    with pytest.raises(ValueError, match=r"models\[2\] has 2 outputs, models\[0\] has 3"):
        Ensemble([fn.Sequential(fn.Linear(4, 3))] * 2 + [fn.Sequential(fn.Linear(4, 2))])
    with pytest.raises(TypeError, match="list of fastnet models"):
        Ensemble(fn.Sequential(fn.Linear(4, 3)))


def test_ensemble_of_trained_mlps_beats_the_mean_member(digits):
    """Five small MLPs (64-32-10, 10 epochs of Adam) from seeds 0-4 on the digits."""
    ens = train_ensemble(lambda seed: zoo.mlp(64, 10, [32], seed=seed), digits, k=5, epochs=10,
                         progress=False)
    assert ens.metadata["seeds"] == [0, 1, 2, 3, 4] and len(ens.histories) == 5
    assert [len(h) for h in ens.histories] == [10] * 5
    test = ens.evaluate(digits.test)
    print(f"\ntest accuracy: ensemble {test['accuracy']:.4f}, mean member "
          f"{test['mean_member_accuracy']:.4f}, members "
          f"{[round(a, 4) for a in test['member_accuracy']]}")
    assert len(set(test["member_accuracy"])) > 1  # the seeds made different models
    assert test["accuracy"] >= test["mean_member_accuracy"]
    assert test["accuracy"] > 0.85
    # The averaged probability's log loss is at most the members' mean (Jensen), and here less.
    member_losses = [
        float(-np.mean(np.log(p[np.arange(len(digits.test)), digits.test.y])))
        for p in ens.member_proba(digits.test.x)]
    assert test["loss"] < np.mean(member_losses)


def test_train_ensemble_options(digits):
    seen = []

    def schedule(opt):
        seen.append(opt)
        return fn.schedules.StepLR(opt, step_size=1, gamma=0.5)

    ens = train_ensemble(lambda seed: zoo.mlp(64, 10, [8], seed=seed), (digits.train, None),
                         k=2, seeds=[5, 9], epochs=2, progress=False,
                         optimizer=lambda m: fn.optim.SGD(m.parameters(), lr=0.1),
                         schedule=schedule)
    assert ens.metadata["seeds"] == [5, 9] and [m.seed for m in ens] == [5, 9]
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert [h.metric("lr") for h in ens.histories] == [[0.1, 0.05]] * 2
    assert "val_accuracy" not in ens.histories[0][-1] or ens.histories[0][-1]["val_accuracy"] \
        is None
    for kwargs, message in (({"k": 0}, "k must be a positive integer, got 0"),
                            ({"k": 2, "seeds": [1]}, r"seeds must hold k=2 seeds, got 1"),
                            ({"k": 2, "seeds": [1, 1]}, r"seeds must differ, got \[1, 1\]"),
                            ({"k": 1, "seeds": [-1]}, "non-negative integers, got -1")):
        with pytest.raises(ValueError, match=message):
            train_ensemble(lambda seed: zoo.mlp(64, 10, [8], seed=seed), digits, epochs=1,
                           progress=False, **kwargs)
    with pytest.raises(TypeError, match=r"build_model\(0\) returned str"):
        train_ensemble(lambda seed: "model", digits, k=1, epochs=1, progress=False)


# ---------------------------------------------------------------------- files


def test_save_and_load(tmp_path, digits):
    ens = Ensemble(random_members(3), metadata={"note": "three"})
    path = tmp_path / "ens"
    ens.save(path)
    index = json.loads((path / "ensemble.json").read_text())
    assert index["format"] == "fastnet.ensemble" and index["version"] == 1
    assert index["metadata"] == {"note": "three"}
    assert sorted(os.listdir(path)) == sorted(index["members"] + ["ensemble.json"])
    loaded = Ensemble.load(path)
    assert len(loaded) == 3 and loaded.metadata == {"note": "three"}
    np.testing.assert_array_equal(loaded.predict_proba(digits.test.x),
                                  ens.predict_proba(digits.test.x))
    assert ensemble.load(str(path)).metadata == {"note": "three"}


def test_saving_over_an_ensemble_replaces_it(tmp_path, digits):
    path = tmp_path / "ens"
    Ensemble(random_members(3)).save(path)
    (path / "notes.txt").write_text("mine")
    new = Ensemble(random_members(2, seed=10))
    new.save(path)
    index = json.loads((path / "ensemble.json").read_text())
    assert sorted(os.listdir(path)) == sorted(index["members"] + ["ensemble.json", "notes.txt"])
    loaded = Ensemble.load(path)
    assert len(loaded) == 2
    np.testing.assert_array_equal(loaded.predict_proba(digits.val.x),
                                  new.predict_proba(digits.val.x))


def test_a_failed_save_keeps_the_previous_ensemble(tmp_path, monkeypatch, digits):
    path = tmp_path / "ens"
    old = Ensemble(random_members(2))
    old.save(path)
    before = sorted(os.listdir(path))
    import fastnet.io

    calls = []
    real_save = fastnet.io.save

    def failing_save(model, file):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(model, file)

    monkeypatch.setattr(fastnet.io, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        Ensemble(random_members(3, seed=20)).save(path)
    assert sorted(os.listdir(path)) == before  # the new member written is removed again
    np.testing.assert_array_equal(Ensemble.load(path).predict_proba(digits.val.x),
                                  old.predict_proba(digits.val.x))


@pytest.mark.parametrize("index, error, message", [
    ({"format": "other", "version": 1, "members": ["a.safetensors"]}, ValueError,
     "not a fastnet ensemble index"),
    ({"format": "fastnet.ensemble", "version": 2, "members": ["a.safetensors"]}, ValueError,
     "unsupported ensemble index version 2"),
    ({"format": "fastnet.ensemble", "version": 1, "members": []}, ValueError,
     "non-empty list"),
    ({"format": "fastnet.ensemble", "version": 1, "members": ["../a.safetensors"]}, ValueError,
     "file name in the same directory, got '../a.safetensors'"),
    ({"format": "fastnet.ensemble", "version": 1, "members": ["/etc/passwd"]}, ValueError,
     "got '/etc/passwd'"),
    ({"format": "fastnet.ensemble", "version": 1, "members": ["a.safetensors"] * 2}, ValueError,
     "listed twice"),
    ({"format": "fastnet.ensemble", "version": 1, "members": ["gone.safetensors"]},
     FileNotFoundError, "names the member 'gone.safetensors', which is missing"),
])
def test_bad_index_files(tmp_path, index, error, message):
    (tmp_path / "ensemble.json").write_text(json.dumps(index))
    with pytest.raises(error, match=message):
        Ensemble.load(tmp_path)


def test_unreadable_index_and_missing_directory(tmp_path):
    (tmp_path / "ensemble.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid ensemble index"):
        Ensemble.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no ensemble index"):
        Ensemble.load(tmp_path / "missing")
