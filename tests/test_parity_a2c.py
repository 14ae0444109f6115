"""a2c_mlx vs a2c_torch: same weights and batch give the same log-probs, entropies, values, loss terms and
gradients, for the categorical and the Gaussian head; full updates (train_step with the scripts' own
RMSprop) leave the same weights, the first one as RMSprop's formula says; the MLX sampler draws from the
distribution it scores; GAE(lambda=1) equals plain discounted n-step returns."""

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import assert_close, assert_same_weights, cross_load, load_script, torch_params, torch_params_to_mlx

P_MLX = load_script("a2c", "mlx")
P_TORCH = load_script("a2c", "torch")
OBS_DIM, B = 4, 20  # B = SB3's default rollout on 4 envs: 4 x 5
HEADS = {"discrete": (3, False), "continuous": (2, True)}  # (action_dim, continuous)


def make_twins(head):
    action_dim, continuous = HEADS[head]
    torch.manual_seed(0)
    t_agent = P_TORCH.Agent(OBS_DIM, action_dim, continuous)
    m_agent = P_MLX.Agent(OBS_DIM, action_dim, continuous)
    # non-trivial policy head (and log std) so the distributions are far from their initial ones
    with torch.no_grad():
        t_agent.actor[4].weight.normal_(0, 1.0)
        if continuous:
            t_agent.actor_logstd.copy_(torch.tensor([[-0.5, 0.3]]))
    torch_params_to_mlx(t_agent, m_agent)
    return t_agent, m_agent


def make_batch(head, seed=1):
    action_dim, continuous = HEADS[head]
    rng = np.random.default_rng(seed)
    if continuous:
        actions = rng.normal(size=(B, action_dim)).astype(np.float32)
    else:
        actions = rng.integers(0, action_dim, size=B)
    return {
        "obs": rng.normal(size=(B, OBS_DIM)).astype(np.float32),
        "actions": actions,
        "advantages": rng.normal(size=B).astype(np.float32),
        "returns": rng.normal(size=B).astype(np.float32),
    }


KEYS = ("obs", "actions", "advantages", "returns")


def as_torch(batch):
    return [torch.tensor(batch[k]) for k in KEYS]


def as_mlx(batch):
    return [mx.array(batch[k]) for k in KEYS]


@pytest.mark.parametrize("head", HEADS)
def test_network_parameter_names_match(head):
    t_agent, m_agent = make_twins(head)
    names = sorted(k for k, _ in tree_flatten(m_agent.parameters()))
    assert names == sorted(t_agent.state_dict())
    assert ("actor_logstd" in names) == HEADS[head][1]


@pytest.mark.parametrize("head", HEADS)
def test_orthogonal_init_gains(head):
    """SB3's init: orthogonal with gain sqrt(2) for hidden layers, 0.01 policy head, 1 value head; zero biases."""
    action_dim, continuous = HEADS[head]
    for agent, to_np in (
        (P_MLX.Agent(OBS_DIM, action_dim, continuous), np.asarray),
        (P_TORCH.Agent(OBS_DIM, action_dim, continuous), lambda t: t.detach().numpy()),
    ):
        for net, gains in (("critic", (math.sqrt(2), math.sqrt(2), 1.0)), ("actor", (math.sqrt(2), math.sqrt(2), 0.01))):
            for idx, gain in zip((0, 2, 4), gains):
                w = to_np(getattr(agent, net)[idx].weight)
                # rows (or columns, whichever are fewer) are orthonormal up to the gain
                gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
                np.testing.assert_allclose(gram, gain**2 * np.eye(len(gram)), atol=1e-5, err_msg=f"{net}.{idx}")
                assert not to_np(getattr(agent, net)[idx].bias).any()
        if continuous:
            assert not to_np(agent.actor_logstd).any()


