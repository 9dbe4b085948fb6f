"""``python -m kvassert.emulator [--host 127.0.0.1] [--port 0] [--state-dir DIR]``."""

from __future__ import annotations

import argparse

from kvassert.emulator.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvassert.emulator",
        description="Local Key Vault + Entra ID + App Service managed identity emulator.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
