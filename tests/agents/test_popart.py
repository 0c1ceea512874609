"""PopArt (atarirep.agents.popart): its statistics under both rules (torchbeast's average of the batches' std,
Hessel et al.'s second moment) and its output-preserving rescaling (docs/protocols.md 4)."""

import io
import math

import pytest
import torch

from atarirep.agents.popart import PopArt


def _popart(in_features=6, num_tasks=3, seed=0):
    torch.manual_seed(seed)
    return PopArt(in_features, num_tasks).double()


def test_both_statistics_rules_on_a_hand_computed_batch():
    # Task 0's targets 1, 3: mean 2, mean of squares 5, std 1. Task 1's 10, 10, 16: mean 12, mean of squares
    # 152, std sqrt(8). Task 2 is absent. From mu = 0, sigma = 1 (nu = 1), beta = 0.5:
    #   torchbeast:    mu = 0.5 * 0 + 0.5 * mean;  sigma = 0.5 * 1 + 0.5 * std       -> (1, 1), (6, 0.5 + sqrt(2))
    #   second_moment: nu = 0.5 * 1 + 0.5 * mean of squares; sigma = sqrt(nu - mu^2)  -> (1, sqrt(2)), (6, sqrt(40.5))
    targets, task_ids = torch.tensor([1.0, 10.0, 3.0, 10.0, 16.0]), torch.tensor([0, 1, 0, 1, 1])
    expected = {
        "torchbeast": (1.0, 1.0, 6.0, 0.5 + math.sqrt(2.0)),
        "second_moment": (1.0, math.sqrt(2.0), 6.0, math.sqrt(40.5)),
    }
    features = torch.randn(4, 6, dtype=torch.float64)
    for rule, (mu0, sigma0, mu1, sigma1) in expected.items():
        popart = _popart()
        before = popart.unnormalized(features)
        popart.update(targets, task_ids, beta=0.5, statistics=rule)
        torch.testing.assert_close(popart.mu, torch.tensor([mu0, mu1, 0.0], dtype=torch.float64))
        torch.testing.assert_close(popart.sigma, torch.tensor([sigma0, sigma1, 1.0], dtype=torch.float64))
        torch.testing.assert_close(popart.nu[:2], popart.sigma[:2] ** 2 + popart.mu[:2] ** 2)
        torch.testing.assert_close(popart.unnormalized(features), before)  # outputs preserved
    with pytest.raises(ValueError, match="statistics 'hessel' is unknown"):
        _popart().update(targets, task_ids, statistics="hessel")


def test_popart_update_statistics_and_preserves_outputs():
    popart = _popart()
    features = torch.randn(32, 6, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    # Tasks 0 and 2 only, on very different scales; task 1 is absent.
    task_ids = torch.tensor([0, 2, 0, 2, 0, 0, 2, 2, 0, 2])
    noise = torch.randn(10, generator=g, dtype=torch.float64)
    targets = torch.where(task_ids == 0, 100.0 + 50.0 * noise, -3.0 + 0.5 * noise)
    for step, beta in enumerate([0.1, 0.3]):  # the second update starts from mu != 0, sigma != 1
        mu0, nu0 = popart.mu.clone(), popart.nu.clone()
        before = popart.unnormalized(features)
        popart.update(targets + step, task_ids, beta=beta, statistics="second_moment")
        after = popart.unnormalized(features)
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)

        for task in (0, 2):
            batch = targets[task_ids == task] + step
            mu = (1 - beta) * mu0[task] + beta * batch.mean()
            nu = (1 - beta) * nu0[task] + beta * (batch**2).mean()
            assert popart.mu[task].item() == pytest.approx(mu.item(), rel=1e-12)
            assert popart.nu[task].item() == pytest.approx(nu.item(), rel=1e-12)
            assert popart.sigma[task].item() == pytest.approx(math.sqrt(nu - mu**2), rel=1e-12)
    # The statistics moved (so the preserved outputs above were a real rescaling).
    assert popart.mu[0] > 10 and popart.mu[2] < -0.5 and popart.sigma[0] > 5 and popart.sigma[2] != 1


