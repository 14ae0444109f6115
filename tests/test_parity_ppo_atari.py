"""ppo_atari_mlx vs ppo_atari_torch: the space-to-depth convolution equals a plain strided one (MLX's
own and torch's, forward and gradients); with the same weights (files in torch's layout, loaded
untouched by both) the Nature-CNN agent gives the same logits, values, loss terms and gradients; one
full update (the scripts' own train_step and optimizer) leaves the same weights, and the torch one is
CleanRL's clipped first Adam step (all of it for ppo_atari_envpool's agent too, which is the same); the Atari preprocessing logs whole games, not lives, and skips
frames once for ALE/...-v5 ids too."""

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import (
    assert_close,
    assert_first_adam_step,
    assert_same_grads,
    assert_same_weights,
    cross_load,
    load_script,
    torch_params,
    torch_params_to_mlx,
)

# ppo_atari_envpool has ppo_atari's network, loss and update (only its envs differ): both pairs run the same checks
PAIRS = {name: (load_script(name, "mlx"), load_script(name, "torch")) for name in ("ppo_atari", "ppo_atari_envpool")}
P_MLX, P_TORCH = PAIRS["ppo_atari"]
N_ACTIONS, B = 4, 32


@pytest.fixture(params=list(PAIRS))
def pair(request):
    """(MLX module, torch module) of each pair that shares ppo_atari's agent."""
    return PAIRS[request.param]


# (in, out, kernel, stride, input height/width): the Nature CNN's three layers, plus sizes where the
# strided conv leaves trailing rows unread and a non-square input
CONV_CASES = [(4, 32, 8, 4, 84, 84), (32, 64, 4, 2, 20, 20), (64, 64, 3, 1, 9, 9), (3, 5, 4, 2, 11, 13), (2, 3, 6, 3, 17, 16)]


@pytest.mark.parametrize("cin,cout,k,s,h,w", CONV_CASES)
def test_space_to_depth_conv_equals_strided_conv(pair, cin, cout, k, s, h, w):
    """Forward, input gradient and weight/bias gradients against mlx.nn.Conv2d (NHWC, (out, kh, kw, in)
    weights) and torch.nn.Conv2d (NCHW, (out, in, kh, kw)), all with the same weights."""
    rng = np.random.default_rng(k * 10 + s)
    x = rng.normal(size=(3, cin, h, w)).astype(np.float32)
    cot_shape = (3, cout, (h - k) // s + 1, (w - k) // s + 1)
    cotangent = rng.normal(size=cot_shape).astype(np.float32)  # a random upstream gradient

    ours = pair[0].Conv2d(cin, cout, k, stride=s)
    plain = nn.Conv2d(cin, cout, k, stride=s)
    plain.weight, plain.bias = ours.weight.transpose(0, 2, 3, 1), ours.bias
    t_conv = torch.nn.Conv2d(cin, cout, k, stride=s)
    with torch.no_grad():
        t_conv.weight.copy_(torch.tensor(np.array(ours.weight)))
        t_conv.bias.copy_(torch.tensor(np.array(ours.bias)))

    x_nhwc, cot_nhwc = mx.array(x.transpose(0, 2, 3, 1)), mx.array(cotangent.transpose(0, 2, 3, 1))

    def grads_of(module):
        def loss(x):
            return (module(x) * cot_nhwc).sum()

        _, param_grads = nn.value_and_grad(module, loss)(x_nhwc)
        return param_grads, mx.grad(loss)(x_nhwc)

    (g_ours, gx_ours), (g_plain, gx_plain) = grads_of(ours), grads_of(plain)
    t_x = torch.tensor(x, requires_grad=True)
    t_out = t_conv(t_x)
    (t_out * torch.tensor(cotangent)).sum().backward()

    out = ours(x_nhwc)
    assert out.shape == (3,) + cot_shape[2:] + (cout,)
    assert_close(out, plain(x_nhwc), what="forward vs mlx strided conv")
    assert_close(out.transpose(0, 3, 1, 2), t_out, what="forward vs torch conv")
    assert_close(gx_ours, gx_plain, what="input grad vs mlx")
    assert_close(gx_ours.transpose(0, 3, 1, 2), t_x.grad, what="input grad vs torch")
    assert_close(g_ours["weight"], g_plain["weight"].transpose(0, 3, 1, 2), atol=1e-4, what="weight grad vs mlx")
    assert_close(g_ours["weight"], t_conv.weight.grad, atol=1e-4, what="weight grad vs torch")
    assert_close(g_ours["bias"], t_conv.bias.grad, atol=1e-4, what="bias grad vs torch")


@pytest.fixture
def twins(pair):
    p_mlx, p_torch = pair
    torch.manual_seed(0)
    t_agent = p_torch.Agent(N_ACTIONS)
    m_agent = p_mlx.Agent(N_ACTIONS)
    with torch.no_grad():  # a policy head far from uniform, so the clipped branches are exercised
        t_agent.actor.weight.normal_(0, 0.05)
    torch_params_to_mlx(t_agent, m_agent)  # same names and shapes: no layout conversion at all
    return t_agent, m_agent


def make_batch(seed=1):
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.integers(0, 256, size=(B, 4, 84, 84), dtype=np.uint8),
        "actions": rng.integers(0, N_ACTIONS, size=B),
        "logprobs": (np.log(1 / N_ACTIONS) + 0.3 * rng.normal(size=B)).astype(np.float32),
        "advantages": rng.normal(size=B).astype(np.float32),
        "returns": rng.normal(size=B).astype(np.float32),
        "values": rng.normal(size=B).astype(np.float32),
    }


