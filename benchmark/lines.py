"""How long each script is, next to its CleanRL counterpart and its twin: the numbers issue 14 asks for.

    python -m benchmark.lines           a markdown table: lines, CleanRL's lines, the target, the pair's diff size,
                                        then where each MLX script's lines go beyond what CleanRL's file carries

Target: 1.3x CleanRL's counterpart, 1.45x for a script that carries checkpoint/resume (an Args field `resume`).
Diff size: the lines `diff` prints for the pair (both sides, blank lines not counted); tests/test_twin_fidelity.py
keeps it from growing.
"""

import ast
import difflib

from benchmark.pairs import REPO, discover, script_path

# Lines of CleanRL's counterpart (vwxyzjn/cleanrl, cleanrl/<file>.py at fe8d8a0, April 2026); a2c, allo, qrdqn and
# qrdqn_actor_learner have none.
CLEANRL_LINES = {
    "c51": ("c51.py", 279),
    "ddpg": ("ddpg_continuous_action.py", 265),
    "dqn": ("dqn.py", 248),
    "dqn_atari": ("dqn_atari.py", 271),
    "ppo": ("ppo.py", 312),
    "ppo_atari": ("ppo_atari.py", 329),
    "ppo_atari_envpool": ("ppo_atari_envpool.py", 344),
    "ppo_atari_lstm": ("ppo_atari_lstm.py", 375),
    "ppo_atari_multigpu": ("ppo_atari_multigpu.py", 403),
    "ppo_continuous_action": ("ppo_continuous_action.py", 353),
    "pqn": ("pqn.py", 248),
    "sac": ("sac_continuous_action.py", 324),
    "td3": ("td3_continuous_action.py", 317),
}


def diff_lines(name: str) -> list[str]:
    """The lines `diff` prints for the pair, both sides, blank ones left out."""
    a, b = (script_path(name, fw).read_text().splitlines() for fw in ("mlx", "torch"))
    changed = (line for line in difflib.unified_diff(a, b, lineterm="", n=0) if line[:3] not in ("+++", "---"))
    return [line for line in changed if line[:1] in "+-" and line[1:].strip()]


def resumable(name: str) -> bool:
    """Whether the script carries checkpoint/resume (an Args field `resume`)."""
    return "\n    resume: Optional[str]" in script_path(name, "mlx").read_text()


# Top-level definitions CleanRL's file does not carry: what it imports (SB3's Atari wrappers and replay buffer,
# cleanrl_utils' evaluate) or has no counterpart of (input checks, checkpoint/resume); the MLX-only code is found by
# comparing with the torch twin.
BEYOND_CLEANRL = {
    "input checks": lambda name: name == "check_args",
    "checkpoint/resume": lambda name: (
        name in ("save_checkpoint", "sha256", "load_checkpoint", "restore_rng", "checkpoint_arrays", "restore_arrays")
    ),
    "evaluate": lambda name: name == "evaluate",
    "SB3's wrappers/buffer": lambda name: name.endswith(("ResetEnv", "SkipEnv", "LifeEnv", "ReplayBuffer")),
}


def definitions(name: str, framework: str) -> dict[str, int]:
    """Each top-level function or class: its lines from the first decorator to the end, plus ruff's two blank lines."""
    nodes = ast.parse(script_path(name, framework).read_text()).body
    defs = [n for n in nodes if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    return {n.name: n.end_lineno - min([n.lineno] + [d.lineno for d in n.decorator_list]) + 3 for n in defs}


def where_lines_go(names=None) -> str:
    """Per pair with a CleanRL counterpart: the MLX script's lines in each BEYOND_CLEANRL group, then in the other
    definitions its torch twin lacks (MLX-only code), and what is left, against CleanRL's lines. Each definition
    counts once, in the first group that takes it."""
    columns = [*BEYOND_CLEANRL, "MLX-only code"]
    lines = [
        "| pair | MLX lines | " + " | ".join(columns) + " | the rest | the rest / CleanRL |",
        "|---|---|" + "---|" * (len(columns) + 2),
    ]
    for name in [n for n in names or discover() if n in CLEANRL_LINES]:
        defs, twin = definitions(name, "mlx"), definitions(name, "torch")
        groups = dict.fromkeys(columns, 0)
        for d, n in defs.items():
            group = next((g for g, is_in in BEYOND_CLEANRL.items() if is_in(d)), "MLX-only code" if d not in twin else "")
            if group:  # "": a definition both twins have, counted in the rest
                groups[group] += n
        total = len(script_path(name, "mlx").read_text().splitlines())
        rest = total - sum(groups.values())
        cells = " | ".join(str(groups[c]) for c in columns)
        lines.append(f"| {name} | {total} | {cells} | {rest} | {rest / CLEANRL_LINES[name][1]:.2f}x |")
    return "\n".join(lines) + "\n"


def table(names=None) -> str:
    lines = [
        "| pair | MLX lines | torch lines | CleanRL's counterpart | target | MLX / CleanRL | diff lines |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names or discover():
        mlx, torch = (len(script_path(name, fw).read_text().splitlines()) for fw in ("mlx", "torch"))
        factor = 1.45 if resumable(name) else 1.3
        cells = ["–"] * 3
        if name in CLEANRL_LINES:
            file, n = CLEANRL_LINES[name]
            cells = [f"{file} ({n})", f"{int(factor * n)} ({factor}x)", f"{mlx / n:.2f}x"]
        lines.append(f"| {name} | {mlx} | {torch} | {' | '.join(cells)} | {len(diff_lines(name))} |")
    readme = (REPO / "README.md").read_text()
    return "\n".join(lines) + f"\n\nREADME.md: {len(readme.splitlines())} lines, {len(readme)} characters.\n"


if __name__ == "__main__":
    print(table())
    print(where_lines_go())
