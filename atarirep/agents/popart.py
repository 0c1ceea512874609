"""PopArt value normalisation for multi-task IMPALA (Hessel et al. 2019; docs/protocols.md 4), in pure torch.

The value layer has one output per task and learns *normalized* values n; the value in the reward's scale
is V = sigma * n + mu, with mu and sigma running statistics of that task's V-trace targets. After each
learner update, for each task present in the batch, with mu_b and nu_b the mean of its targets and of their
squares, the statistics move by beta under one of two rules (`STATISTICS`):

    torchbeast (aluscher/torchbeastpopart's PopArtLayer; the reference run):
        sigma_b = sqrt(nu_b - mu_b^2), clamped to [1e-4, 1e6]   (the batch's standard deviation)
        mu  <- (1 - beta) mu + beta mu_b        sigma <- (1 - beta) sigma + beta sigma_b
    second_moment (Hessel et al.):
        mu  <- (1 - beta) mu + beta mu_b        nu <- (1 - beta) nu + beta nu_b
        sigma = sqrt(nu - mu^2)

sigma is clamped to [1e-4, 1e6] under both, and the layer is rescaled so that its unnormalised outputs do not
change ("preserving outputs"):

    W <- W sigma_old / sigma_new            b <- (sigma_old b + mu_old - mu_new) / sigma_new

Tasks absent from the batch keep their statistics and their row of the layer exactly. mu, nu and sigma
are buffers: they are in the state_dict, so checkpoints keep them (under the torchbeast rule nu follows as
sigma^2 + mu^2). The rescaling does not touch the optimizer's state (as in the paper).

The losses are in normalized space: the baseline regresses n on (vs - mu) / sigma (`normalize`), and
the policy gradient's advantage is divided by sigma (`normalize_advantages`; mu cancels in a
difference). A learner step, sketched, with `task` (B,) the task of each actor's unroll:

    n = popart.normalized(features).gather(-1, task.expand(T, B)[..., None])[..., 0]   # features (T, B, F)
    values = popart.unnormalize(n.detach(), task)                     # V-trace runs in the reward's scale
    vs, pg_adv = vtrace(log_rhos, discounts, rewards, values, bootstrap_value)
    baseline_loss = 0.5 * ((popart.normalize(vs, task) - n) ** 2).sum()
    pg_loss = -(action_log_probs * popart.normalize_advantages(pg_adv, task)).sum()
    ... optimizer step ...
    popart.update(vs, task, beta=4e-4, statistics="torchbeast")
"""

from __future__ import annotations

import torch
from torch import nn

SIGMA_MIN = 1e-4
SIGMA_MAX = 1e6
STATISTICS = ("torchbeast", "second_moment")  # how sigma follows the targets (module docstring)


class PopArt(nn.Module):
    """A linear value layer of one normalized output per task, with each task's mu, nu, sigma."""

    mu: torch.Tensor  # buffers (num_tasks,)
    nu: torch.Tensor
    sigma: torch.Tensor

    def __init__(self, in_features: int, num_tasks: int):
        super().__init__()
        self.num_tasks = num_tasks
        self.linear = nn.Linear(in_features, num_tasks)
        # Start at the identity: mu = 0, sigma = 1 (nu = sigma^2 + mu^2 = 1).
        self.register_buffer("mu", torch.zeros(num_tasks))
        self.register_buffer("nu", torch.ones(num_tasks))
        self.register_buffer("sigma", torch.ones(num_tasks))

    def normalized(self, features: torch.Tensor) -> torch.Tensor:
        """Normalized values n of every task: features (..., in_features) -> (..., num_tasks)."""
        return self.linear(features)

    forward = normalized

    def unnormalized(self, features: torch.Tensor) -> torch.Tensor:
        """Values in the reward's scale, sigma * n + mu, of every task: (..., in_features) -> (..., num_tasks)."""
        return self.unnormalize(self.normalized(features))

    def _stats(self, task_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # Without task ids, the statistics line up with a last dimension of num_tasks; with them, each
        # value takes its task's (task_ids broadcasts against the values, e.g. (B,) against (T, B)).
        if task_ids is None:
            return self.mu, self.sigma
        return self.mu[task_ids], self.sigma[task_ids]

    def unnormalize(self, normalized_values: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """sigma * n + mu."""
        mu, sigma = self._stats(task_ids)
        return sigma * normalized_values + mu

    def normalize(self, values: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(values - mu) / sigma: the baseline's targets (V-trace's vs) in normalized space."""
        mu, sigma = self._stats(task_ids)
        return (values - mu) / sigma

    def normalize_advantages(self, advantages: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """advantages / sigma: a difference of values in normalized space (mu cancels)."""
        _, sigma = self._stats(task_ids)
        return advantages / sigma

    @torch.no_grad()
    def update(
        self, targets: torch.Tensor, task_ids: torch.Tensor, beta: float = 4e-4, statistics: str = "torchbeast"
    ) -> None:
        """Move the statistics of the tasks in the batch towards its targets by `statistics`' rule, then rescale
        their rows of the layer so that their unnormalised outputs are unchanged. targets: any shape, e.g. (N,)
        or vs's (T, B); task_ids: int64 of the same shape or one that broadcasts to it (the (B,) of an unroll)."""
        if statistics not in STATISTICS:
            raise ValueError(f"PopArt statistics {statistics!r} is unknown; use one of {', '.join(STATISTICS)}")
        present, mu_b, nu_b = self._batch_moments(targets, task_ids)
        mu_old, sigma_old = self.mu[present], self.sigma[present]
        mu_new = (1 - beta) * mu_old + beta * mu_b
        if statistics == "torchbeast":
            sigma_new = (1 - beta) * sigma_old + beta * _std(nu_b, mu_b)
            nu_new = sigma_new**2 + mu_new**2
        else:
            nu_new = (1 - beta) * self.nu[present] + beta * nu_b
            sigma_new = _std(nu_new, mu_new)
        sigma_new = sigma_new.clamp(SIGMA_MIN, SIGMA_MAX)

        # Preserve outputs: sigma_new * n_new + mu_new == sigma_old * n_old + mu_old for every input.
        w, b = self.linear.weight, self.linear.bias
        w[present] = w[present] * (sigma_old / sigma_new).unsqueeze(-1)
        b[present] = (sigma_old * b[present] + mu_old - mu_new) / sigma_new

        self.mu[present] = mu_new
        self.nu[present] = nu_new
        self.sigma[present] = sigma_new

    def _batch_moments(self, targets: torch.Tensor, task_ids: torch.Tensor):
        """(which tasks are in the batch (num_tasks,) bool, their targets' means, their means of squares)."""
        targets = targets.to(self.mu.dtype)
        task_ids = task_ids.expand_as(targets).reshape(-1)
        targets = targets.reshape(-1)
        counts = torch.bincount(task_ids, minlength=self.num_tasks).to(targets.dtype)
        sums = torch.zeros_like(self.mu).index_add_(0, task_ids, targets)
        sums_sq = torch.zeros_like(self.mu).index_add_(0, task_ids, targets * targets)
        present = counts > 0
        return present, sums[present] / counts[present], sums_sq[present] / counts[present]


def _std(nu: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """sqrt(nu - mu^2), clamped to [SIGMA_MIN, SIGMA_MAX] (nu - mu^2 >= 0 in exact arithmetic; rounding can
    take it below 0)."""
    return torch.sqrt(torch.clamp(nu - mu**2, min=0.0)).clamp(SIGMA_MIN, SIGMA_MAX)
