"""Command line: parse, build Settings, run a command; the only place that calls sys.exit."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from sidecar import __version__
from sidecar.settings import SettingsError, add_setting_flags, build_settings

if TYPE_CHECKING:
    from sidecar.settings import Settings

COMMANDS = ("run", "once", "check", "get", "fleet")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus the error; the SPEC wants one line naming the problem."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    # No abbreviations: `--pre` silently meaning `--prefix` would turn a typo into a setting.
    parser = _Parser(
        allow_abbrev=False,
        prog="etcd-config-sidecar",
        description="Mirror etcd v3 keys into a file, atomically and consistently.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, help_text in (
        ("run", "sync every output, then watch etcd and keep them current; serve HTTP"),
        ("once", "sync every output once and exit (init-container mode)"),
        ("check", "validate the configuration without contacting etcd or writing files"),
    ):
        add_setting_flags(
            commands.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        )
    get = commands.add_parser(
        "get", help="look one key up in a running sidecar", allow_abbrev=False
    )
    get.add_argument("key", help="the etcd key, e.g. /apps/shop/db/host")
    get.add_argument("--url", default="http://127.0.0.1:9180", help="the sidecar's HTTP address")
    get.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    fleet = commands.add_parser(
        "fleet", help="compare the sidecars of matching pods", allow_abbrev=False
    )
    fleet.add_argument("key", nargs="?", help="also show this key's value in every pod")
    fleet.add_argument("--namespace", "-n", required=True)
    fleet.add_argument("--selector", "-l", required=True, help="label selector, e.g. app=shop")
    fleet.add_argument("--port", type=int, default=9180, help="the sidecars' HTTP port")
    fleet.add_argument("--context", help="kubeconfig context")
    fleet.add_argument("--kubeconfig", help="kubeconfig file")
    fleet.add_argument("--timeout", type=float, default=10.0, help="seconds per pod")
    return parser


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    args = list(argv)
    # `run` is the default command, also when the first word is a flag.
    if not args or (args[0] not in COMMANDS and args[0] not in ("-h", "--help", "--version")):
        args.insert(0, "run")
    return _parser().parse_args(args)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.command == "get":
        from sidecar.lookup import get_command

        sys.exit(get_command(args.key, args.url, args.timeout))
    if args.command == "fleet":
        from sidecar.fleet import fleet_command

        sys.exit(fleet_command(args))
    try:
        settings = build_settings(args, os.environ)
        from sidecar.settings import check_outputs_writable

        check_outputs_writable(settings)
    except SettingsError as exc:
        sys.stderr.write(f"etcd-config-sidecar: {exc}\n")
        sys.exit(EXIT_USAGE)

    from sidecar import logs

    logs.configure(settings.log_format, settings.log_level)
    if args.command == "check":
        sys.stdout.write(f"configuration valid: {len(settings.outputs)} output(s)\n")
        sys.exit(EXIT_OK)
    if args.command == "once":
        sys.exit(_once(settings))
    from sidecar.service import Service

    sys.exit(Service(settings).run())


def _once(settings: Settings) -> int:
    from sidecar.logs import get_logger
    from sidecar.metrics import create_metrics
    from sidecar.syncer import Syncer, build_state

    state = build_state(settings)
    # Init-container mode: nothing is running yet that an on-change action could reload.
    syncer = Syncer(settings, state, create_metrics(state, 0), start_actions=False)
    try:
        ok = syncer.once(settings.timeout)
    finally:
        syncer.client.close()
    log = get_logger("once")
    if ok:
        log.info("once_done", revision=state.revision, outputs=len(settings.outputs))
        return EXIT_OK
    missing = state.missing_for_ready(0, 0)
    log.error("once_failed", timeout=settings.timeout, missing=missing)
    return EXIT_FAILED


if __name__ == "__main__":
    main()
