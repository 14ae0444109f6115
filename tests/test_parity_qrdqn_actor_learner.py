"""qrdqn_actor_learner pair: the quantile Huber loss against a plain double loop and against the twin,
the actors' numpy policy against both networks, and the actor-learner plumbing on real spawned
processes: no lost or duplicated transitions behind a slow learner, monotonic weight versions and
final weights equal to the last publish, scaling with a sleeping env, and the lifecycle (a killed
actor, Ctrl-C) ending the run with a clear line and nothing left behind."""

import os
import re
import signal
import subprocess
import sys
import time
import zlib
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch

from tests.helpers import DEFAULT_DIRS as DIRS
from tests.helpers import (
    assert_close,
    assert_first_adam_step,
    assert_polyak,
    assert_same_grads,
    assert_same_weights,
    cross_load,
    load_script,
    mlx_params,
    replay_batch,
    script_path,
    torch_params,
    torch_params_to_mlx,
)

NAME = "qrdqn_actor_learner"
# Spawned actors unpickle their target by module name, so the MLX script is imported as a module here.
sys.path.insert(0, str(DIRS["mlx"]))
import qrdqn_actor_learner_mlx as M  # noqa: E402

T = load_script(NAME, "torch")
OBS_DIM, N_ACTIONS, N_QUANTILES, B = 4, 3, 10, 32


def quantile_huber_double_loop(current, target):
    """The definition, one pair at a time in float64: sum over current quantiles i of
    |tau_i - 1{u < 0}| * Huber_1(u), u = target_j - current_i, averaged over target quantiles j and batch."""
    batch, n = current.shape
    n_target = target.shape[1]
    total = 0.0
    for b in range(batch):
        for i in range(n):
            tau = (2 * i + 1) / (2 * n)
            for j in range(n_target):
                u = float(target[b, j]) - float(current[b, i])
                huber = 0.5 * u * u if abs(u) <= 1.0 else abs(u) - 0.5
                total += abs(tau - (u < 0)) * huber
    return total / (batch * n_target)


@pytest.mark.parametrize("n_target", [N_QUANTILES, 7])
def test_quantile_huber_loss_double_loop_and_twin(n_target):
    rng = np.random.default_rng(0)
    current = rng.normal(scale=2.0, size=(B, N_QUANTILES)).astype(np.float32)  # both Huber regions
    target = rng.normal(scale=2.0, size=(B, n_target)).astype(np.float32)
    expected = quantile_huber_double_loop(current, target)
    m_loss, m_grad = mx.value_and_grad(M.quantile_huber_loss)(mx.array(current), mx.array(target))
    t_current = torch.tensor(current, requires_grad=True)
    t_loss = T.quantile_huber_loss(t_current, torch.tensor(target))
    t_loss.backward()
    np.testing.assert_allclose(float(m_loss), expected, rtol=1e-5)
    assert_close(m_loss, t_loss, what="loss, MLX vs torch")
    assert_close(m_grad, t_current.grad, what="d loss / d current quantiles")
    # sanity of the definition: a tiny shift of one current quantile changes the loss (not a constant)
    assert abs(quantile_huber_double_loop(current + 0.1, target) - expected) > 1e-3


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t_net, t_target = T.QNetwork(OBS_DIM, N_ACTIONS, N_QUANTILES), T.QNetwork(OBS_DIM, N_ACTIONS, N_QUANTILES)
    m_net, m_target = M.QNetwork(OBS_DIM, N_ACTIONS, N_QUANTILES), M.QNetwork(OBS_DIM, N_ACTIONS, N_QUANTILES)
    torch_params_to_mlx(t_net, m_net)
    torch_params_to_mlx(t_target, m_target)
    return t_net, t_target, m_net, m_target


