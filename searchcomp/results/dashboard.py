"""`searchcomp dashboard`: optuna-dashboard on the study's storage, on localhost only."""

from __future__ import annotations

from collections.abc import Callable

from searchcomp.config import Space
from searchcomp.search.storage import storage_of, study_id
from searchcomp.search.study import open_study, resolve_storage


def serve(space: Space, *, port: int = 8080, storage: str | None = None,
          study_name: str | None = None, host: str = "127.0.0.1",
          log: Callable[[str], None] = print) -> None:
    """Serve the dashboard until interrupted. Objectives are named in the study (set by
    ``run``), and each trial's user attributes hold its recipe and metrics."""
    import optuna_dashboard

    name = study_name or space.name
    study = open_study(space, storage=storage, study_name=name, load_only=True)  # must exist
    url = resolve_storage(space, storage, name)
    log(f"dashboard for study {name} ({url})")
    log(f"open http://{host}:{port}/dashboard/studies/{study_id(study)}  (Ctrl-C stops it)")
    try:
        optuna_dashboard.run_server(storage_of(study), host=host, port=port)
    except KeyboardInterrupt:
        log("dashboard stopped")
    except OSError as e:
        from searchcomp.errors import SearchcompError

        raise SearchcompError(f"--port {port}: {e}; choose another port") from None
