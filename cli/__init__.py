"""The `engram-memory` command line, on top of everything: `main` dispatches each subcommand to the
config dataclass and runner of the package that does the work (imported only when it runs); `demo`
is the main job end to end."""