def test_targets_loss_and_gradients_match_twin(twins):
    t_net, t_target, m_net, m_target = twins
    rng = np.random.default_rng(1)
    obs, next_obs = (rng.normal(size=(B, OBS_DIM)).astype(np.float32) for _ in range(2))
    actions = rng.integers(0, N_ACTIONS, size=B)
    rewards = rng.normal(size=B).astype(np.float32)
    terminations = (rng.random(B) < 0.3).astype(np.float32)

    m_target_q = M.qrdqn_target(m_target(mx.array(next_obs)), mx.array(rewards), mx.array(terminations), 0.99)
    with torch.no_grad():
        t_target_q = T.qrdqn_target(t_target(torch.tensor(next_obs)), torch.tensor(rewards), torch.tensor(terminations), 0.99)
    assert_close(m_target_q, t_target_q, what="target quantiles")
    # terminated transitions do not bootstrap
    np.testing.assert_allclose(
        np.array(m_target_q)[terminations == 1], np.repeat(rewards[terminations == 1, None], N_QUANTILES, 1), atol=1e-6
    )

    (m_loss, m_q), m_grads = nn.value_and_grad(m_net, lambda *a: M.qrdqn_loss(m_net, *a))(
        mx.array(obs), mx.array(actions), m_target_q
    )
    t_loss, t_q = T.qrdqn_loss(t_net, torch.tensor(obs), torch.tensor(actions), t_target_q)
    t_loss.backward()
    assert_close(m_loss, t_loss, what="loss")
    assert_close(m_q, t_q, what="q_values")
    assert_same_grads(m_grads, t_net)


def test_full_update_matches_twin_and_adam_formula(twins):
    """One train_step of each script (MLX compiled as the script compiles it) with the scripts' own
    optimizers and default Args, from the same weights and batch: the same weights come out and the same
    stats; and torch's step is Adam's first step with rl-zoo's settings (lr 2.3e-3, eps 0.01 / 32)."""
    t_net, t_target, m_net, m_target = twins
    args = M.Args()
    obs, actions, rewards, next_obs, terminations = replay_batch(4, B, OBS_DIM, N_ACTIONS)
    before = torch_params(t_net)

    m_opt, t_opt = M.make_optimizer(m_net, args), T.make_optimizer(t_net, args)
    state = [m_net.state, m_target.state, m_opt.state]
    # the quantile Huber gradient is bounded (norm ~2 here), below the default max_grad_norm 10: a smaller
    # norm makes the clipping act, so a step that skipped it would fail
    hp = {"gamma": args.gamma, "max_grad_norm": 0.5}
    m_train = mx.compile(partial(M.train_step, m_net, m_target, m_opt, **hp), inputs=state, outputs=state)
    m_loss, m_q = m_train(*(mx.array(x) for x in (obs, actions, rewards, next_obs, terminations)))
    mx.eval(m_loss, m_q, state)
    t_loss, t_q = T.train_step(
        t_net, t_target, t_opt, *(torch.as_tensor(x) for x in (obs, actions, rewards, next_obs, terminations)), **hp
    )

    assert_same_weights(m_net, t_net, atol=1e-5, what="q_network")
    assert_same_weights(m_target, t_target, atol=0, what="target_network (untouched)")
    assert_close(m_loss, t_loss, what="loss")
    assert_close(m_q, t_q, what="q_values")
    grads = {k: p.grad.numpy() for k, p in t_net.named_parameters()}
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    assert abs(norm - 0.5) < 1e-4, f"gradient norm {norm} was not clipped to 0.5"
    assert_first_adam_step(before, torch_params(t_net), grads, lr=2.3e-3, eps=0.01 / 32)


@pytest.mark.parametrize("framework", ["mlx", "torch"])
def test_target_update_is_polyak(twins, framework):
    t_net, t_target, m_net, m_target = twins
    online, target = (m_net, m_target) if framework == "mlx" else (t_net, t_target)
    params = mlx_params if framework == "mlx" else torch_params
    online_before, target_before = params(online), params(target)
    if framework == "mlx":  # compiled over the modules' state, as the script does
        state = [m_net.state, m_target.state]
        mx.compile(partial(M.polyak_update, m_net, m_target, 0.3), inputs=state, outputs=state)()
        mx.eval(state)
    else:
        T.polyak_update(t_net, t_target, 0.3)
    assert_polyak(online_before, target_before, params(target), 0.3)
    np.testing.assert_array_equal(params(online)["network.0.weight"], online_before["network.0.weight"])


