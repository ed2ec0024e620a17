"""A run observer that interrupts a run as Ctrl-C would, when a given round starts (tests of ``--resume``)."""

from secure_ffm.run.simulation import RunObserver


class InterruptAtRound(RunObserver):
    """Raises ``KeyboardInterrupt`` when round ``round`` starts: the rounds before it are done and checkpointed."""

    def __init__(self, round: int) -> None:
        self.round = round

    def round_started(self, round, clients):
        if round == self.round:
            raise KeyboardInterrupt
