"""ppo_atari_lstm_mlx vs ppo_atari_lstm_torch: the MLX LSTM is torch's nn.LSTM (parameter names, shapes, gate order i, f,
g, o) and one step of it is the gate equations written out in numpy; with the same weights (files in torch's layout,
loaded untouched by both) and the same sequence batch (T steps x B envs, time-major, episodes starting mid-sequence,
a non-zero initial state) both twins give the same per-step hidden states, final state, logits, values, loss terms and
gradients; a done flag zeroes the state exactly as a fresh start does; one full update (the scripts' own train_step on
a minibatch of whole env sequences, and optimizer) leaves the same weights, and the torch one is CleanRL's clipped first
Adam step; the envs give one 84x84 frame per step."""

import copy
import hashlib
import json
import shutil
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import safetensors.numpy
import torch
from mlx.utils import tree_flatten

from tests.helpers import (
    assert_close,
    assert_first_adam_step,
    assert_same_grads,
    assert_same_weights,
    check_ok,
    cross_load,
    load_script,
    run_dirs,
    run_script,
    torch_params,
    torch_params_to_mlx,
)

P_MLX = load_script("ppo_atari_lstm", "mlx")
P_TORCH = load_script("ppo_atari_lstm", "torch")
N_ACTIONS, T, B, H = 4, 8, 3, 128
KEYS = ("obs", "dones", "actions", "logprobs", "advantages", "returns", "values")
STATS = ("pg_loss", "v_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac")


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_lstm_step_is_the_gate_equations():
    """One step of the MLX LSTM and of torch's nn.LSTM (same weights, non-zero biases) against the equations in numpy,
    gate rows in torch's order i, f, g, o; a done flag zeroes that env's state before the step."""
    rng = np.random.default_rng(0)
    t_lstm = torch.nn.LSTM(6, 5)
    m_lstm = P_MLX.LSTM(6, 5)
    torch_params_to_mlx(t_lstm, m_lstm)
    w = {k: v.detach().numpy().astype(np.float64) for k, v in t_lstm.state_dict().items()}
    assert {k: v.shape for k, v in w.items()} == {k: tuple(v.shape) for k, v in tree_flatten(m_lstm.parameters())}
    x = rng.normal(size=(1, 4, 6)).astype(np.float32)
    h0, c0 = (rng.normal(size=(1, 4, 5)).astype(np.float32) for _ in range(2))
    done = np.array([[0.0, 1.0, 0.0, 1.0]], dtype=np.float32)

    keep = (1 - done[0])[:, None]
    h, c = h0[0] * keep, c0[0] * keep
    z = x[0] @ w["weight_ih_l0"].T + w["bias_ih_l0"] + h @ w["weight_hh_l0"].T + w["bias_hh_l0"]
    i, f, g, o = sigmoid(z[:, :5]), sigmoid(z[:, 5:10]), np.tanh(z[:, 10:15]), sigmoid(z[:, 15:])
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)

    m_out, (m_h, m_c) = m_lstm(mx.array(x), (mx.array(h0), mx.array(c0)), mx.array(done))
    t_state = tuple(torch.tensor(s) * torch.tensor(keep)[None] for s in (h0, c0))
    t_out, (t_h, t_c) = t_lstm(torch.tensor(x), t_state)
    for name, m, t in (("output", m_out, t_out), ("h", m_h, t_h), ("c", m_c, t_c)):
        expected = h_new if name != "c" else c_new
        assert_close(m, expected[None], atol=1e-5, what=f"mlx {name} vs the equations")
        assert_close(expected[None], t, atol=1e-5, what=f"torch {name} vs the equations")


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t_agent = P_TORCH.Agent(N_ACTIONS)
    m_agent = P_MLX.Agent(N_ACTIONS)
    with torch.no_grad():  # a policy head far from uniform, so the clipped branches are exercised
        t_agent.actor.weight.normal_(0, 0.05)
        t_agent.lstm.bias_hh_l0.normal_(0, 0.1)  # CleanRL starts the biases at zero: make them count here
    torch_params_to_mlx(t_agent, m_agent)  # same names and shapes: no layout conversion at all
    return t_agent, m_agent


