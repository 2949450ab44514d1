"""``compress <command> ...`` (the console command) and ``python -m compress <command> ...``.

Each command is one of the tools/ scripts, run as if called directly (same arguments, same output, same
exit codes): ``compress ticket --recipe recipes/lenet300_100.yaml`` is
``python tools/find_ticket.py --recipe recipes/lenet300_100.yaml``.
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

from compress.cli import USAGE_ERROR

COMMANDS = {
    "ticket": "find_ticket.py",
    "export": "export_onnx.py",
    "pack": "pack_ticket.py",
    "bench": "bench_sparse.py",
    "reproduce": "reproduce.py",
}
TOOLS = Path(__file__).resolve().parent.parent / "tools"  # the scripts live beside the package (editable install)


def _summary(script: Path) -> str:
    """The first line of the script's docstring, without parsing its imports."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    except (OSError, SyntaxError):
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage() -> str:
    lines = ["usage: compress <command> [arguments]   (compress <command> --help for its arguments)", "",
             "commands:"]
    for name, script in COMMANDS.items():
        lines.append(f"  {name:<10} {_summary(TOOLS / script)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``compress <command> ...``; returns the exit code (the command's own, or 2 for a bad command)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else USAGE_ERROR
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return USAGE_ERROR
    script = TOOLS / COMMANDS[command]
    if not script.is_file():
        print(f"error: {script} not found: the compress command runs the tools/ scripts of a source checkout "
              "(pip install -e .)", file=sys.stderr)
        return USAGE_ERROR
    # loaded as a module, not run as __main__: runpy would set argv[0] to the script's path, and argparse
    # would print 'usage: pack_ticket.py' instead of 'usage: compress pack'
    namespace = runpy.run_path(str(script), run_name=f"compress_{command}")
    saved = sys.argv
    sys.argv = [f"compress {command}", *rest]
    try:
        namespace["run_cli"](namespace["main"])
    except SystemExit as done:  # the scripts end through run_cli's sys.exit
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
