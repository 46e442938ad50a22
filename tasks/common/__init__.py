"""What every stage shares: the run's config and settings, the backends, typed errors, polling, processes, ports,
the compile/parity child, the tools' lookup, progress reporting and the artifact keys. Nothing here imports a
stage folder (tasks/prepare, serve, verify, measure, report): the stages import it."""
