"""Disentanglement metrics (SPEC §11): definitions against disentanglement_lib's formulas, ceilings on
a synthetic ground truth whose observations are the factors, invariances, determinism, edge cases.

Sample sizes are reduced (the defaults are disentanglement_lib's); bounds are stated per test.
"""
import numpy as np
import pytest
import scipy.stats
import torch

from dgmfast import metrics as M
from dgmfast.data import DSprites, IdentityGroundTruth
from dgmfast.metrics.modularity import macro_roc_auc
from dgmfast.metrics.utils import Encoder

sklearn = pytest.importorskip("sklearn")
from sklearn.ensemble import GradientBoostingClassifier  # noqa: E402
from sklearn.metrics import mutual_info_score, roc_auc_score  # noqa: E402
from sklearn.preprocessing import MultiLabelBinarizer  # noqa: E402

SIZES = (3, 6, 10, 12)          # factor sizes of the synthetic ground truth (all <= 20 bins)
DATA = IdentityGroundTruth(SIZES)
SMALL = {                       # reduced sample sizes for every metric
    "beta_vae": dict(num_train=300, num_eval=300),
    "factor_vae": dict(num_train=300, num_eval=300, num_variance_estimate=2000),
    "mig": dict(num_train=3000),
    "dci": dict(num_train=600, num_test=600, classifier_fn=lambda: GradientBoostingClassifier(n_estimators=20,
                                                                                                random_state=0)),
    "modularity": dict(num_train=2000, num_test=1000),
    "sap": dict(num_train=2000, num_test=1000),
}


def run_all(data, fn, seed=0, metrics=tuple(M.METRICS)):
    return {m: M.METRICS[m][0](data, fn, np.random.RandomState(seed), **SMALL[m]) for m in metrics}


def identity(x):
    return x


def rotation(dim, seed=0):
    q = np.linalg.qr(np.random.RandomState(seed).randn(dim, dim))[0]
    return lambda x: x @ q


def noise(dim, seed=1):
    rng = np.random.RandomState(seed)
    return lambda x: rng.randn(len(x), dim)


@pytest.fixture(scope="module")
def scores():
    """All six metrics for the identity, a random rotation and pure noise on DATA."""
    d = DATA.num_factors
    return {"identity": run_all(DATA, identity), "rotation": run_all(DATA, rotation(d)),
            "noise": run_all(DATA, noise(d))}


# ----------------------------------------------------------------- definitions (disentanglement_lib)

def test_histogram_discretize_equals_digitize():
    rng = np.random.RandomState(0)
    codes = np.concatenate([rng.randn(500, 3), np.full((500, 1), 2.5), rng.randint(0, 7, (500, 1))], axis=1)
    expected = np.stack([np.digitize(c, np.histogram(c, 20)[1][:-1]) for c in codes.T], axis=1)
    got = M.histogram_discretize(codes, 20)
    np.testing.assert_array_equal(got, expected)
    assert got.min() >= 1 and got.max() <= 20