def make_batch(seed=1, steps=T, envs=B):
    """A time-major sequence batch (row t * envs + e is step t of env e), flat as the scripts store it; episodes start
    mid-sequence (dones), and a non-zero initial LSTM state."""
    rng = np.random.default_rng(seed)
    n = steps * envs
    dones = np.zeros((steps, envs), dtype=np.float32)
    dones[3, 1] = dones[5, 0] = dones[1, envs - 1] = dones[steps - 2, envs - 1] = 1.0
    batch = {
        "obs": rng.integers(0, 256, size=(n, 1, 84, 84), dtype=np.uint8),
        "dones": dones.reshape(-1),
        "actions": rng.integers(0, N_ACTIONS, size=n),
        "logprobs": (np.log(1 / N_ACTIONS) + 0.3 * rng.normal(size=n)).astype(np.float32),
        "advantages": rng.normal(size=n).astype(np.float32),
        "returns": rng.normal(size=n).astype(np.float32),
        "values": rng.normal(size=n).astype(np.float32),
    }
    state = tuple(rng.normal(scale=0.5, size=(1, envs, H)).astype(np.float32) for _ in range(2))
    return batch, state


def assert_relu_margin(t_agent, obs, margin=4e-6):
    """No ReLU input of the CNN lies within `margin` of zero (float64): float32 rounding (~1e-6 here) could flip such a
    unit in one twin only, and its gradient would then differ by design, not by a bug. The gradient tests use batches
    (seeds) that pass this."""
    x = torch.tensor(obs).double() / 255.0
    with torch.no_grad():
        for layer in copy.deepcopy(t_agent.network).double():
            if isinstance(layer, torch.nn.ReLU):
                assert x.abs().min() > margin, f"a ReLU input {x.abs().min():.1e} from zero: pick another batch seed"
            x = layer(x)


def test_parameter_names_and_shapes_match(twins):
    t_agent, m_agent = twins
    m_params = {k: v.shape for k, v in tree_flatten(m_agent.parameters())}
    assert m_params == {k: tuple(v.shape) for k, v in t_agent.state_dict().items()}
    assert m_params["lstm.weight_ih_l0"] == (4 * H, 512) and m_params["lstm.weight_hh_l0"] == (4 * H, H)


def test_per_step_hidden_states_logits_and_values(twins):
    """Per-step LSTM outputs (T*B, 128), the final (h, c), logits and values: the same in both twins, through the
    episode starts in the middle of the sequence."""
    t_agent, m_agent = twins
    b, state = make_batch()
    x, d = b["obs"], b["dones"]
    with torch.no_grad():
        t_hidden, t_state = t_agent.get_states(torch.tensor(x), tuple(map(torch.tensor, state)), torch.tensor(d))
        t_logits, t_value, _ = t_agent.get_logits_and_value(torch.tensor(x), tuple(map(torch.tensor, state)), torch.tensor(d))
    m_hidden, m_state = m_agent.get_states(mx.array(x), tuple(map(mx.array, state)), mx.array(d))
    m_logits, m_value, _ = m_agent.get_logits_and_value(mx.array(x), tuple(map(mx.array, state)), mx.array(d))
    assert m_hidden.shape == (T * B, H) and m_state[0].shape == (1, B, H)
    assert_close(m_hidden, t_hidden, atol=1e-5, what="hidden state of every step")
    assert_close(m_state[0], t_state[0], atol=1e-5, what="final h")
    assert_close(m_state[1], t_state[1], atol=1e-5, what="final c")
    assert_close(m_logits, t_logits, atol=1e-5, what="logits")
    assert_close(m_value, t_value, atol=1e-5, what="values")
    assert_close(m_agent.get_value(mx.array(x), tuple(map(mx.array, state)), mx.array(d)), t_value, what="get_value")


