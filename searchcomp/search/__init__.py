"""Search drivers: a trial as a pure function, the Optuna study it is stored in, the local
loop, the samplers (the predictor-guided surrogate among them), the profile (sensitivity
table), the greedy baseline and the Ray Tune backend."""

from searchcomp.search.api import RunSummary, run_search
from searchcomp.search.greedy import greedy_rule, run_greedy
from searchcomp.search.profile import ProfileResult, fill_profile, profile_space
from searchcomp.search.runner import Searcher, sample_recipe
from searchcomp.search.samplers import make_sampler
from searchcomp.search.seeds import enqueue_seeds
from searchcomp.search.study import done_trials, open_study
from searchcomp.search.surrogate import SurrogateSampler
from searchcomp.search.trial import TrialContext, TrialOutcome, prepare, run_trial

__all__ = ["ProfileResult", "RunSummary", "Searcher", "SurrogateSampler", "TrialContext",
           "TrialOutcome", "done_trials", "enqueue_seeds", "fill_profile", "greedy_rule",
           "make_sampler", "open_study", "prepare", "profile_space", "run_greedy",
           "run_search", "run_trial", "sample_recipe"]
