"""The commands, one module each, on top of the library: `run(spec) -> result` and `format_text(result)`.

cli.py parses options into a spec, imports the command's module when it runs, and prints the result (as
text, or one JSON line with --json). Nothing below this package imports a command.
"""