KEYS = ("obs", "actions", "logprobs", "advantages", "returns", "values")


def test_parameter_names_and_shapes_match(twins):
    t_agent, m_agent = twins
    m_params = {k: v.shape for k, v in tree_flatten(m_agent.parameters())}
    assert m_params == {k: tuple(v.shape) for k, v in t_agent.state_dict().items()}


def test_logits_and_values_on_uint8_frames(twins):
    t_agent, m_agent = twins
    obs = make_batch()["obs"]
    t_logits, t_value = t_agent.get_logits_and_value(torch.tensor(obs))
    m_logits, m_value = m_agent.get_logits_and_value(mx.array(obs))
    assert m_logits.shape == (B, N_ACTIONS) and m_value.shape == (B,)
    assert_close(m_logits, t_logits, atol=1e-5, what="logits")
    assert_close(m_value, t_value, atol=1e-5, what="value")
    assert_close(m_agent.get_value(mx.array(obs)), t_agent.get_value(torch.tensor(obs)), what="get_value")


@pytest.mark.parametrize("norm_adv,clip_vloss", [(True, True), (False, False)])
def test_loss_terms_and_gradients(pair, twins, norm_adv, clip_vloss):
    (p_mlx, p_torch), (t_agent, m_agent) = pair, twins
    b = make_batch()
    coefs = dict(clip_coef=0.1, ent_coef=0.01, vf_coef=0.5, norm_adv=norm_adv, clip_vloss=clip_vloss)
    t_loss, t_stats = p_torch.ppo_loss(t_agent, *(torch.tensor(b[k]) for k in KEYS), **coefs)
    t_agent.zero_grad()
    t_loss.backward()
    (m_loss, m_stats), m_grads = nn.value_and_grad(m_agent, lambda *batch: p_mlx.ppo_loss(m_agent, *batch, **coefs))(
        *(mx.array(b[k]) for k in KEYS)
    )
    assert_close(m_loss, t_loss, what="loss")
    for name, m, t in zip(["pg_loss", "v_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac"], m_stats, t_stats):
        assert_close(m, t, what=name)
    assert float(t_stats[5]) > 0, "the batch should exercise the clipped branch"
    assert_same_grads(m_grads, t_agent)


