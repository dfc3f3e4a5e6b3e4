"""`python -m oura_assets.simulator [--host 127.0.0.1] [--port 8787]`: the simulator on its own."""

from __future__ import annotations

import argparse

from oura_assets.simulator.server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m oura_assets.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8787)
    args = parser.parse_args(argv)
    run(args.host, args.port)


if __name__ == "__main__":
    main()
