"""The `harness` command line. Exit codes follow Jepsen (see harness.exit): 0 valid,
1 invalid, 2 unknown, 254 bad usage, 255 crash."""

from __future__ import annotations

import sys
import traceback

import click

from harness.analyze_cmd import analyze_command
from harness.check_cmd import check_command
from harness.compare_cmd import compare_command
from harness.exit import EXIT_CRASH, EXIT_OK, EXIT_USAGE, exit_code_of
from harness.hunt_cmd import hunt_command
from harness.image_cmd import image_group
from harness.serve import serve_command
from harness.shrink_cmd import shrink_command
from harness.test_cmd import cleanup_command, test_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Linearizability tests for replicated stores."""


cli.add_command(check_command)
cli.add_command(test_command)
cli.add_command(cleanup_command)
cli.add_command(analyze_command)
cli.add_command(serve_command)
cli.add_command(compare_command)
cli.add_command(hunt_command)
cli.add_command(shrink_command)
cli.add_command(image_group)


def main(argv: list[str] | None = None) -> int:
    try:
        rc = cli.main(args=argv, prog_name="harness", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return EXIT_OK
    except click.UsageError as exc:
        click.echo(f"harness: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except click.exceptions.Abort:
        return EXIT_CRASH
    except Exception as exc:
        code = exit_code_of(exc)
        if code == EXIT_USAGE:
            click.echo(f"harness: {exc}", err=True)
            return code
        # A crash is our bug, never the user's: keep the traceback, exit as Jepsen does.
        traceback.print_exc()
        click.echo("harness: crashed (exit 255); the traceback above is a bug", err=True)
        return code
    return rc if isinstance(rc, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
