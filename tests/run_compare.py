"""Helpers to compare run dirs (imported by name: pytest puts this folder on sys.path for its conftest)."""


def without_wall(value):
    """A summary or result without its wall times and run dir: what two equal runs agree on bit for bit."""
    if isinstance(value, dict):
        return {k: without_wall(v) for k, v in value.items() if k not in ("wall_s", "run_dir")}
    if isinstance(value, list):
        return [without_wall(v) for v in value]
    return value
