"""What a study produced: every trial read back with the front (:mod:`.study`), the HTML
report, the dashboard, and ``export`` (one trial taken away as a shippable model)."""

from searchcomp.results.study import Results, load_results

__all__ = ["Results", "load_results"]
