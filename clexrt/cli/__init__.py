"""The `clexrt` command line. Each subcommand lives in its own module (clexrt/cli/<name>.py, exposing a
click command named `cmd`) and is imported only when it runs, so `clexrt --help` stays fast."""
import importlib
import sys

import click

from ..errors import ClexError

# name -> (module, one-line help)
COMMANDS = {
    "bench": ("clexrt.cli.bench", "Measure prompt-processing and generation speed."),
    "chat": ("clexrt.cli.chat", "Chat with a model in the terminal."),
    "clexify": ("clexrt.cli.convert", "Bake zero-network CLEX tables into an existing GGUF."),
    "convert": ("clexrt.cli.convert", "Convert a Hugging Face checkpoint to GGUF."),
    "export-static": ("clexrt.cli.export_static", "Bake CLEX's table for one context into a GGUF for llama.cpp."),
    "generate": ("clexrt.cli.generate", "Continue a prompt and stream the text."),
    "info": ("clexrt.cli.info", "Show what a GGUF file holds."),
    "perplexity": ("clexrt.cli.perplexity", "Perplexity against context length."),
    "quantize": ("clexrt.cli.quantize", "Quantize a GGUF to a llama.cpp file type (Q4_K_M, ...)."),
    "serve": ("clexrt.cli.serve", "Serve a model over an OpenAI-compatible HTTP API."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(c for c, (m, _) in COMMANDS.items() if importlib.util.find_spec(m))

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        modname, _ = COMMANDS[name]
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                return None
            raise
        return getattr(mod, name if hasattr(mod, name) and isinstance(getattr(mod, name), click.Command) else "cmd")

    def format_commands(self, ctx, formatter):
        rows = [(c, COMMANDS[c][1]) for c in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clexrt")
def cli():
    """clexrt: run LLaMA-family GGUF models on the CPU, with CLEX length extrapolation."""


def main(argv=None):
    """Entry point: ClexError becomes one line on stderr and exit status 1, never a traceback."""
    try:
        cli.main(args=argv, prog_name="clexrt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except ClexError as e:
        click.echo(f"clexrt: error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