def test_saved_weights_load_in_the_other_framework(twins, tmp_path):
    t_net, t_target, m_net, _ = twins
    torch_params_to_mlx(t_target, m_net)  # the twins now hold different weights: each file must carry its own
    fresh_m, fresh_t = cross_load(
        m_net, t_net, M.QNetwork(OBS_DIM, N_ACTIONS, N_QUANTILES), T.QNetwork(OBS_DIM, N_ACTIONS, N_QUANTILES), tmp_path
    )
    assert_same_weights(fresh_m, t_net, atol=0)
    assert_same_weights(m_net, fresh_t, atol=0)


def test_actor_numpy_policy_matches_both_networks(twins):
    t_net, _, m_net, _ = twins
    shapes = M.q_network_shapes(OBS_DIM, N_ACTIONS, N_QUANTILES)
    policy = M.NumpyPolicy(shapes, N_ACTIONS, N_QUANTILES)
    # the learners' publication layouts: MLX concatenates (weight, bias) per Linear, torch uses parameters_to_vector
    policy.flat[:] = torch.nn.utils.parameters_to_vector(t_net.parameters()).detach().numpy()
    m_flat = np.concatenate([np.array(p).ravel() for layer in m_net.network[::2] for p in (layer.weight, layer.bias)])
    np.testing.assert_array_equal(policy.flat, m_flat)
    obs = np.random.default_rng(2).normal(size=(200, OBS_DIM)).astype(np.float32)
    greedy = np.array(m_net(mx.array(obs)).mean(axis=2).argmax(axis=1))
    assert len(set(greedy.tolist())) > 1, "weights too degenerate to tell actions apart"
    np.testing.assert_array_equal([policy.greedy_action(o) for o in obs], greedy)


def test_actor_code_is_the_same_in_both_twins():
    def actor_section(path):
        text = path.read_text()
        return text[text.index("# Actors:") : text.index("# Learner")]

    assert actor_section(script_path(NAME, "mlx")) == actor_section(script_path(NAME, "torch"))


def test_apex_epsilons():
    eps = M.actor_epsilons(4, 0.4, 7.0, 0.04)
    np.testing.assert_allclose(eps, [0.4, 0.4 ** (1 + 7 / 3), 0.4 ** (1 + 14 / 3), 0.4**8])
    assert M.actor_epsilons(1, 0.4, 7.0, 0.04) == [0.04] == M.actor_epsilons(0, 0.4, 7.0, 0.04)


# ------------------------------------------------------------------------------------------------
# The plumbing, on real spawned actor processes (the pool is the same code in both twins)
# ------------------------------------------------------------------------------------------------
def make_pool(num_actors, env_id="CartPole-v1", **kwargs):
    args = M.Args(env_id=env_id, num_actors=num_actors, total_timesteps=10**9, **kwargs)
    rb = M.ReplayBuffer(100_000, OBS_DIM)
    pool = M.ActorPool(args, "test", OBS_DIM, 2, rb)
    n_params = sum(int(np.prod(s)) for s in pool.shapes)
    return pool, rb, n_params


