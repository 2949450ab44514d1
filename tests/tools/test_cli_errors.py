"""``run_cli``: a user's mistake or a refusing disk is one line and exit 2; a bug keeps its traceback."""

from __future__ import annotations

import errno

import pytest

from compress.cli import run_cli
from compress.errors import UserError


def _exit(main, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("code", "fragment"), [(errno.ENOSPC, "No space left"), (errno.EROFS, "read-only")])
def test_full_or_read_only_disk_is_one_line_naming_the_file(capsys, code, fragment):
    def main():
        raise OSError(code, "os says no", "runs/x/round_03/final.pt")

    status, err = _exit(main, capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "runs/x/round_03/final.pt" in err and (fragment in err or "os says no" in err)


def test_user_error_is_one_line_without_terminal_escapes(capsys):
    def main():
        raise UserError("recipe.yaml:3: name: bad \x1b[31mred\x1b[0m\nsecond line")

    status, err = _exit(main, capsys)
    assert status == 2
    assert "\x1b" not in err and err.startswith("error: recipe.yaml:3: name:")


def test_an_internal_value_error_keeps_its_traceback():
    def main():
        raise ValueError("a bug, not a user mistake")

    with pytest.raises(ValueError, match="a bug"):
        run_cli(main)