@pytest.mark.parametrize("head", HEADS)
def test_logprob_entropy_value(head):
    t_agent, m_agent = make_twins(head)
    b = make_batch(head)
    t_obs, t_act = torch.tensor(b["obs"]), torch.tensor(b["actions"])
    m_obs, m_act = mx.array(b["obs"]), mx.array(b["actions"])
    t_lp, t_ent = t_agent.get_logprob_entropy(t_obs, t_act)
    m_lp, m_ent = m_agent.get_logprob_entropy(m_obs, m_act)
    assert m_lp.shape == (B,) and m_ent.shape == (B,)
    assert_close(m_lp, t_lp, what="log-prob")
    assert_close(m_ent, t_ent, what="entropy")
    assert_close(m_agent.get_value(m_obs), t_agent.get_value(t_obs), what="value")


@pytest.mark.parametrize("head", HEADS)
def test_sampler_draws_from_the_scored_distribution(head):
    """MLX sample_action follows the distribution get_logprob_entropy scores (moments / frequencies)."""
    _, m_agent = make_twins(head)
    n = 20000
    obs = mx.broadcast_to(mx.array(make_batch(head)["obs"][:1]), (n, OBS_DIM))
    mx.random.seed(0)
    samples = np.asarray(m_agent.sample_action(obs))
    out = np.asarray(P_MLX.forward(m_agent.actor, obs[:1]))[0]
    if HEADS[head][1]:
        std = np.exp(np.asarray(m_agent.actor_logstd)[0])
        np.testing.assert_allclose(samples.mean(0), out, atol=4 * std.max() / math.sqrt(n))
        np.testing.assert_allclose(samples.std(0), std, rtol=0.03)
    else:
        probs = np.exp(out - out.max()) / np.exp(out - out.max()).sum()
        freqs = np.bincount(samples, minlength=len(probs)) / n
        np.testing.assert_allclose(freqs, probs, atol=0.015)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("norm_adv", [False, True])
def test_loss_terms_and_gradients(head, norm_adv):
    t_agent, m_agent = make_twins(head)
    b = make_batch(head)
    coefs = dict(ent_coef=0.01, vf_coef=0.5, norm_adv=norm_adv)  # non-zero ent_coef: its gradient is checked too

    t_loss, t_stats = P_TORCH.a2c_loss(t_agent, *as_torch(b), **coefs)
    t_agent.zero_grad()
    t_loss.backward()

    (m_loss, m_stats), m_grads = nn.value_and_grad(m_agent, lambda *batch: P_MLX.a2c_loss(m_agent, *batch, **coefs))(*as_mlx(b))
    assert_close(m_loss, t_loss, what="loss")
    for name, m, t in zip(["pg_loss", "v_loss", "entropy"], m_stats, t_stats):
        assert_close(m, t, what=name)
    # SB3's value loss is the plain MSE (no 0.5): check the formula, not only agreement
    values = t_agent.get_value(torch.tensor(b["obs"])).detach().numpy()
    np.testing.assert_allclose(float(m_stats[1]), np.mean((b["returns"] - values) ** 2), rtol=1e-5)
    m_grads = dict(tree_flatten(m_grads))
    for name, p in t_agent.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        assert_close(m_grads[name], p.grad, atol=1e-5, what=f"grad {name}")


