"""pqn_mlx vs pqn_torch: same weights and batch give the same Q-values (LayerNorm included), loss and gradients; the
MLX script's RAdam takes torch.optim.RAdam's steps (before and after its rectification switches on); the scripts' own
update (train_step: loss, clipping, RAdam; MLX compiled) leaves the same weights; the Q(lambda) returns equal an
independent forward-view formula across terminations."""

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten, tree_unflatten

from tests.helpers import (
    assert_close,
    assert_same_grads,
    assert_same_weights,
    cross_load,
    load_script,
    torch_grads,
    torch_params,
    torch_params_to_mlx,
)

P_MLX = load_script("pqn", "mlx")
P_TORCH = load_script("pqn", "torch")
OBS_DIM, N_ACTIONS, B = 4, 3, 128


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t_q = P_TORCH.QNetwork(OBS_DIM, N_ACTIONS)
    with torch.no_grad():  # LayerNorm starts at (1, 0): move it so its affine part is tested too
        for i in (1, 4):
            t_q.network[i].weight.normal_(1.0, 0.2)
            t_q.network[i].bias.normal_(0.0, 0.2)
    m_q = P_MLX.QNetwork(OBS_DIM, N_ACTIONS)
    torch_params_to_mlx(t_q, m_q)
    return t_q, m_q


def make_batch(seed=1, size=B, return_scale=1.0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(size, OBS_DIM)).astype(np.float32),
        rng.integers(0, N_ACTIONS, size=size),
        (return_scale * rng.normal(size=size)).astype(np.float32),
    )


def as_torch(batch):
    return [torch.as_tensor(x) for x in batch]


def as_mlx(batch):
    return [mx.array(x) for x in batch]


def test_network_parameter_names_match(twins):
    t_q, m_q = twins
    names = sorted(k for k, _ in tree_flatten(m_q.parameters()))
    assert names == sorted(t_q.state_dict())
    assert "network.1.weight" in names and "network.4.bias" in names, "LayerNorms after both hidden layers"


def test_q_values_loss_and_gradients(twins):
    t_q, m_q = twins
    batch = make_batch()
    (t_obs, t_act, t_ret), (m_obs, m_act, m_ret) = as_torch(batch), as_mlx(batch)
    assert_close(m_q(m_obs), t_q(t_obs), what="Q-values")

    t_loss, t_old = P_TORCH.pqn_loss(t_q, t_obs, t_act, t_ret)
    t_q.zero_grad()
    t_loss.backward()
    (m_loss, m_old), m_grads = nn.value_and_grad(m_q, lambda *a: P_MLX.pqn_loss(m_q, *a))(m_obs, m_act, m_ret)
    assert_close(m_old, t_old, what="Q(s, a)")
    assert_close(m_loss, t_loss, what="loss")
    # independent form: the mean squared error against the returns of the taken actions
    q = t_q(t_obs).detach().numpy()
    np.testing.assert_allclose(np.array(m_loss), np.mean((batch[2] - q[np.arange(B), batch[1]]) ** 2), rtol=1e-5)
    assert_same_grads(m_grads, t_q)


def radam_reference(params, grads, lrs, betas=(0.9, 0.999), eps=1e-8):
    """RAdam by the paper's algorithm (Liu et al. 2020, Algorithm 2) in float64 numpy, one step per (grads, lr)."""
    b1, b2 = betas
    rho_inf = 2 / (1 - b2) - 1
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    params = {k: p.astype(np.float64) for k, p in params.items()}
    for t, (g_step, lr) in enumerate(zip(grads, lrs), start=1):
        rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
        for k, g in g_step.items():
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat = m[k] / (1 - b1**t)
            if rho_t > 5:  # variance tractable: the adaptive, rectified step
                r_t = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                params[k] = params[k] - lr * r_t * m_hat * np.sqrt(1 - b2**t) / (np.sqrt(v[k]) + eps)
            else:  # SGD with momentum
                params[k] = params[k] - lr * m_hat
    return params


