"""V-trace (IMPALA, atarirep.agents.vtrace) against a hand-computed unroll and against n-step returns on-policy."""

import math

import torch

from atarirep.agents.vtrace import log_rhos, vtrace


def test_vtrace_hand_computed_with_a_clipped_rho_and_truncated_traces():
    # Two actors, 3 steps, rho_bar = 1, c_bar = 0.8 (pg_rho_bar = 1), float64.
    # Actor 0: rhos 0.9, 2.0, 0.5 -- rho_1 = 2 is above rho_bar; c_0 = min(0.8, 0.9) and c_1 = min(0.8, 2) are
    # truncated, so the TD errors reach back less than the rhos alone would let them.
    #   gamma 0.5 at every step, r = 1, 0, 2, V = 0.5, 1.0, 1.5, bootstrap V(x_3) = 2.
    #   clipped rhos 0.9, 1.0, 0.5; cs 0.8, 0.8, 0.5
    #   TD errors r + gamma V(x_{t+1}) - V(x_t):  1 + 0.5*1.0 - 0.5 = 1.0;  0 + 0.5*1.5 - 1.0 = -0.25;
    #                                              2 + 0.5*2.0 - 1.5 = 1.5
    #   deltas = clipped rho * TD:  0.9, -0.25, 0.75
    #   vs - V backwards: t=2: 0.75;  t=1: -0.25 + 0.5*0.8*0.75 = 0.05;  t=0: 0.9 + 0.5*0.8*0.05 = 0.92
    #   vs = 0.5 + 0.92, 1.0 + 0.05, 1.5 + 0.75 = 1.42, 1.05, 2.25
    #   pg advantages = clipped pg rho * (r + gamma vs_{t+1} - V):
    #     t=0: 0.9 * (1 + 0.5*1.05 - 0.5) = 0.9 * 1.025 = 0.9225
    #     t=1: 1.0 * (0 + 0.5*2.25 - 1.0) = 0.125
    #     t=2: 0.5 * (2 + 0.5*2.0 - 1.5) = 0.75            (vs_3 is the bootstrap value)
    #   (Without the truncation of c: vs - V at t=1 would be -0.25 + 0.5*1.0*0.75 = 0.125; without the rho
    #   clip, delta_1 would be -0.5.)
    # Actor 1: rhos 1 (on-policy, yet c = min(0.8, 1) = 0.8 still truncates), its episode ends at step 1
    # (gamma_1 = 0): r = 1, 1, 1, V = 0, 0, 0, bootstrap 4.
    #   deltas = TD errors: 1 + 0.5*0 - 0 = 1;  1 + 0*0 - 0 = 1;  1 + 0.5*4 - 0 = 3
    #   vs - V backwards: t=2: 3;  t=1: 1 + 0*0.8*3 = 1 (the episode's end cuts the trace);
    #                     t=0: 1 + 0.5*0.8*1 = 1.4 (not the return 1 + 0.5*1 = 1.5: c truncates)
    #   pg advantages: t=0: 1 + 0.5*vs_1 - 0 = 1.5;  t=1: 1 + 0*vs_2 = 1;  t=2: 1 + 0.5*4 = 3
    d = torch.float64
    lr = torch.log(torch.tensor([[0.9, 1.0], [2.0, 1.0], [0.5, 1.0]], dtype=d))
    discounts = torch.tensor([[0.5, 0.5], [0.5, 0.0], [0.5, 0.5]], dtype=d)
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [2.0, 1.0]], dtype=d)
    values = torch.tensor([[0.5, 0.0], [1.0, 0.0], [1.5, 0.0]], dtype=d)
    bootstrap = torch.tensor([2.0, 4.0], dtype=d)

    vs, pg = vtrace(lr, discounts, rewards, values, bootstrap, rho_bar=1.0, c_bar=0.8)

    torch.testing.assert_close(vs, torch.tensor([[1.42, 1.4], [1.05, 1.0], [2.25, 3.0]], dtype=d))
    torch.testing.assert_close(pg, torch.tensor([[0.9225, 1.5], [0.125, 1.0], [0.75, 3.0]], dtype=d))


def test_vtrace_on_policy_is_the_bootstrapped_discounted_return():
    # log_rhos = 0: vs is the discounted return to the end of the unroll bootstrapped by the last value
    # (n-step, lambda = 1), cut where an episode ends; the advantage is that return minus the value.
    g = torch.Generator().manual_seed(0)
    T, B = 7, 5
    rewards = torch.randn(T, B, generator=g, dtype=torch.float64)
    values = torch.randn(T, B, generator=g, dtype=torch.float64)
    bootstrap = torch.randn(B, generator=g, dtype=torch.float64)
    discounts = 0.99 * (torch.rand(T, B, generator=g, dtype=torch.float64) > 0.25)
    assert (discounts == 0).any() and (discounts > 0).any()

    returns = torch.empty(T + 1, B, dtype=torch.float64)
    returns[T] = bootstrap
    for t in reversed(range(T)):
        returns[t] = rewards[t] + discounts[t] * returns[t + 1]

    vs, pg = vtrace(torch.zeros(T, B, dtype=torch.float64), discounts, rewards, values, bootstrap)
    torch.testing.assert_close(vs, returns[:T])
    torch.testing.assert_close(pg, returns[:T] - values)


def test_vtrace_outputs_carry_no_gradient():
    values = torch.zeros(3, 2, requires_grad=True)
    logits = torch.zeros(3, 2, 4, requires_grad=True)
    actions = torch.zeros(3, 2, dtype=torch.long)
    lr = log_rhos(logits, torch.zeros(3, 2, 4), actions)
    vs, pg = vtrace(lr, torch.full((3, 2), 0.99), torch.ones(3, 2), values, torch.zeros(2))
    assert not vs.requires_grad and not pg.requires_grad


def test_log_rhos_of_the_taken_actions():
    # Target softmax of logits (0, log 3) is (0.25, 0.75), behaviour (0, 0) is (0.5, 0.5).
    target = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.float64).expand(1, 2, 2)
    behaviour = torch.zeros(1, 2, 2, dtype=torch.float64)
    actions = torch.tensor([[1, 0]])
    torch.testing.assert_close(
        log_rhos(target, behaviour, actions), torch.tensor([[math.log(1.5), math.log(0.5)]], dtype=torch.float64)
    )
