"""DCI's gradient-boosted trees (dgmfast.metrics.gbt, csrc/cpu/gbt.cpp) against sklearn's
GradientBoostingClassifier: identical trees, so identical raw predictions (bit for bit) and
importances to rounding, on features without ties; both scan paths of the split search are hit.
Small sizes and few stages keep sklearn's side fast.
"""
import importlib

import numpy as np
import pytest

from dgmfast import metrics as M
from dgmfast.data import IdentityGroundTruth
from dgmfast.metrics import gbt

dci_module = importlib.import_module("dgmfast.metrics.dci")   # the package's `dci` is the function

sklearn = pytest.importorskip("sklearn")
from sklearn.ensemble import GradientBoostingClassifier  # noqa: E402

pytestmark = pytest.mark.skipif(not gbt.available(), reason="needs the compiled extension dgmfast._C")


def codes(n, num_features, num_classes, seed):
    """Continuous float32-distinct codes, labels depending on a few of them (plus label noise)."""
    rng = np.random.RandomState(seed)
    x = rng.randn(n, num_features)
    score = x[:, 0] + 0.5 * x[:, 1] ** 2 - 0.3 * x[:, 2] + 0.5 * rng.randn(n)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, num_classes + 1)[1:-1]))
    return x, y


def fit_both(x, y, n_estimators=15, random_state=3, **kwargs):
    ours = gbt.GradientBoostedTrees(n_estimators=n_estimators, random_state=random_state, **kwargs).fit(x, y)
    ref = GradientBoostingClassifier(n_estimators=n_estimators, random_state=random_state, **kwargs).fit(x, y)
    return ours, ref


def assert_same_model(ours, ref, x_test):
    np.testing.assert_array_equal(ours.classes_, ref.classes_)
    np.testing.assert_allclose(ours.feature_importances_, ref.feature_importances_, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(ours.decision_function(x_test), ref.decision_function(x_test))
    np.testing.assert_array_equal(ours.predict(x_test), ref.predict(x_test))


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_equals_sklearn_without_ties(num_classes):
    x, y = codes(700, 6, num_classes, seed=num_classes)
    x_test, _ = codes(300, 6, num_classes, seed=100 + num_classes)
    ours, ref = fit_both(x, y)
    assert_same_model(ours, ref, np.concatenate([x, x_test]))


def test_equals_sklearn_with_other_hyper_parameters_and_labels():
    x, y = codes(400, 4, 4, seed=5)
    labels = np.array(["d", "a", "c", "b"])[y]
    ours, ref = fit_both(x, labels, n_estimators=8, random_state=11, learning_rate=0.3, max_depth=4)
    assert_same_model(ours, ref, x)


def test_replayed_updates_near_the_end_of_a_node():
    """A candidate split after a skipped position (two values within sklearn's FEATURE_THRESHOLD
    1e-7, but distinct: no tie) just before the end makes Criterion.update go back from the end:
    the step-by-step replay path (elsewhere every scan takes the vectorized path)."""
    x, y = codes(500, 5, 3, seed=7)
    x[:, 0] = x[:, 0] / 10 - 0.5                        # all below 0.5 ...
    top = np.argsort(x[:, 0])[-3:]                      # ... except the three largest, sorted:
    x[top, 0] = [0.5, np.nextafter(np.float32(0.5), np.float32(1)), 1.0]
    gap = np.diff(np.sort(x[:, 0].astype(np.float32))[-3:])
    assert 0 < gap[0] <= 1e-7 < gap[1]                  # skipped, then a candidate 2 steps on, 1 from the end
    ours, ref = fit_both(x, y)
    assert_same_model(ours, ref, x)


def test_constant_features_and_single_split_trees():
    """Constant columns (drawn, found and carried as constants by sklearn's feature sampling) and
    labels that one split separates (later nodes are pure: leaves by the impurity test)."""
    rng = np.random.RandomState(2)
    x = np.concatenate([np.full((300, 2), 0.5), rng.randn(300, 3)], axis=1)
    y = (x[:, 3] > 0).astype(int) + 2 * (x[:, 4] > 1)
    ours, ref = fit_both(x, y)
    assert_same_model(ours, ref, x)
    assert ours.feature_importances_[:2].tolist() == [0.0, 0.0]


def test_tied_values_stay_close_to_sklearn():
    """Discrete codes: tied values are ordered differently inside a node (stable here, introsort
    in sklearn), so sums may differ in the last bits and near-tied splits could be chosen
    differently (not seen: this case agrees to 3e-15, raw predictions bit for bit)."""
    rng = np.random.RandomState(4)
    x = rng.randint(0, 6, size=(500, 4)).astype(float)
    y = (x[:, 0] + x[:, 1] + rng.randint(0, 3, 500)) % 4
    ours, ref = fit_both(x, y)
    np.testing.assert_allclose(ours.feature_importances_, ref.feature_importances_, atol=1e-6)
    assert np.mean(ours.predict(x) == ref.predict(x)) > 0.99


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 classes"):
        gbt.GradientBoostedTrees().fit(np.zeros((5, 2)), np.ones(5))
    with pytest.raises(ValueError, match="NaN or infinity"):
        gbt.GradientBoostedTrees().fit(np.array([[0.0], [np.nan]]), [0, 1])
    with pytest.raises(ValueError, match="NaN or infinity"):
        gbt.GradientBoostedTrees().fit(np.array([[0.0], [1e39]]), [0, 1])     # inf in float32
    with pytest.raises(ValueError, match="2-D"):
        gbt.GradientBoostedTrees().fit(np.zeros(4), [0, 1, 0, 1])


DATA = IdentityGroundTruth((3, 6, 10))


def noisy_identity(x):
    return x + 0.3 * np.random.RandomState(len(x)).randn(*x.shape)


def test_dci_default_equals_sklearn_classifier(monkeypatch):
    """dci() with its default classifier equals dci() with sklearn's GradientBoostingClassifier, which
    is what it falls back to without the extension."""
    kwargs = dict(num_train=400, num_test=300)
    fast = M.dci(DATA, noisy_identity, 0, **kwargs)
    assert isinstance(dci_module.default_classifier(0)(), gbt.GradientBoostedTrees)
    monkeypatch.setattr(gbt, "available", lambda: False)
    assert isinstance(dci_module.default_classifier(0)(), GradientBoostingClassifier)
    ref = M.dci(DATA, noisy_identity, 0, **kwargs)
    assert fast.keys() == ref.keys()
    for key in fast:
        assert fast[key] == pytest.approx(ref[key], abs=1e-12), key