def test_popart_task_absent_from_the_batch_is_untouched():
    popart = _popart()
    popart.update(torch.tensor([5.0, 7.0, -1.0]), torch.tensor([0, 1, 2]), beta=0.5)  # every task moved once
    kept = {
        name: t[1].clone()
        for name, t in [
            ("mu", popart.mu),
            ("nu", popart.nu),
            ("sigma", popart.sigma),
            ("weight", popart.linear.weight),
            ("bias", popart.linear.bias),
        ]
    }
    mu_before = popart.mu.clone()
    popart.update(torch.tensor([30.0, -20.0, 4.0, 9.0]), torch.tensor([0, 2, 2, 0]), beta=0.5)
    assert torch.equal(popart.mu[1], kept["mu"]) and torch.equal(popart.nu[1], kept["nu"])
    assert torch.equal(popart.sigma[1], kept["sigma"])
    assert torch.equal(popart.linear.weight[1], kept["weight"]) and torch.equal(popart.linear.bias[1], kept["bias"])
    assert popart.mu[0] != mu_before[0] and popart.mu[2] != mu_before[2]  # the present ones did move


@pytest.mark.parametrize("statistics", ["torchbeast", "second_moment"])
def test_popart_sigma_clamps_for_constant_and_huge_targets(statistics):
    popart = _popart()
    features = torch.randn(8, 6, dtype=torch.float64)
    before = popart.unnormalized(features)
    # beta = 1: the statistics become the batch's. Task 0's targets are constant: nu - mu^2 = 0.
    # Task 1's spread is 1e7, above the upper clamp.
    popart.update(
        torch.tensor([3.0, 3.0, 3.0, 1e7, -1e7]), torch.tensor([0, 0, 0, 1, 1]), beta=1.0, statistics=statistics
    )
    assert popart.mu[0].item() == 3.0
    if statistics == "second_moment":
        assert popart.nu[0].item() == 9.0
    assert popart.sigma[0].item() == 1e-4
    assert popart.sigma[1].item() == 1e6
    assert torch.isfinite(popart.linear.weight).all() and torch.isfinite(popart.linear.bias).all()
    torch.testing.assert_close(popart.unnormalized(features), before, rtol=1e-9, atol=1e-6)


def test_popart_update_takes_an_unroll_with_one_task_per_actor():
    # vs is (T, B) and the task ids (B,): the same as flattening both.
    a, b = _popart(), _popart()
    vs = torch.randn(4, 3, dtype=torch.float64)
    task = torch.tensor([2, 0, 2])
    a.update(vs, task, beta=0.2)
    b.update(vs.reshape(-1), task.expand(4, 3).reshape(-1), beta=0.2)
    for name, t in a.state_dict().items():
        torch.testing.assert_close(t, b.state_dict()[name], rtol=0, atol=0)


def test_popart_normalize_helpers():
    popart = _popart()
    popart.update(torch.tensor([10.0, 14.0, -2.0, 0.0]), torch.tensor([0, 0, 2, 2]), beta=0.5)
    mu, sigma = popart.mu, popart.sigma
    task = torch.tensor([2, 0])  # (B,) against (T, B)
    values = torch.randn(5, 2, dtype=torch.float64)
    n = popart.normalize(values, task)
    torch.testing.assert_close(n, (values - mu[task]) / sigma[task])
    torch.testing.assert_close(popart.unnormalize(n, task), values)
    torch.testing.assert_close(popart.normalize_advantages(values, task), values / sigma[task])
    # Without task ids the statistics line up with the tasks' dimension.
    features = torch.randn(7, 6, dtype=torch.float64)
    torch.testing.assert_close(popart.normalize(popart.unnormalized(features)), popart.normalized(features))


def test_popart_state_dict_round_trip_keeps_the_statistics():
    popart = _popart()
    popart.update(torch.tensor([10.0, 14.0, -2.0, 0.0, 1.0]), torch.tensor([0, 0, 2, 2, 1]), beta=0.5)
    state = popart.state_dict()
    assert {"mu", "nu", "sigma", "linear.weight", "linear.bias"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)

    restored = _popart(seed=1)
    assert not torch.equal(restored.mu, popart.mu)
    restored.load_state_dict(torch.load(buffer))
    for name in ("mu", "nu", "sigma"):
        assert torch.equal(getattr(restored, name), getattr(popart, name))
    features = torch.randn(4, 6, dtype=torch.float64)
    assert torch.equal(restored.unnormalized(features), popart.unnormalized(features))
