"""V-trace off-policy targets (IMPALA, Espeholt et al. 2018; docs/protocols.md 4), as torchbeast's
`vtrace.from_importance_weights`, in pure torch.

Everything is time-major: (T, B) for an unroll of T steps of B actors, and (B,) for the value of the state
after the last step. With rho_t = pi(a_t|x_t) / mu(a_t|x_t) (learner policy over the actor's):

    clipped_rho_t = min(rho_bar, rho_t)            c_t = min(c_bar, rho_t)
    delta_t       = clipped_rho_t * (r_t + gamma_t V(x_{t+1}) - V(x_t))
    vs_t - V(x_t) = delta_t + gamma_t c_t (vs_{t+1} - V(x_{t+1}))          (backwards from vs_T = V(x_T))
    pg_adv_t      = min(pg_rho_bar, rho_t) * (r_t + gamma_t vs_{t+1} - V(x_t))

`discounts` is gamma_t = gamma * (1 - done_t): 0 where the episode ended at step t, so neither the next
value nor anything after it reaches back across the end. torchbeast fixes c_bar at 1; here it is a
parameter (IMPALA's c-bar). The reference settings are rho_bar = c_bar = 1. Targets are computed without
gradient: `vs` is the baseline's regression target and `pg_advantages` weights `log pi(a_t|x_t)`.

A learner step, sketched:

    lr = log_rhos(learner_logits, behaviour_logits, actions)
    vs, pg_adv = vtrace(lr, gamma * (~done).float(), rewards, values, bootstrap_value)
    pg_loss = -(action_log_probs(learner_logits, actions) * pg_adv).sum()
    baseline_loss = 0.5 * ((vs - values) ** 2).sum()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def action_log_probs(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[action]: logits (T, B, A), actions (T, B) of int64 -> (T, B)."""
    return F.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def log_rhos(target_logits: torch.Tensor, behaviour_logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi(a|x) - log mu(a|x) of the actions taken: the learner's (target) policy over the actor's
    (behaviour) policy. Logits (T, B, A), actions (T, B) -> (T, B)."""
    return action_log_probs(target_logits, actions) - action_log_probs(behaviour_logits, actions)


@torch.no_grad()
def vtrace(
    log_rhos: torch.Tensor,
    discounts: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor,
    bootstrap_value: torch.Tensor,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    pg_rho_bar: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace targets `vs` and policy-gradient advantages, both (T, B), without gradient.

    log_rhos, discounts, rewards, values: (T, B); bootstrap_value: (B,), the value of the state after
    step T-1. rho_bar clips the importance weights in the TD errors (which value function vs estimates),
    c_bar the traces (how far back a TD error reaches), pg_rho_bar those of the policy gradient."""
    rhos = torch.exp(log_rhos)
    clipped_rhos = torch.clamp(rhos, max=rho_bar)
    cs = torch.clamp(rhos, max=c_bar)

    values_t_plus_1 = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    deltas = clipped_rhos * (rewards + discounts * values_t_plus_1 - values)

    # vs_t - V(x_t), backwards from the end of the unroll (where it is 0: vs_T = V(x_T)).
    acc = torch.zeros_like(bootstrap_value)
    vs_minus_v_xs = []
    for t in reversed(range(log_rhos.shape[0])):
        acc = deltas[t] + discounts[t] * cs[t] * acc
        vs_minus_v_xs.append(acc)
    vs = torch.stack(vs_minus_v_xs[::-1]) + values

    vs_t_plus_1 = torch.cat([vs[1:], bootstrap_value.unsqueeze(0)], dim=0)
    clipped_pg_rhos = torch.clamp(rhos, max=pg_rho_bar)
    pg_advantages = clipped_pg_rhos * (rewards + discounts * vs_t_plus_1 - values)
    return vs, pg_advantages
