"""Read the scalars a script logged to TensorBoard (shared by the report and the tests)."""

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """All scalar tags of one run directory as {tag: [(global_step, value), ...]} in logging order."""
    run_dir = Path(run_dir)
    if not any(run_dir.glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"no TensorBoard event file in {run_dir}")
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
