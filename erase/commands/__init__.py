"""CLI commands, one module each: `register(subparsers)` adds the parser, `run(args)` does the work."""