@pytest.mark.parametrize("framework", ["mlx", "torch"])
def test_done_resets_the_state_as_a_fresh_start(twins, framework):
    """Env 1 starts an episode at step 3: its hidden states from step 3 on are those of the same frames fed from a zero
    state, and before step 3 they depend on the initial state; the other envs do not see the reset."""
    agent = dict(zip(("torch", "mlx"), twins))[framework]
    arr, out = (torch.tensor, lambda a: a.numpy()) if framework == "torch" else (mx.array, np.array)
    b, state = make_batch()
    x, d = b["obs"].reshape(T, B, 1, 84, 84), b["dones"].reshape(T, B)
    zero = np.zeros((1, 1, H), dtype=np.float32)
    with torch.no_grad():
        full = out(agent.get_states(arr(b["obs"]), tuple(map(arr, state)), arr(b["dones"]))[0]).reshape(T, B, H)
        fresh = out(agent.get_states(arr(x[3:, 1]), (arr(zero), arr(zero)), arr(np.zeros(T - 3, np.float32)))[0])
        other = tuple(arr(np.zeros_like(s)) for s in state)
        without_state = out(agent.get_states(arr(b["obs"]), other, arr(b["dones"]))[0]).reshape(T, B, H)
    np.testing.assert_allclose(full[3:, 1], fresh, atol=1e-5, err_msg="after the reset")
    assert np.abs(full[:3, 1] - without_state[:3, 1]).max() > 1e-3, "before the reset the initial state must matter"
    assert np.abs(full[3:, 0] - without_state[3:, 0]).max() > 1e-4, "env 0 keeps its state through step 3"
    assert d[3, 1] == 1


@pytest.mark.parametrize("norm_adv,clip_vloss", [(True, True), (False, False)])
def test_loss_terms_and_gradients(twins, norm_adv, clip_vloss):
    t_agent, m_agent = twins
    b, state = make_batch(seed=30)
    assert_relu_margin(t_agent, b["obs"])
    coefs = dict(clip_coef=0.1, ent_coef=0.01, vf_coef=0.5, norm_adv=norm_adv, clip_vloss=clip_vloss)
    t_loss, t_stats = P_TORCH.ppo_loss(t_agent, *(torch.tensor(b[k]) for k in KEYS), tuple(map(torch.tensor, state)), **coefs)
    t_agent.zero_grad()
    t_loss.backward()
    (m_loss, m_stats), m_grads = nn.value_and_grad(m_agent, lambda *batch: P_MLX.ppo_loss(m_agent, *batch, **coefs))(
        *(mx.array(b[k]) for k in KEYS), tuple(map(mx.array, state))
    )
    assert_close(m_loss, t_loss, what="loss")
    for name, m, t in zip(STATS, m_stats, t_stats):
        assert_close(m, t, what=name)
    assert float(t_stats[5]) > 0, "the batch should exercise the clipped branch"
    assert_same_grads(m_grads, t_agent)
    assert np.abs(t_agent.lstm.weight_hh_l0.grad.numpy()).max() > 1e-6, "the recurrent weights get a gradient"


def test_one_full_update(twins):
    """train_step (the minibatch of whole env sequences gathered as the loop gathers it, its part of the rollout's
    initial state, loss, gradients, clipping to max_grad_norm, Adam) with each script's own make_optimizer and default
    Args: the same weights and loss terms come out of both twins (MLX compiled, as the script runs it). Against the
    formula: the torch step is a first Adam step with CleanRL's learning rate 2.5e-4 and eps 1e-5 on gradients clipped
    to a global norm of 0.5."""
    t_agent, m_agent = twins
    m_args, t_args = P_MLX.Args(), P_TORCH.Args()
    hyper = {k: getattr(t_args, k) for k in ("clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss", "max_grad_norm")}
    assert hyper == {k: getattr(m_args, k) for k in hyper}
    steps, envs = 6, 4
    b, state = make_batch(seed=17, steps=steps, envs=envs)
    assert_relu_margin(t_agent, b["obs"])
    mbenvinds = np.array([3, 1])  # a shuffled pair of envs, as np.random.shuffle(envinds) leaves them
    mb_inds = np.arange(steps * envs).reshape(steps, envs)[:, mbenvinds].ravel()
    m_opt, t_opt = P_MLX.make_optimizer(m_agent, m_args), P_TORCH.make_optimizer(t_agent, t_args)

    before = torch_params(t_agent)
    t_batch = [torch.tensor(b[k]) for k in KEYS]
    t_stats = P_TORCH.train_step(
        t_agent, t_opt, torch.tensor(mb_inds), torch.tensor(mbenvinds), t_batch, tuple(map(torch.tensor, state)), **hyper
    )
    grads = {name: p.grad.numpy().copy() for name, p in t_agent.named_parameters()}
    train = mx.compile(
        partial(P_MLX.train_step, m_agent, m_opt, **hyper),
        inputs=[m_agent.state, m_opt.state],
        outputs=[m_agent.state, m_opt.state],
    )
    m_batch = [mx.array(b[k]) for k in KEYS]
    m_stats = train(mx.array(mb_inds), mx.array(mbenvinds), m_batch, tuple(map(mx.array, state)))
    mx.eval(m_stats, m_agent.state, m_opt.state)

    assert_same_weights(m_agent, t_agent, atol=1e-5, what="after one update")
    for name, m, t in zip(STATS, m_stats, t_stats):
        assert_close(m, t, what=name)
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    assert abs(norm - 0.5) < 1e-4, f"the gradients were clipped to a global norm of {norm}, not 0.5"
    assert_first_adam_step(before, torch_params(t_agent), grads, lr=2.5e-4, eps=1e-5)


