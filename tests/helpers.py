"""Shared test helpers: run a script as a user would, read what it logged, import it for parity tests."""

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from benchmark.pairs import DEFAULT_DIRS, REPO, load_script, script_path  # noqa: F401 (shared with benchmark/; re-exported)
from benchmark.report import read_scalars


def script_command(name, framework, *args, env=None) -> tuple[list[str], dict]:
    """The command line and environment that run `<name>_<framework>.py args` as the tests do."""
    # a wandb.init() earlier in this test process leaves WANDB_SERVICE set: a child that inherits it logs
    # through that process's service, which may not have written the child's run when the child exits
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_SERVICE", "_WANDB"))}
    full_env = {**inherited, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return [sys.executable, str(script_path(name, framework)), *map(str, args)], full_env


def run_script(name, framework, *args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run `<name>_<framework>.py args` in `cwd` (its runs/ lands there) with OMP_NUM_THREADS=1."""
    cmd, full_env = script_command(name, framework, *args, env=env)
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def assert_rejected(proc: subprocess.CompletedProcess, message: str, cwd) -> None:
    """Bad input stopped the script with one clear line (no traceback) before it wrote a runs/ directory."""
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert err and message in err[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (Path(cwd) / "runs").exists(), "the run started before rejecting its input"


def run_dirs(cwd) -> list[Path]:
    """The run directories a script wrote under cwd/runs (evaluation writes none of its own)."""
    return sorted(p for p in (Path(cwd) / "runs").glob("*") if p.is_dir() and any(p.glob("events.out.tfevents.*")))


def scalars_of_single_run(cwd) -> dict[str, list[tuple[int, float]]]:
    dirs = run_dirs(cwd)
    assert len(dirs) == 1, f"expected one run directory, found {dirs}"
    return read_scalars(dirs[0])


def episodic_returns(scalars) -> np.ndarray:
    return np.array([v for _, v in scalars.get("charts/episodic_return", [])])


def torch_params_to_mlx(torch_module, mlx_module) -> None:
    """Give an MLX module the torch twin's weights (names match by design; copied through numpy)."""
    import mlx.core as mx

    weights = [(k, mx.array(v.detach().cpu().numpy())) for k, v in torch_module.state_dict().items()]
    mlx_module.load_weights(weights, strict=True)


def assert_close(mlx_value, torch_value, atol=1e-5, rtol=1e-5, what=""):
    a = np.asarray(mlx_value)
    b = torch_value.detach().cpu().numpy() if hasattr(torch_value, "detach") else np.asarray(torch_value)
    np.testing.assert_allclose(a, b, atol=atol, rtol=rtol, err_msg=what)


def replay_batch(seed, batch_size, obs_dim, n_actions, terminal_fraction=0.25):
    """A random replay batch (obs, actions, rewards, next_obs, dones) as numpy arrays, in the order
    the value-based scripts' ReplayBuffer.sample returns them; some transitions are terminal."""
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(batch_size, obs_dim)).astype(np.float32),
        rng.integers(0, n_actions, size=batch_size),
        rng.normal(size=batch_size).astype(np.float32),
        rng.normal(size=(batch_size, obs_dim)).astype(np.float32),
        (rng.random(batch_size) < terminal_fraction).astype(np.float32),
    )


def continuous_batch(seed, batch_size, obs_dim, act_dim, low, high, terminal_fraction=0.3):
    """A random replay batch for the continuous-action scripts (dict of float32 numpy arrays, actions
    within [low, high]) and the generator, so a test can draw its own noise from the same stream."""
    rng = np.random.default_rng(seed)
    batch = {
        "obs": rng.normal(size=(batch_size, obs_dim)).astype(np.float32),
        "actions": rng.uniform(low, high, size=(batch_size, act_dim)).astype(np.float32),
        "next_obs": rng.normal(size=(batch_size, obs_dim)).astype(np.float32),
        "rewards": rng.normal(size=batch_size).astype(np.float32),
        "dones": (rng.random(batch_size) < terminal_fraction).astype(np.float32),
    }
    return batch, rng


