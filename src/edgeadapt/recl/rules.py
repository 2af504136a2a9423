"""RECL's decision rules as pure bookkeeping: the safety checker's pick, admission and pruning.

Khani et al., NSDI '23 (``shared/research/recl.md`` §2.4, §2.7, §2.9):

- **Safety checker.** The top-K experts the gating network scores highest, the device's current
  model and its last retrained model are each scored against the teacher's labels on the
  window's held-out frames; the best wins. Ties go to the model the device already runs (a
  switch costs downlink), then to the earlier candidate. Beyond the paper, an expert must beat
  the device's own models (its current and retrained ones) by a switching margin: an expert
  trained on another device's scenes can win a window by a fraction of a point and yet know
  the device's other scenes less well (``bench recl`` measured 3.4 points less on the device's
  past frames at the switches it made), and every later job retrains from it.
- **Admission.** A retrained model is *promising* when it beats every other candidate by at
  least ``alpha`` (absolute mIoU points as a fraction, 0.02); promising models wait in a queue
  that is admitted whole once it holds more than ``gamma``.
- **Pruning.** An expert the safety checker picked fewer than ``eta`` times in the last ``q``
  selections is removed. The paper names no grace period, yet without one a new expert would be
  pruned before it had ``q`` chances; here an expert is judged only once ``q`` selections have
  been made since its admission.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReclParams:
    """RECL's constants (recl.md §2.10); the ModelZoo and AdaptationPolicy specs set them."""

    window_s: float = 30.0
    top_k: int = 10
    alpha: float = 0.02
    gamma: int = 5
    eta: int = 4
    q: int = 3000

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.top_k < 1 or self.gamma < 0 or self.eta < 0 or self.q < 1:
            raise ValueError(f"invalid RECL parameters: {self}")
        if not 0 <= self.alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")


@dataclass(frozen=True)
class Verdict:
    """The safety checker's result for one device and window."""

    winner: str
    scores: Mapping[str, float]
    promising: bool
    """The last retrained model beat every other candidate by alpha (an admission candidate)."""
    held: str | None = None
    """The expert that scored best and lost to the switching margin (None when none did)."""


def safety_check(
    scores: Mapping[str, float],
    *,
    current: str | None,
    retrained: str | None,
    alpha: float,
    experts: Collection[str] = (),
    margin: float = 0.0,
) -> Verdict:
    """Pick the best-scoring candidate (``scores``: candidate id -> mIoU vs the teacher).

    ``current`` is the model the device runs (it wins ties), ``retrained`` the model last
    retrained for it (judged for admission against all the others). The candidates in
    ``experts`` came from the zoo; the others are the device's own. An expert wins only when it
    beats the best of the device's own by ``margin`` (a fraction, as the scores); otherwise
    that one does."""
    if not scores:
        raise ValueError("the safety checker needs at least one candidate")
    if not 0 <= margin < 1:
        raise ValueError(f"the switching margin must be in [0, 1), got {margin}")
    order = list(scores)

    def rank(c: str) -> tuple[float, bool, int]:
        return (scores[c], c == current, -order.index(c))

    best = max(order, key=rank)
    held = None
    own = [c for c in order if c not in experts]
    if best in experts and own and scores[best] < max(scores[c] for c in own) + margin:
        best, held = max(own, key=rank), best
    promising = False
    if retrained is not None and retrained in scores:
        others = [s for c, s in scores.items() if c != retrained]
        promising = not others or scores[retrained] >= max(others) + alpha
    return Verdict(best, dict(scores), promising, held)


def top_k(scores: Sequence[float], ids: Sequence[str], k: int) -> list[str]:
    """The ``k`` ids with the highest gating scores, best first (ties: the earlier id)."""
    if len(scores) != len(ids):
        raise ValueError(f"{len(scores)} scores for {len(ids)} experts")
    ranked = sorted(range(len(ids)), key=lambda i: (-scores[i], i))
    return [ids[i] for i in ranked[:k]]


@dataclass
class AdmissionQueue:
    """Promising retrained models waiting to enter the zoo, admitted together past ``gamma``."""

    gamma: int
    waiting: list[str] = field(default_factory=list)

    def offer(self, candidate: str) -> None:
        if candidate not in self.waiting:
            self.waiting.append(candidate)

    @property
    def due(self) -> bool:
        return len(self.waiting) > self.gamma

    def drain(self) -> list[str]:
        out, self.waiting = self.waiting, []
        return out


@dataclass
class SelectionLog:
    """The safety checker's last ``q`` picks that were zoo experts, and how many picks so far.

    ``admitted_at`` holds, per expert, the selection count when it entered the zoo, for the
    grace period."""

    q: int
    recent: deque[str] = field(init=False)
    total: int = 0
    admitted_at: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.q)

    def admit(self, experts: Iterable[str]) -> None:
        for e in experts:
            self.admitted_at.setdefault(e, self.total)

    def record(self, pick: str) -> None:
        """One selection: ``pick`` counts towards an expert only if it is one."""
        self.total += 1
        if pick in self.admitted_at:
            self.recent.append(pick)
        else:
            self.recent.append("")

    def counts(self) -> Counter[str]:
        return Counter(e for e in self.recent if e)

    def prunable(self, eta: int) -> list[str]:
        """Experts past their grace period picked fewer than ``eta`` times in the last q."""
        counts = self.counts()
        return sorted(
            e for e, at in self.admitted_at.items() if self.total - at >= self.q and counts[e] < eta
        )

    def remove(self, experts: Iterable[str]) -> None:
        gone = set(experts)
        for e in gone:
            self.admitted_at.pop(e, None)
        self.recent = deque(("" if e in gone else e for e in self.recent), maxlen=self.q)

    def to_json(self) -> dict[str, object]:
        return {"q": self.q, "total": self.total, "recent": list(self.recent),
                "admitted_at": dict(self.admitted_at)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, object], q: int) -> SelectionLog:
        log = cls(q)
        log.total = int(data.get("total", 0))  # type: ignore[call-overload]
        recent = data.get("recent") or []
        log.recent.extend(str(e) for e in recent)  # type: ignore[attr-defined]
        admitted = data.get("admitted_at") or {}
        log.admitted_at = {str(k): int(v) for k, v in admitted.items()}  # type: ignore[attr-defined]
        return log