def test_radam_matches_torch_and_the_paper(twins):
    """The script's RAdam, compiled as the script runs it (learning rate changed in its state between steps), against
    torch.optim.RAdam and a numpy transcription of the paper, over 9 steps: the first 5 are momentum SGD, from step 6
    on the rectified adaptive step (rho_t > 5)."""
    t_q, m_q = twins
    params = {k: np.array(v) for k, v in tree_flatten(m_q.parameters())}
    rng = np.random.default_rng(5)
    scale = {k: 1e-5 if k.endswith("bias") else 0.1 for k in params}  # tiny gradients: where eps matters
    grads = [
        {k: rng.normal(scale=scale[k] * (i + 1), size=p.shape).astype(np.float32) for k, p in params.items()} for i in range(9)
    ]
    lrs = [2.5e-4 * (1 - i / 9) for i in range(9)]

    t_opt = torch.optim.RAdam(t_q.parameters(), lr=lrs[0])
    m_opt = P_MLX.make_optimizer(m_q, P_MLX.Args())
    state = [m_q.state, m_opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def m_step(g):
        m_opt.update(m_q, g)

    expected = radam_reference(params, grads, lrs)
    for step, (g, lr) in enumerate(zip(grads, lrs)):
        t_opt.param_groups[0]["lr"] = lr
        for name, p in t_q.named_parameters():
            p.grad = torch.tensor(g[name])
        t_opt.step()
        m_opt.learning_rate = lr
        m_step(tree_unflatten([(k, mx.array(v)) for k, v in g.items()]))
        mx.eval(state)
        assert_same_weights(m_q, t_q, atol=1e-7, what=f"RAdam step {step + 1}")
        if step == 0:  # the first step is lr * g: m_hat = g, no adaptive term yet
            for name, p in t_q.named_parameters():
                np.testing.assert_allclose(p.detach().numpy(), params[name] - lrs[0] * g[name], atol=1e-8, rtol=1e-6)
    m_after = {k: np.array(v) for k, v in tree_flatten(m_q.parameters())}
    for name in params:
        np.testing.assert_allclose(m_after[name], expected[name], atol=1e-7, rtol=1e-5, err_msg=f"{name} vs the paper")
        assert not np.allclose(m_after[name], params[name] - sum(lr * gr[name] for lr, gr in zip(lrs, grads)), atol=1e-7)


def test_full_updates_match_and_clip(twins):
    """train_step as the scripts run it (minibatch gathered from the batch, loss, gradients, global-norm clipping at
    CleanRL's 10, the scripts' own RAdam from their default Args; MLX compiled), 7 updates so that RAdam's rectified
    branch runs too: the same loss, mean Q and weights in both twins after each. Against the formula: the returns are
    large enough that the first gradient is clipped to norm 10, and RAdam's first step is lr * that gradient."""
    t_q, m_q = twins
    args = P_MLX.Args()
    t_opt, m_opt = P_TORCH.make_optimizer(t_q, P_TORCH.Args()), P_MLX.make_optimizer(m_q, args)
    state = [m_q.state, m_opt.state]
    m_train = mx.compile(partial(P_MLX.train_step, m_q, m_opt, max_grad_norm=args.max_grad_norm), inputs=state, outputs=state)
    t_train = partial(P_TORCH.train_step, t_q, t_opt, max_grad_norm=args.max_grad_norm)
    batch = make_batch(seed=10, size=4 * B, return_scale=30.0)
    t_batch, m_batch = as_torch(batch), as_mlx(batch)
    for step in range(7):
        mb_inds = np.random.default_rng(step).permutation(4 * B)[:B]
        before = torch_params(t_q)
        t_stats = t_train(torch.tensor(mb_inds), *t_batch)
        m_stats = m_train(mx.array(mb_inds), *m_batch)
        mx.eval(m_stats, state)
        for m, t, what in zip(m_stats, t_stats, ("loss", "mean Q(s, a)")):
            assert_close(m, t, atol=1e-4, what=f"{what} at update {step}")
        assert_same_weights(m_q, t_q, atol=1e-5, what=f"update {step}")
        if step == 0:
            grads = torch_grads(t_q)
            np.testing.assert_allclose(np.sqrt(sum((g**2).sum() for g in grads.values())), 10.0, rtol=1e-4)
            for name, p in torch_params(t_q).items():
                np.testing.assert_allclose(p, before[name] - 2.5e-4 * grads[name], atol=1e-7, rtol=1e-5)


def reference_q_lambda(rewards, values, dones, next_value, next_done, gamma, lam):
    """Forward view, independent of the scripts' backward recursion: the return at t is the lambda-weighted mixture of
    its k-step returns (weight (1-lam) lam^(k-1), the rest lam^(H-1) on the longest one the rollout allows, H = T - t);
    a k-step return sums rewards up to the end of the episode and bootstraps from max_a Q only if the episode goes on."""
    T, N = rewards.shape
    starts = np.concatenate([dones, next_done[None]])  # starts[k]: obs k begins an episode
    vals = np.concatenate([values, next_value[None]])  # vals[k] = max_a Q(obs k, a)
    out = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            H = T - t
            for k in range(1, H + 1):
                g, discount = 0.0, 1.0
                for j in range(t, t + k):
                    g += discount * rewards[j, n]
                    discount *= gamma
                    if starts[j + 1, n]:
                        break  # the episode ended at j: nothing after it counts
                else:
                    g += discount * vals[t + k, n]
                out[t, n] += ((1 - lam) * lam ** (k - 1) if k < H else lam ** (H - 1)) * g
    return out


@pytest.mark.parametrize("q_lambda", [0.0, 0.65, 1.0])
def test_q_lambda_returns_match_the_forward_view(q_lambda):
    rng = np.random.default_rng(3)
    T, N, gamma = 9, 3, 0.99
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    dones = np.zeros((T, N), dtype=np.float32)
    dones[[3, 4, 7], [0, 0, 1]] = 1.0  # terminations in the middle, one a one-step episode
    next_value = rng.normal(size=N).astype(np.float32)
    next_done = np.array([0.0, 0.0, 1.0], dtype=np.float32)
    expected = reference_q_lambda(rewards, values, dones, next_value, next_done, gamma, q_lambda)
    for module in (P_MLX, P_TORCH):
        returns = module.q_lambda_returns(rewards, values, dones, next_value, next_done, gamma, q_lambda)
        assert returns.dtype == np.float32
        np.testing.assert_allclose(returns, expected, atol=1e-5, err_msg=module.__name__)
    # an episode's last step is just its reward; lambda 0 is the one-step target r + gamma * max_a Q(s', a)
    np.testing.assert_allclose(expected[[2, 3, 6, 8], [0, 0, 1, 2]], rewards[[2, 3, 6, 8], [0, 0, 1, 2]], atol=1e-6)
    if q_lambda == 0.0:
        vals = np.concatenate([values[1:], next_value[None]])
        nonterminal = 1 - np.concatenate([dones[1:], next_done[None]])
        np.testing.assert_allclose(expected, rewards + gamma * vals * nonterminal, atol=1e-5)


def test_linear_schedule():
    for module in (P_MLX, P_TORCH):
        assert module.linear_schedule(1.0, 0.05, 100, 0) == 1.0
        assert module.linear_schedule(1.0, 0.05, 100, 50) == pytest.approx(0.525)
        assert module.linear_schedule(1.0, 0.05, 100, 1000) == 0.05


def test_weights_load_across_frameworks(twins, tmp_path):
    t_q, m_q = twins
    fresh_m, fresh_t = cross_load(m_q, t_q, P_MLX.QNetwork(OBS_DIM, N_ACTIONS), P_TORCH.QNetwork(OBS_DIM, N_ACTIONS), tmp_path)
    x = np.random.default_rng(0).normal(size=(5, OBS_DIM)).astype(np.float32)
    assert_close(fresh_m(mx.array(x)), fresh_t(torch.tensor(x)))
