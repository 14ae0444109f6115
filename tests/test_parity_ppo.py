"""ppo_mlx vs ppo_torch: same weights and batch give the same log-probs, entropy, values, loss terms and
gradients; one full update (train_step with the scripts' own optimizer) leaves the same weights, and is
Adam's first step; the MLX GAE equals an independent reference."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import (
    assert_close,
    assert_same_grads,
    check_ppo_full_updates,
    cross_load,
    load_script,
    torch_params_to_mlx,
)

P_MLX = load_script("ppo", "mlx")
P_TORCH = load_script("ppo", "torch")
OBS_DIM, N_ACTIONS, B = 4, 3, 64
STATS = ("pg_loss", "v_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac")


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t_agent = P_TORCH.Agent(OBS_DIM, N_ACTIONS)
    m_agent = P_MLX.Agent(OBS_DIM, N_ACTIONS)
    # give the actor head non-trivial weights so the distribution is far from uniform
    with torch.no_grad():
        t_agent.actor[4].weight.normal_(0, 1.0)
    torch_params_to_mlx(t_agent, m_agent)
    return t_agent, m_agent


def make_batch(seed=1, size=B):
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.normal(size=(size, OBS_DIM)).astype(np.float32),
        "actions": rng.integers(0, N_ACTIONS, size=size),
        "logprobs": (np.log(1 / N_ACTIONS) + 0.3 * rng.normal(size=size)).astype(np.float32),
        "advantages": rng.normal(size=size).astype(np.float32),
        "returns": rng.normal(size=size).astype(np.float32),
        "values": rng.normal(size=size).astype(np.float32),
    }


def as_torch(batch):
    return [torch.tensor(batch[k]) for k in ("obs", "actions", "logprobs", "advantages", "returns", "values")]


def as_mlx(batch):
    return [mx.array(batch[k]) for k in ("obs", "actions", "logprobs", "advantages", "returns", "values")]


def test_network_parameter_names_match(twins):
    t_agent, m_agent = twins
    assert sorted(k for k, _ in tree_flatten(m_agent.parameters())) == sorted(t_agent.state_dict())


def test_logprob_entropy_value(twins):
    t_agent, m_agent = twins
    b = make_batch()
    t_obs, t_act = torch.tensor(b["obs"]), torch.tensor(b["actions"])
    m_obs, m_act = mx.array(b["obs"]), mx.array(b["actions"])
    t_lp, t_ent = P_TORCH.categorical_logprob_entropy(t_agent.get_logits(t_obs), t_act)
    m_lp, m_ent = P_MLX.categorical_logprob_entropy(m_agent.get_logits(m_obs), m_act)
    assert_close(m_lp, t_lp, what="log-prob")
    assert_close(m_ent, t_ent, what="entropy")
    assert_close(m_agent.get_value(m_obs), t_agent.get_value(t_obs), what="value")


@pytest.mark.parametrize("norm_adv", [True, False])
@pytest.mark.parametrize("clip_vloss", [True, False])
def test_loss_terms_and_gradients(twins, norm_adv, clip_vloss):
    t_agent, m_agent = twins
    b = make_batch()
    coefs = dict(clip_coef=0.2, ent_coef=0.01, vf_coef=0.5, norm_adv=norm_adv, clip_vloss=clip_vloss)

    t_loss, t_stats = P_TORCH.ppo_loss(t_agent, *as_torch(b), **coefs)
    t_agent.zero_grad()
    t_loss.backward()

    def loss_fn(*batch):
        return P_MLX.ppo_loss(m_agent, *batch, **coefs)

    (m_loss, m_stats), m_grads = nn.value_and_grad(m_agent, loss_fn)(*as_mlx(b))
    assert_close(m_loss, t_loss, what="loss")
    for name, m, t in zip(STATS, m_stats, t_stats):
        assert_close(m, t, what=name)
    assert float(t_stats[5]) > 0, "the batch should exercise the clipped branch"
    assert_same_grads(m_grads, t_agent)


def test_full_updates_match_and_the_first_is_adams(twins):
    """train_step as the scripts run it (the minibatch gathered from the batch, loss, gradients, clipping, the
    scripts' own Adam; MLX compiled): same loss terms and weights in both twins after each of 3 updates.
    Against the formula: torch's first step is Adam's first step with CleanRL's lr 2.5e-4 and eps 1e-5, on
    gradients clipped to a global norm of 0.5."""
    t_agent, m_agent = twins
    batch = make_batch(seed=10, size=4 * B)
    check_ppo_full_updates(P_MLX, P_TORCH, m_agent, t_agent, (as_mlx(batch), as_torch(batch)), B, 2.5e-4, STATS)


def reference_gae(rewards, values, dones, next_value, next_done, gamma, lam):
    """Independent form: A_t = sum_l (gamma*lam)^l delta_{t+l}, cut where an episode ends."""
    T, N = rewards.shape
    starts = np.concatenate([dones, next_done[None]], axis=0)  # starts[t] = obs t begins an episode
    vals = np.concatenate([values, next_value[None]], axis=0)
    adv = np.zeros_like(rewards)
    for n in range(N):
        for t in range(T):
            total, discount = 0.0, 1.0
            for k in range(t, T):
                nonterminal = 1.0 - starts[k + 1, n]
                delta = rewards[k, n] + gamma * vals[k + 1, n] * nonterminal - vals[k, n]
                total += discount * delta
                if nonterminal == 0.0:
                    break
                discount *= gamma * lam
            adv[t, n] = total
    return adv


def test_gae_matches_reference_across_episode_boundaries():
    rng = np.random.default_rng(3)
    T, N = 37, 3
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    dones = (rng.random((T, N)) < 0.15).astype(np.float32)
    next_value = rng.normal(size=N).astype(np.float32)
    next_done = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    assert dones.sum() > 3
    adv, ret = P_MLX.compute_gae(rewards, values, dones, next_value, next_done, 0.99, 0.95)
    ref = reference_gae(rewards, values, dones, next_value, next_done, 0.99, 0.95)
    np.testing.assert_allclose(adv, ref, atol=1e-5)
    np.testing.assert_allclose(ret, ref + values, atol=1e-5)
    t_adv, _ = P_TORCH.compute_gae(rewards, values, dones, next_value, next_done, 0.99, 0.95)
    np.testing.assert_allclose(adv, t_adv, atol=1e-6)


def test_weights_load_across_frameworks(twins, tmp_path):
    """A file saved by either twin loads in the other (names and shapes match)."""
    t_agent, m_agent = twins
    fresh_m, fresh_t = cross_load(m_agent, t_agent, P_MLX.Agent(OBS_DIM, N_ACTIONS), P_TORCH.Agent(OBS_DIM, N_ACTIONS), tmp_path)
    x = np.random.default_rng(0).normal(size=(5, OBS_DIM)).astype(np.float32)
    assert_close(fresh_m.get_logits(mx.array(x)), fresh_t.get_logits(torch.tensor(x)))