def test_mutual_info_and_entropy_equal_sklearn():
    rng = np.random.RandomState(1)
    codes = rng.randint(0, 20, (2000, 4))
    factors = np.stack([rng.randint(0, 3, 2000), rng.randint(0, 40, 2000), codes[:, 0] % 5, np.zeros(2000, int)], 1)
    mi = M.discrete_mutual_info(codes, factors)
    expected = np.array([[mutual_info_score(factors[:, j], codes[:, i]) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(mi, expected, rtol=1e-10, atol=1e-12)
    h = M.discrete_entropy(factors)
    np.testing.assert_allclose(h, [mutual_info_score(f, f) for f in factors.T], rtol=1e-10, atol=1e-12)


def test_mig_formula_equals_disentanglement_lib():
    rng = np.random.RandomState(2)
    m, h = rng.rand(6, 4), rng.rand(4) + 0.5
    sorted_m = np.sort(m, axis=0)[::-1]
    expected = np.mean(np.divide(sorted_m[0, :] - sorted_m[1, :], h[:]))
    assert M.mig_from_mutual_info(m, h) == pytest.approx(expected, rel=1e-12)


def test_modularity_formula_equals_disentanglement_lib():
    rng = np.random.RandomState(3)
    m = rng.rand(7, 5)
    m[2] = 0.0                                    # a latent without information scores 0
    sq = np.square(m)
    top = np.max(sq, axis=1)
    with np.errstate(invalid="ignore"):
        delta = (np.sum(sq, axis=1) - top) / (top * (sq.shape[1] - 1.0))
    score = 1.0 - delta
    score[top == 0.0] = 0.0
    assert M.modularity(m) == pytest.approx(np.mean(score), rel=1e-12)


@pytest.mark.parametrize("case", ["random", "zero_row", "all_zero"])
def test_dci_formulas_equal_disentanglement_lib(case):
    r = np.random.RandomState(4).rand(8, 5)
    if case == "zero_row":
        r[3] = 0.0
    if case == "all_zero":
        r[:] = 0.0
    per_code = 1.0 - scipy.stats.entropy(r.T + 1e-11, base=r.shape[1])
    per_factor = 1.0 - scipy.stats.entropy(r + 1e-11, base=r.shape[0])
    w = r if r.sum() != 0 else np.ones_like(r)
    assert M.disentanglement(r) == pytest.approx(np.sum(per_code * w.sum(1) / w.sum()), rel=1e-12, abs=1e-15)
    assert M.completeness(r) == pytest.approx(np.sum(per_factor * w.sum(0) / w.sum()), rel=1e-12, abs=1e-15)


def test_explicitness_auc_equals_sklearn_roc_auc():
    rng = np.random.RandomState(5)
    y = rng.randint(0, 6, 800)
    scores = rng.rand(800, 6) + 0.3 * np.eye(6)[y]
    scores[:10] = 0.5                             # ties
    expected = roc_auc_score(MultiLabelBinarizer().fit_transform(np.expand_dims(y, 1)), scores)
    assert macro_roc_auc(y, scores, np.arange(6)) == pytest.approx(expected, rel=1e-12)


def test_mig_ceiling_values():
    assert M.mig_ceiling([3, 6, 12]) == 1.0                                  # all factors fit in 20 bins
    assert M.mig_ceiling([40]) == pytest.approx(np.log(20) / np.log(40))     # 20 pairs of values
    assert M.mig_ceiling(DSprites.factors_num_values) == pytest.approx(0.9024, abs=1e-4)


# ----------------------------------------------------------------- ceilings, ordering and chance

def test_identity_scores_at_ceiling(scores):
    s = scores["identity"]
    assert s["beta_vae"]["train_accuracy"] == 1.0 and s["beta_vae"]["eval_accuracy"] == 1.0
    assert s["factor_vae"]["eval_accuracy"] == 1.0 and s["factor_vae"]["num_active_dims"] == DATA.num_factors
    # MIG: ceiling 1 here (every factor has <= 20 values), minus the plug-in bias of the
    # second-best information, about (20-1)(k-1)/(2N) nats at N = 3000.
    assert 0.97 <= s["mig"]["discrete_mig"] <= 1.0
    assert s["dci"]["disentanglement"] > 0.99 and s["dci"]["completeness"] > 0.99
    assert s["dci"]["informativeness_train"] == 1.0 and s["dci"]["informativeness_test"] == 1.0
    assert s["modularity"]["modularity_score"] > 0.99
    assert s["modularity"]["explicitness_score_test"] > 0.97
    # SAP's ceiling is set by a 1-D LinearSVC(C=0.01): measured 0.32 here (docs/metrics.md).
    assert s["sap"]["SAP_score"] > 0.3


def test_mig_identity_reaches_ceiling_with_more_than_20_values():
    data = IdentityGroundTruth([40, 32])
    got = M.mig(data, identity, 0, num_train=20000)["discrete_mig"]
    assert M.mig_ceiling([40, 32]) - 0.03 <= got <= M.mig_ceiling([40, 32]) + 0.005


def test_rotation_scores_lower(scores):
    ident, rot = scores["identity"], scores["rotation"]
    assert rot["mig"]["discrete_mig"] < ident["mig"]["discrete_mig"] - 0.3
    assert rot["dci"]["disentanglement"] < ident["dci"]["disentanglement"] - 0.3
    assert rot["dci"]["completeness"] < ident["dci"]["completeness"] - 0.3
    assert rot["sap"]["SAP_score"] < ident["sap"]["SAP_score"] - 0.1


def test_noise_scores_at_chance(scores):
    s, f = scores["noise"], DATA.num_factors
    # BetaVAE / FactorVAE: chance 1/F = 0.25; 300 eval points -> binomial sd 0.025.
    assert abs(s["beta_vae"]["eval_accuracy"] - 1 / f) < 0.1
    assert abs(s["factor_vae"]["eval_accuracy"] - 1 / f) < 0.1
    assert s["mig"]["discrete_mig"] < 0.03                  # plug-in bias only
    assert s["dci"]["disentanglement"] < 0.15 and s["dci"]["completeness"] < 0.15
    chance = np.mean([1 / k for k in SIZES])
    assert abs(s["dci"]["informativeness_test"] - chance) < 0.05
    assert abs(s["modularity"]["explicitness_score_test"] - 0.5) < 0.05
    assert s["sap"]["SAP_score"] < 0.05


def test_permutation_and_rescaling_leave_mig_dci_modularity_unchanged(scores):
    perm = np.array([2, 0, 3, 1])
    scale = np.array([0.5, 3.0, 7.0, 0.01])
    transformed = run_all(DATA, lambda x: x[:, perm] * scale, metrics=("mig", "dci", "modularity"))
    for m in ("mig", "dci", "modularity"):
        for key, value in transformed[m].items():
            if key.startswith("explicitness"):       # a linear classifier: invariant up to its regularization
                continue
            assert value == pytest.approx(scores["identity"][m][key], abs=1e-9), (m, key)


# ----------------------------------------------------------------- determinism and caching

def test_same_seed_same_result_and_cache_is_exact():
    data = IdentityGroundTruth([3, 4, 5])
    a = run_all(data, rotation(3))
    b = run_all(data, rotation(3))
    assert a == b
    cached = Encoder(data, rotation(3), cache=True, batch_size=64)
    c = {m: M.METRICS[m][0](data, cached, np.random.RandomState(0), **SMALL[m]) for m in M.METRICS}
    assert c == a
    assert M.mig(data, rotation(3), 1, **SMALL["mig"]) != a["mig"]


def test_evaluate_equals_the_metrics_and_summarizes():
    data = IdentityGroundTruth([3, 4, 5])
    results, summary = M.evaluate(rotation(3), data, seed=0, metric_kwargs=SMALL, progress=False)
    assert results == run_all(data, rotation(3))
    assert "\n" not in summary and all(m in summary for m in M.METRICS)
    with pytest.raises(ValueError, match="metrics must be"):
        M.evaluate(identity, data, metrics=["mig", "nope"])


# ----------------------------------------------------------------- edge cases

def test_constant_latent_dimension():
    base = run_all(DATA, identity)
    s = run_all(DATA, lambda x: np.concatenate([x, np.ones((len(x), 1))], axis=1))
    assert s["mig"] == base["mig"]                           # zero information: no effect
    assert s["factor_vae"]["num_active_dims"] == DATA.num_factors and s["factor_vae"]["eval_accuracy"] == 1.0
    assert s["beta_vae"]["eval_accuracy"] == 1.0
    assert s["dci"]["disentanglement"] == pytest.approx(base["dci"]["disentanglement"], abs=1e-12)
    assert s["dci"]["completeness"] > 0.99
    # A latent informative about no factor scores 0 in modularity (disentanglement_lib's rule).
    n = DATA.num_factors
    assert s["modularity"]["modularity_score"] == pytest.approx(base["modularity"]["modularity_score"] * n / (n + 1))
    assert s["modularity"]["explicitness_score_test"] > 0.97     # the constant column is centred, not divided by 0
    assert np.isfinite(s["sap"]["SAP_score"])


def test_all_latents_constant():
    s = run_all(DATA, lambda x: np.zeros((len(x), 2)))
    assert s["factor_vae"] == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    assert s["mig"]["discrete_mig"] == 0.0 and s["sap"]["SAP_score"] == 0.0
    assert s["dci"]["disentanglement"] == 0.0 and s["dci"]["completeness"] == 0.0
    assert s["modularity"]["modularity_score"] == 0.0


def test_factor_with_one_value():
    data = IdentityGroundTruth([1, 4, 5])
    s = run_all(data, identity)
    assert s["mig"]["discrete_mig"] > 0.97                   # the zero-entropy factor is left out, not NaN
    assert s["dci"]["informativeness_test"] == 1.0 and s["dci"]["disentanglement"] > 0.99
    assert s["modularity"]["explicitness_score_test"] > 0.97
    assert s["sap"]["SAP_score"] > 0.3
    assert s["beta_vae"]["eval_accuracy"] == 1.0
    # FactorVAE cannot tell when the constant factor is the fixed one: ceiling (F-1)/F = 2/3.
    assert abs(s["factor_vae"]["eval_accuracy"] - 2 / 3) < 0.08


def test_one_latent():
    s = run_all(IdentityGroundTruth([4, 5]), lambda x: x[:, :1], metrics=("mig", "sap", "dci"))
    assert s["mig"]["discrete_mig"] == pytest.approx(0.5, abs=0.01)      # factor 0 fully, factor 1 not at all
    assert s["dci"]["completeness"] == 1.0 and np.isfinite(s["sap"]["SAP_score"])


# ----------------------------------------------------------------- representation functions and errors

class TupleEncoder(torch.nn.Module):
    """[B, C, 64, 64] -> (mu [B, 3], logvar [B, 3]); records whether grad was enabled."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64 * 64, 3)
        self.grad_seen = []

    def forward(self, x):
        assert x.shape[1:] == (1, 64, 64)
        self.grad_seen.append(torch.is_grad_enabled() or self.training)
        mu = self.lin(x.flatten(1))
        return mu, torch.zeros_like(mu)


def test_torch_module_representation():
    model = TupleEncoder().train()
    data = DSprites()
    factors = data.sample_factors(10, np.random.RandomState(0))
    obs = data.sample_observations_from_factors(factors, None)
    codes = M.Representation(model, batch_size=4)(obs)
    with torch.no_grad():
        expected = model.lin(torch.from_numpy(obs).permute(0, 3, 1, 2).flatten(1)).numpy()
    np.testing.assert_allclose(codes, expected, rtol=1e-6)
    assert codes.dtype == np.float64 and not any(model.grad_seen) and model.training
    assert len(model.grad_seen) == 3                                       # batches of 4, 4, 2


def test_bad_arguments():
    with pytest.raises(TypeError, match="random_state"):
        M.mig(DATA, identity, "seed")
    with pytest.raises(ValueError, match="num_points must be an int >= 1, got 0"):
        M.mig(DATA, identity, 0, num_train=0)
    with pytest.raises(TypeError, match="ground_truth_data"):
        M.mig(object(), identity, 0)
    with pytest.raises(ValueError, match=r"shape \[16, num_latents\]"):
        M.mig(DATA, lambda x: x[:, 0], 0, num_train=16)
    with pytest.raises(TypeError, match="representation_fn must be callable"):
        M.mig(DATA, 3, 0)
    with pytest.raises(ValueError, match="batch_size and num_variance_estimate must be >= 2"):
        M.factor_vae_score(DATA, identity, 0, batch_size=1)


def test_missing_sklearn_says_how_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"pip install dgmfast\[metrics\]"):
        M.dci(DATA, identity, 0, num_train=10, num_test=10)
