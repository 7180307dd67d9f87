"""Search drivers: the Optuna multi-objective loop and the greedy baseline."""

from searchcomp.search.greedy import greedy_rule, run_greedy
from searchcomp.search.runner import Searcher, enqueue_seeds, sample_recipe
from searchcomp.search.study import done_trials, open_study
from searchcomp.search.trial import TrialContext, TrialOutcome, prepare, run_trial

__all__ = ["Searcher", "TrialContext", "TrialOutcome", "done_trials", "enqueue_seeds",
           "greedy_rule", "open_study", "prepare", "run_greedy", "run_trial", "sample_recipe"]
