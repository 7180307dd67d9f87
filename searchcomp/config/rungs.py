"""The ``search.rungs`` section of the space file (``strategy: rungs``)."""

from __future__ import annotations

from pydantic import Field

from searchcomp.config.base import Strict as _Strict


class RungsConfig(_Strict):
    """The fidelity rungs of ``strategy: rungs``: rung 0 scores a candidate right after it is
    built (BatchNorm statistics re-estimated, no gradient step); rung r of ``count`` fine-tunes
    it ``full / eta**(count - r)`` steps, the last rung being the full fine-tune."""

    #: ratio between the fine-tune lengths of consecutive rungs, and the share (1 / eta) of
    #: the candidates at a rung that go on to the next
    eta: int = Field(3, ge=2)
    #: fine-tune rungs above rung 0 (the last is the full fine-tune)
    count: int = Field(2, ge=1)
    #: training batches the BatchNorm statistics are re-estimated on at rung 0
    bn_batches: int = Field(8, ge=1)
