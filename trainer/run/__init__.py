"""The run layer: everything about a run directory and the set of runs, torch-free, shared by
the daemon, the trainer, the CLI and the TUI. Import the module you need:

- `rundir`    `RunDir` (every file of a run directory named once: `RunDir(p).state`, `.events`,
              `.history`, `.plan`, `.config`, `.train_log`, ...), atomic writes
              (`atomic_write_bytes`/`atomic_write_json`, `fsync_dir`), private run directories
              (`make_run_dir`, `private_umask`, `apply_umask`), checkpoint directory names.
- `state`     state.json: `StateFile` (read, update, `write` keeping fields pending on a full
              disk, `rebuild` of a damaged file), `read_state`, `effective_state`, run states.
- `events`    events.jsonl: `EventLog` (the one writer, seq numbering) and its readers
              (`read_tail`, `read_events`, `last_seq`, `parse_event`).
- `linefile`  torn-line-safe append-only line files (`AppendFile`) and `tail_lines`.
- `plan`      plan.json: `read_plan`, `write_plan`, `planned_steps`.
- `evaluation` evaluation.json read torch-free: `read_evaluation`, `headline_result`,
              `results_newest_first`, `EvaluationWatch` (read again only when the file changed).
- `snapshot`  `snapshot_from_run_dir`: the protocol snapshot of a run from its files.
- `status`    `status` (`longhaul status --json`), `list_runs`, `missing_status`.
- `locate`    runs root, run names, `resolve_run`, `create_run_dir`.
- `registry`  the user's registry of run directories anywhere on disk.
- `sockets`   the private runtime directory and each run's socket path.
- `liveness`  is a pid alive, and is it longhaul.
- `errors`    `RunError` and its subclasses (messages for the user, no traceback).
"""
