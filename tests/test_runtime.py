"""compress.runtime: the memory a cgroup leaves, read from cgroup v1 and v2 files laid out as the kernel does."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress import runtime

GIB = 1 << 30


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def _v1(tmp_path: Path, limit: int, usage: int, inactive: int, group_mounted: bool = True) -> tuple[str, str]:
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    folder = tmp_path / "sys" / "memory" / ("docker/abc" if group_mounted else "")
    _write(folder, {"memory.usage_in_bytes": f"{usage}\n",
                    "memory.stat": f"cache 1\ninactive_file 7\nhierarchical_memory_limit {limit}\n"
                                   f"total_inactive_file {inactive}\n"})
    return str(cgroup), str(tmp_path / "sys")


@pytest.mark.parametrize("group_mounted", [True, False])  # a container sees its own group at the mount root
def test_cgroup_v1_room_is_the_limit_less_the_use_without_inactive_cache(tmp_path, group_mounted):
    cgroup, mount = _v1(tmp_path, 4 * GIB, 3 * GIB, 1 * GIB, group_mounted)
    assert runtime._cgroup_room(cgroup, mount) == 2 * GIB


def test_cgroup_v1_without_a_limit_says_nothing(tmp_path):
    cgroup, mount = _v1(tmp_path, 9223372036854771712, 3 * GIB, 0)
    assert runtime._cgroup_room(cgroup, mount) is None


@pytest.mark.parametrize(("limit", "expected"), [(f"{4 * GIB}", 3 * GIB), ("max", None)])
def test_cgroup_v2_room(tmp_path, limit, expected):
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/user.slice/job\n")
    _write(tmp_path / "sys" / "user.slice" / "job", {"memory.max": f"{limit}\n", "memory.current": f"{GIB}\n"})
    assert runtime._cgroup_room(str(cgroup), str(tmp_path / "sys")) == expected


def test_no_cgroup_file_says_nothing(tmp_path):
    assert runtime._cgroup_room(str(tmp_path / "missing"), str(tmp_path)) is None
