"""``python -m example_app.directory``: the sandbox Directory's command line."""

from example_app.directory.cli import cli

if __name__ == "__main__":
    cli(prog_name="python -m example_app.directory")