@pytest.mark.parametrize("head", HEADS)
def test_full_updates_match_and_the_first_is_rmsprops(head):
    """train_step as the scripts run it (loss, gradients, clipping, the scripts' own RMSprop; MLX compiled):
    same loss terms and weights in both twins after each of 5 updates. Against the formula: torch's first
    step is RMSprop's first step (mean square (1 - alpha) g^2, eps outside the square root) with SB3's lr
    7e-4, alpha 0.99 and eps 1e-5, on gradients clipped to a global norm of 0.5."""
    t_agent, m_agent = make_twins(head)
    args = P_MLX.Args()
    coefs = dict(max_grad_norm=args.max_grad_norm, ent_coef=0.01, vf_coef=args.vf_coef, norm_adv=args.norm_adv)
    t_opt = P_TORCH.make_optimizer(t_agent, P_TORCH.Args())
    m_opt = P_MLX.make_optimizer(m_agent, args)
    state = [m_agent.state, m_opt.state]
    m_train = mx.compile(partial(P_MLX.train_step, m_agent, m_opt, **coefs), inputs=state, outputs=state)
    for step in range(5):
        b = make_batch(head, seed=10 + step)
        before = torch_params(t_agent)
        t_stats = P_TORCH.train_step(t_agent, t_opt, *as_torch(b), **coefs)
        m_stats = m_train(*as_mlx(b))
        mx.eval(m_stats, state)
        assert_same_weights(m_agent, t_agent, atol=1e-6, what=f"update {step}")
        for name, m, t in zip(["pg_loss", "v_loss", "entropy"], m_stats, t_stats):
            assert_close(m, t, what=f"{name} of update {step}")
        if step == 0:
            after = torch_params(t_agent)
            grads = {name: p.grad.numpy().copy() for name, p in t_agent.named_parameters()}
            np.testing.assert_allclose(np.sqrt(sum((g**2).sum() for g in grads.values())), 0.5, rtol=1e-4)
            for name, g in grads.items():
                expected = before[name] - 7e-4 * g / (np.sqrt((1 - 0.99) * g**2) + 1e-5)
                np.testing.assert_allclose(after[name], expected, atol=1e-7, rtol=1e-5, err_msg=f"first RMSprop step of {name}")


def reference_nstep_returns(rewards, dones, next_value, next_done, gamma):
    """Independent form for lambda=1: R_t = r_t + gamma * R_{t+1}, cut where an episode ends, seeded with
    the bootstrap value of the observation after the rollout."""
    T, _ = rewards.shape
    ret = np.zeros_like(rewards)
    running = next_value * (1.0 - next_done)
    for t in reversed(range(T)):
        running = rewards[t] + gamma * running
        ret[t] = running
        if t > 0:
            running = running * (1.0 - dones[t])  # obs t starts an episode: step t-1 does not see past it
    return ret


def test_gae_lambda_one_is_nstep_returns():
    rng = np.random.default_rng(3)
    T, N = 5, 4
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    dones = np.zeros((T, N), dtype=np.float32)
    dones[2, 0] = dones[4, 1] = dones[1, 3] = 1.0
    next_value = rng.normal(size=N).astype(np.float32)
    next_done = np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32)
    adv, ret = P_MLX.compute_gae(rewards, values, dones, next_value, next_done, 0.99, 1.0)
    ref = reference_nstep_returns(rewards, dones, next_value, next_done, 0.99)
    np.testing.assert_allclose(ret, ref, atol=1e-5)
    np.testing.assert_allclose(adv, ref - values, atol=1e-5)
    t_adv, t_ret = P_TORCH.compute_gae(rewards, values, dones, next_value, next_done, 0.99, 1.0)
    np.testing.assert_allclose(adv, t_adv, atol=1e-6)
    np.testing.assert_allclose(ret, t_ret, atol=1e-6)


@pytest.mark.parametrize("head", HEADS)
def test_weights_load_across_frameworks(head, tmp_path):
    """A file saved by either twin loads in the other (names and shapes match, log std included)."""
    action_dim, continuous = HEADS[head]
    t_agent, m_agent = make_twins(head)
    fresh_m, fresh_t = cross_load(
        m_agent, t_agent, P_MLX.Agent(OBS_DIM, action_dim, continuous), P_TORCH.Agent(OBS_DIM, action_dim, continuous), tmp_path
    )
    b = make_batch(head)
    t_lp, _ = fresh_t.get_logprob_entropy(torch.tensor(b["obs"]), torch.tensor(b["actions"]))
    m_lp, _ = fresh_m.get_logprob_entropy(mx.array(b["obs"]), mx.array(b["actions"]))
    assert_close(m_lp, t_lp)