def assert_adam_steps_match(t_model, m_model, t_loss, m_loss, batches, lr, eps, atol=1e-6):
    """A few Adam steps (torch's, and MLX's with bias_correction=True) on the same batches leave the same
    weights. t_loss(batch) / m_loss(batch) return the scalar loss of the live model on a numpy batch."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import torch
    from mlx.utils import tree_flatten

    t_opt = torch.optim.Adam(t_model.parameters(), lr=lr, eps=eps)
    m_opt = optim.Adam(learning_rate=lr, eps=eps, bias_correction=True)
    m_opt.init(m_model.trainable_parameters())
    m_grad = nn.value_and_grad(m_model, m_loss)
    for batch in batches:
        t_opt.zero_grad()
        t_loss(batch).backward()
        t_opt.step()
        _, grads = m_grad(batch)
        m_opt.update(m_model, grads)
        mx.eval(m_model.parameters())
    m_params = dict(tree_flatten(m_model.trainable_parameters()))
    for name, p in t_model.named_parameters():
        assert_close(m_params[name], p, atol=atol, what=f"param {name} after Adam")


def assert_clipped_adam_steps_match(t_module, m_module, t_loss, m_loss, batches, lr, eps=1e-5, max_norm=0.5, atol=1e-6):
    """Global-norm clipping + Adam (MLX with torch's bias correction) from the same weights: after one step
    per batch, both twins hold the same parameters. `t_loss(batch)` / `m_loss(*batch)` return (loss, ...)."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import torch
    from mlx.utils import tree_flatten

    t_opt = torch.optim.Adam(t_module.parameters(), lr=lr, eps=eps)
    m_opt = optim.Adam(learning_rate=lr, eps=eps, bias_correction=True)
    m_opt.init(m_module.trainable_parameters())
    loss_and_grad = nn.value_and_grad(m_module, m_loss)
    for t_batch, m_batch in batches:
        t_opt.zero_grad()
        t_loss(t_batch)[0].backward()
        torch.nn.utils.clip_grad_norm_(t_module.parameters(), max_norm)
        t_opt.step()
        _, grads = loss_and_grad(*m_batch)
        grads, _ = optim.clip_grad_norm(grads, max_norm)
        m_opt.update(m_module, grads)
        mx.eval(m_module.parameters())
    m_params = dict(tree_flatten(m_module.parameters()))
    for name, p in t_module.named_parameters():
        assert_close(m_params[name], p, atol=atol, what=f"param {name} after Adam")


def init_kind(name, value, params) -> tuple:
    """How a freshly built parameter was initialised, from its values: ("constant", c), ("orthogonal", gain) for
    torch.nn.init.orthogonal_ (CleanRL's layer_init: every singular value equal to the gain), ("uniform", bound) for
    torch's default Linear/Conv init (U(-b, b), b = 1/sqrt(fan_in), a bias's fan_in its weight's), ("norm", n) for
    any other weight (a one-row orthogonal weight's norm is its gain), or ("other", None)."""
    if np.all(value == value.flat[0]) and (value.size > 1 or value.flat[0] == 0):  # one random number is no constant
        return "constant", float(value.flat[0])
    if value.ndim >= 2 and min(value.shape[0], value[0].size) > 1:
        s = np.linalg.svd(value.reshape(value.shape[0], -1), compute_uv=False)
        if s.max() <= s.min() * (1 + 1e-4):
            return "orthogonal", float(s.mean())
    weight = params.get(name.removesuffix("bias") + "weight", value) if name.endswith("bias") else value
    if weight.ndim >= 2:
        bound, top = 1 / np.sqrt(np.prod(weight.shape[1:])), np.abs(value).max()
        spread = value.size < 16 or top >= bound / 2  # 16 draws of U(-b, b) all under b/2: p = 2**-16
        shape = value.size < 1024 or abs(value.std() * np.sqrt(3) / bound - 1) < 0.1  # U(-b, b) has std b/sqrt(3)
        if top <= bound * (1 + 1e-5) and spread and shape:
            return "uniform", float(bound)
    if value.ndim >= 2:
        return "norm", float(np.linalg.norm(value))
    return "other", None


def assert_same_init(fresh_m, fresh_t):
    """Freshly built twins are initialised alike, each as torch (so CleanRL) does: each parameter is the same kind of
    init_kind in both twins with the same constant, bound, gain or norm (the values differ: the frameworks' RNGs do); a
    parameter of no kind must be a fixed buffer (c51's atoms), the same in both. Called by cross_load on its fresh
    modules; it catches e.g. MLX's Conv2d, whose bias starts at zero where torch's is U(-b, b)."""
    m, t = mlx_params(fresh_m), torch_params(fresh_t)
    assert sorted(m) == sorted(t), f"parameter names differ: {sorted(m)} vs {sorted(t)}"
    for name in t:
        (m_kind, m_value), (t_kind, t_value) = init_kind(name, m[name], m), init_kind(name, t[name], t)
        if t_kind == "other":  # a fixed buffer (c51's atoms): the same values; a random one is no known init: fail
            np.testing.assert_allclose(m[name], t[name], rtol=1e-6, err_msg=f"{name}: not a known init nor the same values")
            continue
        assert t_kind != "norm" or len(t[name]) == 1, f"{name}: the torch twin's init is none of init_kind's"
        assert (m_kind, m_value) == pytest.approx((t_kind, t_value), rel=1e-3), (
            f"{name}: MLX {m_kind} {m_value}, torch {t_kind} {t_value}"
        )


def cross_load(m_module, t_module, fresh_m, fresh_t, tmp_path):
    """Each twin saves its module with its own framework; the file loads into a fresh module of the other
    (torch's load_state_dict is strict). The fresh modules are first checked to be initialised alike (assert_same_init),
    which every pair's cross-load test thereby covers. Returns (fresh_m with t_module's weights, fresh_t with m_module's)."""
    from safetensors.torch import load_file, save_file

    assert_same_init(fresh_m, fresh_t)
    m_path, t_path = str(tmp_path / "m.safetensors"), str(tmp_path / "t.safetensors")
    m_module.save_weights(m_path)
    fresh_t.load_state_dict(load_file(m_path))
    save_file({k: v.contiguous() for k, v in t_module.state_dict().items()}, t_path)
    fresh_m.load_weights(t_path)
    return fresh_m, fresh_t


def mlx_params(module) -> dict:
    """An MLX module's parameters as a flat {name: numpy array} dict (names as torch's state_dict)."""
    from mlx.utils import tree_flatten

    return {k: np.array(v) for k, v in tree_flatten(module.parameters())}


def torch_params(module) -> dict:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def assert_same_weights(m_module, t_module, atol=1e-5, what=""):
    """Both twins hold the same parameters after the same update (names match by design)."""
    m, t = mlx_params(m_module), torch_params(t_module)
    assert sorted(m) == sorted(t), f"{what}: parameter names differ: {sorted(m)} vs {sorted(t)}"
    for name in t:
        np.testing.assert_allclose(m[name], t[name], atol=atol, rtol=1e-5, err_msg=f"{what} {name}")


def assert_same_updates(before, t, m, nets, rel=2e-2):
    """After several optimizer steps, each network's change from `before` (trainable() of the torch twin at the start)
    is the same in both twins, relative to its size: Adam turns a float32 rounding difference in a near-zero gradient
    into a visible difference in that one weight (up to 0.6% of td3's actor fc2.bias change after three actor steps),
    while a lost step or lost optimizer state moves whole layers apart (one critic step left out of six: 3.8%)."""
    for k in nets:
        t_after, m_after = trainable(t[k]), trainable(m[k])
        for name, start in before[k].items():
            moved = np.linalg.norm(t_after[name] - start)
            assert moved > 0, f"{k} {name} did not move"
            apart = np.linalg.norm(m_after[name] - t_after[name])
            assert apart <= rel * moved, f"{k} {name}: the twins' updates differ by {apart / moved:.1%} of their size"


def assert_same_grads(m_grads, t_module, atol=1e-5):
    """MLX gradients (a tree, as nn.value_and_grad returns them) equal the torch module's .grad, name by name."""
    from mlx.utils import tree_flatten

    m_flat = dict(tree_flatten(m_grads))
    for name, p in t_module.named_parameters():
        assert_close(m_flat[name], p.grad, atol=atol, what=f"grad {name}")


def assert_first_adam_step(before: dict, after: dict, grads: dict, lr: float, eps: float, atol=1e-7):
    """The formula, not the twin: torch's Adam (bias-corrected) moves each weight on its first step by
    exactly -lr * g / (|g| + eps), g being the (clipped) gradient it was given. A wrong learning rate,
    eps or bias correction, or a step that was skipped or taken twice, fails this."""
    moved = 0
    for name, g in grads.items():
        expected = before[name] - lr * g / (np.abs(g) + eps)
        np.testing.assert_allclose(after[name], expected, atol=atol, rtol=1e-5, err_msg=f"first Adam step of {name}")
        moved += int(np.any(after[name] != before[name]))
    assert moved > 0, "no parameter moved"


def assert_polyak(online_before: dict, target_before: dict, target_after: dict, tau: float, atol=1e-6):
    """The formula: target <- tau * online + (1 - tau) * target, for every parameter. Call it with a tau
    far from 0.5 (and from 0 and 1) and online != target, so a swapped, ignored or inverted tau fails."""
    assert tau not in (0.0, 0.5, 1.0)
    for name, t in target_before.items():
        expected = tau * online_before[name] + (1 - tau) * t
        swapped = (1 - tau) * online_before[name] + tau * t
        assert not np.allclose(expected, swapped, atol=atol), f"{name}: online == target, the check cannot fail"
        np.testing.assert_allclose(target_after[name], expected, atol=atol, rtol=1e-5, err_msg=f"polyak {name}")


def trainable(module) -> dict:
    """Trainable parameters (no buffers such as the actors' action scale) as numpy, from either twin."""
    if hasattr(module, "named_parameters"):
        return {k: v.detach().cpu().numpy().copy() for k, v in module.named_parameters()}
    from mlx.utils import tree_flatten

    return {k: np.array(v) for k, v in tree_flatten(module.trainable_parameters())}


def torch_grads(module) -> dict:
    """The gradients torch's last backward (and clipping) left in `p.grad`, as numpy."""
    return {name: p.grad.detach().cpu().numpy().copy() for name, p in module.named_parameters()}


def check_polyak_update(script, online, target, tau=0.3, compiled_state=None):
    """Run a script's own `polyak_update(online, target, tau)` (MLX: compiled over `compiled_state`, as the
    script runs it, when given) and hold the result to the formula."""
    online_before, target_before = trainable(online), trainable(target)
    if compiled_state is None:
        script.polyak_update(online, target, tau)
    else:
        import mlx.core as mx

        mx.compile(partial(script.polyak_update, online, target, tau), inputs=compiled_state, outputs=compiled_state)()
    assert_polyak(online_before, target_before, trainable(target), tau)


def check_actor_critic_targets(t, m, before, update_actor, tau, lr):
    """After one actor-critic train_step (td3, ddpg) from the weights `before`: torch's first Adam step of the
    network trained last (the critic's p.grad also collects the actor loss's gradient), and in both twins the
    Polyak update of both targets with the actor step, untouched targets without it."""
    trained = "actor" if update_actor else "qf"
    assert_first_adam_step(before[trained], trainable(t[trained]), torch_grads(t[trained]), lr=lr, eps=1e-8)
    for online, target in (("actor", "target_actor"), ("qf", "qf_target")):
        for nets in (t, m):
            if update_actor:
                assert_polyak(trainable(nets[online]), before[target], trainable(nets[target]), tau)
            else:
                assert all(np.array_equal(v, before[target][k]) for k, v in trainable(nets[target]).items())


def check_ppo_full_updates(m_script, t_script, m_agent, t_agent, batch, minibatch, lr, stat_names, atol=1e-5):
    """PPO's train_step as the scripts run it (the minibatch gathered from the batch, loss, gradients, clipping,
    the scripts' own Adam from their default Args; MLX compiled), 3 updates: the same loss terms and weights in
    both twins after each. Against the formula: torch's first step is Adam's first step (lr, eps 1e-5) on
    gradients clipped to a global norm of 0.5. `batch` is a pair (MLX arrays, torch tensors)."""
    import mlx.core as mx
    import torch

    args = m_script.Args()
    coefs = dict(max_grad_norm=args.max_grad_norm, clip_coef=args.clip_coef, ent_coef=args.ent_coef, vf_coef=args.vf_coef)
    coefs.update(norm_adv=args.norm_adv, clip_vloss=args.clip_vloss)
    t_opt = t_script.make_optimizer(t_agent, t_script.Args())
    m_opt = m_script.make_optimizer(m_agent, args)
    state = [m_agent.state, m_opt.state]
    m_train = mx.compile(partial(m_script.train_step, m_agent, m_opt, **coefs), inputs=state, outputs=state)
    m_batch, t_batch = batch
    size = len(np.asarray(m_batch[0]))
    for step in range(3):
        mb_inds = np.random.default_rng(step).permutation(size)[:minibatch]
        before = torch_params(t_agent)
        t_stats = t_script.train_step(t_agent, t_opt, torch.tensor(mb_inds), *t_batch, **coefs)
        m_stats = m_train(mx.array(mb_inds), *m_batch)
        mx.eval(m_stats, state)
        assert_same_weights(m_agent, t_agent, atol=atol, what=f"update {step}")
        for name, m, t in zip(stat_names, m_stats, t_stats):
            assert_close(m, t, what=f"{name} of update {step}")
        if step == 0:
            grads = torch_grads(t_agent)
            np.testing.assert_allclose(np.sqrt(sum((g**2).sum() for g in grads.values())), 0.5, rtol=1e-4)
            assert_first_adam_step(before, torch_params(t_agent), grads, lr=lr, eps=1e-5)


def check_value_full_updates(m_script, t_script, twins, batch_of, stat_names, lr, eps, **hyper):
    """A value-based script's train_step as it runs (the TD target from the target network, loss, gradients, the
    scripts' own Adam from their default Args; MLX compiled), 3 steps on `batch_of(10 + i)`, then the target update:
    the same stats and weights in both twins, the target untouched by train_step. Against the formulas: torch's
    first step is Adam's first step (lr, eps); the target update is Polyak's (tau 0.3: the loops copy, tau = 1)."""
    import mlx.core as mx
    import torch

    t_q, t_target, m_q, m_target = twins
    t_opt, m_opt = t_script.make_optimizer(t_q, t_script.Args()), m_script.make_optimizer(m_q, m_script.Args())
    t_train = partial(t_script.train_step, t_q, t_target, t_opt, **hyper)
    state = [m_q.state, m_target.state, m_opt.state]
    m_train = mx.compile(partial(m_script.train_step, m_q, m_target, m_opt, **hyper), inputs=state, outputs=state)
    for i in range(3):
        batch = batch_of(10 + i)
        before = torch_params(t_q)
        t_stats = t_train(*(torch.as_tensor(x) for x in batch))
        m_stats = m_train(*(mx.array(x) for x in batch))
        for m, t, what in zip(m_stats, t_stats, stat_names):
            assert_close(m, t, what=f"{what} at step {i}")
        if i == 0:
            assert_first_adam_step(before, torch_params(t_q), torch_grads(t_q), lr=lr, eps=eps)
    assert_same_weights(m_q, t_q, atol=1e-5, what="online")
    assert_same_weights(m_target, t_target, atol=0, what="target (untouched by train_step)")

    check_polyak_update(t_script, t_q, t_target)
    check_polyak_update(m_script, m_q, m_target, compiled_state=state)
    assert_same_weights(m_target, t_target, atol=1e-5, what="target")


def check_actor_gradients(m_script, t_script, m, t, obs):
    """The deterministic actor's loss, -Q(s, actor(s)) averaged, and its gradients in both twins (td3, ddpg)."""
    import mlx.core as mx
    import torch
    from mlx.utils import tree_flatten

    t["actor"].zero_grad()
    t_aloss = t_script.actor_loss_fn(t["actor"], t["qf"], torch.as_tensor(obs))
    t_aloss.backward()
    actor_loss = m_script.nn.value_and_grad(m["actor"], lambda x: m_script.actor_loss_fn(m["actor"], m["qf"], x))
    m_aloss, m_agrads = actor_loss(mx.array(obs))
    assert_close(m_aloss, t_aloss, what="actor_loss")
    m_agrads = dict(tree_flatten(m_agrads))
    assert sorted(m_agrads) == sorted(n for n, _ in t["actor"].named_parameters())
    for name, p in t["actor"].named_parameters():
        assert_close(m_agrads[name], p.grad, atol=1e-5, rtol=1e-4, what=f"actor grad {name}")