def receive(pool, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (message := pool.receive(timeout=1.0)) is not None:
            return message
    raise AssertionError("no chunk from the actors")


def test_no_lost_or_duplicated_transitions_behind_a_slow_learner():
    pool, rb, n_params = make_pool(2, chunk_length=16, ring_chunks=2)
    pool.start(np.zeros(n_params, dtype=np.float32))
    chunks, waits = np.zeros(2, dtype=int), []
    try:
        while chunks.min() < 12:
            message = receive(pool)
            chunks[message[1]] += 1
            waits.append(message[6]["wait"])
            time.sleep(0.02)  # an artificially slow learner: the actors fill their rings and must wait
    finally:
        pool.close()
    assert pool.dropped == 0
    ids, seqs = rb.actor_ids[: rb.size], rb.seqs[: rb.size]
    for a in range(2):
        mine = seqs[ids == a]  # in arrival order: complete, unique, in order
        np.testing.assert_array_equal(mine, np.arange(16 * chunks[a]))
    assert rb.size == 16 * chunks.sum()
    assert max(waits) > 0.005, "the rings never filled: backpressure was not exercised"


def test_drop_counter_sees_a_gap():
    pool, rb, n_params = make_pool(0, chunk_length=16)
    pool.start(np.zeros(n_params, dtype=np.float32))
    try:
        pool.receive(timeout=1.0)
        assert pool.dropped == 0
        pool.local.seq += 5  # as if five transitions had been lost
        pool.receive(timeout=1.0)
    finally:
        pool.close()
    assert pool.dropped == 5


def test_versions_are_monotonic_and_final_weights_are_the_last_publish():
    pool, _, n_params = make_pool(2, chunk_length=16, ring_chunks=2, sync_interval=4)
    rng = np.random.default_rng(3)
    pool.start(rng.normal(size=n_params).astype(np.float32))
    versions = {0: [], 1: []}

    def until_both_hold(version):  # receive until each actor has sent a chunk made with `version`
        while min(v[-1] if v else 0 for v in versions.values()) < version:
            message = receive(pool)
            versions[message[1]].append(message[4])

    try:
        until_both_hold(1)
        for _ in range(5):
            last = rng.normal(size=n_params).astype(np.float32)
            last_version = pool.ch.publish(last)
            until_both_hold(last_version)
    finally:
        exits = pool.close()
    assert last_version == 6
    for a, seen in versions.items():
        assert np.all(np.diff(seen) >= 0), f"actor {a} saw versions go back: {seen}"
        assert set(seen) == set(range(1, 7)), f"actor {a} skipped a version it had time to load: {seen}"
        assert exits[a] == (last_version, zlib.crc32(last.tobytes())), f"actor {a} ended with other weights"


def env_steps_per_second(num_actors, seconds=2.5):
    pool, _, n_params = make_pool(num_actors, env_id="tests.slow_env:SlowCartPole-v1", chunk_length=10, ring_chunks=4)
    pool.start(np.zeros(n_params, dtype=np.float32))
    try:
        started = set()
        while len(started) < num_actors:  # process start-up is not counted
            started.add(receive(pool)[1])
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            if (message := pool.receive(timeout=1.0)) is not None:
                steps += message[3]
        return steps / (time.perf_counter() - t0)
    finally:
        pool.close()


def test_four_actors_scale_on_a_sleeping_env():
    one, four = env_steps_per_second(1), env_steps_per_second(4)
    assert four >= 2.5 * one, f"4 actors: {four:.0f} steps/s, 1 actor: {one:.0f} steps/s"


def start_run(framework, tmp_path):
    """Start a long run with 2 actors; return the process and the actor pids once data flows."""
    proc = subprocess.Popen(
        [sys.executable, str(script_path(NAME, framework)), "--num-actors", "2", "--total-timesteps", "1000000"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids = []
    for line in proc.stdout:
        if match := re.search(r"actors started \(pids ([\d, ]+)\)", line):
            pids = [int(p) for p in match.group(1).split(", ")]
        if pids and line.startswith("global_step="):  # episodes arrive: the actors are running
            return proc, pids
    proc.kill()
    raise AssertionError(f"the run ended before its actors ran: {proc.stderr.read()[-2000:]}")


def assert_clean_end(proc, pids, message):
    _, err = proc.communicate(timeout=60)
    assert proc.returncode not in (0, None)
    last = err.strip().splitlines()[-1]
    assert message in last, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert "leaked" not in err, err[-2000:]  # the resource tracker found no named semaphore left behind
    for pid in pids:  # no actor survives to hold the shared arrays (they are freed with the processes)
        assert not os.path.exists(f"/proc/{pid}"), f"actor {pid} outlived the run"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_actor_ends_the_run_with_a_clear_error(tmp_path):
    proc, pids = start_run("mlx", tmp_path)
    os.kill(pids[1], signal.SIGKILL)
    assert_clean_end(proc, pids, f"actor 1 (pid {pids[1]}) died (killed by signal 9)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_learner_and_actors(tmp_path):
    proc, pids = start_run("torch", tmp_path)
    os.kill(proc.pid, signal.SIGINT)
    assert_clean_end(proc, pids, "interrupted; actors stopped")
