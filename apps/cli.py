"""The `tvq` command: a thin Typer layer over the library.

Each command parses its options and calls one library function. Problems with the user's input arrive as
``TvqError`` and leave as one line on stderr with exit code 2; ``--debug`` (before the command) shows the
traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from tvq.errors import TvqError

app = typer.Typer(
    name="tvq",
    help="Train, compress, inspect and render neural radiance fields with Taichi kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}

ArchOption = typer.Option(None, "--arch", help="Taichi backend: auto, cuda or cpu (default: $TVQ_ARCH, else auto).")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    _state["debug"] = debug


@app.command("scene")
def scene_cmd(
    path: Path = typer.Argument(..., help="A scene folder (Blender, nerfstudio/instant-ngp or RTMV)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    downscale: int = typer.Option(1, "--downscale", min=1, help="Load images downscaled by this factor."),
) -> None:
    """Summarise a scene folder: format, splits, image size, depth and its bounding box."""
    from tvq.data import load_scene, summarize

    info = summarize(load_scene(path, downscale=downscale))
    if as_json:
        typer.echo(json.dumps(info))
        return
    typer.echo(f"{path}: {info['format']} scene, {info['width']}x{info['height']}")
    for name, count in info["splits"].items():
        typer.echo(f"  {name:>6}: {count} views")
    typer.echo(f"  depth: {'yes' if info['depth'] else 'no'}   alpha: {'yes' if info.get('alpha') else 'no'}")
    if info["bbox"] is not None:
        lo, hi = info["bbox"]
        typer.echo("  depth bbox: [" + ", ".join(f"{a:.3f}..{b:.3f}" for a, b in zip(lo, hi)) + "]")


@app.command("make-scene")
def make_scene_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to write the Blender-format scene into."),
    size: int = typer.Option(128, "--size", min=16, help="Image width and height in pixels."),
    train: int = typer.Option(48, "--train", min=1, help="Number of training views."),
    val: int = typer.Option(8, "--val", min=0, help="Number of validation views."),
    test: int = typer.Option(8, "--test", min=1, help="Number of test views."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same scene."),
    force: bool = typer.Option(False, "--force", help="Overwrite a folder that already holds a scene."),
) -> None:
    """Write the built-in analytic demo scene (RGBA images and metric depth) in Blender format."""
    from tvq.data.synthetic import make_scene

    make_scene(out_dir, size=size, n_train=train, n_val=val, n_test=test, seed=seed, overwrite=force)
    typer.echo(f"wrote {train}+{val}+{test} views of {size}x{size} to {out_dir}")


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: run the app, turning TvqError into one line and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, standalone_mode=False)
    except TvqError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # click's usage errors and anything unexpected
        import click

        if isinstance(err, click.exceptions.Exit):
            sys.exit(err.exit_code)
        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(2)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(130)
        if debug:
            raise
        typer.echo(f"error: {type(err).__name__}: {err} (run with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