def test_weights_round_trip_both_ways(twins, tmp_path):
    """The on-disk layout is torch's (nn.LSTM's names included): a file saved by either twin loads in the other."""
    t_agent, m_agent = twins
    b, state = make_batch(seed=5)
    fresh_m, fresh_t = cross_load(m_agent, t_agent, P_MLX.Agent(N_ACTIONS), P_TORCH.Agent(N_ACTIONS), tmp_path)
    m_in = (mx.array(b["obs"]), tuple(map(mx.array, state)), mx.array(b["dones"]))
    t_in = (torch.tensor(b["obs"]), tuple(map(torch.tensor, state)), torch.tensor(b["dones"]))
    with torch.no_grad():
        assert_close(m_agent.get_logits_and_value(*m_in)[0], fresh_t.get_logits_and_value(*t_in)[0], what="torch <- mlx file")
        assert_close(fresh_m.get_logits_and_value(*m_in)[0], t_agent.get_logits_and_value(*t_in)[0], what="mlx <- torch file")


@pytest.mark.parametrize("module", [P_MLX, P_TORCH], ids=["mlx", "torch"])
def test_one_frame_per_step(module):
    """CleanRL's ppo_atari_lstm keeps the Atari preprocessing but stacks 1 frame, not 4: the LSTM is the memory."""
    env = module.make_env("BreakoutNoFrameskip-v4", 0, False, "test")()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (1, 84, 84) and obs.dtype == np.uint8
    obs, reward, *_ = env.step(1)
    assert obs.shape == (1, 84, 84) and reward in (-1.0, 0.0, 1.0)
    env.close()


def test_a_resumed_run_starts_its_new_games_without_the_old_lstm_state(tmp_path):
    """The envs restart new games on resume, so the LSTM state starts at zero, as in a fresh run: a checkpoint does not
    hold it, and a checkpoint that holds one (written before this rule) resumes exactly as one without: the torch twin
    resumes both copies of an MLX checkpoint to the same weights."""
    args = "--num-envs 2 --num-steps 32 --num-minibatches 2 --checkpoint-every 64".split()
    (tmp_path / "a").mkdir()
    check_ok(run_script("ppo_atari_lstm", "mlx", *args, "--total-timesteps", 64, cwd=tmp_path / "a"))
    (run_dir,) = run_dirs(tmp_path / "a")
    path = run_dir / "checkpoints" / f"step_{64:012d}" / "arrays.safetensors"
    first = safetensors.numpy.load_file(path)
    assert "rng.mlx" in first and not any(k.startswith("lstm_state") for k in first), sorted(first)[:5]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    safetensors.numpy.save_file(first | {f"lstm_state.{k}": np.full((1, 2, H), 0.5, np.float32) for k in "hc"}, path)
    state = json.loads((path.parent / "state.json").read_text())
    state["sha256"]["arrays.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (path.parent / "state.json").write_text(json.dumps(state))
    later = {}
    for side in "ab":
        run = tmp_path / side / "runs" / run_dir.name
        check_ok(run_script("ppo_atari_lstm", "torch", *args, "--total-timesteps", 128, "--resume", run, cwd=tmp_path / side))
        later[side] = safetensors.numpy.load_file(run / "checkpoints" / f"step_{128:012d}" / "arrays.safetensors")
    assert "rng.torch" in later["a"] and not any(k.startswith("lstm_state") for k in later["a"])
    weights = [k for k in later["a"] if k.startswith("agent.")]
    assert weights and all(np.array_equal(later["a"][k], later["b"][k]) for k in weights)
    assert not all(np.array_equal(later["a"][k], first[k]) for k in weights), "the resumed run trained"
