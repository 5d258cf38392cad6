"""`make demo`: the main job end to end on built-in defaults."""

from __future__ import annotations

import sys

from .cli import main as cli_main


def main() -> int:
    print("transferkit demo: inspecting the built-in offline backbone efficientnet_lite0")
    return cli_main(["inspect", "efficientnet_lite0"])


if __name__ == "__main__":
    sys.exit(main())