def test_one_full_update(pair, twins):
    """train_step (loss, gradients, clipping to max_grad_norm, Adam) on one minibatch of a batch, with each
    script's own make_optimizer and default Args: the same weights and loss terms come out of both twins
    (MLX compiled, as the script runs it). Against the formula: the torch step is a first Adam step with
    CleanRL's learning rate 2.5e-4 and eps 1e-5 on gradients clipped to a global norm of 0.5."""
    (p_mlx, p_torch), (t_agent, m_agent) = pair, twins
    m_args, t_args = p_mlx.Args(), p_torch.Args()
    hyper = {k: getattr(t_args, k) for k in ("clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss", "max_grad_norm")}
    assert hyper == {k: getattr(m_args, k) for k in hyper}
    b = {k: np.concatenate([v, w]) for (k, v), w in zip(make_batch(1).items(), make_batch(2).values())}  # a batch of 2B
    mb_inds = np.random.default_rng(0).permutation(2 * B)[:B]
    m_opt, t_opt = p_mlx.make_optimizer(m_agent, m_args), p_torch.make_optimizer(t_agent, t_args)

    before = torch_params(t_agent)
    t_stats = p_torch.train_step(t_agent, t_opt, torch.tensor(mb_inds), [torch.tensor(b[k]) for k in KEYS], **hyper)
    grads = {name: p.grad.numpy().copy() for name, p in t_agent.named_parameters()}
    train = mx.compile(
        partial(p_mlx.train_step, m_agent, m_opt, **hyper),
        inputs=[m_agent.state, m_opt.state],
        outputs=[m_agent.state, m_opt.state],
    )
    m_stats = train(mx.array(mb_inds), [mx.array(b[k]) for k in KEYS])
    mx.eval(m_stats, m_agent.state, m_opt.state)

    assert_same_weights(m_agent, t_agent, atol=1e-5, what="after one update")
    for name, m, t in zip(["pg_loss", "v_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac"], m_stats, t_stats):
        assert_close(m, t, what=name)
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    assert abs(norm - 0.5) < 1e-4, f"the gradients were clipped to a global norm of {norm}, not 0.5"
    assert_first_adam_step(before, torch_params(t_agent), grads, lr=2.5e-4, eps=1e-5)


def test_weights_round_trip_both_ways(pair, twins, tmp_path):
    """The on-disk layout is torch's: a file saved by either twin loads in the other unchanged."""
    (p_mlx, p_torch), (t_agent, m_agent) = pair, twins
    obs = make_batch(seed=5)["obs"]
    fresh_m, fresh_t = cross_load(m_agent, t_agent, p_mlx.Agent(N_ACTIONS), p_torch.Agent(N_ACTIONS), tmp_path)
    assert_close(m_agent.get_logits(mx.array(obs)), fresh_t.get_logits(torch.tensor(obs)), what="torch <- mlx file")
    assert_close(fresh_m.get_logits(mx.array(obs)), t_agent.get_logits(torch.tensor(obs)), what="mlx <- torch file")


@pytest.mark.parametrize("module", [P_MLX, P_TORCH], ids=["mlx", "torch"])
def test_preprocessing_logs_whole_games_not_lives(module):
    """Breakout: 84x84x4 uint8 frames; a lost life ends the learning episode (terminated) without a
    logged return; the one logged episode is the whole game, with the raw (unclipped) score."""
    import gymnasium as gym

    envs = gym.vector.SyncVectorEnv(
        [module.make_env("BreakoutNoFrameskip-v4", 0, False, "test")], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    obs, _ = envs.reset(seed=3)
    envs.action_space.seed(3)
    assert obs.shape == (1, 4, 84, 84) and obs.dtype == np.uint8
    assert (obs[0, 0] == obs[0, 3]).all(), "a fresh stack repeats the first frame"
    life_ends, clipped_sum, games = 0, 0.0, []
    for _ in range(5000):
        obs, reward, terminated, truncated, infos = envs.step(envs.action_space.sample())
        assert set(np.unique(reward)) <= {-1.0, 0.0, 1.0}
        clipped_sum += reward[0]
        games += module.finished_episodes(infos)
        if games:
            break
        life_ends += int(terminated[0])
    envs.close()
    assert len(games) == 1, "a random agent should finish one game of Breakout in 5000 steps"
    assert life_ends == 4, f"Breakout has 5 lives: expected 4 life-loss terminations before the game ended, got {life_ends}"
    game_return, game_length = games[0]
    assert game_return >= clipped_sum, "the logged return is the raw score, which is at least the clipped one"
    assert game_length > 4 * 100, "the logged length counts raw frames (4 per agent step, plus no-ops)"


@pytest.mark.parametrize("framework", ["mlx", "torch"])
@pytest.mark.parametrize("name", ["ppo_atari", "dqn_atari"])
def test_ale_v5_id_skips_frames_once(name, framework):
    """ALE/...-v5 ids skip 4 frames of their own: make_env (in both Atari pairs) turns that off with
    frameskip=1, so an agent step is MaxAndSkipEnv's 4 emulator frames, not 16."""
    module = P_MLX if (name, framework) == ("ppo_atari", "mlx") else load_script(name, framework)
    env = module.make_env("ALE/Breakout-v5", 0, False, "test")()
    assert env.unwrapped._frameskip == 1
    obs, _ = env.reset(seed=0)
    frame = env.unwrapped.ale.getEpisodeFrameNumber()
    obs, *_ = env.step(0)
    assert env.unwrapped.ale.getEpisodeFrameNumber() - frame == 4
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    env.close()
