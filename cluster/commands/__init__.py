"""One module per `vljepa` subcommand: `add_arguments(parser)` and `run(args) -> int`.

Command modules stay thin: they parse flags into the job's config object and call the job.
"""
